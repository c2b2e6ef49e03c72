//! From volumes to verdicts: for each NTFS or BitLocker volume, check its
//! state, find the Windows installation on it, run the engine, and say
//! what the technician should do.
//!
//! The order protects the victim: the volume is first mounted read-only and
//! the playbooks evaluated; only when something needs repairing, the mode
//! allows it, and the volume is safe to write (not BitLocker-locked, not
//! hibernated, not dirty unless the playbook allows it) is it remounted
//! read-write. A clean volume is never mounted read-write (a read-write
//! ntfs3 mount replays `$LogFile`, which is itself a change).
//!
//! Kernel work (mounting, reading the raw device) is behind [`VolumeOps`],
//! so all of this runs in tests on plain directories.

use crate::engine::{self, Mode, PlaybookResult, Status};
use crate::playbook::Playbook;
use crate::report::{BitlockerState, Identity, Verdict, VolumeState, WindowsReport};
use crate::store::Store;
use crate::windows;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Playbooks and the known-good store, as carried in `/payloads`.
pub struct Payloads {
    pub playbooks: Vec<Playbook>,
    pub store: Store,
}

impl Payloads {
    /// Loads `<dir>/playbooks/*.toml` and `<dir>/store`.
    pub fn load(dir: &Path) -> Result<Payloads> {
        let pb = dir.join("playbooks");
        let playbooks = if pb.is_dir() {
            crate::playbook::load_dir(&pb)?
        } else {
            Vec::new()
        };
        let store = Store::open(&dir.join("store"))
            .with_context(|| format!("opening the store in {}", dir.display()))?;
        Ok(Payloads { playbooks, store })
    }
}

/// A BitLocker volume: unlocked with the run's keys and mapped (the FVE
/// metadata is never written), then the mapped plain volume goes through
/// the same safe path as any NTFS volume, and the mapping is removed again
/// so the PC boots with its TPM as before. Without a key it is reported
/// with the protector IDs to look up, and nothing is written.
fn check_bitlocker(
    ops: &mut dyn VolumeOps,
    dev: &str,
    payloads: &Payloads,
    mode: Mode,
    run_id: &str,
    only: Option<&str>,
) -> Vec<WindowsReport> {
    let (mapped, state) = match ops.unlock(dev) {
        Ok(u) => u,
        Err(e) => {
            let next = if e.downcast_ref::<crate::bitlocker::Refusal>().is_some() {
                // No key helps: the volume's state, not a key, is missing.
                "no key opens this volume here: repair it from Windows' own recovery environment (WinRE), or let Windows finish the BitLocker conversion first"
            } else {
                "bring the recovery key: type it at the prompt, or put the fleet's key file (BitLockerKeys.csv, the .TXT Windows saved, a .BEK) in the stick's keys folder, and boot defib again"
            };
            let mut r = attention(
                dev,
                format!("BitLocker-locked: {e:#}; nothing was changed"),
                next,
            );
            match ops.bitlocker(dev) {
                Ok(mut b) => {
                    b.locked_reason = Some(format!("{e:#}"));
                    r.state.bitlocker = Some(b);
                }
                Err(m) => r.reason.push_str(&format!(" (metadata unreadable: {m:#})")),
            }
            return vec![r];
        }
    };
    let mut reports = check_volume(ops, &mapped, false, payloads, mode, run_id, only);
    // The caller writes the victim's report into a still-mounted volume, so
    // the lock is deferred when one is mounted: `lock_all` does it.
    let still_mounted = reports.iter().any(|r| r.mount.is_some());
    for r in &mut reports {
        r.state.bitlocker = Some(state.clone());
        r.volume = format!("{dev} (unlocked as {mapped})");
    }
    if reports.is_empty() {
        let mut r = attention(
            dev,
            "BitLocker volume unlocked: no Windows installation on it (a data volume)".into(),
            "nothing to do on this volume",
        );
        r.verdict = Verdict::Clean;
        r.state.bitlocker = Some(state);
        reports.push(r);
    }
    if !still_mounted {
        if let Err(e) = ops.lock(&mapped) {
            for r in &mut reports {
                r.reason
                    .push_str(&format!(" (removing the mapping failed: {e:#})"));
            }
        }
    }
    reports
}

