//! Will Windows start now? After the playbooks ran, one installation is
//! looked at as the boot manager and the kernel will see it on the next
//! boot: the BCD default entry (safe mode, boot status policy, recovery,
//! the loader it names), servicing operations waiting for that boot, and
//! hibernation / Fast Startup. Reading only; the one change defib makes
//! here (clearing `safeboot`) is a playbook action in `engine`.
//!
//! Where the BCD store is: on UEFI the EFI system partition's
//! `\EFI\Microsoft\Boot\BCD`; on BIOS the active partition's `\Boot\BCD`,
//! which is the Windows volume itself when Windows was installed without a
//! separate "System Reserved" partition. Windows XP has no BCD (its boot
//! loader reads `boot.ini`). The system partition is handed in as a
//! directory: PID 1 mounts it, host mode takes `--esp DIR`, tests make one.

use crate::bcd::{self, SafeBoot};
use crate::windows::WindowsInstall;
use crate::winpath;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The BCD store on the UEFI system partition.
pub const ESP_BCD: [&str; 4] = ["EFI", "Microsoft", "Boot", "BCD"];
/// The BCD store on a BIOS active partition (or the Windows volume).
pub const BIOS_BCD: [&str; 2] = ["Boot", "BCD"];

pub use crate::journal::Volume;

/// A BCD store found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcdFile {
    pub volume: Volume,
    /// Path relative to that volume's root, as spelled on disk.
    pub rel: String,
    /// The file on this machine.
    pub path: PathBuf,
}

impl BcdFile {
    /// How the report names it: `system partition \EFI\Microsoft\Boot\BCD`.
    pub fn describe(&self) -> String {
        format!(
            "{} \\{}",
            match self.volume {
                Volume::System => "system partition",
                Volume::Windows => "Windows volume",
            },
            self.rel
        )
    }
}

/// Finds the BCD store for the Windows volume at `root`: the system
/// partition's UEFI then BIOS location, then the Windows volume's own
/// `\Boot\BCD`. Names are matched without case; links are not followed.
pub fn find_bcd(root: &Path, system: Option<&Path>) -> anyhow::Result<Option<BcdFile>> {
    let mut places: Vec<(Volume, &Path, &[&str])> = Vec::new();
    if let Some(s) = system {
        places.push((Volume::System, s, &ESP_BCD));
        places.push((Volume::System, s, &BIOS_BCD));
    }
    places.push((Volume::Windows, root, &BIOS_BCD));
    for (volume, base, parts) in places {
        let parts: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        if let Some(p) = winpath::resolve(base, &parts)? {
            if p.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
                return Ok(Some(BcdFile {
                    volume,
                    rel: winpath::display_rel(base, &p),
                    path: p,
                }));
            }
        }
    }
    Ok(None)
}

/// The `boot_health` section of a Windows report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootHealth {
    pub bcd: BcdHealth,
    pub pending: Pending,
    pub power: Power,
    /// One line per thing that can stop the next boot, with what to do.
    pub findings: Vec<Finding>,
}

/// What the BCD store says about the default entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BcdHealth {
    /// `read`, `not-found`, `pre-vista` (XP: `boot.ini`, no BCD),
    /// `unreadable`.
    pub status: String,
    /// Where it was read (`system partition \EFI\Microsoft\Boot\BCD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the store is dirty or its logs hold data (then it is read
    /// as it is, without the logs, and never edited).
    #[serde(default)]
    pub dirty: bool,
    /// The boot manager's `default` element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_entry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `path` of the default entry (the Windows loader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether that loader exists on the Windows volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exists: Option<bool>,
    /// `minimal`, `network`, `dsrepair` or the number; null when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safeboot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safeboot_alternate_shell: Option<bool>,
    /// bcdedit's name (`IgnoreAllFailures`) or the number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstatuspolicy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoveryenabled: Option<bool>,
}

/// Servicing work Windows does on the next boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// `Windows\WinSxS\pending.xml` exists.
    pub pending_xml: bool,
    /// Entries (source/destination pairs) in `PendingFileRenameOperations`;
    /// null when the SYSTEM hive could not be read.
    pub file_rename_operations: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Hibernation and Fast Startup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Power {
    /// `hiberfil.sys`: `none`, `live`, `resumed`, `unknown: …`.
    pub hiberfil: String,
    /// `Control\Session Manager\Power\HiberbootEnabled` (Fast Startup).
    pub hiberboot_enabled: Option<bool>,
}

/// One thing that may stop Windows from starting normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub what: String,
    pub next: String,
}

fn safeboot_name(s: SafeBoot) -> String {
    match s {
        SafeBoot::Minimal => "minimal".into(),
        SafeBoot::Network => "network".into(),
        SafeBoot::DsRepair => "dsrepair".into(),
        SafeBoot::Other(n) => n.to_string(),
    }
}

