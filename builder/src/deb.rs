//! Reading Debian binary packages (`.deb`) natively.
//!
//! A `.deb` is an `ar(5)` archive holding `debian-binary`, `control.tar.*`
//! and `data.tar.*` (deb(5)); the tar members may be uncompressed or
//! compressed with xz, zstd or gzip. We read the control fields and pull
//! chosen files out of the data tarball.
//!
//! This is not a package manager: no maintainer scripts, no dependency
//! solving, no unpacking to disk. Every `.deb` is treated as untrusted input:
//! member names are checked, sizes are bounded by what the archive really
//! holds, and errors name the file.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// One opened `.deb`: its control fields and where it came from.
#[derive(Debug, Clone)]
pub struct Deb {
    pub path: PathBuf,
    /// Fields of the binary package's `control` file (deb-control(5)),
    /// continuation lines joined with '\n'.
    pub control: BTreeMap<String, String>,
    /// SHA-256 of the whole `.deb` file, lowercase hex.
    pub sha256: String,
}

/// A regular file or symlink taken out of a package's data tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

impl Deb {
    /// Opens a `.deb`, reads its control file and hashes it.
    pub fn open(path: &Path) -> Result<Deb> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = crate::sha256_hex(&bytes);
        let control_tar = ar_member(&bytes, "control.tar")
            .with_context(|| format!("{}: not a Debian package", path.display()))?;
        let mut control = None;
        for_each_tar_entry(control_tar.0, &control_tar.1, |name, member| {
            if name == "control" {
                if let Member::File { data, .. } = member {
                    control = Some(parse_control(&String::from_utf8_lossy(&data)));
                }
            }
            Ok(())
        })
        .with_context(|| format!("{}: reading control.tar", path.display()))?;
        let Some(control) = control else {
            bail!("{}: no control file in control.tar", path.display());
        };
        for key in ["Package", "Version", "Architecture"] {
            if !control.contains_key(key) {
                bail!("{}: control file has no {key} field", path.display());
            }
        }
        Ok(Deb {
            path: path.to_path_buf(),
            control,
            sha256,
        })
    }

    pub fn package(&self) -> &str {
        &self.control["Package"]
    }

    pub fn version(&self) -> &str {
        &self.control["Version"]
    }

    /// The package names in the `Depends` field (alternatives and version
    /// constraints dropped: we only follow a metapackage to its kernel).
    pub fn depends(&self) -> Vec<String> {
        let Some(dep) = self.control.get("Depends") else {
            return Vec::new();
        };
        dep.split(',')
            .filter_map(|d| {
                let first = d.split('|').next()?.trim();
                let name = first.split([' ', '(', ':']).next()?.trim();
                (!name.is_empty()).then(|| name.to_string())
            })
            .collect()
    }

    /// Pulls the data members whose normalised path (no leading `./` or `/`)
    /// satisfies `want` out of `data.tar.*`. Directories are skipped; hard
    /// links are resolved to the file they point at when that came first.
    pub fn extract(&self, mut want: impl FnMut(&str) -> bool) -> Result<BTreeMap<String, Member>> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let (kind, data) = ar_member(&bytes, "data.tar")
            .with_context(|| format!("{}: not a Debian package", self.path.display()))?;
        let mut out = BTreeMap::new();
        for_each_tar_entry(kind, &data, |name, member| {
            if want(name) {
                out.insert(name.to_string(), member);
            }
            Ok(())
        })
        .with_context(|| format!("{}: reading data.tar", self.path.display()))?;
        Ok(out)
    }

    /// Like [`Deb::extract`] for exactly one path; errors when it is absent.
    pub fn file(&self, path: &str) -> Result<Vec<u8>> {
        let mut m = self.extract(|p| p == path)?;
        match m.remove(path) {
            Some(Member::File { data, .. }) => Ok(data),
            Some(Member::Symlink { target }) => bail!(
                "{}: {path} is a symlink to {target}, expected a file",
                self.path.display()
            ),
            None => bail!(
                "{} ({} {}) has no file {path}",
                self.path.display(),
                self.package(),
                self.version()
            ),
        }
    }
}

/// Compression of a tar member, from its ar member name's suffix (deb(5)).
#[derive(Debug, Clone, Copy)]
enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

/// Finds the ar member whose name starts with `prefix` (`control.tar`,
/// `data.tar`) and returns its compression and raw bytes.
/// The most a boot part's data may unpack to.
const MAX_UNPACKED: u64 = 1 << 30;

