//! The image boots for real: OVMF with Secure Boot enforcing and
//! Microsoft's keys, plain OVMF, and a loader stripped of its signature that
//! Secure Boot must refuse. Each boot ends in a report read back from the
//! stick image.

mod common;

use common::*;
use defib_builder::image::{add_file_to_image, UsbImage};
use defib_builder::qemu::Firmware;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn assert_no_windows_report(
    stick: &std::path::Path,
    out: &defib_builder::qemu::Outcome,
    firmware: &str,
    secure_boot: bool,
) {
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    assert!(
        out.contains("defib rescue"),
        "the rescue never started:\n{}",
        out.text()
    );
    assert!(
        out.contains("defib: verdict no-windows-found"),
        "no verdict line:\n{}",
        out.text()
    );
    let r = single_report(stick);
    assert_eq!(r["schema"], 1);
    assert_eq!(r["boot"]["firmware"], firmware, "{r:#}");
    assert_eq!(r["boot"]["secure_boot"], secure_boot, "{r:#}");
    assert_eq!(r["boot"]["mode"], "auto", "{r:#}");
    assert_eq!(r["boot"]["medium"], "usb", "{r:#}");
    assert_eq!(r["verdict"], "no-windows-found", "{r:#}");
    assert_eq!(r["machine"]["product_uuid"], UUID, "{r:#}");
    let manifest = defib_builder::inspect::inspect(stick).unwrap().manifest;
    assert_eq!(r["build_id"], manifest.build_id.as_str(), "{r:#}");
    assert!(
        r["modules"]["failed"]
            .as_array()
            .is_some_and(|f| f.is_empty()),
        "modules failed to load: {:#}",
        r["modules"]
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn secure_boot_enforcing_boots_the_rescue_and_reports_true() {
    let dir = tempfile::tempdir().unwrap();
    let stick = image_copy(dir.path());
    let out = boot_stick(&stick, Firmware::UefiSb, dir.path(), BOOT_TIMEOUT);
    assert_no_windows_report(&stick, &out, "uefi", true);
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn plain_uefi_reports_secure_boot_false() {
    let dir = tempfile::tempdir().unwrap();
    let stick = image_copy(dir.path());
    let out = boot_stick(&stick, Firmware::Uefi, dir.path(), BOOT_TIMEOUT);
    assert_no_windows_report(&stick, &out, "uefi", false);
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn seabios_boots_the_usb_image_through_syslinux() {
    let dir = tempfile::tempdir().unwrap();
    let stick = image_copy(dir.path());
    let out = boot_stick(&stick, Firmware::Bios, dir.path(), BOOT_TIMEOUT);
    assert!(
        out.contains("SYSLINUX 6.04"),
        "not booted through syslinux:\n{}",
        out.text()
    );
    assert_no_windows_report(&stick, &out, "bios", false);
}

/// Boots the ISO as a CD-ROM with an XP McAfee victim attached. The CD is
/// read-only, so the report is read back from the victim's run folder.
fn iso_cdrom_repairs(firmware: Firmware, loader: &str, want_firmware: &str, secure_boot: bool) {
    use common::victim::{self, McafeeSvchost};
    let dir = tempfile::tempdir().unwrap();
    let v = victim::make_xp_mcafee(dir.path(), McafeeSvchost::InDllcache).unwrap();
    let mut b = defib_builder::qemu::Boot::new(firmware, dir.path());
    b.cdrom = Some(iso());
    b.disks = vec![(v.disk.clone(), defib_builder::qemu::Bus::Ahci)];
    b.uuid = Some(UUID.to_string());
    b.timeout = Duration::from_secs(360);
    let out = defib_builder::qemu::run(&b).unwrap();
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    assert!(
        out.contains(loader),
        "{loader} did not boot:\n{}",
        out.text()
    );
    assert!(
        out.contains("defib: verdict repaired"),
        "no verdict line:\n{}",
        out.text()
    );
    assert!(
        out.contains("read-only ISO"),
        "the rescue did not say the CD is read-only:\n{}",
        out.text()
    );
    let runs: Vec<String> = victim::list_dir(&v, "defib")
        .unwrap()
        .into_iter()
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let r: serde_json::Value = serde_json::from_slice(
        &victim::read_file(&v, &format!(r"defib\{}\report.json", runs[0]))
            .unwrap()
            .expect("no report.json on the victim"),
    )
    .unwrap();
    assert_eq!(r["boot"]["medium"], "cdrom", "{r:#}");
    assert_eq!(r["boot"]["firmware"], want_firmware, "{r:#}");
    assert_eq!(r["boot"]["secure_boot"], secure_boot, "{r:#}");
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    assert_eq!(r["machine"]["product_uuid"], UUID, "{r:#}");
    assert_eq!(
        victim::sha256_of(&v, victim::XP_SVCHOST).unwrap(),
        v.expect.svchost_sha256,
        "svchost.exe not restored"
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn iso_as_cdrom_under_seabios_repairs() {
    iso_cdrom_repairs(Firmware::Bios, "ISOLINUX 6.04", "bios", false);
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn iso_as_cdrom_under_secure_boot_repairs() {
    iso_cdrom_repairs(Firmware::UefiSb, "GNU GRUB", "uefi", true);
}

/// Removes a PE image's Authenticode signature: zero the certificate table
/// directory entry and cut the table off the end (PE/COFF spec, "The
/// Attribute Certificate Table", data directory 4).
fn strip_signature(pe: &[u8]) -> Vec<u8> {
    let lfanew = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&pe[lfanew..lfanew + 4], b"PE\0\0");
    let opt = lfanew + 4 + 20;
    assert_eq!(
        u16::from_le_bytes([pe[opt], pe[opt + 1]]),
        0x20b,
        "expected PE32+"
    );
    let dir4 = opt + 112 + 4 * 8;
    let off = u32::from_le_bytes(pe[dir4..dir4 + 4].try_into().unwrap()) as usize;
    let size = u32::from_le_bytes(pe[dir4 + 4..dir4 + 8].try_into().unwrap()) as usize;
    assert!(
        off > 0 && size > 0,
        "the loader is not signed to begin with"
    );
    let mut out = pe[..off].to_vec();
    out[dir4..dir4 + 8].fill(0);
    out
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn unsigned_loader_is_refused_under_secure_boot() {
    let dir = tempfile::tempdir().unwrap();
    let stick = image_copy(dir.path());
    let shim = UsbImage::open(&stick)
        .unwrap()
        .read_file("EFI/BOOT/BOOTX64.EFI")
        .unwrap();
    add_file_to_image(&stick, "EFI/BOOT/BOOTX64.EFI", &strip_signature(&shim)).unwrap();
    let mut control = dir.path().join("control.img");
    std::fs::copy(&stick, &control).unwrap();

    // Secure Boot on: the firmware refuses the unsigned loader; the rescue
    // never runs and the stick gets no report.
    let mut b = defib_builder::qemu::Boot::new(Firmware::UefiSb, dir.path());
    b.stick = Some(stick.clone());
    b.timeout = Duration::from_secs(120);
    b.stop_on = Some("No bootable option".into());
    let out = defib_builder::qemu::run(&b).unwrap();
    assert!(
        out.contains("Access Denied"),
        "OVMF did not refuse the unsigned loader:\n{}",
        out.text()
    );
    assert!(
        !out.contains("defib rescue"),
        "the rescue ran from an unsigned loader:\n{}",
        out.text()
    );
    let img = UsbImage::open(&stick).unwrap();
    assert!(defib_builder::inspect::reports(&img).unwrap().is_empty());

    // The same stripped loader with Secure Boot off boots to the rescue:
    // the refusal above is Secure Boot's doing, not a broken binary.
    control = control.canonicalize().unwrap();
    let out = boot_stick(&control, Firmware::Uefi, dir.path(), BOOT_TIMEOUT);
    assert!(
        out.contains("defib rescue"),
        "stripped shim did not boot with Secure Boot off:\n{}",
        out.text()
    );
}

/// The menu's "Rescue shell" entry: the volumes are listed, busybox's shell
/// runs on the serial console with the payloads in reach, and the machine
/// still ends with a report once the shell exits.
#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn rescue_shell_lists_volumes_and_runs_commands() {
    use defib_builder::qemu::{self, Keys};
    let dir = tempfile::tempdir().unwrap();
    let stick = image_copy(dir.path());
    let mut b = qemu::Boot::new(Firmware::UefiSb, dir.path());
    b.stick = Some(stick.clone());
    b.timeout = BOOT_TIMEOUT;
    let hotkey = defib_builder::bootmenu::hotkey("shell");
    b.keys = vec![
        Keys {
            after: "Press enter to boot".into(),
            bytes: vec![hotkey as u8],
            until: "Loading defib".into(),
        },
        Keys {
            after: "type exit to finish".into(),
            bytes: b"ls /payloads/playbooks\n".to_vec(),
            until: "mcafee-dat-5958.toml".into(),
        },
        Keys {
            after: "mcafee-dat-5958.toml".into(),
            bytes: b"exit\n".to_vec(),
            until: "shell exited".into(),
        },
    ];
    let out = qemu::run(&b).unwrap();
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    assert!(out.contains("mode: shell"), "{}", out.text());
    assert!(out.contains("volumes found:"), "{}", out.text());
    assert!(
        out.contains("mcafee-dat-5958.toml"),
        "the shell did not run the command:\n{}",
        out.text()
    );
    assert!(out.contains("shell exited"), "{}", out.text());
    let r = single_report(&stick);
    assert_eq!(r["boot"]["mode"], "shell", "{r:#}");
}
