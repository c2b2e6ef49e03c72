//! `defib pxe`: the same kernel, initramfs and payloads as the USB image,
//! laid out as a network boot tree (a folder or a zip) for dnsmasq's TFTP
//! and any web server.
//!
//! Boot paths the tree serves:
//! - BIOS PXE ROM → `undionly.kpxe` (iPXE) → `boot.ipxe` → kernel;
//! - UEFI, Secure Boot on or off → `shimx64.efi` (Microsoft-signed) →
//!   `grubx64.efi` (Debian's signed netboot GRUB) → `grub/grub.cfg` → kernel;
//! - UEFI without Secure Boot may instead chain `snponly.efi` (iPXE);
//! - `boot-http.ipxe` fetches the big files over HTTP from `--http-base`.
//!
//! Not a DHCP or TFTP server: the tree carries example dnsmasq configs.
//! Every byte follows from the staged build and the options; zip entries
//! are sorted with a fixed time.

use crate::bootmenu::{self, hotkey, MediumHint, TIMEOUT};
use crate::build::{stage, BuildConfig, Staged};
use crate::manifest::{FileEntry, Part, Taken};
use crate::sha256_hex;
use anyhow::{bail, Context, Result};
use defib_rescue::layout;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tree: path -> bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Options beyond the build's own.
#[derive(Debug, Clone, Default)]
pub struct PxeOptions {
    /// `http://HOST[:PORT]/path/` serving the tree, for `boot-http.ipxe`.
    pub http_base: Option<String>,
    /// Extra kernel arguments for every entry (e.g. `defib.report=…`).
    pub append: Option<String>,
}

/// What `defib pxe` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PxeSummary {
    pub out: PathBuf,
    pub build_id: String,
    pub files: Vec<FileEntry>,
}

const GRUBNET: &str = "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
const UNDIONLY: &str = "usr/lib/ipxe/undionly.kpxe";
const SNPONLY: &str = "usr/lib/ipxe/snponly.efi";

/// Checks `--http-base`: an `http://` URL ending in `/` (iPXE appends the
/// file names), without characters that would break the script.
pub fn check_http_base(url: &str) -> Result<String> {
    let ok_scheme = url.starts_with("http://") || url.starts_with("https://");
    if !ok_scheme {
        bail!("--http-base {url:?}: give an http:// URL such as http://10.0.0.5/defib/");
    }
    if url.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '$' | '\\')) {
        bail!("--http-base {url:?}: no spaces, quotes, $ or \\ in the URL");
    }
    let mut u = url.to_string();
    if !u.ends_with('/') {
        u.push('/');
    }
    Ok(u)
}