fn ar_member(bytes: &[u8], prefix: &str) -> Result<(Compression, Vec<u8>)> {
    let mut ar = ar::Archive::new(bytes);
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.context("reading the ar archive")?;
        let name = String::from_utf8_lossy(entry.header().identifier()).to_string();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let kind = match rest {
            "" => Compression::None,
            ".xz" => Compression::Xz,
            ".zst" => Compression::Zstd,
            ".gz" => Compression::Gzip,
            other => bail!("member {name}: unsupported compression {other:?}"),
        };
        // The header's size is the archive's word, not a fact: the member
        // cannot be longer than the archive holding it.
        let mut raw = Vec::with_capacity((entry.header().size() as usize).min(bytes.len()));
        entry
            .read_to_end(&mut raw)
            .with_context(|| format!("reading ar member {name}"))?;
        return Ok((kind, raw));
    }
    bail!("no {prefix}.* member")
}

/// Walks a (possibly compressed) tarball, calling `f` with each regular file
/// or symlink under its normalised name.
fn for_each_tar_entry(
    kind: Compression,
    raw: &[u8],
    mut f: impl FnMut(&str, Member) -> Result<()>,
) -> Result<()> {
    let reader: Box<dyn Read + '_> = match kind {
        Compression::None => Box::new(raw),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw).context("zstd")?),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(raw)),
    };
    let mut tar = tar::Archive::new(BufReader::with_capacity(1 << 20, reader));
    let mut seen: BTreeMap<String, Member> = BTreeMap::new();
    let mut unpacked = 0u64;
    for entry in tar.entries().context("reading tar entries")? {
        let mut entry = entry.context("reading a tar entry")?;
        let raw_name = entry.path_bytes().into_owned();
        let Some(name) = normalise(&raw_name) else {
            bail!(
                "refusing tar member with unsafe path {:?}",
                String::from_utf8_lossy(&raw_name)
            );
        };
        if name.is_empty() {
            continue;
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let etype = header.entry_type();
        let member = if etype.is_file() {
            // A tar header's size is a claim: what is reserved is capped,
            // and what the package may unpack to in all is bounded (the
            // kernel package, the largest boot part, unpacks to ~100 MiB).
            unpacked = unpacked.saturating_add(entry.size());
            if unpacked > MAX_UNPACKED {
                bail!(
                    "{name}: the package unpacks to more than {} MiB; not a Debian boot part",
                    MAX_UNPACKED >> 20
                );
            }
            let mut data = Vec::with_capacity((entry.size() as usize).min(64 << 20));
            entry
                .read_to_end(&mut data)
                .with_context(|| format!("reading {name}"))?;
            Member::File { mode, data }
        } else if etype.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).to_string())
                .unwrap_or_default();
            Member::Symlink { target }
        } else if etype.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default();
            match normalise(&target).and_then(|t| seen.get(&t).cloned()) {
                Some(m) => m,
                None => continue,
            }
        } else {
            continue;
        };
        // Hard links may refer back to any earlier member; keep files only
        // when they are small enough that the copy is cheap.
        if let Member::File { data, .. } = &member {
            if data.len() < (1 << 20) {
                seen.insert(name.clone(), member.clone());
            }
        }
        f(&name, member)?;
    }
    Ok(())
}

