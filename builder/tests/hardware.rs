//! Hardware that is there only sometimes: the rescue loads the drivers of
//! the devices it finds, and only those. Each machine repairs the McAfee XP
//! victim on one kind of controller (NVMe, virtio-scsi, AHCI), or with the
//! stick on EHCI instead of xHCI, or with the victim plugged in while the
//! rescue already runs; the report's `modules.names` must hold the drivers
//! for that hardware and none for hardware the machine does not have.
//!
//! The boots are direct kernel boots (SeaBIOS, `-kernel`, the image's own
//! kernel and initramfs segments) with the stick attached for the report,
//! as the bench does: the firmware path is covered by boot.rs and repair.rs.

mod common;

use common::victim::{self, McafeeSvchost, Victim};
use common::*;
use defib_builder::image::UsbImage;
use defib_builder::qemu::{self, Boot, Bus, Firmware, LateDisk, Outcome, UsbHost};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Drivers of hardware none of these machines has: storage controllers
/// of servers and hypervisors, and every NIC (the machines have none);
/// and efivarfs, which only a UEFI boot mounts (these boot SeaBIOS).
const NEVER: &[&str] = &[
    "efivarfs",
    "megaraid_sas",
    "mpt3sas",
    "smartpqi",
    "hv_storvsc",
    "hv_vmbus",
    "xen_blkfront",
    "vmd",
    "sdhci_pci",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "r8169",
    "mlx5_core",
    "virtio_net",
    "ohci_pci",
    "uhci_hcd",
];

/// The image's kernel and its two initramfs segments in one file (QEMU's
/// `-initrd` takes one; the kernel unpacks concatenated archives).
fn direct_parts(stick: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let img = UsbImage::open(stick).expect("opening the image");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, img.read_file("defib/vmlinuz").unwrap()).unwrap();
    let mut both = img.read_file("defib/initrd.img").unwrap();
    while !both.len().is_multiple_of(4) {
        both.push(0);
    }
    both.extend(img.read_file("defib/payloads.img").unwrap());
    let initrd = dir.join("initrd-both.img");
    std::fs::write(&initrd, both).unwrap();
    (kernel, initrd)
}

struct Machine {
    /// Holds the stick, the victim and QEMU's scratch files.
    _dir: tempfile::TempDir,
    stick: PathBuf,
    victim: Victim,
    boot: Boot,
}

/// A BIOS machine (i440fx) booting the image's kernel directly, the stick
/// on xHCI for the report, and a fresh McAfee XP victim not yet attached.
fn machine() -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let stick = image_copy(dir.path());
    let victim = victim::make_xp_mcafee(dir.path(), McafeeSvchost::InDllcache).unwrap();
    let (kernel, initrd) = direct_parts(&stick, dir.path());
    let mut boot = Boot::new(Firmware::Bios, dir.path());
    boot.kernel = Some((
        kernel,
        vec![initrd],
        "console=ttyS0,115200 quiet panic=10 defib.mode=auto defib.after=poweroff".into(),
    ));
    boot.stick = Some(stick.clone());
    boot.uuid = Some(UUID.to_string());
    boot.timeout = TIMEOUT;
    Machine {
        _dir: dir,
        stick,
        victim,
        boot,
    }
}

/// Boots `m`, checks the victim was repaired, and returns the report's
/// loaded module names with the console.
fn boot_and_repair(m: &Machine) -> (Vec<String>, Outcome) {
    let out = qemu::run(&m.boot).expect("running qemu");
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    assert!(
        out.contains("defib: verdict repaired"),
        "not repaired:\n{}",
        out.text()
    );
    assert_eq!(
        victim::sha256_of(&m.victim, victim::XP_SVCHOST).unwrap(),
        m.victim.expect.svchost_sha256,
        "svchost.exe not restored:\n{}",
        out.text()
    );
    let r = single_report(&m.stick);
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    assert!(
        r["modules"]["failed"]
            .as_array()
            .is_some_and(|f| f.is_empty()),
        "modules failed: {:#}",
        r["modules"]
    );
    let manifest = defib_builder::inspect::inspect(&m.stick).unwrap().manifest;
    assert_eq!(
        r["modules"]["carried"].as_u64(),
        Some(manifest.modules.loaded.len() as u64),
        "the report's carried count is the manifest's module list: {:#}",
        r["modules"]
    );
    let steps: Vec<&str> = r["boot"]["timings"]
        .as_array()
        .expect("boot.timings")
        .iter()
        .map(|t| t["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["mount", "banner", "modules", "devices", "efivarfs", "medium", "probe", "evaluate"],
        "{r:#}"
    );
    let names: Vec<String> = r["modules"]["names"]
        .as_array()
        .expect("modules.names")
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        r["modules"]["loaded"].as_u64(),
        Some(names.len() as u64),
        "{r:#}"
    );
    (names, out)
}

