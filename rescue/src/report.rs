//! The run report (schema 1): what the rescue saw and decided on one machine,
//! written as JSON to `reports/<machine>-<run_id>.json` on the boot medium.
//!
//! The builder reads these back (`defib` inspects used sticks), so every type
//! here deserializes as well as serializes, and every enum spelling is part
//! of the format. This module is not the victim-side journal; that comes with
//! the repair engine.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cmdline::Mode;
use crate::probe::Volume;

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
    pub windows: Vec<crate::repair::WindowsReport>,
    /// Warnings and notes for the technician, in the order they arose.
    pub messages: Vec<String>,
    /// The outcome of the run.
    pub verdict: Verdict,
    /// Network and report delivery (`defib.report=`); absent when the
    /// rescue did not use the network, and in copies written before it did
    /// (the victim disk's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::Network>,
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

/// RFC 3339 UTC to the second: `2026-11-26T05:02:15Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A run id: `20261126T050215Z-1a2b3c4d`. `random` is 4 bytes from
/// getrandom, or `None` to derive them from the clock.
pub fn run_id(t: SystemTime, random: Option<[u8; 4]>) -> String {
    let stamp: String = rfc3339(t)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let bytes = random.unwrap_or_else(|| {
        // Time-derived fallback: sub-second nanoseconds mixed with the
        // seconds, so two machines booted in the same second still differ.
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let x = d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16);
        x.to_be_bytes()
    });
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{stamp}-{hex}")
}

/// 4 random bytes without blocking. GRND_INSECURE (Linux 5.6+) answers even
/// before the entropy pool is seeded, which is typical this early in boot;
/// a run id needs uniqueness, not secrecy.
pub fn random4() -> Option<[u8; 4]> {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::INSECURE) {
        Ok(4) => Some(b),
        _ => None,
    }
}

/// Reduces a machine name to `[A-Za-z0-9._-]` so it is safe as a FAT file
/// name: other characters become `_`, leading dots go, at most 64 chars.
pub fn sanitize_name(raw: &str) -> String {
    let s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

impl Report {
    /// The name a report takes under `reports/`: serial, else UUID, else
    /// `unknown`, then the run id.
    pub fn file_name(&self) -> String {
        let who = self
            .machine
            .product_serial
            .as_deref()
            .or(self.machine.product_uuid.as_deref())
            .unwrap_or("unknown");
        format!("{}-{}.json", sanitize_name(who), self.run_id)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("serializing report")?;
        v.push(b'\n');
        Ok(v)
    }
}

/// Writes `data` as `dir/name` so that a crash or a pulled stick leaves
/// either the old state or the whole file: write a temp name in the same
/// directory, fsync it, rename over, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    // A temp file left by an earlier crash is ours to replace.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Bus, FsKind};
    use std::time::Duration;

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
            },
            modules: Modules {
                loaded: 3,
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
    fn run_id_shape() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_669_335);
        assert_eq!(
            run_id(t, Some([0x1a, 0x2b, 0x3c, 0x4d])),
            "20261126T050215Z-1a2b3c4d"
        );
        let fallback = run_id(t + Duration::from_nanos(123_456), None);
        assert_eq!(fallback.len(), "20261126T050215Z-1a2b3c4d".len());
        assert!(fallback.starts_with("20261126T050215Z-"));
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
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A stale temp from a crashed run must not block the write.
        fs::write(dir.path().join(".r.json.tmp"), "stale").unwrap();
        let p = write_atomic(dir.path(), "r.json", b"one").unwrap();
        assert_eq!(p, dir.path().join("r.json"));
        write_atomic(dir.path(), "r.json", b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
    }

    #[test]
    fn atomic_write_reports_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("nope"), "r.json", b"x").unwrap_err();
        assert!(format!("{err:#}").contains("creating"));
    }
}
