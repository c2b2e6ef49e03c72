//! Identifies Windows installations on a mounted volume: which directory,
//! which product, version, build, service pack, architecture and computer
//! name — read from the SOFTWARE and SYSTEM hives and `ntoskrnl.exe`.
//!
//! This does not decide anything (playbooks do) and never writes. Where a
//! fact cannot be read it is left `None` with a note saying why, or taken
//! from a second source (the kernel's file version) with a note saying so:
//! the report must show how each fact was learned.

use crate::pe;
use crate::playbook::Arch;
use crate::winreg::{Hive, RegData};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Resolves a relative Windows path (components) under root without
/// regard to case; see [`crate::winpath::resolve`] (two entries differing
/// only in case are an error naming both). `Ok(None)` when a component
/// does not exist.
pub fn resolve_ci(root: &Path, rel: &[&str]) -> Result<Option<PathBuf>> {
    let parts: Vec<String> = rel.iter().map(|s| s.to_string()).collect();
    crate::winpath::resolve(root, &parts)
}

/// One Windows installation and what we could learn about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsInstall {
    /// The volume root it was found on.
    pub root: PathBuf,
    /// The Windows directory as named on disk, e.g. `WINDOWS`.
    pub windows_dir: String,
    pub product_name: Option<String>,
    /// `CurrentVersion`: "5.1" for XP, "6.1" for 7, "6.3" for 8.1 and later.
    pub current_version: Option<String>,
    pub build: Option<u32>,
    /// Update build revision (the fourth number of 10.0.19045.3803).
    pub ubr: Option<u32>,
    /// `CSDVersion`, e.g. "Service Pack 3".
    pub service_pack: Option<String>,
    /// `DisplayVersion`, e.g. "22H2" (Windows 10 20H2 and later).
    pub display_version: Option<String>,
    pub arch: Option<Arch>,
    pub computer_name: Option<String>,
    /// How facts were learned where it was not the plain way, and what
    /// could not be read.
    pub notes: Vec<String>,
}

/// Finds Windows dirs on a volume root: a top-level dir containing
/// `System32\config\SOFTWARE` (any case). Returns all found, sorted by
/// directory name (several = an ambiguity the caller reports).
pub fn find_installs(root: &Path) -> Result<Vec<WindowsInstall>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        // Only real directories: a symlink on a hostile volume could point
        // anywhere on the rescue system.
        let ft = entry
            .file_type()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        if !ft.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if resolve_ci(&entry.path(), &["System32", "config", "SOFTWARE"])?.is_some() {
            dirs.push(name);
        }
    }
    dirs.sort();
    dirs.iter().map(|d| identify(root, d)).collect()
}

/// Identifies the installation in `root/windows_dir`.
pub fn identify(root: &Path, windows_dir: &str) -> Result<WindowsInstall> {
    let win = root.join(windows_dir);
    if !win.is_dir() {
        bail!("{} is not a directory", win.display());
    }
    let mut w = WindowsInstall {
        root: root.to_path_buf(),
        windows_dir: windows_dir.to_string(),
        product_name: None,
        current_version: None,
        build: None,
        ubr: None,
        service_pack: None,
        display_version: None,
        arch: None,
        computer_name: None,
        notes: Vec::new(),
    };

    match open_hive(&win, "SOFTWARE", &mut w.notes) {
        Ok(hive) => read_software(&hive, &mut w),
        Err(e) => w.notes.push(format!("SOFTWARE hive unreadable: {e:#}")),
    }
    match open_hive(&win, "SYSTEM", &mut w.notes) {
        Ok(hive) => read_system(&hive, &mut w),
        Err(e) => w.notes.push(format!("SYSTEM hive unreadable: {e:#}")),
    }

    let kernel = resolve_ci(&win, &["System32", "ntoskrnl.exe"])?;
    match kernel.as_deref().map(pe::pe_info_file) {
        None => w
            .notes
            .push("System32\\ntoskrnl.exe not found: architecture unknown".into()),
        Some(Err(e)) => w.notes.push(format!("ntoskrnl.exe unreadable: {e:#}")),
        Some(Ok(info)) => {
            w.arch = Some(info.arch);
            kernel_version(info.file_version, &mut w);
        }
    }
    Ok(w)
}

