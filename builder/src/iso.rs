//! `defib build --format iso`: a hybrid ISO 9660 image with the same
//! kernel, initramfs, payloads and manifest as the USB image, for a CD,
//! a BMC's virtual media (iLO, iDRAC), Ventoy, or `dd` to a stick.
//!
//! Boot paths (El Torito, "Bootable CD-ROM Format Specification" 1.0):
//!
//! - BIOS: a no-emulation entry for `isolinux/isolinux.bin` (Debian's
//!   `isolinux`), which reads `isolinux/isolinux.cfg`: the menu of
//!   [`bootmenu::syslinux_cfg`], with `ldlinux.c32` and the menu modules
//!   from `syslinux-common` beside it.
//! - UEFI: a no-emulation entry for `boot/efi.img`, a small FAT image
//!   holding shim as `\EFI\BOOT\BOOTX64.EFI` and Debian's signed CD GRUB
//!   (`gcdx64.efi.signed`) as `grubx64.efi` beside it. That GRUB finds the
//!   ISO by searching for `/.disk/info` and reads `/boot/grub/grub.cfg`.
//! - Written to a stick: `isohdpfx.bin` as MBR boot code (BIOS) and a GPT
//!   entry for `efi.img` (UEFI), both written by xorriso.
//!
//! Not an ISO 9660 writer: `xorriso` (a build-host tool) lays the image
//! out. We stage the tree with fixed file times and set
//! `SOURCE_DATE_EPOCH` in xorriso's environment, which it honours for
//! volume dates and UUIDs, so the same inputs give the same bytes.

use crate::bios::{bios_modules, deb, part};
use crate::bootmenu;
use crate::build::{self, BuildConfig, BuildSummary};
use crate::image::{fat_image, EspSpec};
use crate::sha256_hex;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// ISO 9660 volume identifier, which the rescue looks for.
pub use defib_rescue::layout::LABEL as VOLUME_ID;
const ISOLINUX_BIN: &str = "usr/lib/ISOLINUX/isolinux.bin";
const ISOHDPFX_BIN: &str = "usr/lib/ISOLINUX/isohdpfx.bin";
const GRUB_CD: &str = "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed";
const SHIM: &str = "usr/lib/shim/shimx64.efi.signed";
/// The El Torito UEFI image's path on the ISO.
pub const EFI_IMG: &str = "boot/efi.img";

