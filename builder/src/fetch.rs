//! Fetching Debian's boot parts with a private apt state.
//!
//! We run the host's own `apt-get` with every state, cache and source path
//! redirected into defib's cache directory (apt.conf(5) `Dir::*` options),
//! so the host's apt sources, lists and package status are never touched.
//! Release files are verified by apt against the Debian archive keyring
//! installed on the host (`debian-archive-keyring`).
//!
//! The mirror is the Debian mirror the host's apt already uses (its suites
//! renamed to the target release), or `--mirror`. We never hard-code a
//! mirror: organisations point builds at their own.
//!
//! This is not a resolver: we download a fixed list of packages and follow a
//! metapackage (`linux-image-amd64`) one step to its kernel.

use crate::deb::Deb;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian release whose signed parts we use: trixie's 6.12 kernel is the
/// first Debian kernel with `ntfs3`, and its shim/GRUB are signed for it.
pub const RELEASE: &str = "trixie";

/// The packages a build needs. `linux-image-amd64` is a metapackage that we
/// follow to the versioned, signed kernel image package.
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "shim-signed",
    "grub-efi-amd64-signed",
    "busybox-static",
    "syslinux",
    "syslinux-common",
    // isolinux.bin and isohdpfx.bin for the hybrid ISO's BIOS boot.
    "isolinux",
    // iPXE for PXE trees: undionly.kpxe (BIOS) and snponly.efi (UEFI).
    "ipxe",
];

/// Debian release code names a host may be on; their suites map to ours.
const CODENAMES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "testing",
    "oldstable",
    "unstable",
];

/// Where defib keeps its downloads: `$DEFIB_CACHE`, `$XDG_CACHE_HOME/defib`
/// or `~/.cache/defib`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("DEFIB_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("defib"));
    }
    let home = std::env::var_os("HOME").context("neither DEFIB_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("defib"))
}

/// The default folder of fetched `.deb` files.
pub fn default_debs_dir() -> Result<PathBuf> {
    Ok(cache_dir()?.join("debs").join(RELEASE))
}

/// One apt source line we will use: `deb URI SUITE main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suite: String,
}