/// The kernel side of volume handling.
pub trait VolumeOps {
    /// Reads BitLocker metadata from the raw volume.
    fn bitlocker(&mut self, dev: &str) -> Result<BitlockerState>;
    /// Reads the NTFS dirty flag from the raw volume.
    fn ntfs_dirty(&mut self, dev: &str) -> Result<bool>;
    /// Mounts with ntfs3; `force` allows a dirty volume read-write.
    fn mount(&mut self, dev: &str, rw: bool, force: bool) -> Result<PathBuf>;
    fn umount(&mut self, dev: &str) -> Result<()>;
    /// The NTFS volume serial from the raw volume's boot sector.
    fn ntfs_serial(&mut self, _dev: &str) -> Result<u64> {
        anyhow::bail!("no raw volume to read")
    }
    /// Opens a BitLocker volume with the keys this run has and maps its
    /// plain volume; returns the mapped device's name and the state for the
    /// report (which protector, from where — never the key). The error
    /// says which protector IDs need a key.
    fn unlock(&mut self, _dev: &str) -> Result<(String, BitlockerState)> {
        anyhow::bail!("unlocking BitLocker is not possible here")
    }
    /// Removes a mapping made by [`VolumeOps::unlock`] (after unmounting).
    fn lock(&mut self, _mapped: &str) -> Result<()> {
        Ok(())
    }
    /// Mounts the system partition of the disk `dev` is on (the EFI system
    /// partition, or the BIOS active partition) read-only or read-write,
    /// remounting when it is mounted the other way; `None` when the disk
    /// has none apart from `dev` itself.
    fn system_partition(&mut self, _dev: &str, _rw: bool) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}

fn attention(volume: &str, reason: String, next: &str) -> WindowsReport {
    WindowsReport {
        volume: volume.into(),
        identity: None,
        state: VolumeState::default(),
        playbooks: Vec::new(),
        run_dir: None,
        verdict: Verdict::NeedsAttention,
        reason,
        next_step: next.into(),
        boot_health: None,
        mount: None,
    }
}

/// Verdict for one installation from its playbook results.
pub fn summarise(playbooks: &[PlaybookResult], mode: Mode) -> (Verdict, String, String) {
    if let Some(p) = playbooks
        .iter()
        .find(|p| p.status == Status::NeedsAttention)
    {
        return (
            Verdict::NeedsAttention,
            format!("{}: {}", p.id, p.reason),
            "see the report for what was tried; repair by hand or supply a known-good file in the store".into(),
        );
    }
    let found: Vec<&str> = playbooks
        .iter()
        .filter(|p| p.status == Status::Found)
        .map(|p| p.id.as_str())
        .collect();
    if !found.is_empty() {
        let next = match mode {
            Mode::Scan => "boot defib's 'Repair automatically' entry to repair it",
            Mode::Fix => "the volume could not be written; see the reason",
        };
        return (
            Verdict::NeedsAttention,
            format!("affected by {} (nothing changed)", found.join(", ")),
            next.into(),
        );
    }
    let repaired: Vec<&str> = playbooks
        .iter()
        .filter(|p| p.status == Status::Repaired)
        .map(|p| p.id.as_str())
        .collect();
    if !repaired.is_empty() {
        return (
            Verdict::Repaired,
            format!("repaired: {}", repaired.join(", ")),
            "remove the stick; Windows should start normally".into(),
        );
    }
    (
        Verdict::Clean,
        "no playbook found damage".into(),
        "nothing to do; look for another cause".into(),
    )
}

