//! The run report (schema 1): what the rescue saw and decided on one machine,
//! written as JSON to `reports/<machine>-<run_id>.json` on the boot medium.
//!
//! The builder reads these back (`defib` inspects used sticks), so every type
//! here deserializes as well as serializes, and every enum spelling is part
//! of the format. This module is not the victim-side journal; that comes with
//! the repair engine.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::SystemTime;

use crate::bootargs::Mode;
use crate::engine::PlaybookResult;
use crate::probe::Volume;
use crate::windows::WindowsInstall;

mod text;
mod write;

pub use text::{human_size, render_text, screen_lines, volume_lines};
pub use write::{sanitize_name, write_victim_reports};

/// The schema number written in every report; bump on incompatible change.
pub const SCHEMA: u32 = 1;

/// One run of the rescue on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`] for reports this code writes.
    pub schema: u32,
    /// Version of the rescue binary (`CARGO_PKG_VERSION`).
    pub defib_version: String,
    /// `YYYYMMDDTHHMMSSZ-xxxxxxxx`: UTC start time plus 8 random hex digits.
    /// Also the report's file name suffix.
    pub run_id: String,
    /// Start of the run, RFC 3339 UTC to the second. The clock is the
    /// machine's RTC, which Windows often keeps in local time, so this may be
    /// off by the site's UTC offset.
    pub started: String,
    /// When the report was written, same clock and format as `started`.
    pub finished: String,
    /// `build_id` from the image's `/etc/defib/build.json`; null if absent.
    pub build_id: Option<String>,
    /// Who the machine is, from SMBIOS/DMI.
    pub machine: Machine,
    /// How this run was booted.
    pub boot: Boot,
    /// Kernel modules loaded from `defib.load`.
    pub modules: Modules,
    /// Every disk and partition seen, in name order.
    pub volumes: Vec<Volume>,
    /// Each Windows volume: identity, state, playbook findings, actions.
    #[serde(default)]
    pub windows: Vec<WindowsReport>,
    /// Warnings and notes for the technician, in the order they arose.
    pub messages: Vec<String>,
    /// The outcome of the run.
    pub verdict: Verdict,
    /// Network and report delivery (`defib.report=`); absent when the
    /// rescue did not use the network, and in copies written before it did
    /// (the victim disk's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Which store index the run used and where objects came from; absent
    /// in host runs and in reports from before the store left the RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreUsed>,
    /// The firmware's Secure Boot databases (UEFI boots of the image);
    /// absent on BIOS, in host runs and in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareFacts>,
}

/// `firmware` in the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFacts {
    pub secure_boot: crate::secureboot::Inventory,
}

/// The store a run used (docs/store-format.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreUsed {
    /// The index file the entries came from: the medium's
    /// `/defib/store/index.json` (kept current by `defib store sync`) when
    /// it has one, else the payloads' copy built into the image.
    pub index: String,
    /// SHA-256 of that index file; null when there was none (no store).
    pub index_sha256: Option<String>,
    pub entries: usize,
    /// Where objects were looked for, in order.
    pub locations: Vec<String>,
}

/// DMI identity (`/sys/class/dmi/id`). Placeholder strings that vendors leave
/// in ("To Be Filled By O.E.M.", all-zero UUIDs) are recorded as null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// SMBIOS system UUID (type 1), lower case as the kernel prints it.
    pub product_uuid: Option<String>,
    /// SMBIOS system serial number (type 1): the asset tag technicians use.
    pub product_serial: Option<String>,
    /// SMBIOS system manufacturer.
    pub sys_vendor: Option<String>,
    /// SMBIOS product name (model).
    pub product_name: Option<String>,
}

/// How the rescue was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// `uefi` if the kernel exposed `/sys/firmware/efi`, else `bios`.
    pub firmware: Firmware,
    /// The UEFI `SecureBoot` variable was 1. False on BIOS or when unreadable
    /// (a message says which).
    pub secure_boot: bool,
    /// The `defib.mode=` in force.
    pub mode: Mode,
    /// Where the image came from.
    pub medium: MediumKind,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// `/proc/cmdline`, trimmed.
    pub cmdline: String,
    /// Each PID 1 step up to the report's write, with its duration, in
    /// order; empty in host runs.
    #[serde(default)]
    pub timings: Vec<StepTime>,
}

/// How long one PID 1 step took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    /// The step's name in the PID 1 table (`modules`, `devices`, …).
    pub step: String,
    /// Seconds, to the millisecond.
    pub seconds: f64,
}