/// Builds the hybrid ISO at `cfg.out`.
pub fn build_iso(cfg: &BuildConfig, log: &mut dyn FnMut(&str)) -> Result<BuildSummary> {
    let mut staged = build::stage(cfg, log)?;
    let debs = crate::deb::scan_dir(&cfg.debs)?;
    let isolinux = deb(&debs, "isolinux", &cfg.debs)?;
    let common = deb(&debs, "syslinux-common", &cfg.debs)?;
    let grub_deb = deb(&debs, "grub-efi-amd64-signed", &cfg.debs)?;
    let shim_deb = deb(&debs, "shim-signed", &cfg.debs)?;
    let isolinux_bin = isolinux.file(ISOLINUX_BIN)?;
    let isohdpfx = isolinux.file(ISOHDPFX_BIN)?;
    let grub_cd = grub_deb.file(GRUB_CD)?;
    let mut names = vec!["ldlinux.c32"];
    names.extend_from_slice(bootmenu::SYSLINUX_MODULES);
    let modules = bios_modules(common, &names)?;

    let m = &mut staged.manifest;
    let grub_cfg = bootmenu::grub_cfg(&m.boot_entries, &m.build_id);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("isolinux/isolinux.bin".into(), isolinux_bin);
    for (n, d) in &modules {
        files.insert(format!("isolinux/{n}"), d.clone());
    }
    files.insert(
        "isolinux/isolinux.cfg".into(),
        bootmenu::syslinux_cfg(&m.boot_entries, &m.build_id).into_bytes(),
    );
    // Debian's CD GRUB searches for this file to find the ISO.
    files.insert(
        ".disk/info".into(),
        format!("defib {} build {}\n", m.defib_version, m.build_id).into_bytes(),
    );
    files.insert("boot/grub/grub.cfg".into(), grub_cfg.clone().into_bytes());
    files.insert("EFI/debian/grub.cfg".into(), grub_cfg.into_bytes());
    files.insert(bootmenu::KERNEL.into(), staged.kernel.clone());
    files.insert(bootmenu::INITRD.into(), staged.initramfs.clone());
    files.insert(bootmenu::PAYLOADS.into(), staged.payloads.clone());

    let seed_hex = sha256_hex(format!("defib efi.img seed {}", m.build_id).as_bytes());
    let mut seed = [0u8; 32];
    hex::decode_to_slice(&seed_hex, &mut seed).context("seed")?;
    let efi = fat_image(&EspSpec {
        from_disk: BTreeMap::new(),
        files: BTreeMap::from([
            ("EFI/BOOT/BOOTX64.EFI".to_string(), staged.shim.clone()),
            ("EFI/BOOT/grubx64.efi".to_string(), grub_cd),
        ]),
        dirs: Vec::new(),
        // Not DEFIB: the rescue must not take this for its medium when
        // the ISO is written to a stick and the image shows as a partition.
        label: "EFIBOOT".into(),
        free_space: 0,
        seed,
        mtime: cfg.source_date_epoch,
        legacy_bios_bootable: false,
    })
    .context("making the El Torito EFI image")?;
    files.insert(EFI_IMG.into(), efi);

    // The parts as they sit on the ISO: shim and the CD GRUB inside
    // efi.img, the syslinux family under isolinux/.
    m.parts
        .retain(|p| p.package != "shim-signed" && p.package != "grub-efi-amd64-signed");
    m.parts.push(part(
        shim_deb,
        vec![(SHIM.into(), format!("({EFI_IMG}) EFI/BOOT/BOOTX64.EFI"))],
    ));
    m.parts.push(part(
        grub_deb,
        vec![(GRUB_CD.into(), format!("({EFI_IMG}) EFI/BOOT/grubx64.efi"))],
    ));
    m.parts.push(part(
        isolinux,
        vec![
            (ISOLINUX_BIN.into(), "isolinux/isolinux.bin".into()),
            (ISOHDPFX_BIN.into(), "(hybrid MBR boot code)".into()),
        ],
    ));
    m.parts.push(part(
        common,
        modules
            .keys()
            .map(|n| {
                (
                    format!("{}/{n}", crate::bios::MODULES_DIR),
                    format!("isolinux/{n}"),
                )
            })
            .collect(),
    ));
    m.files = crate::manifest::file_entries(&files);
    files.insert(
        defib_rescue::layout::MANIFEST.into(),
        serde_json::to_vec_pretty(&staged.manifest)?,
    );

    // The store beside the boot files, as on the USB stick: the rescue
    // reads objects from the mounted ISO when a restore needs one.
    let store_dir = defib_rescue::layout::MEDIUM_STORE_DIR;
    if let Some(ix) = &staged.store.index {
        files.insert(
            format!("{store_dir}/{}", defib_rescue::store::INDEX_FILE),
            ix.clone(),
        );
    }
    let from_disk = staged.store.medium_files(store_dir);
    log(&format!("writing {}", cfg.out.display()));
    let size = write_iso(
        &files,
        &from_disk,
        &isohdpfx,
        cfg.source_date_epoch,
        &cfg.out,
    )?;
    Ok(BuildSummary {
        image: cfg.out.clone(),
        image_size: size,
        initramfs_size: staged.initramfs.len() as u64,
        payloads_size: staged.payloads.len() as u64,
        build_id: staged.manifest.build_id.clone(),
        kernel_release: staged.manifest.kernel_release.clone(),
        modules: staged.manifest.modules.loaded.len(),
        manifest: staged.manifest,
    })
}

/// The xorriso arguments (`-as mkisofs` dialect) for a tree at `tree`.
pub fn xorriso_args(tree: &Path, isohdpfx: &Path, out: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = Vec::new();
    let mut s = |x: &str| a.push(x.into());
    for x in [
        "-as",
        "mkisofs",
        "-quiet",
        "-r",
        "-J",
        "-joliet-long",
        "-V",
        VOLUME_ID,
        "-o",
    ] {
        s(x);
    }
    a.push(out.into());
    a.push("-isohybrid-mbr".into());
    a.push(isohdpfx.into());
    for x in [
        // BIOS: isolinux, 4 virtual sectors loaded, boot info table patched
        // in (isolinux needs it to find itself).
        "-b",
        "isolinux/isolinux.bin",
        "-c",
        "isolinux/boot.cat",
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        // UEFI: the FAT image, also exposed as a GPT partition for sticks.
        "-eltorito-alt-boot",
        "-e",
        EFI_IMG,
        "-no-emul-boot",
        "-isohybrid-gpt-basdat",
    ] {
        a.push(x.into());
    }
    a.push(tree.into());
    a
}