/// `bootstatuspolicy` values as bcdedit names them
/// (`BcdOSLoader_BootStatusPolicy`).
fn policy_name(v: u64) -> String {
    match v {
        0 => "DisplayAllFailures".into(),
        1 => "IgnoreAllFailures".into(),
        2 => "IgnoreShutdownFailures".into(),
        3 => "IgnoreBootFailures".into(),
        4 => "IgnoreCheckpointFailures".into(),
        5 => "DisplayShutdownFailures".into(),
        6 => "DisplayBootFailures".into(),
        7 => "DisplayCheckpointFailures".into(),
        n => n.to_string(),
    }
}

/// Reads a BCD store with the refusals the editor makes: whether it is
/// dirty or its logs hold data (both mean "do not edit").
pub fn read_store(f: &BcdFile) -> anyhow::Result<(Vec<u8>, bool)> {
    use anyhow::Context;
    let len = std::fs::metadata(&f.path)
        .with_context(|| format!("reading {}", f.path.display()))?
        .len();
    // A BCD store is tens of KiB; anything near this is not one.
    anyhow::ensure!(
        len <= 64 << 20,
        "{} is {len} bytes, not a BCD store",
        f.describe()
    );
    let bytes = std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display()))?;
    let logs = read_logs(&f.path)?;
    let dirty = crate::hivelog::is_dirty(&bytes)
        || logs.iter().any(|(_, d)| crate::hivelog::log_holds_data(d));
    Ok((bytes, dirty))
}

/// The store's `.LOG`, `.LOG1`, `.LOG2` beside it, as (name, bytes).
pub fn read_logs(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use anyhow::Context;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let name = name.to_string_lossy();
    let mut out = Vec::new();
    for ext in ["LOG", "LOG1", "LOG2"] {
        let want = format!("{name}.{ext}");
        if let Some(p) = winpath::resolve(dir, std::slice::from_ref(&want))? {
            if !p.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
                continue;
            }
            let len = std::fs::metadata(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .len();
            anyhow::ensure!(len <= 64 << 20, "{} is too large for a log", p.display());
            let d = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            out.push((want, d));
        }
    }
    Ok(out)
}

fn bcd_health(root: &Path, w: &WindowsInstall, system: Option<&Path>) -> BcdHealth {
    let mut h = BcdHealth::default();
    let found = match find_bcd(root, system) {
        Ok(f) => f,
        Err(e) => {
            h.status = "unreadable".into();
            h.error = Some(format!("{e:#}"));
            return h;
        }
    };
    let Some(f) = found else {
        let pre_vista = w.build.is_some_and(|b| b < 6000)
            || winpath::resolve(root, &["boot.ini".to_string()])
                .ok()
                .flatten()
                .is_some();
        h.status = if pre_vista { "pre-vista" } else { "not-found" }.into();
        return h;
    };
    h.store = Some(f.describe());
    let (bytes, dirty) = match read_store(&f) {
        Ok(r) => r,
        Err(e) => {
            h.status = "unreadable".into();
            h.error = Some(format!("{e:#}"));
            return h;
        }
    };
    h.dirty = dirty;
    let rep = match crate::guard::contain("BCD", || bcd::read(&bytes)) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            h.status = "unreadable".into();
            h.error = Some(e.to_string());
            return h;
        }
        Err(e) => {
            h.status = "unreadable".into();
            h.error = Some(e.to_string());
            return h;
        }
    };
    h.status = "read".into();
    h.default_entry = rep.default_id;
    if let Some(e) = rep.default_entry {
        h.description = e.description;
        h.safeboot = e.safeboot.map(safeboot_name);
        h.safeboot_alternate_shell = e.safeboot_alternate_shell;
        h.bootstatuspolicy = e.bootstatuspolicy.map(policy_name);
        h.recoveryenabled = e.recovery_enabled;
        if let Some(p) = &e.path {
            // The loader path is on the OS device; defib looks for it on
            // the Windows volume it is checking (the `osdevice` blob that
            // would say which volume is undocumented).
            h.path_exists = crate::playbook::split_path(p.trim_start_matches(['\\', '/']))
                .ok()
                .and_then(|parts| winpath::resolve(root, &parts).ok())
                .map(|r| r.is_some_and(|x| x.is_file()));
        }
        h.path = e.path;
    }
    h
}