fn assert_loaded(names: &[String], want: &[&str], absent: &[&str]) {
    for w in want {
        assert!(names.iter().any(|n| n == w), "{w} not loaded: {names:?}");
    }
    for a in absent.iter().chain(NEVER) {
        assert!(
            !names.iter().any(|n| n == a),
            "{a} loaded for hardware the machine does not have: {names:?}"
        );
    }
}

/// The always-loaded set: what no device announces.
const ALWAYS: &[&str] = &["ntfs3", "vfat", "nls_cp437", "dm_mod", "dm_crypt", "xts"];

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn victim_on_nvme_loads_nvme_and_not_the_others() {
    let mut m = machine();
    m.boot.disks = vec![(m.victim.disk.clone(), Bus::Nvme)];
    let (names, _) = boot_and_repair(&m);
    assert_loaded(
        &names,
        &[
            &["nvme", "nvme_core", "xhci_pci", "usb_storage", "sd_mod"],
            ALWAYS,
        ]
        .concat(),
        &["ahci", "virtio_blk", "virtio_scsi", "ehci_pci"],
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn victim_on_virtio_scsi_loads_virtio_scsi_and_not_the_others() {
    let mut m = machine();
    m.boot.disks = vec![(m.victim.disk.clone(), Bus::VirtioScsi)];
    let (names, _) = boot_and_repair(&m);
    assert_loaded(
        &names,
        &[
            &["virtio_scsi", "sd_mod", "xhci_pci", "usb_storage"],
            ALWAYS,
        ]
        .concat(),
        &["ahci", "nvme", "virtio_blk", "ehci_pci"],
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn victim_on_ahci_loads_ahci_and_not_the_others() {
    let mut m = machine();
    m.boot.disks = vec![(m.victim.disk.clone(), Bus::Ahci)];
    let (names, _) = boot_and_repair(&m);
    assert_loaded(
        &names,
        &[&["ahci", "libahci", "libata", "sd_mod", "xhci_pci"], ALWAYS].concat(),
        &["nvme", "virtio_blk", "virtio_scsi", "ehci_pci"],
    );
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn stick_on_ehci_loads_ehci_and_not_xhci() {
    let mut m = machine();
    m.boot.stick_host = UsbHost::Ehci;
    m.boot.disks = vec![(m.victim.disk.clone(), Bus::Ahci)];
    let (names, out) = boot_and_repair(&m);
    assert!(
        out.contains("medium: /dev/sd"),
        "the stick on EHCI was not the medium:\n{}",
        out.text()
    );
    assert_loaded(
        &names,
        &["ehci_pci", "ehci_hcd", "usb_storage", "ahci"],
        &["xhci_pci", "xhci_hcd", "nvme"],
    );
}

/// The victim is plugged in (PCI hot-plug of a virtio disk) three seconds
/// after the rescue asked for the drivers of the devices it found, while
/// it waits for a disk: the wait sees it arrive, loads virtio_blk for it
/// then (no virtio disk was there to ask for it before), and repairs it,
/// within `defib.wait` and without running the bound out.
#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn victim_plugged_in_late_is_found_within_the_wait() {
    let mut m = machine();
    if let Some((_, _, cmdline)) = &mut m.boot.kernel {
        cmdline.push_str(" defib.wait=60");
    }
    m.boot.late = vec![LateDisk {
        disk: m.victim.disk.clone(),
        bus: Bus::Virtio,
        after: "-- modules done".into(),
        delay: Duration::from_secs(3),
    }];
    let (names, out) = boot_and_repair(&m);
    let text = out.text();
    let plugged = out
        .first("[monitor]")
        .unwrap_or_else(|| panic!("the disk was never plugged in:\n{text}"));
    let ready = out
        .first("devices: ready in")
        .unwrap_or_else(|| panic!("the wait did not end on the disk:\n{text}"));
    assert!(plugged < ready, "ready before the disk came:\n{text}");
    assert!(!text.contains("stopped waiting"), "{text}");
    assert_loaded(
        &names,
        &["virtio_blk", "xhci_pci"],
        &["nvme", "virtio_scsi"],
    );
}
