//! `defib inspect`: what is on a defib image or a used stick — the
//! manifest it was built with and the reports the rescue left under
//! `\reports\` — or on a defib ISO (the manifest and its store; a CD has
//! no reports).
//!
//! Read-only: the image or device is opened for reading only. A used
//! stick is input from the field: one unreadable or oversized report is
//! an error on that report, never on the whole listing.

use crate::image::UsbImage;
use crate::manifest::Manifest;
use anyhow::{Context, Result};
use defib_rescue::layout;
use serde::Serialize;
use std::path::Path;

/// No report the rescue writes comes near this; a bigger file under
/// `\reports\` is not read (its size comes from the FAT directory entry,
/// so nothing is allocated for it).
pub const MAX_REPORT: u64 = 4 << 20;

/// One report file found on the medium.
#[derive(Debug, Clone, Serialize)]
pub struct ReportFile {
    pub name: String,
    pub size: u64,
    /// The report itself; unparseable files carry `null` and an error.
    pub report: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub manifest: Manifest,
    pub reports: Vec<ReportFile>,
}

/// Whether `path` holds an ISO 9660 image: the primary volume
/// descriptor's standard identifier `CD001` at byte 1 of sector 16
/// (2048-byte sectors), ECMA-119 § 8.1.
pub fn is_iso(path: &Path) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut id = [0u8; 6];
    if f.seek(SeekFrom::Start(16 * 2048)).is_err() || f.read_exact(&mut id).is_err() {
        return Ok(false);
    }
    Ok(&id[1..] == b"CD001")
}

/// The largest file read out of an ISO: far above any manifest, index or
/// system file in the store.
const MAX_ISO_FILE: u64 = 512 << 20;

/// A defib ISO, read through xorriso (the tool that wrote it, and one the
/// package depends on): files are extracted one at a time into a scratch
/// folder, size-capped.
pub struct IsoImage {
    path: std::path::PathBuf,
}

impl IsoImage {
    pub fn open(path: &Path) -> Result<IsoImage> {
        if !is_iso(path)? {
            anyhow::bail!("{}: not an ISO 9660 image", path.display());
        }
        Ok(IsoImage {
            path: path.to_path_buf(),
        })
    }

    /// The bytes of `inner` (a path in the ISO tree, `/` separated); an
    /// error when it is not there.
    pub fn read_file(&self, inner: &str) -> Result<Vec<u8>> {
        let tmp = tempfile::tempdir().context("creating a scratch folder")?;
        let out = tmp.path().join("f");
        let inner = format!("/{}", inner.trim_start_matches('/'));
        let o = std::process::Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&self.path)
            .args(["-extract", &inner])
            .arg(&out)
            .output()
            .context("running xorriso (install the xorriso package)")?;
        if !o.status.success() || !out.is_file() {
            anyhow::bail!("{}: no {inner} in the ISO", self.path.display());
        }
        let meta = std::fs::metadata(&out)?;
        if meta.len() > MAX_ISO_FILE {
            anyhow::bail!(
                "{}: {inner} is {} bytes; not read",
                self.path.display(),
                meta.len()
            );
        }
        std::fs::read(&out).with_context(|| format!("reading {inner} from {}", self.path.display()))
    }
}

/// The manifest of a defib ISO (no reports: a CD is read-only).
pub fn inspect_iso(iso: &IsoImage) -> Result<Inspection> {
    let raw = iso.read_file(layout::MANIFEST).with_context(|| {
        format!(
            "{}: no /defib/manifest.json — is this a defib ISO?",
            iso.path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "{}: /defib/manifest.json is not a defib manifest",
            iso.path.display()
        )
    })?;
    Ok(Inspection {
        manifest,
        reports: Vec::new(),
    })
}

/// The stick's shim and GRUB (`EFI/BOOT/BOOTX64.EFI`, `grubx64.efi`):
/// from the ESP of an image or device, or from the El Torito ESP image
/// (`/boot/efi.img`) inside an ISO.
pub fn loaders(path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    const SHIM: &str = "EFI/BOOT/BOOTX64.EFI";
    const GRUB: &str = "EFI/BOOT/grubx64.efi";
    if is_iso(path)? {
        let esp = IsoImage::open(path)?.read_file("boot/efi.img")?;
        let fs = fatfs::FileSystem::new(std::io::Cursor::new(esp), fatfs::FsOptions::new())
            .with_context(|| format!("{}: /boot/efi.img is not FAT", path.display()))?;
        let read = |inner: &str| -> Result<Vec<u8>> {
            use std::io::Read;
            let mut f = fs
                .root_dir()
                .open_file(inner)
                .with_context(|| format!("{}: no {inner} in /boot/efi.img", path.display()))?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)?;
            Ok(out)
        };
        return Ok((read(SHIM)?, read(GRUB)?));
    }
    let img = UsbImage::open(path)?;
    Ok((img.read_file(SHIM)?, img.read_file(GRUB)?))
}