/// Opens a hive with its transaction logs replayed in memory (a
/// crash-looping PC leaves its newest values only in `.LOG1`/`.LOG2`); what
/// the replay did or refused goes into `notes`. The parser runs contained:
/// a crafted hive is an error about that hive, not a stopped rescue.
fn open_hive(win: &Path, name: &str, notes: &mut Vec<String>) -> Result<Hive> {
    let path = resolve_ci(win, &["System32", "config", name])?
        .with_context(|| format!("System32\\config\\{name} not found"))?;
    let what = format!("System32\\config\\{name}");
    let (hive, replay) = crate::guard::contain(&what, || crate::hivelog::open_hive(&path))??;
    // A clean hive needs no word; a replay (or a refused log) does.
    notes.extend(
        replay
            .into_iter()
            .filter(|n| !n.starts_with("hive is clean"))
            .map(|n| format!("{name}: {n}")),
    );
    Ok(hive)
}

/// Reads a value, turning a read error into a note (one bad value must not
/// hide the others).
fn get(hive: &Hive, key: &str, value: &str, notes: &mut Vec<String>) -> Option<RegData> {
    match hive.value(key, value) {
        Ok(v) => v,
        Err(e) => {
            notes.push(format!("{key}\\{value} unreadable: {e:#}"));
            None
        }
    }
}

fn read_software(hive: &Hive, w: &mut WindowsInstall) {
    const CV: &str = "Microsoft\\Windows NT\\CurrentVersion";
    if hive.is_dirty() {
        w.notes.push(
            "SOFTWARE hive has unreplayed logs: registry read from the base file only".into(),
        );
    }
    let mut s = |v: &str| get(hive, CV, v, &mut w.notes).and_then(|d| d.as_string());
    w.product_name = s("ProductName");
    w.current_version = s("CurrentVersion");
    w.service_pack = s("CSDVersion");
    w.display_version = s("DisplayVersion");
    // XP keeps "1.511.1 () (Obsolete data - do not use)" in CurrentBuild and
    // the number in CurrentBuildNumber; later versions keep both as numbers.
    w.build = ["CurrentBuild", "CurrentBuildNumber"].iter().find_map(|v| {
        get(hive, CV, v, &mut w.notes)
            .and_then(|d| d.as_u64())
            .and_then(|n| u32::try_from(n).ok())
    });
    w.ubr = get(hive, CV, "UBR", &mut w.notes)
        .and_then(|d| d.as_u64())
        .and_then(|n| u32::try_from(n).ok());
}

fn read_system(hive: &Hive, w: &mut WindowsInstall) {
    if hive.is_dirty() {
        w.notes
            .push("SYSTEM hive has unreplayed logs: registry read from the base file only".into());
    }
    // Select\Current names the control set Windows boots (ControlSet00N).
    let Some(current) = get(hive, "Select", "Current", &mut w.notes).and_then(|d| d.as_u64())
    else {
        w.notes
            .push("SYSTEM hive has no Select\\Current: computer name unknown".into());
        return;
    };
    let key = format!("ControlSet{current:03}\\Control\\ComputerName\\ComputerName");
    w.computer_name = get(hive, &key, "ComputerName", &mut w.notes).and_then(|d| d.as_string());
    if w.computer_name.is_none() {
        w.notes
            .push(format!("SYSTEM hive has no {key}\\ComputerName"));
    }
}