impl Eq for StepTime {}

impl StepTime {
    pub fn new(step: &str, took: std::time::Duration) -> StepTime {
        StepTime {
            step: step.to_string(),
            seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
        }
    }
}

/// Firmware interface the machine booted through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Uefi,
    Bios,
}

/// The boot medium's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediumKind {
    /// A USB stick (its sysfs path runs through a USB controller).
    Usb,
    /// Network boot: no medium to write to.
    Pxe,
    /// An optical drive (`sr*`).
    Cdrom,
    /// Any other block device (an internal disk, a virtual disk in a VM).
    Disk,
    /// No medium was found and no hint said PXE.
    None,
}

/// Kernel module loading results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modules {
    /// Modules loaded now or found already present (built in or loaded).
    pub loaded: u32,
    /// Modules the image carries (`defib.load`); those for hardware the
    /// machine lacks are carried but not loaded.
    #[serde(default)]
    pub carried: u32,
    /// Names of the modules loaded, sorted (`-` written `_`).
    #[serde(default)]
    pub names: Vec<String>,
    /// Modules the kernel refused, with the reason.
    pub failed: Vec<ModuleFailure>,
    /// Modules for hardware this machine does not have (their init said
    /// ENODEV), and those that depend on them.
    #[serde(default)]
    pub not_applicable: Vec<String>,
}

/// One module that did not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleFailure {
    /// Path relative to `/lib/modules/<kver>/`, as listed in `defib.load`.
    pub module: String,
    /// The error, e.g. `Key was rejected by service (os error 129)`.
    pub error: String,
}

/// The outcome of a run, from best to worst news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No NTFS or BitLocker volume on any disk.
    NoWindowsFound,
    /// Windows found and nothing matched a playbook.
    Clean,
    /// Windows found and repaired.
    Repaired,
    /// A person must act (locked volume, ambiguity, engine missing).
    NeedsAttention,
    /// The rescue itself failed.
    Failed,
}

impl Verdict {
    /// The spelling used in JSON and on the `defib: verdict` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NoWindowsFound => "no-windows-found",
            Verdict::Clean => "clean",
            Verdict::Repaired => "repaired",
            Verdict::NeedsAttention => "needs-attention",
            Verdict::Failed => "failed",
        }
    }
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        }
    }
}

impl MediumKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediumKind::Usb => "usb",
            MediumKind::Pxe => "pxe",
            MediumKind::Cdrom => "cdrom",
            MediumKind::Disk => "disk",
            MediumKind::None => "none",
        }
    }
}

impl Report {
    /// The report of a run that starts now: what every run knows at its
    /// start, the rest filled in step by step. PID 1 and host mode both
    /// begin here.
    pub fn begin(started: SystemTime, run_id: String, mode: Mode) -> Report {
        let at = crate::runid::rfc3339(started);
        Report {
            schema: SCHEMA,
            defib_version: crate::VERSION.to_string(),
            run_id,
            started: at.clone(),
            finished: at,
            build_id: None,
            machine: Machine::default(),
            boot: Boot {
                firmware: Firmware::Bios,
                secure_boot: false,
                mode,
                medium: MediumKind::None,
                kernel: String::new(),
                cmdline: String::new(),
                timings: Vec::new(),
            },
            modules: Modules::default(),
            volumes: Vec::new(),
            windows: Vec::new(),
            messages: Vec::new(),
            verdict: Verdict::Failed,
            network: None,
            store: None,
            firmware: None,
        }
    }

    /// Stamps the finish time; the report is ready to write.
    pub fn finish(&mut self, now: SystemTime) {
        self.finished = crate::runid::rfc3339(now);
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("serializing report")?;
        v.push(b'\n');
        Ok(v)
    }
}

// ---- The Windows section: one entry per Windows volume. ----

