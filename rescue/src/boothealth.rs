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
            h.path_exists = crate::playbook::split_path(p)
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