/// Fills build facts the registry did not give from the kernel's file
/// version, and notes a disagreement when both are known.
fn kernel_version(v: Option<[u16; 4]>, w: &mut WindowsInstall) {
    let Some(v) = v else {
        w.notes.push("ntoskrnl.exe has no version resource".into());
        return;
    };
    let vs = pe::version_string(v);
    match w.build {
        None => {
            w.build = Some(u32::from(v[2]));
            w.ubr = w.ubr.or(Some(u32::from(v[3])));
            if w.current_version.is_none() {
                w.current_version = Some(format!("{}.{}", v[0], v[1]));
            }
            w.notes.push(format!(
                "build and version taken from ntoskrnl.exe file version {vs} (registry had none)"
            ));
        }
        Some(b) if b != u32::from(v[2]) => w.notes.push(format!(
            "registry says build {b} but ntoskrnl.exe is {vs}: the two disagree"
        )),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pe::tests::build_pe;
    use crate::winreg::tests::{corpus, corpus_xz, make_hive, V};

    const CV: &str = "Microsoft\\Windows NT\\CurrentVersion";

    fn mkdirs(root: &Path, rel: &str) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Lays out an XP SP3 install: `WINDOWS\system32\config\software` etc.
    fn xp(root: &Path, pe_dir: &Path) {
        let config = mkdirs(root, "WINDOWS/system32/config");
        make_hive(
            &config.join("software"),
            &[(
                CV,
                &[
                    ("ProductName", V::Sz("Microsoft Windows XP")),
                    ("CurrentVersion", V::Sz("5.1")),
                    (
                        "CurrentBuild",
                        V::Sz("1.511.1 () (Obsolete data - do not use)"),
                    ),
                    ("CurrentBuildNumber", V::Sz("2600")),
                    ("CSDVersion", V::Sz("Service Pack 3")),
                ],
            )],
        );
        make_hive(
            &config.join("system"),
            &[
                ("Select", &[("Current", V::Dword(2))]),
                (
                    "ControlSet002\\Control\\ComputerName\\ComputerName",
                    &[("ComputerName", V::Sz("XP-CASHIER-07"))],
                ),
            ],
        );
        let kernel = build_pe(pe_dir, Arch::X86, [5, 1, 2600, 5512]);
        std::fs::write(root.join("WINDOWS/system32/ntoskrnl.exe"), kernel).unwrap();
    }

    #[test]
    fn xp_casing_and_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let root = mkdirs(tmp.path(), "vol");
        xp(&root, tmp.path());
        let found = find_installs(&root).unwrap();
        assert_eq!(found.len(), 1);
        let w = &found[0];
        assert_eq!(w.windows_dir, "WINDOWS");
        assert_eq!(w.product_name.as_deref(), Some("Microsoft Windows XP"));
        assert_eq!(w.current_version.as_deref(), Some("5.1"));
        assert_eq!(w.build, Some(2600));
        assert_eq!(w.ubr, None);
        assert_eq!(w.service_pack.as_deref(), Some("Service Pack 3"));
        assert_eq!(w.arch, Some(Arch::X86));
        assert_eq!(w.computer_name.as_deref(), Some("XP-CASHIER-07"));
        assert!(w.notes.is_empty(), "{:?}", w.notes);
    }

    #[test]
    fn two_installs_on_one_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = mkdirs(tmp.path(), "vol");
        xp(&root, tmp.path());
        let config = mkdirs(&root, "Windows/System32/config");
        make_hive(
            &config.join("SOFTWARE"),
            &[(
                CV,
                &[
                    ("ProductName", V::Sz("Windows 10 Pro")),
                    ("CurrentVersion", V::Sz("6.3")),
                    ("CurrentBuild", V::Sz("19045")),
                    ("UBR", V::Dword(3803)),
                    ("DisplayVersion", V::Sz("22H2")),
                ],
            )],
        );
        let kernel = build_pe(tmp.path(), Arch::X64, [10, 0, 19041, 3803]);
        std::fs::write(root.join("Windows/System32/ntoskrnl.exe"), kernel).unwrap();
        // Not Windows dirs: no hive, and a plain file.
        mkdirs(&root, "Program Files/System32");
        std::fs::write(root.join("pagefile.sys"), b"x").unwrap();

        let found = find_installs(&root).unwrap();
        let dirs: Vec<&str> = found.iter().map(|w| w.windows_dir.as_str()).collect();
        assert_eq!(dirs, ["WINDOWS", "Windows"]);
        let w10 = &found[1];
        assert_eq!(w10.build, Some(19045));
        assert_eq!(w10.ubr, Some(3803));
        assert_eq!(w10.display_version.as_deref(), Some("22H2"));
        assert_eq!(w10.arch, Some(Arch::X64));
        assert_eq!(w10.computer_name, None);
        assert!(
            w10.notes
                .iter()
                .any(|n| n.starts_with("SYSTEM hive unreadable")),
            "{:?}",
            w10.notes
        );
        // The kernel's build (19041) is not the registry's (19045): reported.
        assert!(
            w10.notes.iter().any(|n| n.contains("disagree")),
            "{:?}",
            w10.notes
        );
    }

    #[test]
    fn missing_hive_falls_back_to_kernel_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = mkdirs(tmp.path(), "vol");
        let sys32 = mkdirs(&root, "Windows/System32");
        mkdirs(&root, "Windows/System32/config");
        let kernel = build_pe(tmp.path(), Arch::X64, [6, 1, 7601, 24545]);
        std::fs::write(sys32.join("NTOSKRNL.EXE"), kernel).unwrap();
        // A garbage SOFTWARE hive is as good as none.
        std::fs::write(root.join("Windows/System32/config/SOFTWARE"), b"not a hive").unwrap();

        let w = identify(&root, "Windows").unwrap();
        assert_eq!(w.build, Some(7601));
        assert_eq!(w.ubr, Some(24545));
        assert_eq!(w.current_version.as_deref(), Some("6.1"));
        assert_eq!(w.arch, Some(Arch::X64));
        assert!(
            w.notes
                .iter()
                .any(|n| n.starts_with("SOFTWARE hive unreadable")),
            "{:?}",
            w.notes
        );
        assert!(
            w.notes
                .iter()
                .any(|n| n.contains("taken from ntoskrnl.exe")),
            "{:?}",
            w.notes
        );
    }

    #[test]
    fn corpus_system_hives_give_computer_names() {
        for (xz, name, dirty) in [
            (
                "registry/regipy-SYSTEM-win7-x86.xz",
                "WKS-WIN732BITA",
                false,
            ),
            ("registry/regipy-SYSTEM_B-win10.xz", "DESKTOP-PM6C56D", true),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let config = mkdirs(tmp.path(), "Windows/System32/config");
            std::fs::write(config.join("SYSTEM"), corpus_xz(xz)).unwrap();
            let w = identify(tmp.path(), "Windows").unwrap();
            assert_eq!(w.computer_name.as_deref(), Some(name), "{xz}");
            let noted = w
                .notes
                .iter()
                .any(|n| n.contains("SYSTEM hive has unreplayed logs"));
            assert_eq!(noted, dirty, "{xz}: {:?}", w.notes);
            // No SOFTWARE hive here: not found by find_installs, but identify notes it.
            assert!(find_installs(tmp.path()).unwrap().is_empty());
            assert!(w
                .notes
                .iter()
                .any(|n| n.starts_with("SOFTWARE hive unreadable")));
        }
        // The corpora must exist for the test above to mean anything.
        corpus("registry/regipy-SYSTEM-win7-x86.xz");
    }

    #[test]
    fn resolve_ci_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        mkdirs(root, "WINDOWS/system32/drivers");
        std::fs::write(root.join("WINDOWS/system32/drivers/Foo.SYS"), b"").unwrap();
        let p = resolve_ci(root, &["Windows", "System32", "DRIVERS", "foo.sys"]).unwrap();
        assert_eq!(p, Some(root.join("WINDOWS/system32/drivers/Foo.SYS")));
        assert_eq!(resolve_ci(root, &["Windows", "nope"]).unwrap(), None);
        // Through a file: not found, not an error.
        assert_eq!(
            resolve_ci(root, &["windows", "system32", "drivers", "foo.sys", "x"]).unwrap(),
            None
        );
        // Two names differing only in case: an error naming both.
        std::fs::write(root.join("WINDOWS/system32/drivers/foo.sys"), b"").unwrap();
        let err = format!(
            "{:#}",
            resolve_ci(root, &["WINDOWS", "system32", "drivers", "foo.sys"]).unwrap_err()
        );
        assert!(err.contains("Foo.SYS") && err.contains("foo.sys"), "{err}");
        assert!(identify(root, "NoSuchDir").is_err());
    }
}