/// Checks `--append`: kernel words only, nothing a boot script would read
/// as syntax.
pub fn check_append(a: &str) -> Result<String> {
    if a.contains(['\n', '\r', '"', '\'', '$', '\\', ';', '{', '}']) {
        bail!("--append {a:?}: quotes, $, \\, ; and braces are not allowed");
    }
    Ok(a.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `--keys-url`: checked the way the rescue reads `defib.keys=` (http or
/// https with its pin in the `--append` words, an IPv4 address: the
/// rescue has no resolver) and added to the admin's `--append` words.
pub fn append_keys_url(append: Option<String>, keys_url: Option<&str>) -> Result<Option<String>> {
    let Some(url) = keys_url else {
        return Ok(append);
    };
    let parsed = defib_rescue::bootargs::KeysUrl::parse(url)
        .map_err(|e| anyhow::anyhow!("--keys-url {e}"))?;
    let pinned = append.as_deref().is_some_and(|a| {
        a.split_whitespace()
            .any(|w| w.starts_with(&format!("{}=", defib_rescue::layout::keys::TLS)))
    });
    if parsed.tls && !pinned {
        bail!(
            "--keys-url {url}: an https:// URL needs the SHA-256 of that server's certificate \
             on the command line: --append defib.tls=sha256:<hex> (`openssl x509 -in cert.pem \
             -noout -fingerprint -sha256` prints it)"
        );
    }
    let word = format!("{}={url}", defib_rescue::layout::keys::KEYS_URL);
    Ok(Some(match append {
        Some(a) if !a.trim().is_empty() => format!("{a} {word}"),
        _ => word,
    }))
}

/// An entry's command line for a network boot: it says `defib.medium=pxe`
/// (there is no stick to look for), then the loader's network words, then
/// the admin's `--append`.
pub fn net_cmdline(entry: &str, net: &str, append: &str) -> String {
    bootmenu::cmdline([entry, &MediumHint::Pxe.arg(), net, append])
}

/// The iPXE script. `base` is prefixed to the file names: empty for names
/// relative to the script's own URL (TFTP or HTTP), or an HTTP base.
pub fn ipxe_script(staged: &Staged, base: &str, append: &str) -> String {
    let m = &staged.manifest;
    // iPXE expands ${ip}, ${gateway}, ${netmask}, ${mac:hexhyp} from its
    // own DHCP lease; Debian's kernel has no ip= autoconfiguration, so the
    // rescue applies this itself (client::gateway:netmask, nfsroot.rst).
    let net = "ip=${ip}::${gateway}:${netmask} BOOTIF=01-${mac:hexhyp}";
    let mut s = format!(
        "#!ipxe\n\
         # defib PXE menu, build {}{}\n\
         # The same three entries as the USB stick's GRUB menu; repair after {TIMEOUT} s.\n\
         isset ${{ip}} || dhcp\n\
         menu defib rescue (build {})\n",
        m.build_id,
        if base.is_empty() {
            String::new()
        } else {
            format!(", big files from {base}")
        },
        m.build_id
    );
    for e in &m.boot_entries {
        s.push_str(&format!(
            "item --key {} {} {}\n",
            hotkey(&e.id),
            e.id,
            e.title
        ));
    }
    s.push_str(&format!(
        "choose --timeout {} --default auto target || set target auto\n\
         goto ${{target}}\n",
        TIMEOUT * 1000
    ));
    for e in &m.boot_entries {
        // initrd= names let a UEFI kernel's stub find the files through
        // iPXE; BIOS kernels ignore them.
        s.push_str(&format!(
            "\n:{id}\n\
             echo Loading defib ({id})...\n\
             kernel {base}vmlinuz {cmd} initrd=initrd.img initrd=payloads.img\n\
             initrd {base}initrd.img\n\
             initrd {base}payloads.img\n\
             boot\n",
            id = e.id,
            cmd = net_cmdline(&e.cmdline, net, append),
        ));
    }
    s
}

/// `grub/grub.cfg` for Debian's signed netboot GRUB (its prefix is
/// `(tftp)/grub`). GRUB 2.12 sets `net_default_ip` and `net_default_mac`
/// after its DHCP but exposes no netmask or gateway, so the rescue gets the
/// address and the boot MAC and runs DHCP itself on that NIC.
pub fn grub_cfg(staged: &Staged, append: &str) -> String {
    let m = &staged.manifest;
    let net = "ip=${net_default_ip} BOOTIF=01-${net_default_mac}";
    let mut s = format!(
        "# defib PXE menu (Secure Boot path), build {}\n\
         set default=0\n\
         set timeout={TIMEOUT}\n\
         set timeout_style=menu\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\n",
        m.build_id
    );
    for e in &m.boot_entries {
        s.push_str(&format!(
            "menuentry 'defib: {}' --hotkey={} --id {} {{\n\
             \techo 'Loading defib ({})...'\n\
             \tlinux (tftp)/vmlinuz {}\n\
             \tinitrd (tftp)/initrd.img (tftp)/payloads.img\n\
             }}\n\n",
            e.title,
            hotkey(&e.id),
            e.id,
            e.id,
            net_cmdline(&e.cmdline, net, append)
        ));
    }
    s.push_str(
        "menuentry 'Reboot' --id reboot {\n\treboot\n}\n\n\
         menuentry 'Power off' --id poweroff {\n\thalt\n}\n",
    );
    s
}

/// dnsmasq beside an existing DHCP server (proxy-DHCP + TFTP).
pub fn dnsmasq_proxy(build_id: &str) -> String {
    format!(
        r#"# dnsmasq as proxy-DHCP + TFTP for defib (build {build_id}).
# Runs BESIDE the site's DHCP server: that server still hands out the
# addresses; dnsmasq only answers PXE clients with what to boot. Edit the
# three marked lines, then: dnsmasq --conf-file=dnsmasq-proxy.conf -d
#
# The chain:
#   BIOS PXE ROM  -> undionly.kpxe (iPXE, over the ROM's own UNDI driver)
#                 -> iPXE asks DHCP again, now marked as iPXE -> boot.ipxe
#   UEFI PXE      -> shimx64.efi (Microsoft-signed) -> grubx64.efi (Debian's
#                    signed netboot GRUB) -> grub/grub.cfg -> signed kernel.
# Why shim for UEFI: iPXE's snponly.efi is not signed by Microsoft, so a PC
# with Secure Boot on (the default on every PC since 2012) refuses it; shim
# and GRUB boot with Secure Boot on or off, so one answer serves all UEFI
# clients and Secure Boot stays on. To use iPXE on UEFI fleets that have
# Secure Boot off (HTTP for the big files, the iPXE menu), swap the two
# X86-64_EFI lines below for the commented ones.

port=0                          # no DNS
interface=eth0                  # EDIT: the interface facing the PCs
dhcp-range=192.168.1.0,proxy    # EDIT: the subnet the PCs are on
enable-tftp
tftp-root=/srv/defib            # EDIT: where this folder lives
log-dhcp

# iPXE identifies itself with DHCP option 175 (and user class "iPXE").
dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE

# dnsmasq appends ".0" only to a boot file name without a dot.
pxe-prompt="defib network rescue",1
pxe-service=tag:!ipxe,x86PC,"defib rescue (BIOS)",undionly.kpxe
pxe-service=tag:ipxe,x86PC,"defib rescue",boot.ipxe
pxe-service=tag:!ipxe,X86-64_EFI,"defib rescue (UEFI, Secure Boot)",shimx64.efi
pxe-service=tag:ipxe,X86-64_EFI,"defib rescue",boot.ipxe
#pxe-service=tag:!ipxe,X86-64_EFI,"defib rescue (UEFI, iPXE)",snponly.efi
"#
    )
}

/// dnsmasq as the DHCP server of an isolated bench network.
pub fn dnsmasq_dhcp(build_id: &str) -> String {
    format!(
        r#"# dnsmasq as the ONLY DHCP server + TFTP for defib (build {build_id}),
# for an isolated bench network with no other DHCP server. Never run this on
# a network that has one: two DHCP servers fight. Edit the marked lines, then:
#   dnsmasq --conf-file=dnsmasq-dhcp.conf -d
# The chain is the one in dnsmasq-proxy.conf: BIOS -> undionly.kpxe ->
# boot.ipxe; UEFI -> shimx64.efi -> grubx64.efi -> grub/grub.cfg (signed,
# so Secure Boot may stay on).

port=0                                              # no DNS
interface=eth1                                      # EDIT: the bench interface
dhcp-range=192.168.77.100,192.168.77.199,255.255.255.0,1h   # EDIT
dhcp-option=option:router,192.168.77.1              # EDIT: or remove
enable-tftp
tftp-root=/srv/defib                                # EDIT: this folder
log-dhcp

dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9

dhcp-boot=tag:ipxe,boot.ipxe
dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
"#
    )
}

/// An nginx example: the tree over HTTP and a WebDAV PUT receiver.
pub fn nginx_conf() -> String {
    r#"# nginx: serve the defib tree over HTTP and receive reports by PUT.
# Copy into /etc/nginx/conf.d/defib.conf, adjust the paths, reload nginx.
# Reports arrive as PUT /defib-reports/<machine>-<run-id>.json; the rescue
# only speaks plain http:// to an IP address (no TLS, no DNS).
server {
    listen 80;

    # The tree written by `defib pxe --out /srv/defib`.
    location /defib/ {
        alias /srv/defib/;
        autoindex off;
    }

    # One JSON file per run; nothing but PUT is accepted.
    location /defib-reports/ {
        alias /srv/defib-reports/;     # owned by nginx's user
        dav_methods PUT;
        create_full_put_path off;
        dav_access user:rw group:r;
        client_max_body_size 8m;
        limit_except PUT { deny all; }
    }
}
"#
    .to_string()
}

fn readme(build_id: &str, http_base: Option<&str>) -> String {
    let http = match http_base {
        Some(b) => format!(
            "boot-http.ipxe fetches vmlinuz, initrd.img and payloads.img from\n\
             {b} (given at build time with --http-base). Serve this folder\n\
             there with any web server; point iPXE clients at boot-http.ipxe\n\
             (dhcp-boot=tag:ipxe,boot-http.ipxe in the dnsmasq configs) so\n\
             TFTP carries only the small loaders.\n"
        ),
        None => "Build with --http-base http://SERVER/defib/ to get boot-http.ipxe,\n\
                 which fetches the big files over HTTP instead of TFTP.\n"
            .to_string(),
    };
    format!(
        "defib network rescue tree, build {build_id}\n\
         ==========================================\n\n\
         The kernel, initramfs and payloads are those of the USB image of the\n\
         same build. Full walk-through: docs/pxe.md in the defib sources.\n\n\
         vmlinuz, initrd.img, payloads.img   kernel and initramfs segments\n\
         manifest.json                       what went in, with SHA-256s\n\
         boot.ipxe                           iPXE menu, files relative to it\n\
         undionly.kpxe                       iPXE for BIOS PXE ROMs\n\
         snponly.efi                         iPXE for UEFI (Secure Boot off)\n\
         shimx64.efi, bootx64.efi            Microsoft-signed shim (UEFI)\n\
         grubx64.efi, grub/grub.cfg          Debian's signed netboot GRUB\n\
         dnsmasq-proxy.conf                  beside an existing DHCP server\n\
         dnsmasq-dhcp.conf                   isolated bench (dnsmasq is DHCP)\n\
         http/nginx.conf                     HTTP serving + report PUT receiver\n\n\
         HTTP: the same files work from any web server (nginx, Apache,\n\
         python3 -m http.server); the layout is this folder as it is.\n\
         {http}\n\
         Reports: add --append 'defib.report=http://IP[:PORT]/path/' when\n\
         building; each machine PUTs its report.json there (IP address, not\n\
         a name; http only). The report also stays on the victim disk.\n\n\
         BitLocker keys: build with --keys-url http://IP/keys/ and serve one\n\
         file per protector GUID (lowercase, no braces) holding its recovery\n\
         password; add defib.keywait=0 to --append so no PC waits at the key\n\
         prompt. See docs/bitlocker.md for the trust model.\n"
    )
}

/// All files of the tree, by path.
pub fn tree(staged: &Staged, debs_dir: &Path, opts: &PxeOptions) -> Result<(Files, Vec<Part>)> {
    let debs = crate::deb::scan_dir(debs_dir)?;
    let need = |n: &str| {
        debs.get(n).with_context(|| {
            format!(
                "{n} is not among the .deb files in {}; run `defib fetch`",
                debs_dir.display()
            )
        })
    };
    let grub_deb = need("grub-efi-amd64-signed")?;
    let ipxe_deb = need("ipxe")?;
    let grubnet = grub_deb.file(GRUBNET)?;
    let undionly = ipxe_deb.file(UNDIONLY)?;
    let snponly = ipxe_deb.file(SNPONLY)?;
    let append = effective_append(staged, opts)?;
    let id = staged.manifest.build_id.clone();
    let mut f: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    f.insert("vmlinuz".into(), staged.kernel.clone());
    f.insert("initrd.img".into(), staged.initramfs.clone());
    f.insert("payloads.img".into(), staged.payloads.clone());
    f.insert("shimx64.efi".into(), staged.shim.clone());
    f.insert("bootx64.efi".into(), staged.shim.clone());
    f.insert("grubx64.efi".into(), grubnet);
    f.insert("undionly.kpxe".into(), undionly);
    f.insert("snponly.efi".into(), snponly);
    f.insert(
        "boot.ipxe".into(),
        ipxe_script(staged, "", &append).into_bytes(),
    );
    let base = match &opts.http_base {
        Some(b) => Some(check_http_base(b)?),
        None => None,
    };
    if let Some(b) = &base {
        f.insert(
            "boot-http.ipxe".into(),
            ipxe_script(staged, b, &append).into_bytes(),
        );
    }
    f.insert(
        "grub/grub.cfg".into(),
        grub_cfg(staged, &append).into_bytes(),
    );
    f.insert("dnsmasq-proxy.conf".into(), dnsmasq_proxy(&id).into_bytes());
    f.insert("dnsmasq-dhcp.conf".into(), dnsmasq_dhcp(&id).into_bytes());
    f.insert("http/nginx.conf".into(), nginx_conf().into_bytes());
    if let Some(ix) = &staged.store.index {
        f.insert(
            format!(
                "{}/{}",
                layout::PXE_STORE_DIR,
                defib_rescue::store::INDEX_FILE
            ),
            ix.clone(),
        );
    }
    f.insert(
        "README.txt".into(),
        readme(&id, base.as_deref()).into_bytes(),
    );
    let take = |d: &crate::deb::Deb, taken: &[(&str, &str)]| Part {
        package: d.package().into(),
        version: d.version().into(),
        deb_sha256: d.sha256.clone(),
        taken: taken
            .iter()
            .map(|(a, b)| Taken {
                from: a.to_string(),
                to: b.to_string(),
            })
            .collect(),
    };
    let parts = vec![
        take(grub_deb, &[(GRUBNET, "grubx64.efi")]),
        take(
            ipxe_deb,
            &[(UNDIONLY, "undionly.kpxe"), (SNPONLY, "snponly.efi")],
        ),
    ];
    Ok((f, parts))
}

/// Builds the tree and writes it to a folder, or a zip if `out` ends in
/// `.zip`.
pub fn build_pxe(
    cfg: &BuildConfig,
    out: &Path,
    opts: &PxeOptions,
    log: &mut dyn FnMut(&str),
) -> Result<PxeSummary> {
    let staged = stage(cfg, log)?;
    let (mut files, parts) = tree(&staged, &cfg.debs, opts)?;
    let mut manifest = staged.manifest.clone();
    // The USB image's parts, re-pointed at this tree's names.
    for p in manifest.parts.iter_mut() {
        for t in p.taken.iter_mut() {
            t.to = match t.to.as_str() {
                "EFI/BOOT/BOOTX64.EFI" => "shimx64.efi, bootx64.efi".into(),
                bootmenu::KERNEL => "vmlinuz".into(),
                bootmenu::INITRD => "initrd.img".into(),
                other => other.to_string(),
            };
        }
    }
    // The USB image's GRUB is not in the tree; the netboot GRUB is.
    manifest
        .parts
        .retain(|p| p.package != "grub-efi-amd64-signed");
    manifest.parts.extend(parts);
    manifest.parts.sort_by(|a, b| a.package.cmp(&b.package));
    let append = effective_append(&staged, opts)?;
    for e in manifest.boot_entries.iter_mut() {
        e.cmdline = net_cmdline(&e.cmdline, "", &append);
    }
    if !staged.store.objects.is_empty() && !append.contains("defib.store=") {
        log(&format!(
            "warning: the store's {} objects are in {}/ but no defib.store= URL is set: \
             give --http-base http://IP/... (an IP address) or \
             --append defib.store=http://IP[:PORT]/path/{}/, or restores from the store will \
             report the object missing",
            staged.store.objects.len(),
            layout::PXE_STORE_DIR,
            layout::PXE_STORE_DIR
        ));
    }
    let from_disk: BTreeMap<String, PathBuf> = staged
        .store
        .medium_files(layout::PXE_STORE_DIR)
        .into_iter()
        .collect();
    manifest.files = files
        .iter()
        .map(|(p, d)| FileEntry {
            path: p.clone(),
            size: d.len() as u64,
            sha256: sha256_hex(d),
        })
        .collect();
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest)?,
    );
    let is_zip = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if is_zip {
        log(&format!("writing {}", out.display()));
        write_zip_with(&files, &from_disk, out)?;
    } else {
        log(&format!("writing {}/", out.display()));
        write_dir(&files, &from_disk, out)?;
    }
    Ok(PxeSummary {
        out: out.to_path_buf(),
        build_id: manifest.build_id.clone(),
        files: manifest.files,
    })
}

/// The kernel arguments every network entry gets: `--append`, plus
/// `defib.store=<http-base>store/` when the build has store objects, the
/// tree is served from an `--http-base` whose host is an IPv4 address (the
/// rescue cannot resolve names) and `--append` does not set its own.
pub fn effective_append(staged: &Staged, opts: &PxeOptions) -> Result<String> {
    let mut append = match &opts.append {
        Some(a) => check_append(a)?,
        None => String::new(),
    };
    let base = opts.http_base.as_deref().map(check_http_base).transpose()?;
    if let Some(b) = base {
        let host = b
            .strip_prefix("http://")
            .and_then(|r| r.split(['/', ':']).next())
            .unwrap_or("");
        let literal = host.parse::<std::net::Ipv4Addr>().is_ok();
        if literal && !staged.store.objects.is_empty() && !append.contains("defib.store=") {
            let word = format!("defib.store={b}{}/", layout::PXE_STORE_DIR);
            append = if append.is_empty() {
                word
            } else {
                format!("{append} {word}")
            };
        }
    }
    Ok(append)
}

/// Where a tree file's bytes come from.
enum Src<'a> {
    Bytes(&'a [u8]),
    Disk(&'a Path),
}

fn sources<'a>(
    files: &'a BTreeMap<String, Vec<u8>>,
    from_disk: &'a BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<&'a str, Src<'a>>> {
    let mut all: BTreeMap<&str, Src> = files
        .iter()
        .map(|(p, d)| (p.as_str(), Src::Bytes(d)))
        .collect();
    for (p, d) in from_disk {
        if all.insert(p.as_str(), Src::Disk(d)).is_some() {
            bail!("{p} is in the PXE tree twice");
        }
    }
    Ok(all)
}

fn write_dir(
    files: &BTreeMap<String, Vec<u8>>,
    from_disk: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> Result<()> {
    for (p, src) in sources(files, from_disk)? {
        let dest = out.join(p);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match src {
            Src::Bytes(d) => {
                std::fs::write(&dest, d).with_context(|| format!("writing {}", dest.display()))?
            }
            Src::Disk(s) => {
                std::fs::copy(s, &dest)
                    .with_context(|| format!("copying {} to {}", s.display(), dest.display()))?;
            }
        }
    }
    Ok(())
}

/// A zip with entries in path order, all stamped 1980-01-01 00:00 (the
/// zip epoch), mode 0644; compressed files are stored.
pub fn write_zip(files: &BTreeMap<String, Vec<u8>>, out: &Path) -> Result<()> {
    write_zip_with(files, &BTreeMap::new(), out)
}

/// [`write_zip`] with files streamed from the build host too (the store's
/// objects), in one path order.
pub fn write_zip_with(
    files: &BTreeMap<String, Vec<u8>>,
    from_disk: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> Result<()> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let tmp = out.with_extension("zip.partial");
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut z = zip::ZipWriter::new(std::io::BufWriter::new(f));
    for (p, src) in sources(files, from_disk)? {
        let len = match &src {
            Src::Bytes(d) => d.len() as u64,
            Src::Disk(s) => std::fs::metadata(s)
                .with_context(|| format!("reading {}", s.display()))?
                .len(),
        };
        // Store objects are mostly PE files that compress little; stored
        // keeps the zip quick to write and to serve from.
        let stored = [".img", ".efi", ".kpxe"].iter().any(|x| p.ends_with(x))
            || p == "vmlinuz"
            || matches!(src, Src::Disk(_));
        let o = SimpleFileOptions::default()
            .compression_method(if stored {
                zip::CompressionMethod::Stored
            } else {
                zip::CompressionMethod::Deflated
            })
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644)
            .large_file(len >= 0xffff_ffff);
        z.start_file(p, o)
            .with_context(|| format!("zip entry {p}"))?;
        match src {
            Src::Bytes(d) => z.write_all(d).with_context(|| format!("zip entry {p}"))?,
            Src::Disk(s) => {
                let mut f =
                    std::fs::File::open(s).with_context(|| format!("opening {}", s.display()))?;
                std::io::copy(&mut f, &mut z).with_context(|| format!("zip entry {p}"))?;
            }
        }
    }
    let mut w = z.finish().context("finishing the zip")?;
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootmenu::After;
    use crate::manifest::{Manifest, Modules};

    /// The contract, checked from both ends: every kernel command line the
    /// builder writes — USB GRUB and syslinux menus, the iPXE scripts and the
    /// netboot GRUB menu — read back with the rescue's own parser gives the
    /// entry's mode, the build's `--after`, `defib.medium=pxe` on network
    /// paths, `--append`'s report URL, and no warning.
    #[test]
    fn every_generated_kernel_line_parses_with_the_rescues_parser() {
        use defib_rescue::bootargs::{BootArgs, Mode};
        for after in [After::Reboot, After::Poweroff] {
            let mut st = staged();
            st.manifest.boot_entries = bootmenu::entries(after);
            let usb_grub = bootmenu::grub_cfg(&st.manifest.boot_entries, "b");
            let usb_sys = bootmenu::syslinux_cfg(&st.manifest.boot_entries, "b");
            let append = "defib.report=http://10.0.2.2:8/r/";
            let ipxe = ipxe_script(&st, "", append);
            let ipxe_http = ipxe_script(&st, "http://10.0.2.2/defib/", append);
            let net_grub = grub_cfg(&st, append);
            let pick = |text: &str, prefix: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.trim_start().strip_prefix(prefix))
                    .map(|r| r.split_once(' ').map(|x| x.1).unwrap_or("").to_string())
                    .collect()
            };
            let sys: Vec<String> = usb_sys
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("APPEND "))
                .map(str::to_string)
                .collect();
            let cases = [
                (pick(&usb_grub, "linux "), false),
                (sys, false),
                (pick(&ipxe, "kernel "), true),
                (pick(&ipxe_http, "kernel "), true),
                (pick(&net_grub, "linux "), true),
            ];
            for (lines, net) in cases {
                let modes: Vec<Mode> = lines
                    .iter()
                    .map(|l| {
                        let a = BootArgs::parse(l);
                        assert!(a.warnings.is_empty(), "{l}: {:?}", a.warnings);
                        assert_eq!(a.after, after, "{l}");
                        assert_eq!(a.consoles.len(), 2, "{l}");
                        if net {
                            assert_eq!(a.medium, Some(MediumHint::Pxe), "{l}");
                            assert_eq!(a.report_url.as_deref(), Some("http://10.0.2.2:8/r/"));
                            assert!(a.ip.is_some() && a.bootif.is_some(), "{l}");
                        } else {
                            assert_eq!(a.medium, None, "{l}");
                        }
                        a.mode
                    })
                    .collect();
                assert_eq!(modes, Mode::ALL, "{lines:?}");
            }
        }
    }

    fn staged() -> Staged {
        Staged {
            kernel: b"kernel".to_vec(),
            initramfs: b"initrd".to_vec(),
            payloads: b"payloads".to_vec(),
            shim: b"shim".to_vec(),
            grub: b"grub".to_vec(),
            store: Default::default(),
            manifest: Manifest {
                schema: 1,
                defib_version: "0.1.0".into(),
                build_id: "0123456789abcdef".into(),
                source_date_epoch: 0,
                kernel_release: "6.12".into(),
                parts: Vec::new(),
                files: Vec::new(),
                modules: Modules {
                    list_version: 2,
                    loaded: Vec::new(),
                    builtin: Vec::new(),
                    absent_optional: Vec::new(),
                },
                rescue: FileEntry {
                    path: "x".into(),
                    size: 0,
                    sha256: String::new(),
                },
                boot_entries: bootmenu::entries(After::Reboot),
                after: "reboot".into(),
            },
        }
    }

    #[test]
    fn ipxe_menu_defaults_to_repair_with_network_args() {
        let s = ipxe_script(&staged(), "", "defib.report=http://10.0.2.2:8/r/");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("choose --timeout 5000 --default auto target"));
        assert!(s.contains("item --key r auto Repair automatically [r]\n"));
        assert!(s.contains("item --key h shell Rescue shell [h]\n"));
        let auto = &s[s.find("\n:auto\n").unwrap()..];
        let kernel = auto.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.starts_with("kernel vmlinuz console=tty0"),
            "{kernel}"
        );
        for w in [
            "defib.mode=auto",
            "defib.medium=pxe",
            "ip=${ip}::${gateway}:${netmask}",
            "BOOTIF=01-${mac:hexhyp}",
            "defib.report=http://10.0.2.2:8/r/",
        ] {
            assert!(kernel.contains(w), "{w} missing: {kernel}");
        }
        assert!(auto.contains("initrd initrd.img\ninitrd payloads.img\nboot\n"));
        let h = ipxe_script(&staged(), "http://10.0.0.5/defib/", "");
        assert!(h.contains("kernel http://10.0.0.5/defib/vmlinuz "));
        assert!(h.contains("initrd http://10.0.0.5/defib/payloads.img\n"));
    }

    #[test]
    fn grub_net_menu_loads_over_tftp() {
        let g = grub_cfg(&staged(), "");
        assert!(g.contains("set default=0\nset timeout=5\n"));
        assert!(g.contains("\tlinux (tftp)/vmlinuz console=tty0"));
        assert!(g.contains("defib.medium=pxe ip=${net_default_ip} BOOTIF=01-${net_default_mac}"));
        assert!(g.contains("\tinitrd (tftp)/initrd.img (tftp)/payloads.img\n"));
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(
            check_http_base("http://10.0.0.5/defib").unwrap(),
            "http://10.0.0.5/defib/"
        );
        assert!(check_http_base("ftp://x/").is_err());
        assert!(check_http_base("http://x/$y/").is_err());
        assert_eq!(check_append(" a=1   b ").unwrap(), "a=1 b");
        // --keys-url joins --append as defib.keys=, checked like the rescue.
        let a = append_keys_url(
            Some("defib.report=http://10.0.0.5/r/".into()),
            Some("http://10.0.0.5/keys/"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            a,
            "defib.report=http://10.0.0.5/r/ defib.keys=http://10.0.0.5/keys/"
        );
        let parsed = defib_rescue::bootargs::BootArgs::parse(&a);
        assert_eq!(parsed.keys_url.unwrap().path, "/keys/");
        assert_eq!(append_keys_url(None, None).unwrap(), None);
        let e = append_keys_url(None, Some("https://10.0.0.5/keys/")).unwrap_err();
        assert!(format!("{e}").contains("--append defib.tls=sha256:"), "{e}");
        let pin = format!("defib.tls=sha256:{}", "0f".repeat(32));
        let a = append_keys_url(Some(pin.clone()), Some("https://10.0.0.5/keys/"))
            .unwrap()
            .unwrap();
        let parsed = defib_rescue::bootargs::BootArgs::parse(&a);
        assert!(parsed.keys_url.unwrap().tls && parsed.tls_pin == Some([0x0f; 32]));
        let e = append_keys_url(None, Some("http://keys.example/")).unwrap_err();
        assert!(format!("{e}").contains("cannot resolve host names"), "{e}");
        assert!(check_append("a\nboot").is_err());
        assert!(check_append("x=${ip}").is_err());
    }

    #[test]
    fn dnsmasq_configs_chain_to_ipxe_and_shim() {
        let p = dnsmasq_proxy("id");
        assert!(p.contains("dhcp-range=192.168.1.0,proxy"));
        assert!(p.contains("pxe-service=tag:!ipxe,x86PC,\"defib rescue (BIOS)\",undionly.kpxe"));
        assert!(p.contains(
            "pxe-service=tag:!ipxe,X86-64_EFI,\"defib rescue (UEFI, Secure Boot)\",shimx64.efi"
        ));
        let d = dnsmasq_dhcp("id");
        assert!(d.contains("dhcp-boot=tag:ipxe,boot.ipxe"));
        assert!(d.contains("dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi"));
    }

    #[test]
    fn zip_is_sorted_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        files.insert("vmlinuz".to_string(), vec![1u8; 100]);
        files.insert("boot.ipxe".to_string(), b"#!ipxe\n".to_vec());
        files.insert("grub/grub.cfg".to_string(), b"set x\n".to_vec());
        let (a, b) = (d.path().join("a.zip"), d.path().join("b.zip"));
        write_zip(&files, &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_zip(&files, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut z = zip::ZipArchive::new(std::fs::File::open(&a).unwrap()).unwrap();
        let names: Vec<String> = (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(names, ["boot.ipxe", "grub/grub.cfg", "vmlinuz"]);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut z.by_name("grub/grub.cfg").unwrap(), &mut s).unwrap();
        assert_eq!(s, "set x\n");
    }
}