/// What the raw volume says before anything is mounted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeState {
    /// BitLocker: locked (defib cannot unlock it yet); key protectors listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitlocker: Option<BitlockerState>,
    /// The NTFS "dirty" flag ($Volume): Windows did not shut down cleanly
    /// or chkdsk is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    /// `hiberfil.sys` header: `none`, `live` (hibernated or Fast Startup),
    /// `resumed`, or `unknown: …`.
    #[serde(default)]
    pub hibernation: String,
    /// Mounted read-write and changed.
    #[serde(default)]
    pub written: bool,
    /// The NTFS volume serial as `blkid` prints it (16 uppercase hex
    /// digits), for matching a report to a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntfs_serial: Option<String>,
    /// Interrupted earlier runs rolled back before this one looked (one
    /// line each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BitlockerState {
    pub encryption_method: Option<String>,
    /// `guid (kind)` of each key protector, e.g. `3fd7…4e0c (recovery-password)`.
    pub key_protectors: Vec<String>,
    /// Unlocked by this run (mapped with dm-crypt, locked again after).
    #[serde(default)]
    pub unlocked: bool,
    /// The protector GUID that opened it; never the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlocked_with: Option<String>,
    /// Where the key came from: `typed`, `key-file`, `sealed-key-file`,
    /// `network`, `startup-key` or `clear-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_source: Option<String>,
    /// SHA-256 of the whole mapped plain device, when asked for
    /// (`defib.hash-unlocked=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_sha256: Option<String>,
    /// Why it stayed locked, with the protector IDs to look up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_reason: Option<String>,
}

/// The Windows identity, as the report records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub windows_dir: String,
    pub product_name: Option<String>,
    pub version: Option<String>,
    pub build: Option<u32>,
    pub ubr: Option<u32>,
    pub service_pack: Option<String>,
    pub display_version: Option<String>,
    pub arch: Option<String>,
    pub computer_name: Option<String>,
    pub notes: Vec<String>,
}

impl From<&WindowsInstall> for Identity {
    fn from(w: &WindowsInstall) -> Identity {
        Identity {
            windows_dir: w.windows_dir.clone(),
            product_name: w.product_name.clone(),
            version: w.current_version.clone(),
            build: w.build,
            ubr: w.ubr,
            service_pack: w.service_pack.clone(),
            display_version: w.display_version.clone(),
            arch: w.arch.map(|a| a.as_str().to_string()),
            computer_name: w.computer_name.clone(),
            notes: w.notes.clone(),
        }
    }
}

/// One Windows volume's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowsReport {
    /// Device (`sda2`) or, in host mode, the root folder.
    pub volume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    pub state: VolumeState,
    pub playbooks: Vec<PlaybookResult>,
    /// `\defib\<run-id>` on this volume when the run changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    pub next_step: String,
    /// Will Windows start now: the BCD default entry, pending servicing,
    /// hibernation (docs/boot-health.md). Absent when no installation was
    /// read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_health: Option<crate::boothealth::BootHealth>,
    /// Where the volume is mounted now (for the caller to write reports).
    #[serde(skip)]
    pub mount: Option<PathBuf>,
}

// ---- The network section (PXE boots that deliver the report). ----