/// Stages `files` in a folder beside `out` with every time set to
/// `epoch`, runs xorriso, and renames the result over `out`.
fn write_iso(
    files: &BTreeMap<String, Vec<u8>>,
    from_disk: &[(String, std::path::PathBuf)],
    isohdpfx: &[u8],
    epoch: u64,
    out: &Path,
) -> Result<u64> {
    if !crate::on_path("xorriso") {
        bail!("`xorriso` not found: install Debian's xorriso package (scripts/setup does)");
    }
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file path", out.display()))?
        .to_string_lossy()
        .into_owned();
    // Beside the output, so the finished ISO is renamed, not copied.
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(&format!(".{name}.work-"))
        .tempdir_in(parent)
        .with_context(|| format!("creating a work folder in {}", parent.display()))?;
    let tree = work.path().join("tree");
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let mut dirs = std::collections::BTreeSet::new();
    let bytes = files.iter().map(|(p, d)| (p, Some(d)));
    let copies = from_disk.iter().map(|(p, _)| (p, None));
    for (i, (path, data)) in bytes.chain(copies).enumerate() {
        let p = tree.join(path);
        let parent = p.parent().context("staged path")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let mut d = Path::new(path.as_str());
        while let Some(up) = d.parent().filter(|u| !u.as_os_str().is_empty()) {
            dirs.insert(tree.join(up));
            d = up;
        }
        match data {
            Some(data) => {
                std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?
            }
            None => {
                let src = &from_disk[i - files.len()].1;
                std::fs::copy(src, &p)
                    .with_context(|| format!("copying {} to {}", src.display(), p.display()))?;
            }
        }
        set_time(&p, when)?;
    }
    dirs.insert(tree.clone());
    for d in &dirs {
        set_time(d, when)?;
    }
    let mbr = work.path().join("isohdpfx.bin");
    std::fs::write(&mbr, isohdpfx).with_context(|| format!("writing {}", mbr.display()))?;
    let tmp = work.path().join("out.iso");
    let o = Command::new("xorriso")
        .args(xorriso_args(&tree, &mbr, &tmp))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .output()
        .context("running xorriso")?;
    if !o.status.success() {
        bail!(
            "xorriso failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let size = std::fs::metadata(&tmp)
        .with_context(|| format!("reading {}", tmp.display()))?
        .len();
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(size)
}

fn set_time(p: &Path, when: std::time::SystemTime) -> Result<()> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    f.set_times(
        std::fs::FileTimes::new()
            .set_accessed(when)
            .set_modified(when),
    )
    .with_context(|| format!("setting the times of {}", p.display()))
}

/// The staging folder, removed when done or on error.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorriso_gets_both_el_torito_entries_and_hybrid_tables() {
        let a: Vec<String> = xorriso_args(Path::new("t"), Path::new("m"), Path::new("o"))
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let all = a.join(" ");
        assert!(all.contains("-V DEFIB"), "{all}");
        assert!(all.contains("-isohybrid-mbr m"), "{all}");
        assert!(all.contains("-b isolinux/isolinux.bin"), "{all}");
        assert!(
            all.contains("-eltorito-alt-boot -e boot/efi.img -no-emul-boot -isohybrid-gpt-basdat"),
            "{all}"
        );
        assert_eq!(a.last().unwrap(), "t");
    }

    #[test]
    fn efi_image_is_a_small_fat_with_the_loaders() {
        let spec = EspSpec {
            from_disk: BTreeMap::new(),
            files: BTreeMap::from([
                ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1u8; 900_000]),
                ("EFI/BOOT/grubx64.efi".to_string(), vec![2u8; 2_300_000]),
            ]),
            dirs: Vec::new(),
            label: "EFIBOOT".into(),
            free_space: 0,
            seed: [7; 32],
            mtime: 1_721_366_940,
            legacy_bios_bootable: false,
        };
        let img = fat_image(&spec).unwrap();
        assert_eq!(img, fat_image(&spec).unwrap(), "not reproducible");
        assert!(img.len() < 4 << 20, "{} bytes", img.len());
        let fs =
            fatfs::FileSystem::new(std::io::Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        assert_ne!(fs.fat_type(), fatfs::FatType::Fat32);
        let mut f = fs.root_dir().open_file("EFI/BOOT/grubx64.efi").unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        assert_eq!(data, vec![2u8; 2_300_000]);
    }
}