fn pending(root: &Path, w: &WindowsInstall) -> Pending {
    let mut p = Pending::default();
    let wd = &w.windows_dir;
    p.pending_xml = winpath::resolve(root, &[wd.clone(), "WinSxS".into(), "pending.xml".into()])
        .ok()
        .flatten()
        .is_some();
    let sys = winpath::resolve(
        root,
        &[
            wd.clone(),
            "System32".into(),
            "config".into(),
            "SYSTEM".into(),
        ],
    );
    let hive = match sys {
        Ok(Some(path)) => {
            match crate::guard::contain("SYSTEM", || crate::hivelog::open_hive(&path)) {
                Ok(Ok((h, _))) => h,
                Ok(Err(e)) => {
                    p.error = Some(format!("{e:#}"));
                    return p;
                }
                Err(e) => {
                    p.error = Some(e.to_string());
                    return p;
                }
            }
        }
        Ok(None) => {
            p.error = Some("no SYSTEM hive".into());
            return p;
        }
        Err(e) => {
            p.error = Some(format!("{e:#}"));
            return p;
        }
    };
    match control_set(&hive).and_then(|cs| {
        hive.value(
            &format!("{cs}\\Control\\Session Manager"),
            "PendingFileRenameOperations",
        )
    }) {
        Ok(None) => p.file_rename_operations = Some(0),
        Ok(Some(crate::winreg::RegData::MultiSz(v))) => {
            // Pairs: source, destination (empty = delete). A list cut
            // after its last source still names that operation.
            p.file_rename_operations = Some(v.len().div_ceil(2));
        }
        Ok(Some(_)) => p.error = Some("PendingFileRenameOperations is not a REG_MULTI_SZ".into()),
        Err(e) => p.error = Some(format!("{e:#}")),
    }
    p
}

/// `ControlSet00N` from `Select\Current`.
fn control_set(hive: &crate::winreg::Hive) -> anyhow::Result<String> {
    let n = hive
        .value("Select", "Current")?
        .and_then(|d| d.as_u64())
        .ok_or_else(|| anyhow::anyhow!("the SYSTEM hive has no Select\\Current"))?;
    anyhow::ensure!((1..=999).contains(&n), "Select\\Current is {n}");
    Ok(format!("ControlSet{n:03}"))
}

fn power(root: &Path, w: &WindowsInstall) -> Power {
    let (hiberfil, _) = crate::volstate::hibernation_summary(root);
    let hiberboot = winpath::resolve(
        root,
        &[
            w.windows_dir.clone(),
            "System32".into(),
            "config".into(),
            "SYSTEM".into(),
        ],
    )
    .ok()
    .flatten()
    .and_then(|p| {
        crate::guard::contain("SYSTEM", || crate::hivelog::open_hive(&p))
            .ok()?
            .ok()
    })
    .and_then(|(h, _)| {
        let cs = control_set(&h).ok()?;
        h.value(
            &format!("{cs}\\Control\\Session Manager\\Power"),
            "HiberbootEnabled",
        )
        .ok()?
        .and_then(|d| d.as_u64())
    })
    .map(|v| v != 0);
    Power {
        hiberfil,
        hiberboot_enabled: hiberboot,
    }
}