/// The network section of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The interface used (`eth0`, `ens3`…), null if none came up.
    pub interface: Option<String>,
    /// Its MAC address.
    pub mac: Option<String>,
    /// `address/prefix`, e.g. `10.0.2.15/24`.
    pub address: Option<String>,
    /// How the address was obtained: `cmdline` (ip= from the boot loader) or `dhcp`.
    pub config: Option<String>,
    /// The URL the report was PUT to.
    pub report_url: Option<String>,
    /// How it travelled: `https` (TLS to the certificate pinned by
    /// `defib.tls=`, whose SHA-256 is in `tls_pin`) or `http` (plain: anyone
    /// on the wire could read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// `sha256:…` of the certificate the server had to show (https only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_pin: Option<String>,
    /// The server answered 2xx. In the copy the server received, true.
    pub delivered: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Bus, FsKind};

    fn sample() -> Report {
        Report {
            schema: SCHEMA,
            defib_version: "0.1.0".into(),
            run_id: "20261126T050215Z-1a2b3c4d".into(),
            started: "2026-11-26T05:02:15Z".into(),
            finished: "2026-11-26T05:02:40Z".into(),
            build_id: None,
            machine: Machine {
                product_uuid: Some("4c4c4544-0042-3510-8051-b4c04f4e3232".into()),
                product_serial: Some("5Q/2 X".into()),
                sys_vendor: None,
                product_name: None,
            },
            boot: Boot {
                firmware: Firmware::Uefi,
                secure_boot: true,
                mode: Mode::Scan,
                medium: MediumKind::Usb,
                kernel: "6.12.57+deb13-amd64".into(),
                cmdline: "quiet".into(),
                timings: vec![StepTime::new(
                    "modules",
                    std::time::Duration::from_millis(1234),
                )],
            },
            modules: Modules {
                loaded: 3,
                carried: 80,
                names: vec!["ahci".into(), "libata".into(), "ntfs3".into()],
                failed: vec![ModuleFailure {
                    module: "kernel/drivers/net/e1000e.ko.xz".into(),
                    error: "Key was rejected by service".into(),
                }],
                not_applicable: vec!["kernel/arch/x86/crypto/aesni-intel.ko.xz".into()],
            },
            volumes: vec![Volume {
                device: "sda1".into(),
                size_bytes: 512,
                fs: FsKind::Bitlocker,
                bus: Bus::Nvme,
                removable: false,
                partition: true,
                boot_medium: false,
            }],
            windows: Vec::new(),
            messages: vec!["hello".into()],
            verdict: Verdict::NeedsAttention,
            network: None,
            store: None,
            firmware: None,
        }
    }

    #[test]
    fn round_trips_with_exact_spellings() {
        let r = sample();
        let json = String::from_utf8(r.to_json().unwrap()).unwrap();
        for s in [
            r#""schema": 1"#,
            r#""build_id": null"#,
            r#""firmware": "uefi""#,
            r#""mode": "scan""#,
            r#""medium": "usb""#,
            r#""fs": "bitlocker""#,
            r#""bus": "nvme""#,
            r#""verdict": "needs-attention""#,
        ] {
            assert!(json.contains(s), "missing {s} in {json}");
        }
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn enum_spellings() {
        fn j<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }
        assert_eq!(j(&Verdict::NoWindowsFound), "\"no-windows-found\"");
        assert_eq!(j(&Verdict::Clean), "\"clean\"");
        assert_eq!(j(&Verdict::Repaired), "\"repaired\"");
        assert_eq!(j(&Verdict::Failed), "\"failed\"");
        assert_eq!(j(&Firmware::Bios), "\"bios\"");
        assert_eq!(j(&MediumKind::Pxe), "\"pxe\"");
        assert_eq!(j(&MediumKind::Cdrom), "\"cdrom\"");
        assert_eq!(j(&MediumKind::Disk), "\"disk\"");
        assert_eq!(j(&MediumKind::None), "\"none\"");
        assert_eq!(j(&Mode::Auto), "\"auto\"");
        assert_eq!(j(&Mode::Shell), "\"shell\"");
        assert_eq!(j(&FsKind::Ntfs), "\"ntfs\"");
        assert_eq!(j(&FsKind::Fat), "\"fat\"");
        assert_eq!(j(&FsKind::Unknown), "\"unknown\"");
        for b in [Bus::Usb, Bus::Ata, Bus::Virtio, Bus::Scsi, Bus::Unknown] {
            assert_eq!(j(&b), format!("\"{}\"", b.as_str()));
        }
        for v in [
            Verdict::NoWindowsFound,
            Verdict::Clean,
            Verdict::Repaired,
            Verdict::NeedsAttention,
            Verdict::Failed,
        ] {
            assert_eq!(j(&v), format!("\"{}\"", v.as_str()));
        }
    }

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize_name(" 5Q/2 X\n"), "5Q_2_X");
        assert_eq!(sanitize_name("..\\evil"), "_evil");
        assert_eq!(sanitize_name("..."), "unknown");
        assert_eq!(sanitize_name("ok.name-1_2"), "ok.name-1_2");
        assert_eq!(sanitize_name(&"a".repeat(100)).len(), 64);
        assert_eq!(sanitize_name("Ü"), "_");
    }

    #[test]
    fn file_name_prefers_serial_then_uuid() {
        let mut r = sample();
        assert_eq!(r.file_name(), "5Q_2_X-20261126T050215Z-1a2b3c4d.json");
        r.machine.product_serial = None;
        assert!(r.file_name().starts_with("4c4c4544-"));
        r.machine.product_uuid = None;
        assert!(r.file_name().starts_with("unknown-"));
        // No DMI serial, but the victim's registry named the PC.
        r.windows.push(WindowsReport {
            volume: "sda2".into(),
            identity: Some(Identity {
                computer_name: Some("ICU/STATION 12".into()),
                ..Default::default()
            }),
            state: Default::default(),
            playbooks: Vec::new(),
            run_dir: None,
            verdict: Verdict::Clean,
            reason: String::new(),
            next_step: String::new(),
            boot_health: None,
            mount: None,
        });
        r.machine.product_uuid = Some("4c4c4544-0000".into());
        assert!(
            r.file_name().starts_with("ICU_STATION_12-"),
            "{}",
            r.file_name()
        );
    }
}
