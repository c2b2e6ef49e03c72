//! Legacy BIOS boot of the USB image with syslinux 6 (Debian's `syslinux`
//! and `syslinux-common`), and the syslinux files the ISO shares.
//!
//! Boot path on a GPT stick: BIOS -> MBR boot code (`gptmbr.bin`: finds
//! the GPT partition with the legacy-BIOS-bootable attribute, UEFI 2.10
//! §5.3.3) -> the ESP's boot sector (syslinux's) -> `ldlinux.sys` ->
//! `ldlinux.c32` -> `/syslinux/syslinux.cfg` -> `menu.c32` -> kernel.
//!
//! Not a syslinux installer: writing syslinux's FAT boot sector and
//! patching `ldlinux.sys` with its own sector list is left to Debian's
//! `syslinux` installer, taken from the fetched `.deb` and run as a
//! build-host tool on the image file (it uses mtools, so nothing is
//! mounted). We only place the modules and the menu before it runs, copy
//! `gptmbr.bin` into the MBR after, and put back fixed timestamps.

use crate::deb::{Deb, Member};
use crate::manifest::{Part, Taken};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Folder of syslinux's files on the ESP (`--directory` of the installer).
pub const DIR: &str = "syslinux";
/// Debian's installer, in package `syslinux`.
const INSTALLER: &str = "usr/bin/syslinux";
/// MBR boot code for GPT disks, in `syslinux-common`.
const GPTMBR: &str = "usr/lib/syslinux/mbr/gptmbr.bin";
/// BIOS COM32 modules, in `syslinux-common`.
pub const MODULES_DIR: &str = "usr/lib/syslinux/modules/bios";
/// The boot code area of an MBR: bytes 0..440, before the disk signature
/// at 440 and the partition records at 446 (UEFI 2.10 §5.2.1, table 5-1).
const MBR_CODE: usize = 440;

/// The syslinux parts of one build.
pub struct Syslinux {
    installer: Vec<u8>,
    gptmbr: Vec<u8>,
    /// Menu modules by file name ([`crate::bootmenu::SYSLINUX_MODULES`]).
    pub modules: BTreeMap<String, Vec<u8>>,
    /// What was taken from which package, for the manifest.
    pub parts: Vec<Part>,
}

/// Finds one package in the fetched set, with the usual advice if absent.
pub fn deb<'a>(debs: &'a BTreeMap<String, Deb>, name: &str, dir: &Path) -> Result<&'a Deb> {
    debs.get(name).with_context(|| {
        format!(
            "{name} is not among the .deb files in {}; run `defib fetch` or add it",
            dir.display()
        )
    })
}

/// The BIOS COM32 modules `names` from `syslinux-common`, by file name.
pub fn bios_modules(common: &Deb, names: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
    let wanted: Vec<String> = names.iter().map(|n| format!("{MODULES_DIR}/{n}")).collect();
    let found = common.extract(|p| wanted.iter().any(|w| w == p))?;
    let mut out = BTreeMap::new();
    for (name, path) in names.iter().zip(&wanted) {
        match found.get(path) {
            Some(Member::File { data, .. }) => {
                out.insert(name.to_string(), data.clone());
            }
            _ => bail!(
                "{} ({} {}) has no file {path}",
                common.path.display(),
                common.package(),
                common.version()
            ),
        }
    }
    Ok(out)
}

/// One manifest record: `from` paths of a package and where they went.
pub fn part(d: &Deb, taken: Vec<(String, String)>) -> Part {
    Part {
        package: d.package().into(),
        version: d.version().into(),
        deb_sha256: d.sha256.clone(),
        taken: taken
            .into_iter()
            .map(|(from, to)| Taken { from, to })
            .collect(),
    }
}