/// `./usr/lib/x` -> `usr/lib/x`; `None` for names that climb (`..`) or
/// carry NUL bytes.
fn normalise(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    if s.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for comp in s.split('/') {
        match comp {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Parses deb-control(5) stanza text into fields.
pub fn parse_control(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                if let Some(v) = fields.get_mut(k) {
                    let v: &mut String = v;
                    v.push('\n');
                    v.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    fields
}

/// Opens every `.deb` in `dir`, keyed by package name. Two versions of one
/// package are an error: the build must never pick one silently.
pub fn scan_dir(dir: &Path) -> Result<BTreeMap<String, Deb>> {
    let mut out: BTreeMap<String, Deb> = BTreeMap::new();
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    paths.sort();
    for p in paths {
        let deb = Deb::open(&p)?;
        if let Some(prev) = out.get(deb.package()) {
            bail!(
                "{}: two versions of {}: {} and {}; remove the one you do not want",
                dir.display(),
                deb.package(),
                prev.path.display(),
                deb.path.display()
            );
        }
        out.insert(deb.package().to_string(), deb);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal .deb in memory: ar with debian-binary, control.tar.xz
    /// and data.tar.zst holding `files`.
    pub fn make_deb(control: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
        fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_cksum();
                b.append_data(&mut h, name, *data).unwrap();
            }
            b.into_inner().unwrap()
        }
        let control_tar = tar_of(&[("./control", control.as_bytes())]);
        let mut cx = Vec::new();
        {
            let mut enc = liblzma::write::XzEncoder::new(&mut cx, 6);
            std::io::Write::write_all(&mut enc, &control_tar).unwrap();
            enc.finish().unwrap();
        }
        let data_zst = zstd::encode_all(&tar_of(files)[..], 3).unwrap();
        let mut out = Vec::new();
        {
            let mut ar = ar::Builder::new(&mut out);
            for (name, data) in [
                ("debian-binary", &b"2.0\n"[..]),
                ("control.tar.xz", &cx[..]),
                ("data.tar.zst", &data_zst[..]),
            ] {
                let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
                ar.append(&h, data).unwrap();
            }
        }
        out
    }

    #[test]
    fn reads_control_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        let deb = make_deb(
            "Package: linux-image-amd64\nVersion: 1.0\nArchitecture: amd64\nDepends: linux-image-6.12.1+deb13-amd64 (= 6.12.1-1), foo | bar\nDescription: x\n more\n",
            &[("./boot/vmlinuz", b"kernel"), ("./usr/share/doc/x", b"doc")],
        );
        std::fs::write(&p, deb).unwrap();
        let d = Deb::open(&p).unwrap();
        assert_eq!(d.package(), "linux-image-amd64");
        assert_eq!(d.depends(), vec!["linux-image-6.12.1+deb13-amd64", "foo"]);
        assert_eq!(d.control["Description"], "x\nmore");
        assert_eq!(d.file("boot/vmlinuz").unwrap(), b"kernel");
        let err = d.file("boot/missing").unwrap_err().to_string();
        assert!(err.contains("has no file boot/missing"), "{err}");
    }

    #[test]
    fn refuses_path_traversal_in_data() {
        // The tar crate refuses to write `..`, so patch the name in place.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("evil.deb");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_old_mut().name[..12].copy_from_slice(b"../etc/pass\0");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let ok = make_deb("Package: a\nVersion: 1\nArchitecture: all\n", &[]);
        // Rebuild with the hostile data tar (uncompressed member).
        let mut ar_in = ar::Archive::new(&ok[..]);
        let mut out = Vec::new();
        {
            let mut ar_out = ar::Builder::new(&mut out);
            while let Some(e) = ar_in.next_entry() {
                let mut e = e.unwrap();
                let name = e.header().identifier().to_vec();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                if name.starts_with(b"data.tar") {
                    let h = ar::Header::new(b"data.tar".to_vec(), data.len() as u64);
                    ar_out.append(&h, &data[..]).unwrap();
                } else {
                    let h = ar::Header::new(name, body.len() as u64);
                    ar_out.append(&h, &body[..]).unwrap();
                }
            }
        }
        std::fs::write(&p, out).unwrap();
        let d = Deb::open(&p).unwrap();
        let err = format!("{:#}", d.extract(|_| true).unwrap_err());
        assert!(err.contains("unsafe path"), "{err}");
    }

    #[test]
    fn not_a_deb_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.deb");
        std::fs::write(&p, b"this is not an ar archive").unwrap();
        let err = format!("{:#}", Deb::open(&p).unwrap_err());
        assert!(err.contains("not a Debian package"), "{err}");
    }

    #[test]
    fn two_versions_in_a_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["1", "2"] {
            let deb = make_deb(
                &format!("Package: a\nVersion: {v}\nArchitecture: all\n"),
                &[],
            );
            std::fs::write(dir.path().join(format!("a_{v}.deb")), deb).unwrap();
        }
        let err = scan_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("two versions of a"), "{err}");
    }
}

#[cfg(test)]
mod size_claims {
    /// An ar member header that claims 4 GB (a fuzzer's find: the claim
    /// was reserved up front and the process ran out of memory) is read
    /// as what the archive holds, and refused as a package.
    #[test]
    fn a_member_claiming_gigabytes_reserves_only_what_is_there() {
        let input = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/regressions/deb/oom-69e0079109edd5344fdbb96223ccc33eaf8a96a4"),
        )
        .unwrap();
        let (_, raw) = super::ar_member(&input, "control.tar").unwrap();
        assert!(raw.capacity() <= input.len(), "{}", raw.capacity());
        assert!(crate::fuzzing::deb(&input).is_err());
    }
}