/// Reads the manifest and every `reports/*.json` off an image or device
/// (or the manifest of an ISO).
pub fn inspect(path: &Path) -> Result<Inspection> {
    if is_iso(path)? {
        return inspect_iso(&IsoImage::open(path)?);
    }
    let img = UsbImage::open(path)?;
    let raw = img.read_file(layout::MANIFEST).with_context(|| {
        format!(
            "{}: no \\defib\\manifest.json — is this a defib image?",
            path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "{}: \\defib\\manifest.json is not a defib manifest",
            path.display()
        )
    })?;
    Ok(Inspection {
        manifest,
        reports: reports(&img)?,
    })
}

/// The reports under `\reports\`, sorted by file name.
pub fn reports(img: &UsbImage) -> Result<Vec<ReportFile>> {
    let mut out = Vec::new();
    let mut entries = img
        .list_dir(layout::REPORTS_DIR)
        .context("listing \\reports\\")?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        if e.is_dir || !e.name.to_ascii_lowercase().ends_with(".json") {
            continue;
        }
        // Per-file problems (a broken cluster chain, a huge entry) stay
        // with that file so the other reports on the stick still list.
        let read = if e.size > MAX_REPORT {
            Err(format!(
                "{} bytes, over the {MAX_REPORT}-byte limit for a report; not read",
                e.size
            ))
        } else {
            img.read_file(&format!("reports/{}", e.name))
                .map_err(|err| format!("unreadable ({err:#}); the stick's FAT may be damaged"))
                .and_then(|data| {
                    // fatfs ends a read quietly where a broken chain ends.
                    if data.len() as u64 == e.size {
                        Ok(data)
                    } else {
                        Err(format!(
                            "unreadable: the FAT gives {} of its {} bytes; the stick's FAT may be damaged",
                            data.len(),
                            e.size
                        ))
                    }
                })
        };
        let (report, error) = match read.and_then(|data| {
            serde_json::from_slice(&data).map_err(|err| format!("not valid JSON: {err}"))
        }) {
            Ok(v) => (v, None),
            Err(err) => (serde_json::Value::Null, Some(err)),
        };
        out.push(ReportFile {
            name: e.name,
            size: e.size,
            report,
            error,
        });
    }
    Ok(out)
}

/// Human-readable text for `defib inspect`.
/// Every string read off the medium goes through `fleet::term`: a used
/// stick (its manifest too) is input from the field.
pub fn render(path: &Path, i: &Inspection) -> String {
    use crate::fleet::term;
    let m = &i.manifest;
    let mut s = format!(
        "{}\n  defib {}  build {}  kernel {}  built at epoch {}  after: {}\n  parts:\n",
        path.display(),
        term(&m.defib_version),
        term(&m.build_id),
        term(&m.kernel_release),
        m.source_date_epoch,
        term(&m.after)
    );
    for p in &m.parts {
        s.push_str(&format!(
            "    {:<32} {:<36} sha256 {}\n",
            term(&p.package),
            term(&p.version),
            term(&p.deb_sha256)
        ));
    }
    s.push_str(&format!(
        "  modules: {} loaded, {} built in (list v{})\n  files:\n",
        m.modules.loaded.len(),
        m.modules.builtin.len(),
        m.modules.list_version
    ));
    for f in &m.files {
        s.push_str(&format!(
            "    {:<28} {:>10}  {}\n",
            term(&f.path),
            f.size,
            term(&f.sha256)
        ));
    }
    s.push_str(&format!("  reports: {}\n", i.reports.len()));
    for r in &i.reports {
        let v = &r.report;
        // Names and values come off a stick that a broken PC wrote to:
        // no control characters reach the terminal.
        let get = |k: &str| term(v.get(k).and_then(|x| x.as_str()).unwrap_or("-"));
        let name = term(&r.name);
        match &r.error {
            Some(e) => s.push_str(&format!("    {name:<48} {}\n", term(e))),
            None => s.push_str(&format!(
                "    {name:<48} {:<18} {}\n",
                get("verdict"),
                get("finished")
            )),
        }
    }
    s
}