impl Syslinux {
    /// Reads the installer, `gptmbr.bin` and the menu modules.
    pub fn load(debs: &BTreeMap<String, Deb>, dir: &Path) -> Result<Syslinux> {
        let sys = deb(debs, "syslinux", dir)?;
        let common = deb(debs, "syslinux-common", dir)?;
        let installer = sys.file(INSTALLER)?;
        let gptmbr = common.file(GPTMBR)?;
        if gptmbr.len() < MBR_CODE {
            bail!(
                "{}: {GPTMBR} is {} bytes, expected at least {MBR_CODE}",
                common.path.display(),
                gptmbr.len()
            );
        }
        let modules = bios_modules(common, crate::bootmenu::SYSLINUX_MODULES)?;
        let mut taken = vec![(GPTMBR.to_string(), "(MBR boot code, bytes 0-439)".into())];
        for name in modules.keys() {
            taken.push((format!("{MODULES_DIR}/{name}"), format!("{DIR}/{name}")));
        }
        let parts = vec![
            part(
                sys,
                vec![(
                    INSTALLER.into(),
                    format!(
                        "(build host: installs the ESP boot sector, \
                         {DIR}/ldlinux.sys, {DIR}/ldlinux.c32)"
                    ),
                )],
            ),
            part(common, taken),
        ];
        Ok(Syslinux {
            installer,
            gptmbr,
            modules,
            parts,
        })
    }

    /// The files to add to the ESP: the modules and `syslinux.cfg`.
    pub fn esp_files(&self, cfg: &str) -> BTreeMap<String, Vec<u8>> {
        let mut files: BTreeMap<String, Vec<u8>> = self
            .modules
            .iter()
            .map(|(n, d)| (format!("{DIR}/{n}"), d.clone()))
            .collect();
        files.insert(format!("{DIR}/syslinux.cfg"), cfg.as_bytes().to_vec());
        files
    }

    /// Makes the written image at `image` BIOS-bootable: runs Debian's
    /// installer on the ESP at `esp_offset`, copies `gptmbr.bin` into the
    /// MBR, and resets every FAT timestamp to `epoch`.
    pub fn install(&self, image: &Path, esp_offset: u64, epoch: u64) -> Result<()> {
        for tool in ["mcopy", "mattrib"] {
            if !crate::on_path(tool) {
                bail!(
                    "`{tool}` not found: syslinux's installer needs mtools on the build \
                     host; install Debian's mtools package (scripts/setup does)"
                );
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("defib-syslinux-")
            .tempdir()
            .context("creating a temporary folder for syslinux")?;
        let bin = tmp.path().join("syslinux");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&bin)
                .with_context(|| format!("writing {}", bin.display()))?;
            f.write_all(&self.installer)
                .with_context(|| format!("writing {}", bin.display()))?;
        }
        let out = Command::new(&bin)
            .arg("--offset")
            .arg(esp_offset.to_string())
            .args(["--directory", &format!("/{DIR}"), "--install"])
            .arg(image)
            // mtools reads its own config from these; keep the host's out.
            .env_remove("MTOOLSRC")
            .env("TMPDIR", tmp.path())
            .output()
            .with_context(|| format!("running syslinux's installer ({})", bin.display()))?;
        if !out.status.success() {
            bail!(
                "syslinux's installer failed on {} ({}): {}{}",
                image.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        write_mbr_code(image, &self.gptmbr[..MBR_CODE])?;
        crate::image::restamp_esp(image, epoch)
    }
}

/// Writes `code` (440 bytes) over the MBR's boot code, keeping the disk
/// signature, partition records and 0x55AA signature after it.
fn write_mbr_code(image: &Path, code: &[u8]) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {} for writing", image.display()))?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(code))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing the MBR boot code of {}", image.display()))
}

/// A private folder under the system temp dir, removed on drop.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_code_keeps_the_partition_table() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        let mut mbr = vec![0u8; 1024];
        mbr[440..444].copy_from_slice(b"SIGN");
        mbr[446] = 0xEE;
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        std::fs::write(&img, &mbr).unwrap();
        write_mbr_code(&img, &[0xFA; MBR_CODE]).unwrap();
        let after = std::fs::read(&img).unwrap();
        assert!(after[..440].iter().all(|&b| b == 0xFA));
        assert_eq!(&after[440..], &mbr[440..]);
    }
}