/// The boot health of the installation `w` on `root`, with the system
/// partition at `system` when there is one.
pub fn check(root: &Path, w: &WindowsInstall, system: Option<&Path>) -> BootHealth {
    let bcd = bcd_health(root, w, system);
    let pending = pending(root, w);
    let power = power(root, w);
    let mut findings = Vec::new();
    let mut add = |what: String, next: &str| {
        findings.push(Finding {
            what,
            next: next.into(),
        })
    };
    match bcd.status.as_str() {
        "not-found" => add(
            match system {
                Some(_) => "no BCD store on the system partition or the Windows volume".into(),
                None => "no BCD store on the Windows volume, and no system partition was given".into(),
            },
            "in host mode pass --esp DIR (the mounted EFI system partition); otherwise rebuild the boot files from Windows RE: bcdboot C:\\Windows",
        ),
        "unreadable" => add(
            format!(
                "the BCD store cannot be read: {}",
                bcd.error.as_deref().unwrap_or("?")
            ),
            "rebuild it from Windows RE: bcdboot C:\\Windows",
        ),
        _ => {}
    }
    if let Some(s) = &bcd.safeboot {
        add(
            format!("the default boot entry starts Windows in Safe Mode ({s})"),
            "boot defib's 'Repair automatically' entry when a playbook clears it, or in Windows (or Windows RE): bcdedit /deletevalue {default} safeboot",
        );
    }
    if bcd.path_exists == Some(false) {
        add(
            format!(
                "the Windows loader the default entry names ({}) is not on this volume",
                bcd.path.as_deref().unwrap_or("?")
            ),
            "rebuild the boot files from Windows RE: bcdboot C:\\Windows",
        );
    }
    if pending.pending_xml {
        add(
            "Windows has servicing operations pending (WinSxS\\pending.xml); the next boot carries them out and can take long or fail".into(),
            "let the first boot finish; if it fails, from Windows RE: dism /image:C:\\ /cleanup-image /revertpendingactions",
        );
    }
    if let Some(n) = pending.file_rename_operations.filter(|n| *n > 0) {
        add(
            format!("{n} file rename or delete operation(s) are pending for the next boot (PendingFileRenameOperations)"),
            "usually harmless; if Windows still does not start, check the files they name",
        );
    }
    if power.hiberfil == "live" || power.hiberfil.starts_with("unknown") {
        add(
            format!(
                "Windows is hibernated or used Fast Startup (hiberfil.sys: {})",
                power.hiberfil
            ),
            "boot Windows RE and run `powercfg /h off`, or let Windows resume once",
        );
    }
    BootHealth {
        bcd,
        pending,
        power,
        findings,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::{self, ActionStatus, Mode, Status};
    use crate::journal;
    use std::process::Command;

    const PREFIX: &str = "HKEY_LOCAL_MACHINE\\H";
    /// The OS loader object the fixtures' boot manager names as default.
    pub(crate) const LOADER: &str = "{5d2c1a3e-7b4f-4e21-9c3d-2f6b8a1e0c47}";

    /// A `.reg` value: `"name"=<rhs>`.
    pub(crate) enum R<'a> {
        Sz(&'a str),
        Bin(&'a [u8]),
        Dword(u32),
        Multi(&'a [&'a str]),
    }

    fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A hive made from `yarp-EmptyHive` (written by Windows) with
    /// `hivexregedit --merge`: an independent writer, so the reader and the
    /// editor are tested on bytes they did not make.
    pub(crate) fn make(dest: &Path, keys: &[(&str, &[(&str, R)])]) {
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(
            crate::winreg::tests::corpus("registry/yarp-EmptyHive"),
            dest,
        )
        .unwrap();
        let mut perm = std::fs::metadata(dest).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(dest, perm).unwrap();
        let mut reg = String::from("Windows Registry Editor Version 5.00\r\n\r\n");
        let mut made: Vec<String> = Vec::new();
        for (key, values) in keys {
            let parts: Vec<&str> = key.split('\\').collect();
            for n in 1..parts.len() {
                let k = parts[..n].join("\\");
                if !made.contains(&k) {
                    reg.push_str(&format!("[{PREFIX}\\{k}]\r\n\r\n"));
                    made.push(k);
                }
            }
            reg.push_str(&format!("[{PREFIX}\\{key}]\r\n"));
            made.push(key.to_string());
            for (name, v) in values.iter() {
                let rhs = match v {
                    R::Sz(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
                    R::Bin(b) => format!("hex:{}", hex(b)),
                    R::Dword(d) => format!("dword:{d:08x}"),
                    R::Multi(list) => {
                        let mut units: Vec<u8> = Vec::new();
                        for s in list.iter() {
                            units.extend(s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes));
                        }
                        units.extend([0, 0]);
                        format!("hex(7):{}", hex(&units))
                    }
                };
                reg.push_str(&format!("\"{name}\"={rhs}\r\n"));
            }
            reg.push_str("\r\n");
        }
        let reg_path = dest.with_extension("reg");
        std::fs::write(&reg_path, reg.as_bytes()).unwrap();
        let out = Command::new("hivexregedit")
            .args(["--merge", "--prefix", PREFIX])
            .arg(dest)
            .arg(&reg_path)
            .output()
            .expect("hivexregedit is required for these tests: scripts/setup --test");
        assert!(
            out.status.success(),
            "hivexregedit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(reg_path).unwrap();
    }

    /// A BCD store: the boot manager's default is [`LOADER`], an OS loader
    /// with its winload path, description, bootstatuspolicy
    /// IgnoreAllFailures, recoveryenabled off, and `safeboot` when given.
    pub(crate) fn make_bcd(dest: &Path, safeboot: Option<u8>) {
        let bm = |el: &str| format!("Objects\\{}\\Elements\\{el}", bcd::BOOTMGR);
        let os = |el: &str| format!("Objects\\{LOADER}\\Elements\\{el}");
        let sb = safeboot.map(|v| [v, 0, 0, 0, 0, 0, 0, 0]);
        let mut keys: Vec<(String, Vec<(&str, R)>)> = vec![
            (bm("23000003"), vec![("Element", R::Sz(LOADER))]),
            (
                bm("12000004"),
                vec![("Element", R::Sz("Windows Boot Manager"))],
            ),
            (
                os("12000002"),
                vec![("Element", R::Sz("\\Windows\\system32\\winload.efi"))],
            ),
            (os("12000004"), vec![("Element", R::Sz("Windows 10"))]),
            (
                os("250000e0"),
                vec![("Element", R::Bin(&[1, 0, 0, 0, 0, 0, 0, 0]))],
            ),
            (os("16000009"), vec![("Element", R::Bin(&[0]))]),
        ];
        if let Some(b) = &sb {
            keys.push((os("25000080"), vec![("Element", R::Bin(b))]));
        }
        keys.push((os("26000010"), vec![("Element", R::Bin(&[1]))]));
        let refs: Vec<(&str, &[(&str, R)])> = keys
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        make(dest, &refs);
    }

    /// The whole hive as `hivexregedit --export` prints it.
    pub(crate) fn export(hive: &Path) -> String {
        let out = Command::new("hivexregedit")
            .args(["--export", "--prefix", PREFIX])
            .arg(hive)
            .arg("\\")
            .output()
            .expect("hivexregedit is required for these tests: scripts/setup --test");
        assert!(
            out.status.success(),
            "hivexregedit --export {} failed: {}",
            hive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The export split into `[key]` blocks.
    fn blocks(export: &str) -> Vec<String> {
        export
            .split("\n\n")
            .map(|b| b.trim().to_string())
            .filter(|b| b.starts_with('['))
            .collect()
    }

    #[test]
    fn a_store_written_by_hivex_reads_and_clearing_removes_exactly_one_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("BCD");
        make_bcd(&p, Some(1));
        let before = std::fs::read(&p).unwrap();
        let rep = bcd::read(&before).unwrap();
        assert_eq!(rep.default_id.as_deref(), Some(LOADER));
        let e = rep.default_entry.unwrap();
        assert_eq!(e.safeboot, Some(SafeBoot::Network));
        assert_eq!(e.path.as_deref(), Some("\\Windows\\system32\\winload.efi"));
        assert_eq!(e.bootstatuspolicy, Some(1));
        assert_eq!(e.recovery_enabled, Some(false));
        assert_eq!(e.description.as_deref(), Some("Windows 10"));

        let after = bcd::clear_safeboot(&before, &[]).unwrap();
        assert_eq!(after.len(), before.len(), "cells are freed, never moved");
        // Both sequence numbers bumped together: a clean hive to Windows.
        let seq = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(seq(&after, 4), seq(&before, 4) + 1);
        assert_eq!(seq(&after, 4), seq(&after, 8));
        assert!(!crate::hivelog::is_dirty(&after));
        let q = d.path().join("BCD.after");
        std::fs::write(&q, &after).unwrap();
        // hivex reads the edited store; every key but the one is the same.
        let (b1, b2) = (blocks(&export(&p)), blocks(&export(&q)));
        let gone: Vec<&String> = b1.iter().filter(|b| !b2.contains(b)).collect();
        assert_eq!(gone.len(), 1, "{gone:#?}");
        assert!(gone[0].starts_with(&format!(
            "[{PREFIX}\\Objects\\{LOADER}\\Elements\\25000080]"
        )));
        assert!(b2.iter().all(|b| b1.contains(b)), "nothing else changed");
        assert_eq!(
            bcd::read(&after).unwrap().default_entry.unwrap().safeboot,
            None
        );
        // Clearing again is a typed refusal, not a second edit.
        assert!(matches!(
            bcd::clear_safeboot(&after, &[]),
            Err(bcd::BcdError::SafebootNotSet(_))
        ));
    }

    #[test]
    fn a_dirty_store_or_one_with_live_logs_is_refused_with_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("BCD");
        make_bcd(&p, Some(0));
        let clean = std::fs::read(&p).unwrap();
        let mut dirty = clean.clone();
        dirty[4] = dirty[4].wrapping_add(1); // primary sequence ahead
        let e = bcd::clear_safeboot(&dirty, &[]).unwrap_err();
        assert!(matches!(e, bcd::BcdError::Dirty), "{e}");
        assert!(
            e.to_string()
                .contains("bcdedit /deletevalue {default} safeboot"),
            "{e}"
        );
        let log = crate::winreg::tests::corpus_xz("registry/regipy-SYSTEM_B-win10.LOG1.xz");
        assert!(crate::hivelog::log_holds_data(&log));
        let logs = [crate::hivelog::LogFile {
            name: "BCD.LOG1",
            data: &log,
        }];
        let e = bcd::clear_safeboot(&clean, &logs).unwrap_err();
        assert!(matches!(e, bcd::BcdError::LogsNotEmpty(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("BCD.LOG1") && msg.contains("bcdedit"), "{msg}");
        // Empty logs (what Windows leaves after a clean flush) are fine.
        let empty = [crate::hivelog::LogFile {
            name: "BCD.LOG1",
            data: &[],
        }];
        assert!(bcd::clear_safeboot(&clean, &empty).is_ok());
    }

    fn file(root: &Path, rel: &str, data: &[u8]) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }

    /// A Windows 10 volume whose CrowdStrike channel file was deleted
    /// through Safe Mode, and its ESP (a folder) with `safeboot` set.
    pub(crate) fn safe_mode_victim(d: &Path) -> (PathBuf, PathBuf) {
        let root = d.join("vol");
        let esp = d.join("esp");
        make(
            &root.join("Windows/System32/config/SOFTWARE"),
            &[(
                r"Microsoft\Windows NT\CurrentVersion",
                &[
                    ("ProductName", R::Sz("Windows 10 Pro")),
                    ("CurrentVersion", R::Sz("6.3")),
                    ("CurrentBuild", R::Sz("19045")),
                ],
            )],
        );
        make(
            &root.join("Windows/System32/config/SYSTEM"),
            &[
                ("Select", &[("Current", R::Dword(1))]),
                (
                    r"ControlSet001\Control\Session Manager",
                    &[(
                        "PendingFileRenameOperations",
                        R::Multi(&[r"\??\C:\old.dll", "", r"\??\C:\a.tmp", r"!\??\C:\a.dll"]),
                    )],
                ),
                (
                    r"ControlSet001\Control\Session Manager\Power",
                    &[("HiberbootEnabled", R::Dword(1))],
                ),
            ],
        );
        file(&root, "Windows/System32/winload.efi", b"loader");
        file(&root, "Windows/WinSxS/pending.xml", b"<xml/>");
        file(
            &root,
            "Windows/System32/drivers/CrowdStrike/CSAgent.sys",
            b"sensor",
        );
        make_bcd(&esp.join("EFI/Microsoft/Boot/BCD"), Some(1));
        (root, esp)
    }

    fn safe_mode_playbooks() -> crate::repair::Payloads {
        let all = crate::playbook::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks"),
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        crate::repair::Payloads {
            playbooks: all
                .into_iter()
                .filter(|p| p.id.starts_with("crowdstrike-"))
                .collect(),
            store: crate::store::Store::open(&d.path().join("none")).unwrap(),
        }
    }

    #[test]
    fn boot_health_reports_safe_mode_pending_work_and_fast_startup() {
        let d = tempfile::tempdir().unwrap();
        let (root, esp) = safe_mode_victim(d.path());
        let installs = crate::windows::find_installs(&root).unwrap();
        let h = check(&root, &installs[0], Some(&esp));
        assert_eq!(h.bcd.status, "read");
        assert_eq!(
            h.bcd.store.as_deref(),
            Some("system partition \\EFI\\Microsoft\\Boot\\BCD")
        );
        assert_eq!(h.bcd.safeboot.as_deref(), Some("network"));
        assert_eq!(h.bcd.bootstatuspolicy.as_deref(), Some("IgnoreAllFailures"));
        assert_eq!(h.bcd.recoveryenabled, Some(false));
        assert_eq!(h.bcd.path_exists, Some(true));
        assert!(h.pending.pending_xml);
        // A deletion (empty destination) in the middle does not cut the
        // list: two operations.
        assert_eq!(h.pending.file_rename_operations, Some(2));
        assert_eq!(h.power.hiberboot_enabled, Some(true));
        assert_eq!(h.power.hiberfil, "none");
        let what: Vec<&str> = h.findings.iter().map(|f| f.what.as_str()).collect();
        assert!(
            what.iter().any(|w| w.contains("Safe Mode (network)")),
            "{what:?}"
        );
        assert!(what.iter().any(|w| w.contains("pending.xml")), "{what:?}");
        assert!(
            what.iter().any(|w| w.starts_with("2 file rename")),
            "{what:?}"
        );
        assert!(h.findings.iter().all(|f| !f.next.is_empty()));

        // The loader gone is a finding; without the ESP the store is not
        // found, and XP has no BCD at all.
        std::fs::remove_file(root.join("Windows/System32/winload.efi")).unwrap();
        let h = check(&root, &installs[0], Some(&esp));
        assert_eq!(h.bcd.path_exists, Some(false));
        assert!(h.findings.iter().any(|f| f.what.contains("winload.efi")));
        let h = check(&root, &installs[0], None);
        assert_eq!(h.bcd.status, "not-found");
        assert!(h.findings[0].next.contains("--esp"), "{:?}", h.findings);
        let xp = d.path().join("xp");
        crate::engine::tests::xp_victim(&xp, 5958);
        file(&xp, "boot.ini", b"[boot loader]");
        let xi = crate::windows::find_installs(&xp).unwrap();
        assert_eq!(check(&xp, &xi[0], None).bcd.status, "pre-vista");
    }

    #[test]
    fn safe_mode_is_cleared_with_the_store_in_the_vault_and_undo_puts_it_back() {
        let d = tempfile::tempdir().unwrap();
        let (root, esp) = safe_mode_victim(d.path());
        let bcd_path = esp.join("EFI/Microsoft/Boot/BCD");
        let original = std::fs::read(&bcd_path).unwrap();
        let payloads = safe_mode_playbooks();
        let eval = |mode, run: &str, sys: Option<&Path>| {
            crate::repair::evaluate_root(&root, sys, "vol", &payloads, mode, run, None).unwrap()
        };

        // Scan: found, nothing written anywhere.
        let w = eval(Mode::Scan, "scan", Some(&esp));
        let pb = w[0]
            .playbooks
            .iter()
            .find(|p| p.id == "crowdstrike-safe-mode")
            .unwrap();
        assert_eq!(pb.status, Status::Found, "{pb:#?}");
        assert_eq!(std::fs::read(&bcd_path).unwrap(), original);
        assert!(!root.join("defib").exists());

        // Without the ESP (host mode without --esp) the playbook does not
        // apply: no store, no guess.
        let w = eval(Mode::Fix, "noesp", None);
        let pb = w[0]
            .playbooks
            .iter()
            .find(|p| p.id == "crowdstrike-safe-mode")
            .unwrap();
        assert_eq!(pb.status, Status::Clean, "{pb:#?}");

        let w = eval(Mode::Fix, "run1", Some(&esp));
        let pb = w[0]
            .playbooks
            .iter()
            .find(|p| p.id == "crowdstrike-safe-mode")
            .unwrap();
        assert_eq!(pb.status, Status::Repaired, "{pb:#?}");
        let a = &pb.actions[0];
        assert_eq!(a.status, ActionStatus::Done);
        let edited = std::fs::read(&bcd_path).unwrap();
        assert_eq!(
            a.sha256_after.as_deref(),
            Some(journal::sha256_bytes(&edited).as_str())
        );
        assert!(!export(&bcd_path).contains("25000080"));
        assert!(export(&bcd_path).contains("250000e0"));
        // The vault holds the original, byte for byte.
        let vault = root
            .join("defib/run1")
            .join(a.vault.as_deref().unwrap().replace('\\', "/"));
        assert_eq!(std::fs::read(&vault).unwrap(), original);
        // No temp file is left on the ESP.
        let names: Vec<String> = std::fs::read_dir(bcd_path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["BCD"]);
        // The report's boot health is read after the fix: no Safe Mode.
        let h = w[0].boot_health.as_ref().unwrap();
        assert_eq!(h.bcd.safeboot, None);
        assert!(!h.findings.iter().any(|f| f.what.contains("Safe Mode")));
        // Idempotent: a second run finds nothing to do.
        let w = eval(Mode::Fix, "run2", Some(&esp));
        let pb = w[0]
            .playbooks
            .iter()
            .find(|p| p.id == "crowdstrike-safe-mode")
            .unwrap();
        assert_eq!(pb.status, Status::Clean, "{pb:#?}");

        // Undo without the ESP says how, and changes nothing.
        let u = engine::undo(&root, None, "run1").unwrap();
        assert!(u.problems.iter().any(|p| p.contains("--esp")), "{u:?}");
        assert_eq!(std::fs::read(&bcd_path).unwrap(), edited);
        // With it, the original is back byte for byte; the vault keeps it.
        let u = engine::undo(&root, Some(&esp), "run1").unwrap();
        assert!(u.problems.is_empty(), "{u:?}");
        assert_eq!(std::fs::read(&bcd_path).unwrap(), original);
        assert_eq!(std::fs::read(&vault).unwrap(), original);
        assert!(
            engine::undo(&root, Some(&esp), "run1").is_err(),
            "undone once"
        );
    }

    #[test]
    fn the_bad_file_and_safe_mode_are_fixed_in_one_run_and_a_dirty_store_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let (root, esp) = safe_mode_victim(d.path());
        let bad = file(
            &root,
            "Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys",
            &[0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1, 9],
        );
        // Stamped like the bad update (04:09 UTC, 19 July 2024).
        std::fs::File::options()
            .write(true)
            .open(&bad)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_721_362_153))
            .unwrap();
        let payloads = safe_mode_playbooks();
        let bcd_path = esp.join("EFI/Microsoft/Boot/BCD");
        // Scan: the file playbook finds its file; the Safe Mode one waits
        // for the file to be gone.
        let w = crate::repair::evaluate_root(
            &root,
            Some(&esp),
            "vol",
            &payloads,
            Mode::Scan,
            "s",
            None,
        )
        .unwrap();
        let st: Vec<(&str, Status)> = w[0]
            .playbooks
            .iter()
            .map(|p| (p.id.as_str(), p.status))
            .collect();
        assert_eq!(
            st,
            [
                ("crowdstrike-c00000291", Status::Found),
                ("crowdstrike-safe-mode", Status::Clean)
            ]
        );
        // A store with a live log: the file is repaired, the store is not
        // touched, and the report says what to do.
        let log = crate::winreg::tests::corpus_xz("registry/regipy-SYSTEM_B-win10.LOG1.xz");
        std::fs::write(esp.join("EFI/Microsoft/Boot/BCD.LOG1"), &log).unwrap();
        let before = std::fs::read(&bcd_path).unwrap();
        let w = crate::repair::evaluate_root(
            &root,
            Some(&esp),
            "vol",
            &payloads,
            Mode::Fix,
            "r1",
            None,
        )
        .unwrap();
        let st: Vec<(&str, Status)> = w[0]
            .playbooks
            .iter()
            .map(|p| (p.id.as_str(), p.status))
            .collect();
        assert_eq!(
            st,
            [
                ("crowdstrike-c00000291", Status::Repaired),
                ("crowdstrike-safe-mode", Status::NeedsAttention)
            ]
        );
        assert!(!bad.exists());
        let a = &w[0].playbooks[1].actions[0];
        assert_eq!(a.status, ActionStatus::Refused);
        assert!(
            a.detail.contains("BCD.LOG1") && a.detail.contains("bcdedit"),
            "{}",
            a.detail
        );
        assert_eq!(std::fs::read(&bcd_path).unwrap(), before);
        assert!(w[0].boot_health.as_ref().unwrap().bcd.dirty);
        // The log emptied (as Windows leaves it): both fixed by the next run.
        std::fs::write(esp.join("EFI/Microsoft/Boot/BCD.LOG1"), b"").unwrap();
        let w = crate::repair::evaluate_root(
            &root,
            Some(&esp),
            "vol",
            &payloads,
            Mode::Fix,
            "r2",
            None,
        )
        .unwrap();
        assert_eq!(
            w[0].playbooks[1].status,
            Status::Repaired,
            "{:#?}",
            w[0].playbooks[1]
        );
        assert_eq!(
            crate::bcd::read(&std::fs::read(&bcd_path).unwrap())
                .unwrap()
                .default_entry
                .unwrap()
                .safeboot,
            None
        );
    }

    /// Every file name in the ESP folder (temp files included).
    fn esp_names(esp: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![esp.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(esp).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn an_interrupted_bcd_edit_converges_and_undo_gives_the_original() {
        let payloads = safe_mode_playbooks();
        let d = tempfile::tempdir().unwrap();
        // The outcome without faults.
        let (root, esp) = safe_mode_victim(&d.path().join("clean"));
        let bcd_rel = "EFI/Microsoft/Boot/BCD";
        let original = std::fs::read(esp.join(bcd_rel)).unwrap();
        crate::repair::evaluate_root(&root, Some(&esp), "vol", &payloads, Mode::Fix, "ok", None)
            .unwrap();
        let cleared = std::fs::read(esp.join(bcd_rel)).unwrap();
        assert_ne!(cleared, original);

        let mut points = 0;
        for n in 1..100 {
            let (root, esp) = safe_mode_victim(&d.path().join(format!("v{n}")));
            journal::set_fault(n, journal::FaultMode::Panic);
            let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::repair::evaluate_root(
                    &root,
                    Some(&esp),
                    "vol",
                    &payloads,
                    Mode::Fix,
                    "first",
                    None,
                )
            }));
            journal::set_fault(0, journal::FaultMode::Panic);
            match crashed {
                Ok(_) => break,
                Err(p) => assert!(p.downcast_ref::<journal::FaultInjected>().is_some()),
            }
            points = n;
            // The next run rolls the cut-off one back, then clears the flag:
            // the same store as an uninterrupted run, no temp file left.
            let w = crate::repair::evaluate_root(
                &root,
                Some(&esp),
                "vol",
                &payloads,
                Mode::Fix,
                "second",
                None,
            )
            .unwrap();
            let sm = w[0]
                .playbooks
                .iter()
                .find(|p| p.id == "crowdstrike-safe-mode")
                .unwrap();
            assert_eq!(sm.status, Status::Repaired, "fault {n}: {sm:#?}");
            assert_eq!(
                std::fs::read(esp.join(bcd_rel)).unwrap(),
                cleared,
                "fault {n}: not converged"
            );
            assert_eq!(esp_names(&esp), [bcd_rel], "fault {n}");
            // Undoing every run gives back the original store.
            while let Some(id) = engine::latest_undoable(&root).unwrap() {
                let u = engine::undo(&root, Some(&esp), &id).unwrap();
                assert!(u.problems.is_empty(), "fault {n}, undo {id}: {u:?}");
            }
            assert_eq!(
                std::fs::read(esp.join(bcd_rel)).unwrap(),
                original,
                "fault {n}: undo lost bytes"
            );
        }
        assert!(points >= 5, "only {points} fault points were exercised");
    }
}