/// Derives the private sources from the host's apt configuration: every
/// Debian `deb` source whose suite is `<codename>[-security|-updates]` is
/// kept with the code name replaced by [`RELEASE`].
pub fn sources_from_host(etc_apt: &Path) -> Result<Vec<Source>> {
    let mut texts = Vec::new();
    let main = etc_apt.join("sources.list");
    if let Ok(t) = std::fs::read_to_string(&main) {
        texts.push((false, t));
    }
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let deb822 = match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => true,
                Some("list") => false,
                _ => continue,
            };
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push((deb822, t));
            }
        }
    }
    let mut raw = Vec::new();
    for (deb822, t) in texts {
        if deb822 {
            raw.extend(parse_deb822(&t));
        } else {
            raw.extend(parse_one_line(&t));
        }
    }
    let mut out: Vec<Source> = Vec::new();
    for (uri, suite) in raw {
        let (code, tail) = match suite.split_once('-') {
            Some((c, t)) => (c.to_string(), format!("-{t}")),
            None => (suite.clone(), String::new()),
        };
        if !CODENAMES.contains(&code.as_str())
            || !matches!(tail.as_str(), "" | "-security" | "-updates")
        {
            continue;
        }
        let s = Source {
            uri: uri.trim_end_matches('/').to_string(),
            suite: format!("{RELEASE}{tail}"),
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// Sources for an explicit mirror: the release, its updates, and the
/// security suite when a security mirror is given.
pub fn sources_for_mirror(mirror: &str, security: Option<&str>) -> Vec<Source> {
    let m = mirror.trim_end_matches('/').to_string();
    let mut v = vec![
        Source {
            uri: m.clone(),
            suite: RELEASE.to_string(),
        },
        Source {
            uri: m,
            suite: format!("{RELEASE}-updates"),
        },
    ];
    if let Some(s) = security {
        v.push(Source {
            uri: s.trim_end_matches('/').to_string(),
            suite: format!("{RELEASE}-security"),
        });
    }
    v
}

/// One-line style: `deb [opts] URI SUITE COMPONENTS…`.
fn parse_one_line(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

/// deb822 style (sources.list(5)): stanzas with Types, URIs, Suites.
fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let f = crate::deb::parse_control(
            &stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let types = f.get("Types").map(String::as_str).unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if f.get("Enabled")
            .is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let uris = f.get("URIs").cloned().unwrap_or_default();
        let suites = f.get("Suites").cloned().unwrap_or_default();
        for u in uris.split_whitespace() {
            for s in suites.split_whitespace() {
                out.push((u.to_string(), s.to_string()));
            }
        }
    }
    out
}

/// What `defib fetch` produced: one entry per package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fetched {
    pub package: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
}

/// The private apt state under `<cache>/apt/<release>`.
pub struct PrivateApt {
    root: PathBuf,
    keyring: PathBuf,
}

impl PrivateApt {
    pub fn new(cache: &Path) -> PrivateApt {
        PrivateApt {
            root: cache.join("apt").join(RELEASE),
            keyring: PathBuf::from("/usr/share/keyrings/debian-archive-keyring.gpg"),
        }
    }

    fn prepare(&self, sources: &[Source]) -> Result<()> {
        for d in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
        ] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let status = self.root.join("state/status");
        if !status.exists() {
            std::fs::write(&status, b"")
                .with_context(|| format!("creating {}", status.display()))?;
        }
        if !self.keyring.exists() {
            bail!(
                "{} is missing: install Debian's archive keyring \
                 (apt-get install debian-archive-keyring) so apt can verify {RELEASE}",
                self.keyring.display()
            );
        }
        let mut list =
            String::from("# written by defib fetch; the host's apt sources are not used\n");
        for s in sources {
            list.push_str(&format!(
                "deb [signed-by={}] {} {} main\n",
                self.keyring.display(),
                s.uri,
                s.suite
            ));
        }
        let p = self.root.join("etc/sources.list");
        std::fs::write(&p, list).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    fn apt(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        let r = &self.root;
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for o in [
            opt("Dir::State", &r.join("state")),
            opt("Dir::State::status", &r.join("state/status")),
            opt("Dir::Cache", &r.join("cache")),
            opt("Dir::Etc::SourceList", &r.join("etc/sources.list")),
            opt("Dir::Etc::SourceParts", &r.join("etc/sources.list.d")),
            opt("Dir::Etc::Preferences", &r.join("etc/preferences")),
            opt("Dir::Etc::PreferencesParts", &r.join("etc/preferences.d")),
            "Debug::NoLocking=1".into(),
            "APT::Architecture=amd64".into(),
            "APT::Architectures::=amd64".into(),
            "Acquire::Languages=none".into(),
            // Only root has a sandbox user to drop to; files land in our
            // own cache, which `_apt` may not be able to write.
            "APT::Sandbox::User=root".into(),
        ] {
            c.arg("-o").arg(o);
        }
        c
    }

    fn run(&self, mut c: Command, what: &str) -> Result<()> {
        let out = c
            .output()
            .with_context(|| format!("running {what} (is apt installed?)"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `apt-get update` on the private state.
    pub fn update(&self, sources: &[Source]) -> Result<()> {
        self.prepare(sources)?;
        let mut c = self.apt("apt-get");
        c.args(["-q", "update"]);
        self.run(c, "apt-get update (private state)")
    }

    /// `apt-get download` into `dest`.
    pub fn download(&self, dest: &Path, packages: &[String]) -> Result<()> {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut c = self.apt("apt-get");
        c.current_dir(dest).args(["-q", "download"]).args(packages);
        self.run(c, &format!("apt-get download {}", packages.join(" ")))
    }
}

/// Fetches [`PACKAGES`] (and the kernel behind the metapackage) into `dest`,
/// removing other versions of the same packages there so a build never has
/// to choose. Returns what is now in `dest`.
pub fn fetch(
    cache: &Path,
    dest: &Path,
    sources: &[Source],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Fetched>> {
    if sources.is_empty() {
        bail!(
            "no Debian mirror found in the host's apt sources; pass --mirror URL \
             (and --security-mirror URL) naming a Debian mirror, or set DEFIB_MIRROR"
        );
    }
    let apt = PrivateApt::new(cache);
    log(&format!(
        "updating the private apt state for {RELEASE} ({})",
        sources
            .iter()
            .map(|s| format!("{} {}", s.uri, s.suite))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    apt.update(sources)?;
    // Download into a fresh staging folder, then move into place: a failed
    // fetch leaves the previous set intact.
    let staging = dest.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let pk: Vec<String> = PACKAGES.iter().map(|s| s.to_string()).collect();
    log(&format!("downloading {}", pk.join(" ")));
    apt.download(&staging, &pk)?;
    let meta = find_package(&staging, "linux-image-amd64")?;
    let kernel_pkgs: Vec<String> = meta
        .depends()
        .into_iter()
        .filter(|d| d.starts_with("linux-image-"))
        .collect();
    if kernel_pkgs.len() != 1 {
        bail!(
            "linux-image-amd64 {} depends on {:?}; expected exactly one kernel image",
            meta.version(),
            kernel_pkgs
        );
    }
    log(&format!("downloading {}", kernel_pkgs[0]));
    apt.download(&staging, &kernel_pkgs)?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    // Replace the old set with the new one.
    for e in std::fs::read_dir(dest).with_context(|| format!("reading {}", dest.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for e in
        std::fs::read_dir(&staging).with_context(|| format!("reading {}", staging.display()))?
    {
        let p = e?.path();
        let to = dest.join(p.file_name().context("file name")?);
        std::fs::rename(&p, &to)
            .with_context(|| format!("moving {} to {}", p.display(), to.display()))?;
    }
    std::fs::remove_dir_all(&staging).ok();
    describe(dest)
}

/// Lists the packages in a folder of `.deb` files.
pub fn describe(dir: &Path) -> Result<Vec<Fetched>> {
    let debs = crate::deb::scan_dir(dir)?;
    Ok(debs
        .values()
        .map(|d| Fetched {
            package: d.package().to_string(),
            version: d.version().to_string(),
            file: d
                .path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
            sha256: d.sha256.clone(),
        })
        .collect())
}

fn find_package(dir: &Path, name: &str) -> Result<Deb> {
    let debs = crate::deb::scan_dir(dir)?;
    debs.get(name).cloned().with_context(|| {
        format!(
            "apt-get download did not produce {name} in {}",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sources_map_to_our_release() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/debian.sources"),
            "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\n\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
             Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "deb [arch=amd64 signed-by=/x] http://old.example/debian bullseye main # x\n\
             deb http://ppa.example/ubuntu jammy main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list.d/other.list"),
            "deb http://vendor.example/apt nodistro main\n",
        )
        .unwrap();
        let s = sources_from_host(d.path()).unwrap();
        let got: Vec<_> = s.iter().map(|s| format!("{} {}", s.uri, s.suite)).collect();
        assert_eq!(
            got,
            [
                "http://old.example/debian trixie",
                "http://mirror.example/debian trixie",
                "http://mirror.example/debian trixie-updates",
                "http://sec.example/debian-security trixie-security",
            ]
        );
    }

    #[test]
    fn no_debian_source_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let err = fetch(d.path(), &d.path().join("debs"), &[], &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mirror"), "{err}");
    }
}