/// Evaluates (and in repair mode fixes) the installation(s) at a mounted
/// root. `only` picks one installation by its Windows folder (`--windows`)
/// when a volume holds several. In fix mode, runs that were interrupted
/// are rolled back first, so the playbooks see the volume as it was.
/// `system` is the mounted system partition (ESP) of the volume's disk,
/// where its BCD store is, when there is one.
pub fn evaluate_root(
    root: &Path,
    system: Option<&Path>,
    volume: &str,
    payloads: &Payloads,
    mode: Mode,
    run_id: &str,
    only: Option<&str>,
) -> Result<Vec<WindowsReport>> {
    let mut installs = windows::find_installs(root)?;
    if let Some(dir) = only {
        let all: Vec<String> = installs.iter().map(|i| i.windows_dir.clone()).collect();
        installs.retain(|i| crate::winpath::name_eq(&i.windows_dir, dir.trim_matches(['\\', '/'])));
        if installs.is_empty() {
            anyhow::bail!(
                "--windows {dir}: no Windows installation there (found: {})",
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.join(", ")
                }
            );
        }
    }
    let mut out = Vec::new();
    let ambiguous = installs.len() > 1;
    let recovered = if mode == Mode::Fix && !ambiguous && !installs.is_empty() {
        engine::recover(root, system)?
    } else {
        Vec::new()
    };
    for w in &installs {
        let engine_mode = if mode == Mode::Fix && !ambiguous {
            Mode::Fix
        } else {
            Mode::Scan
        };
        let t = engine::Target {
            root,
            install: w,
            store: &payloads.store,
            mode: engine_mode,
            run_id,
            system,
        };
        let playbooks = engine::run(&t, &payloads.playbooks)?;
        let (mut verdict, mut reason, mut next) = summarise(&playbooks, mode);
        if ambiguous {
            verdict = Verdict::NeedsAttention;
            reason = format!(
                "{} Windows installations on one volume ({}); not choosing one",
                installs.len(),
                installs
                    .iter()
                    .map(|i| i.windows_dir.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            next =
                "pick one from the rescue shell: rescue fix --root <mount> --windows <dir>".into();
        }
        let rd = engine::run_dir(root, run_id);
        out.push(WindowsReport {
            volume: volume.into(),
            identity: Some(Identity::from(w)),
            state: VolumeState {
                written: rd.exists(),
                recovered: recovered.clone(),
                ..Default::default()
            },
            playbooks,
            run_dir: rd
                .exists()
                .then(|| format!("\\{}\\{run_id}", crate::journal::TOP)),
            verdict,
            reason,
            next_step: next,
            boot_health: Some(crate::boothealth::check(root, w, system)),
            mount: Some(root.to_path_buf()),
        });
    }
    Ok(out)
}

/// Why a volume must not be written now, and what the technician should
/// do; `None` when it may be. The one place PID 1 and host mode decide it:
/// a live or unreadable hibernation image blocks (writing under a
/// hibernated Windows loses data), and so does a dirty NTFS volume unless
/// every playbook that would write allows it.
pub fn may_write(
    hibernation: &str,
    hib_blocks: bool,
    dirty: Option<bool>,
    dirty_allowed: bool,
) -> Option<(String, &'static str)> {
    if hib_blocks {
        Some((
            format!("Windows is hibernated or used Fast Startup, or its hibernation file cannot be read (hiberfil.sys: {hibernation}); writing now could corrupt it; nothing was changed"),
            "boot Windows RE and run `powercfg /h off`, or let Windows resume once, then boot defib again",
        ))
    } else if dirty == Some(true) && !dirty_allowed {
        Some((
            "the NTFS volume is marked dirty (unclean shutdown or chkdsk pending); nothing was changed".to_string(),
            "run chkdsk /f from Windows RE, then boot defib again",
        ))
    } else {
        None
    }
}

/// `hiberfil.sys` as the report spells it, and whether it blocks writing
/// (live, or not readable as a known state).
pub fn hibernation(root: &Path) -> (String, bool) {
    crate::volstate::hibernation_summary(root)
}

fn split_system(r: Result<Option<PathBuf>>) -> (Option<PathBuf>, Option<String>) {
    match r {
        Ok(p) => (p, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

/// A system partition that could not be mounted is a boot-health finding:
/// the BCD store on it was not read.
fn note_system_error(r: &mut WindowsReport, err: Option<&str>) {
    let (Some(e), Some(h)) = (err, r.boot_health.as_mut()) else {
        return;
    };
    let f = crate::boothealth::Finding {
        what: format!("the system partition could not be read: {e}"),
        next: "check it from the rescue shell (it holds the boot manager and its BCD store)".into(),
    };
    if !h.findings.contains(&f) {
        h.findings.insert(0, f);
    }
}

/// One volume through the whole safe path. Leaves the volume mounted when a
/// report names a mount (so the caller can write the victim-side reports),
/// and unmounted otherwise. Returns no report for a volume without Windows.
pub fn check_volume(
    ops: &mut dyn VolumeOps,
    dev: &str,
    bitlocker: bool,
    payloads: &Payloads,
    mode: Mode,
    run_id: &str,
    only: Option<&str>,
) -> Vec<WindowsReport> {
    if bitlocker {
        return check_bitlocker(ops, dev, payloads, mode, run_id, only);
    }
    let dirty = ops.ntfs_dirty(dev).ok();
    // Read from the boot sector before any mount: known even when the
    // volume will not mount.
    let serial = ops.ntfs_serial(dev).ok().map(|s| format!("{s:016X}"));
    let root = match ops.mount(dev, false, false) {
        Ok(r) => r,
        Err(e) => {
            let mut r = attention(
                dev,
                format!("NTFS volume could not be mounted read-only: {e:#}"),
                "check the disk (SMART, cabling); run chkdsk from Windows RE",
            );
            r.state.ntfs_serial = serial;
            r.state.dirty = dirty;
            return vec![r];
        }
    };
    let (hib, hib_blocks) = hibernation(&root);
    let (system, system_err) = split_system(ops.system_partition(dev, false));
    let scan = match evaluate_root(
        &root,
        system.as_deref(),
        dev,
        payloads,
        Mode::Scan,
        run_id,
        only,
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = ops.umount(dev);
            return vec![attention(
                dev,
                format!("reading Windows on {dev} failed: {e:#}"),
                "repair by hand from the rescue shell",
            )];
        }
    };
    let set_state = |mut v: Vec<WindowsReport>, written: bool| {
        for r in &mut v {
            note_system_error(r, system_err.as_deref());
            r.state.dirty = dirty;
            r.state.hibernation = hib.clone();
            r.state.ntfs_serial = serial.clone();
            r.state.written = written && r.run_dir.is_some();
        }
        v
    };
    // A run cut off by a crash or power cut must be rolled back before the
    // playbooks can be trusted: its half-done actions may hide the damage.
    // A journal that cannot be read is not "no interrupted run": the
    // volume would look clean with a repair half done on it.
    let interrupted = match engine::interrupted(&root) {
        Ok(v) => v,
        Err(e) => {
            let _ = ops.umount(dev);
            let mut v = set_state(scan, false);
            for r in &mut v {
                r.verdict = Verdict::NeedsAttention;
                r.reason = format!(
                    "the journal of an earlier defib run on this volume cannot be read ({e:#}); nothing was changed"
                );
                r.next_step = "run chkdsk /f from Windows RE, then boot defib again; or look at \\defib on the volume from the rescue shell".into();
                r.mount = None;
            }
            return v;
        }
    };
    let needs_fix = !interrupted.is_empty()
        || scan
            .iter()
            .any(|r| r.playbooks.iter().any(|p| p.status == Status::Found));
    let ambiguous = scan.len() > 1;
    if scan.is_empty() || mode == Mode::Scan || !needs_fix || ambiguous {
        let _ = ops.umount(dev);
        let mut v = set_state(scan, false);
        for r in &mut v {
            r.mount = None;
            if !interrupted.is_empty() && r.verdict != Verdict::NeedsAttention {
                r.verdict = Verdict::NeedsAttention;
                r.reason = format!(
                    "an interrupted defib run is on this volume ({}); its changes must be rolled back",
                    interrupted.join(", ")
                );
                r.next_step =
                    "boot defib's 'Repair automatically' entry: it rolls the run back, then repairs"
                        .into();
            }
        }
        return v;
    }
    // Something to repair: is it safe to write?
    let found: Vec<&PlaybookResult> = scan[0]
        .playbooks
        .iter()
        .filter(|p| p.status == Status::Found)
        .collect();
    // ntfs3 marks a volume dirty while it is mounted read-write, so a run
    // of ours cut off by a power cut leaves it dirty: with that run's
    // journal on the volume, the flag is our own, and rolling the run back
    // is what makes the volume whole again (every step boundary was synced,
    // `journal::sync_volume`). Otherwise a dirty volume is written only
    // when every playbook that would write allows it (and not on the
    // strength of an empty list).
    let dirty_allowed = !interrupted.is_empty()
        || (!found.is_empty()
            && found.iter().all(|p| {
                payloads
                    .playbooks
                    .iter()
                    .any(|pb| pb.id == p.id && pb.allow_dirty)
            }));
    let blocked = may_write(&hib, hib_blocks, dirty, dirty_allowed);
    if let Some((reason, next)) = blocked {
        let _ = ops.umount(dev);
        let mut v = set_state(scan, false);
        for r in &mut v {
            r.verdict = Verdict::NeedsAttention;
            r.reason = reason.clone();
            r.next_step = next.into();
            r.mount = None;
        }
        return v;
    }
    let _ = ops.umount(dev);
    let root = match ops.mount(dev, true, dirty == Some(true)) {
        Ok(r) => r,
        Err(e) => {
            let mut v = set_state(scan, false);
            for r in &mut v {
                r.verdict = Verdict::NeedsAttention;
                r.reason = format!(
                    "the volume could not be mounted read-write: {e:#}; nothing was changed"
                );
                r.next_step = "run chkdsk /f from Windows RE, then boot defib again".into();
                r.mount = None;
            }
            return v;
        }
    };
    // The system partition is remounted read-write only when its BCD store
    // has Safe Mode set and a playbook may clear it: a read-write vfat
    // mount itself writes (the volume's dirty bit), so a fix that does not
    // touch the store leaves the ESP as it was.
    let may_edit_bcd = scan.iter().any(|r| {
        r.boot_health
            .as_ref()
            .is_some_and(|h| h.bcd.safeboot.is_some() && !h.bcd.dirty)
    }) && payloads.playbooks.iter().any(|p| {
        p.actions
            .iter()
            .any(|a| matches!(a, crate::playbook::Action::Bcd { .. }))
    });
    let (system, system_err) = if may_edit_bcd {
        split_system(ops.system_partition(dev, true))
    } else {
        (system, system_err.clone())
    };
    let res = evaluate_root(
        &root,
        system.as_deref(),
        dev,
        payloads,
        Mode::Fix,
        run_id,
        only,
    );
    match res.map(|mut v| {
        for r in &mut v {
            note_system_error(r, system_err.as_deref());
        }
        v
    }) {
        Ok(v) => set_state(v, true),
        Err(e) => vec![attention(
            dev,
            format!("repair on {dev} failed: {e:#}"),
            "see the journal in \\defib on the volume",
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::{good_svchost, xp_victim};

    /// Volumes are plain folders; records how they were mounted.
    struct FakeOps {
        dir: PathBuf,
        dirty: bool,
        mounts: Vec<(bool, bool)>,
        key: bool,
        unlocked: Vec<String>,
        locked: Vec<String>,
        /// The system partition (a folder), and how it was asked for.
        esp: Option<PathBuf>,
        esp_mounts: Vec<bool>,
    }

    impl VolumeOps for FakeOps {
        fn bitlocker(&mut self, _dev: &str) -> Result<BitlockerState> {
            Ok(BitlockerState {
                encryption_method: Some("AES-XTS-128".into()),
                key_protectors: vec![
                    "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c (recovery-password)".into()
                ],
                ..Default::default()
            })
        }
        fn unlock(&mut self, dev: &str) -> Result<(String, BitlockerState)> {
            if !self.key {
                anyhow::bail!(
                    "no key for protector 3FD763F9 ({{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}})"
                );
            }
            self.unlocked.push(dev.to_string());
            let mut s = self.bitlocker(dev)?;
            s.unlocked = true;
            s.unlocked_with = Some("3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c".into());
            s.key_source = Some("key-file".into());
            Ok(("dm-0".into(), s))
        }
        fn lock(&mut self, mapped: &str) -> Result<()> {
            self.locked.push(mapped.to_string());
            Ok(())
        }
        fn ntfs_dirty(&mut self, _dev: &str) -> Result<bool> {
            Ok(self.dirty)
        }
        fn mount(&mut self, _dev: &str, rw: bool, force: bool) -> Result<PathBuf> {
            self.mounts.push((rw, force));
            Ok(self.dir.clone())
        }
        fn umount(&mut self, _dev: &str) -> Result<()> {
            Ok(())
        }
        fn system_partition(&mut self, _dev: &str, rw: bool) -> Result<Option<PathBuf>> {
            self.esp_mounts.push(rw);
            Ok(self.esp.clone())
        }
    }

    fn setup() -> (tempfile::TempDir, FakeOps, Payloads) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        xp_victim(&root, 5958);
        let p = root.join("WINDOWS/system32/dllcache/svchost.exe");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, good_svchost()).unwrap();
        let payloads = Payloads {
            playbooks: crate::playbook::load_dir(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks"),
            )
            .unwrap(),
            store: Store::open(&d.path().join("none")).unwrap(),
        };
        let ops = FakeOps {
            dir: root,
            dirty: false,
            mounts: Vec::new(),
            key: false,
            unlocked: Vec::new(),
            locked: Vec::new(),
            esp: None,
            esp_mounts: Vec::new(),
        };
        (d, ops, payloads)
    }

    #[test]
    fn repair_mounts_read_write_only_when_needed() {
        let (_d, mut ops, payloads) = setup();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
        assert_eq!(ops.mounts, [(false, false), (true, false)]);
        assert!(r[0].state.written && r[0].mount.is_some());
        // Again: clean, and never mounted read-write.
        ops.mounts.clear();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run2", None);
        assert_eq!(r[0].verdict, Verdict::Clean, "{r:#?}");
        assert_eq!(ops.mounts, [(false, false)]);
        assert!(r[0].mount.is_none());
    }

    #[test]
    fn the_esp_is_mounted_read_write_only_when_safe_mode_may_be_cleared() {
        let (d, mut ops, payloads) = setup();
        let (root, esp) = crate::boothealth::tests::safe_mode_victim(&d.path().join("cs"));
        let bcd = esp.join("EFI/Microsoft/Boot/BCD");
        // Safe Mode set: scanned read-only, fixed read-write.
        ops.dir = root.clone();
        ops.esp = Some(esp.clone());
        let r = check_volume(&mut ops, "sda3", false, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
        assert_eq!(ops.esp_mounts, [false, true]);
        // A fix with the store not in Safe Mode never mounts it read-write.
        crate::boothealth::tests::make_bcd(&bcd, None);
        let before = std::fs::read(&bcd).unwrap();
        let bad =
            root.join("Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys");
        std::fs::write(&bad, [0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1, 9]).unwrap();
        // Stamped like the bad update (2024-07-19T04:09:13Z).
        std::fs::File::options()
            .write(true)
            .open(&bad)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_721_362_153))
            .unwrap();
        ops.esp_mounts.clear();
        let r = check_volume(&mut ops, "sda3", false, &payloads, Mode::Fix, "run2", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
        assert_eq!(ops.esp_mounts, [false]);
        assert_eq!(std::fs::read(&bcd).unwrap(), before);
    }

    #[test]
    fn hibernated_volume_is_not_written() {
        let (_d, mut ops, payloads) = setup();
        std::fs::write(ops.dir.join("hiberfil.sys"), b"HIBR\0\0\0\0rest").unwrap();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::NeedsAttention);
        assert!(r[0].reason.contains("hibernated"), "{}", r[0].reason);
        assert!(r[0].next_step.contains("powercfg"), "{}", r[0].next_step);
        assert_eq!(ops.mounts, [(false, false)]);
        assert!(!ops.dir.join("defib").exists());
        // A resumed image ("wake") is fine to write.
        std::fs::write(ops.dir.join("hiberfil.sys"), b"wake\0\0\0\0").unwrap();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run2", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
    }

    #[test]
    fn dirty_volume_is_not_written_unless_the_playbook_allows() {
        let (_d, mut ops, mut payloads) = setup();
        ops.dirty = true;
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::NeedsAttention);
        assert!(
            r[0].reason.contains("dirty") && r[0].next_step.contains("chkdsk"),
            "{r:#?}"
        );
        assert_eq!(r[0].state.dirty, Some(true));
        assert!(!ops.dir.join("defib").exists());
        for p in &mut payloads.playbooks {
            p.allow_dirty = true;
        }
        ops.mounts.clear();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run2", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
        assert_eq!(
            ops.mounts,
            [(false, false), (true, true)],
            "read-write with ntfs3 force"
        );
    }

    /// A power cut in the middle of our own run leaves the volume dirty
    /// (ntfs3 marks it while mounted read-write). Cut before the first DAT
    /// moved (the playbook still finds its damage) and cut after all moved
    /// (it finds nothing): either way the next boot rolls the run back and
    /// repairs, rather than asking for chkdsk forever or calling it clean.
    #[test]
    fn a_dirty_volume_with_our_interrupted_run_is_rolled_back_and_repaired() {
        for point in [3, 14] {
            let (_d, mut ops, payloads) = setup();
            crate::journal::set_fault(point, crate::journal::FaultMode::Panic);
            let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run1", None)
            }));
            crate::journal::set_fault(0, crate::journal::FaultMode::Panic);
            assert!(cut.is_err(), "point {point} was not reached");
            assert!(!engine::interrupted(&ops.dir).unwrap().is_empty());
            ops.dirty = true;
            ops.mounts.clear();
            let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run2", None);
            assert_eq!(r[0].verdict, Verdict::Repaired, "point {point}: {r:#?}");
            assert_eq!(r[0].state.recovered.len(), 1, "point {point}: {r:#?}");
            assert_eq!(ops.mounts, [(false, false), (true, true)]);
            assert!(engine::interrupted(&ops.dir).unwrap().is_empty());
        }
    }

    /// An unreadable journal is not a clean volume.
    #[test]
    fn an_unreadable_journal_is_needs_attention_not_clean() {
        let (_d, mut ops, payloads) = setup();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
        // Garbage in the middle of the run's journal.
        let j = ops.dir.join("defib/run1/journal.jsonl");
        let text = std::fs::read_to_string(&j).unwrap();
        std::fs::write(&j, format!("garbage\n{text}")).unwrap();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run2", None);
        assert_eq!(r[0].verdict, Verdict::NeedsAttention, "{r:#?}");
        assert!(r[0].reason.contains("cannot be read"), "{r:#?}");
    }

    #[test]
    fn bitlocker_is_reported_with_protectors_and_never_mounted() {
        let (_d, mut ops, payloads) = setup();
        let r = check_volume(&mut ops, "sda3", true, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::NeedsAttention);
        assert!(r[0].reason.contains("BitLocker"));
        assert!(
            r[0].state.bitlocker.as_ref().unwrap().key_protectors[0].contains("recovery-password")
        );
        assert!(ops.mounts.is_empty());
    }

    #[test]
    fn bitlocker_with_a_key_is_unlocked_repaired_and_named_in_the_report() {
        let (_d, mut ops, payloads) = setup();
        ops.key = true;
        let r = check_volume(&mut ops, "sda3", true, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::Repaired, "{r:#?}");
        let b = r[0].state.bitlocker.as_ref().unwrap();
        assert!(b.unlocked && b.key_source.as_deref() == Some("key-file"));
        assert_eq!(
            b.unlocked_with.as_deref(),
            Some("3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c")
        );
        assert_eq!(ops.unlocked, ["sda3"]);
        // Still mounted for the victim's report: the caller locks it after.
        assert!(r[0].mount.is_some() && ops.locked.is_empty());
        // Scan mode: nothing to write, so it is unmounted and locked at once.
        let r = check_volume(&mut ops, "sda3", true, &payloads, Mode::Scan, "run2", None);
        assert!(r[0].mount.is_none());
        assert_eq!(ops.locked, ["dm-0"]);
        // The key itself is nowhere in the report.
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("recovery_password") && json.contains("key-file"));
    }

    #[test]
    fn bitlocker_without_a_key_names_the_protector_and_writes_nothing() {
        let (_d, mut ops, payloads) = setup();
        let r = check_volume(&mut ops, "sda3", true, &payloads, Mode::Fix, "run1", None);
        assert_eq!(r[0].verdict, Verdict::NeedsAttention);
        assert!(r[0].reason.contains("3FD763F9"), "{}", r[0].reason);
        assert!(r[0].next_step.contains("keys folder"), "{}", r[0].next_step);
        assert!(ops.mounts.is_empty());
        assert!(!r[0].state.bitlocker.as_ref().unwrap().unlocked);
    }

    #[test]
    fn scan_intent_never_writes() {
        let (_d, mut ops, payloads) = setup();
        let r = check_volume(&mut ops, "sda1", false, &payloads, Mode::Scan, "run1", None);
        assert_eq!(r[0].verdict, Verdict::NeedsAttention);
        assert!(r[0].reason.contains("nothing changed"), "{}", r[0].reason);
        assert_eq!(ops.mounts, [(false, false)]);
    }

    #[test]
    fn text_report_names_the_verdict_and_actions() {
        let (_d, mut ops, payloads) = setup();
        let w = check_volume(&mut ops, "sda1", false, &payloads, Mode::Fix, "run1", None);
        let rep = crate::report::Report {
            schema: 1,
            defib_version: "t".into(),
            run_id: "run1".into(),
            started: "s".into(),
            finished: "f".into(),
            build_id: None,
            machine: Default::default(),
            boot: crate::report::Boot {
                firmware: crate::report::Firmware::Uefi,
                secure_boot: true,
                mode: crate::bootargs::Mode::Auto,
                medium: crate::report::MediumKind::Usb,
                kernel: "k".into(),
                cmdline: "c".into(),
                timings: Vec::new(),
            },
            modules: Default::default(),
            volumes: Vec::new(),
            windows: w,
            messages: Vec::new(),
            verdict: Verdict::Repaired,
            network: None,
            store: None,
            firmware: None,
        };
        let t = crate::report::render_text(&rep);
        assert!(t.contains("VERDICT: REPAIRED"), "{t}");
        assert!(
            t.contains(r"restore WINDOWS\system32\svchost.exe [Done]"),
            "{t}"
        );
        let dir = crate::report::write_victim_reports(&ops.dir, "run1", &rep)
            .unwrap()
            .unwrap();
        assert!(dir.join("report.json").is_file() && dir.join("report.txt").is_file());
    }
}
