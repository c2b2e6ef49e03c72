//! Engine tests on plain directories shaped like Windows volumes: every
//! condition and action, case-insensitive paths, ambiguity, idempotence,
//! undo to the exact bytes, and a corrupt store object refused.

use super::*;
use crate::engine::{latest_undoable, undo};
use crate::journal::{self, StepState};
use crate::pe::tests::build_pe;
use crate::playbook::{Arch, Playbook};
use crate::repair::{evaluate_root, Payloads};
use crate::store::Store;
use crate::winreg::tests::{make_hive, V};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// PE files are built once per test process (mingw takes a moment).
fn pe(arch: Arch, version: [u16; 4]) -> Vec<u8> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, Vec<u8>>>> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let cache = CACHE.get_or_init(Default::default);
    let key = format!("{}-{version:?}", arch.as_str());
    let mut c = cache.lock().unwrap();
    c.entry(key)
        .or_insert_with(|| build_pe(dir.path(), arch, version))
        .clone()
}

const XP: [u16; 4] = [5, 1, 2600, 5512];

/// A good svchost.exe: a real PE with XP SP3's version and an extra tail so
/// its hash is its own.
pub(crate) fn good_svchost() -> Vec<u8> {
    let mut p = pe(Arch::X86, XP);
    p.extend_from_slice(b"svchost fixture");
    p
}

fn write(root: &Path, rel: &str, data: &[u8]) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    p
}

/// An XP SP3 volume after DAT 5958: svchost.exe gone, DATs in place.
pub(crate) fn xp_victim(root: &Path, dat: u32) {
    std::fs::create_dir_all(root.join("WINDOWS/system32/config")).unwrap();
    make_hive(
        &root.join("WINDOWS/system32/config/SOFTWARE"),
        &[
            (
                r"Microsoft\Windows NT\CurrentVersion",
                &[
                    ("ProductName", V::Sz("Microsoft Windows XP")),
                    ("CurrentVersion", V::Sz("5.1")),
                    ("CurrentBuildNumber", V::Sz("2600")),
                    ("CSDVersion", V::Sz("Service Pack 3")),
                ],
            ),
            (r"McAfee\AVEngine", &[("AVDatVersion", V::Dword(dat))]),
        ],
    );
    write(root, "WINDOWS/system32/ntoskrnl.exe", &pe(Arch::X86, XP));
    for d in ["avvscan.dat", "avvnames.dat", "avvclean.dat"] {
        write(
            root,
            &format!("Program Files/Common Files/McAfee/Engine/{d}"),
            format!("DAT 5958 {d}").as_bytes(),
        );
    }
    write(
        root,
        "Documents and Settings/nurse/My Documents/chart.doc",
        b"patient chart",
    );
}

fn playbooks() -> Vec<Playbook> {
    crate::playbook::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks"))
        .unwrap()
}

fn mcafee() -> Vec<Playbook> {
    playbooks()
        .into_iter()
        .filter(|p| p.id == "mcafee-dat-5958")
        .collect()
}

/// Every file under root except defib's own folder, with its hash.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "defib" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, journal::sha256_file(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(root, root, &mut m);
    m
}

/// (drop-in name, path, content, build) for each store entry.
type StoreEntry<'a> = (Option<&'a str>, &'a str, &'a [u8], Option<u32>);

fn store_with(dir: &Path, entries: &[StoreEntry]) -> Store {
    std::fs::create_dir_all(dir.join("objects")).unwrap();
    let mut list = Vec::new();
    for (name, path, data, build) in entries {
        let h = journal::sha256_bytes(data);
        std::fs::write(dir.join("objects").join(&h), data).unwrap();
        list.push(serde_json::json!({
            "name": name, "product": "Microsoft Windows XP", "build": build, "service_pack": build.map(|_| "Service Pack 3"),
            "arch": "x86", "path": path, "sha256": h, "size": data.len(), "source": "test",
        }));
    }
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_string_pretty(&serde_json::json!({"schema": 1, "entries": list})).unwrap(),
    )
    .unwrap();
    Store::open(dir).unwrap()
}

fn empty_store(dir: &Path) -> Store {
    Store::open(&dir.join("no-store")).unwrap()
}

fn run_on(
    root: &Path,
    store: &Store,
    pbs: &[Playbook],
    mode: Mode,
    run_id: &str,
) -> Vec<PlaybookResult> {
    let installs = crate::windows::find_installs(root).unwrap();
    assert_eq!(installs.len(), 1, "{installs:?}");
    let t = Target {
        root,
        install: &installs[0],
        store,
        mode,
        run_id,
        system: None,
    };
    run(&t, pbs).unwrap()
}

fn svchost(root: &Path) -> Option<Vec<u8>> {
    std::fs::read(root.join("WINDOWS/system32/svchost.exe")).ok()
}

#[test]
fn mcafee_from_quarantine_neutralizes_dats_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    let bup = crate::bup::write_bup(
        r"C:\WINDOWS\system32\svchost.exe",
        "W32/Wecorl.a",
        &good_svchost(),
    )
    .unwrap();
    write(&root, "Quarantine/4b2c1a0d.bup", &bup);
    let store = empty_store(d.path());
    let before = snapshot(&root);

    let r = run_on(&root, &store, &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    assert_eq!(svchost(&root).unwrap(), good_svchost());
    let restore = r[0].actions.iter().find(|a| a.kind == "restore").unwrap();
    assert!(
        restore
            .source
            .as_deref()
            .unwrap()
            .contains("McAfee quarantine"),
        "{restore:?}"
    );
    assert_eq!(
        restore.sha256_after.as_deref(),
        Some(journal::sha256_bytes(&good_svchost()).as_str())
    );
    // No EXTRA.DAT in the store: the drop-in is skipped, the DATs go to the vault.
    assert_eq!(r[0].actions[0].status, ActionStatus::Skipped);
    let vault = root.join("defib/run1/vault/Program Files/Common Files/McAfee/Engine");
    for dat in ["avvscan.dat", "avvnames.dat", "avvclean.dat"] {
        assert!(!root
            .join("Program Files/Common Files/McAfee/Engine")
            .join(dat)
            .exists());
        assert_eq!(
            std::fs::read(vault.join(dat)).unwrap(),
            format!("DAT 5958 {dat}").as_bytes()
        );
    }
    let all = journal::read_journal(&root.join("defib/run1/journal.jsonl")).unwrap();
    assert_eq!(all.first().map(|s| s.op), Some(journal::Op::Begin));
    assert_eq!(
        all.last().map(|s| s.op),
        Some(journal::Op::End),
        "the run closed"
    );
    let steps: Vec<_> = all
        .into_iter()
        .filter(|s| !matches!(s.op, journal::Op::Begin | journal::Op::End))
        .collect();
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.state == StepState::Intent)
            .count(),
        4
    );
    assert_eq!(
        steps.iter().filter(|s| s.state == StepState::Done).count(),
        4
    );
    // Every intent is on disk before its done line.
    for s in steps.iter().filter(|s| s.state == StepState::Done) {
        let i = steps
            .iter()
            .position(|x| x.seq == s.seq && x.state == StepState::Intent)
            .unwrap();
        let d = steps.iter().position(|x| x == s).unwrap();
        assert!(i < d);
    }
    // Nothing else changed.
    let after = snapshot(&root);
    assert_eq!(
        after.get("Documents and Settings/nurse/My Documents/chart.doc"),
        before.get("Documents and Settings/nurse/My Documents/chart.doc")
    );

    // A second run finds nothing to do and writes nothing.
    let r2 = run_on(&root, &store, &mcafee(), Mode::Fix, "run2");
    assert_eq!(r2[0].status, Status::Clean, "{r2:#?}");
    assert!(!root.join("defib/run2").exists());
    assert_eq!(snapshot(&root), after);
}

#[test]
fn undo_puts_back_the_exact_bytes() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    write(
        &root,
        "WINDOWS/system32/dllcache/svchost.exe",
        &good_svchost(),
    );
    let before = snapshot(&root);
    let r = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    assert_ne!(snapshot(&root), before);
    let u = undo(&root, None, "run1").unwrap();
    assert!(u.problems.is_empty(), "{u:?}");
    assert_eq!(u.restored.len(), 4);
    assert_eq!(
        snapshot(&root),
        before,
        "undo must restore the volume exactly"
    );
    // The restored svchost.exe was moved aside, not deleted.
    assert_eq!(
        std::fs::read(root.join("defib/run1/undone/WINDOWS/system32/svchost.exe")).unwrap(),
        good_svchost()
    );
    assert!(undo(&root, None, "run1").is_err(), "a run is undone once");
}

#[test]
fn dllcache_then_store_and_wrong_copies_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    // A copy for the wrong architecture and one for another build are refused.
    write(
        &root,
        "WINDOWS/system32/dllcache/svchost.exe",
        &pe(Arch::X64, XP),
    );
    write(
        &root,
        "WINDOWS/ServicePackFiles/i386/svchost.exe",
        &pe(Arch::X86, [5, 0, 2195, 6717]),
    );
    let store = store_with(
        &d.path().join("store"),
        &[(
            None,
            r"WINDOWS\system32\svchost.exe",
            &good_svchost(),
            Some(2600),
        )],
    );
    let r = run_on(&root, &store, &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    let restore = r[0].actions.iter().find(|a| a.kind == "restore").unwrap();
    assert!(
        restore
            .source
            .as_deref()
            .unwrap()
            .starts_with("known-good store"),
        "{restore:?}"
    );
    assert_eq!(svchost(&root).unwrap(), good_svchost());
}

#[test]
fn no_verified_copy_means_needs_attention_and_no_restore() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    write(
        &root,
        "WINDOWS/system32/dllcache/svchost.exe",
        b"MZ not really a PE",
    );
    let before = snapshot(&root);
    let r = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Fix, "run1");
    // All or nothing: the DATs are not moved when svchost.exe cannot be restored.
    assert_eq!(snapshot(&root), before);
    assert!(!root.join("defib").exists());
    assert_eq!(r[0].status, Status::NeedsAttention, "{r:#?}");
    let restore = r[0].actions.iter().find(|a| a.kind == "restore").unwrap();
    assert_eq!(restore.status, ActionStatus::Refused);
    assert!(
        restore.detail.contains("dllcache") && restore.detail.contains("store"),
        "{}",
        restore.detail
    );
    assert!(svchost(&root).is_none());
}

#[test]
fn corrupt_store_object_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    let sdir = d.path().join("store");
    let store = store_with(
        &sdir,
        &[(
            None,
            r"WINDOWS\system32\svchost.exe",
            &good_svchost(),
            Some(2600),
        )],
    );
    let obj = sdir
        .join("objects")
        .join(journal::sha256_bytes(&good_svchost()));
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&obj, bytes).unwrap();
    let r = run_on(&root, &store, &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::NeedsAttention, "{r:#?}");
    assert!(
        svchost(&root).is_none(),
        "a corrupt object must never be written"
    );
}

#[test]
fn extra_dat_drop_in_replaces_the_neutralize() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    let store = store_with(
        &d.path().join("store"),
        &[
            (
                Some("mcafee-extra-dat-5958"),
                r"Program Files\Common Files\McAfee\Engine\EXTRA.DAT",
                b"EXTRA.DAT 5958 fix",
                None,
            ),
            (
                None,
                r"WINDOWS\system32\svchost.exe",
                &good_svchost(),
                Some(2600),
            ),
        ],
    );
    let r = run_on(&root, &store, &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    assert_eq!(
        std::fs::read(root.join("Program Files/Common Files/McAfee/Engine/EXTRA.DAT")).unwrap(),
        b"EXTRA.DAT 5958 fix"
    );
    assert!(
        root.join("Program Files/Common Files/McAfee/Engine/avvscan.dat")
            .exists(),
        "DATs stay when EXTRA.DAT is used"
    );
    assert_eq!(r[0].actions[1].status, ActionStatus::Skipped);
}

#[test]
fn scan_mode_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    write(
        &root,
        "WINDOWS/system32/dllcache/svchost.exe",
        &good_svchost(),
    );
    let before = snapshot(&root);
    let r = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Scan, "run1");
    assert_eq!(r[0].status, Status::Found, "{r:#?}");
    assert!(r[0]
        .actions
        .iter()
        .all(|a| a.status == ActionStatus::Planned || a.status == ActionStatus::Skipped));
    assert_eq!(snapshot(&root), before);
    assert!(!root.join("defib").exists());
}

#[test]
fn registry_and_applicability_gate_the_playbook() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5959);
    let r = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Clean);
    assert!(
        r[0].conditions[0].detail.contains("5959"),
        "{:?}",
        r[0].conditions[0]
    );
    // An x64 ntoskrnl makes XP-x86 playbooks not applicable.
    write(&root, "WINDOWS/system32/ntoskrnl.exe", &pe(Arch::X64, XP));
    let r = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Fix, "run2");
    assert_eq!(r[0].status, Status::NotApplicable, "{r:#?}");
}

#[test]
fn names_differing_only_in_case_are_not_guessed() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    write(
        &root,
        "Program Files/Common Files/McAfee/ENGINE/avvscan.dat",
        b"twin",
    );
    let before = snapshot(&root);
    let r = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::NeedsAttention, "{r:#?}");
    assert!(
        r[0].conditions
            .iter()
            .any(|c| c.error && c.detail.contains("refusing to guess")),
        "{r:#?}"
    );
    assert_eq!(snapshot(&root), before);
}

fn win10(root: &Path) {
    std::fs::create_dir_all(root.join("Windows/System32/config")).unwrap();
    make_hive(
        &root.join("Windows/System32/config/SOFTWARE"),
        &[(
            r"Microsoft\Windows NT\CurrentVersion",
            &[
                ("ProductName", V::Sz("Windows 10 Pro")),
                ("CurrentVersion", V::Sz("6.3")),
                ("CurrentBuild", V::Sz("19045")),
                ("UBR", V::Dword(4651)),
            ],
        )],
    );
    write(
        root,
        "Windows/System32/ntoskrnl.exe",
        &pe(Arch::X64, [10, 0, 19045, 4651]),
    );
}

fn set_mtime(p: &Path, rfc3339: &str) {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(t).unwrap();
}

#[test]
fn crowdstrike_bad_by_content_or_time_good_stays() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    win10(&root);
    let cs = "Windows/System32/drivers/CrowdStrike";
    let bad = write(
        &root,
        &format!("{cs}/C-00000291-00000000-00000032.sys"),
        &[0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1, 9, 9],
    );
    set_mtime(&bad, "2024-07-19T04:09:13Z");
    let bad_time = write(
        &root,
        &format!("{cs}/c-00000291-00000000-00000031.SYS"),
        b"other bytes",
    );
    set_mtime(&bad_time, "2024-07-19T04:09:40Z");
    let good = write(
        &root,
        &format!("{cs}/C-00000291-00000000-00000033.sys"),
        &[0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1, 7],
    );
    set_mtime(&good, "2024-07-19T05:27:55Z");
    let other = write(
        &root,
        &format!("{cs}/C-00000285-00000000-00000001.sys"),
        &[0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1],
    );
    set_mtime(&other, "2024-07-19T04:09:13Z");
    let pbs: Vec<Playbook> = playbooks()
        .into_iter()
        .filter(|p| p.id == "crowdstrike-c00000291")
        .collect();
    let r = run_on(&root, &empty_store(d.path()), &pbs, Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    assert!(!bad.exists() && !bad_time.exists());
    assert!(good.exists() && other.exists());
    let v = root.join("defib/run1/vault").join(cs);
    assert!(v.join("C-00000291-00000000-00000032.sys").exists());
    assert!(v.join("c-00000291-00000000-00000031.SYS").exists());
    // Idempotent.
    let r2 = run_on(&root, &empty_store(d.path()), &pbs, Mode::Fix, "run2");
    assert_eq!(r2[0].status, Status::Clean);
    // And the McAfee playbook does not apply to Windows 10.
    let r3 = run_on(&root, &empty_store(d.path()), &mcafee(), Mode::Fix, "run3");
    assert_eq!(r3[0].status, Status::NotApplicable);
}

#[test]
fn winsxs_copy_for_the_installed_build_and_quarantine_condition() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    win10(&root);
    let sxs = "Windows/WinSxS";
    let right = pe(Arch::X64, [10, 0, 19045, 4651]);
    write(&root, &format!("{sxs}/amd64_microsoft-windows-services-svchost_31bf3856ad364e35_10.0.19045.4651_none_aa/svchost.exe"), &right);
    write(&root, &format!("{sxs}/amd64_microsoft-windows-services-svchost_31bf3856ad364e35_10.0.19045.9999_none_bb/svchost.exe"), &pe(Arch::X64, [10, 0, 19045, 9999]));
    write(&root, &format!("{sxs}/x86_microsoft-windows-services-svchost_31bf3856ad364e35_10.0.19045.4651_none_cc/svchost.exe"), &pe(Arch::X86, [10, 0, 19045, 4651]));
    let bup =
        crate::bup::write_bup(r"C:\Windows\System32\svchost.exe", "Test", b"whatever").unwrap();
    write(&root, "Quarantine/x.bup", &bup);
    let pb = Playbook::parse(
        r#"
schema = 1
id = "svchost-gone"
title = "t"
date = "2024-01-01"
[[when]]
kind = "missing"
id = "gone"
path = 'Windows\System32\svchost.exe'
[[when]]
kind = "quarantine"
id = "q"
vendor = "mcafee-bup"
original = '*\system32\svchost.exe'
[[action]]
kind = "restore"
path = 'Windows\System32\svchost.exe'
sources = ["winsxs"]
"#,
        "t.toml",
    )
    .unwrap();
    let r = run_on(&root, &empty_store(d.path()), &[pb], Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    assert!(r[0].conditions[1].held, "{:?}", r[0].conditions[1]);
    assert_eq!(
        std::fs::read(root.join("Windows/System32/svchost.exe")).unwrap(),
        right,
        "the copy for UBR 4651, not 9999, not x86"
    );
}

/// The quarantine condition reads every vendor the restore source reads,
/// not only McAfee's `.bup`: it holds for the vendor and detection asked
/// for and for `any`, and not for another vendor or detection.
#[test]
fn quarantine_condition_names_any_vendor_and_a_detection() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    win10(&root);
    let sys = r"C:\Windows\System32\drivers\CrowdStrike\C-00000291-0.sys";
    crate::quarantine::fixture::install_defender(
        &root,
        sys,
        "Trojan:Win32/Wacatac.B!ml",
        b"channel file",
        0x01da_d7a0_0000_0000,
    )
    .unwrap();
    let cond = |id: &str, vendor: &str, detection: Option<&str>| {
        let det = detection
            .map(|g| format!("detection = '{g}'\n"))
            .unwrap_or_default();
        Playbook::parse(
            &format!(
                r#"
schema = 1
id = "{id}"
title = "t"
date = "2024-01-01"
[[when]]
kind = "quarantine"
id = "q"
vendor = "{vendor}"
original = '*\drivers\CrowdStrike\C-00000291*.sys'
{det}[[action]]
kind = "restore"
path = 'Windows\System32\drivers\CrowdStrike\C-00000291-0.sys'
sources = ["store"]
"#
            ),
            "t.toml",
        )
        .unwrap()
    };
    let pbs = [
        cond("defender", "defender", None),
        cond("defender-trojan", "defender", Some("Trojan:Win32/*")),
        cond("any", "any", Some("trojan:*")),
        cond("avast", "avast", None),
        cond("other-detection", "defender", Some("Virus:*")),
    ];
    let before = snapshot(&root);
    let r = run_on(&root, &empty_store(d.path()), &pbs, Mode::Scan, "run1");
    let held: Vec<(&str, bool)> = r
        .iter()
        .map(|p| (p.id.as_str(), p.conditions[0].held))
        .collect();
    assert_eq!(
        held,
        [
            ("defender", true),
            ("defender-trojan", true),
            ("any", true),
            ("avast", false),
            ("other-detection", false),
        ],
        "{r:#?}"
    );
    assert!(
        r[0].conditions[0].detail.contains("Wacatac"),
        "{}",
        r[0].conditions[0].detail
    );
    assert_eq!(snapshot(&root), before, "a condition never writes");
    // A vendor without a reader is refused at parse time, naming why.
    let err = Playbook::parse(
        "schema = 1\nid = \"x\"\ntitle = \"t\"\ndate = \"2024-01-01\"\n[[when]]\nkind = \"quarantine\"\nid = \"q\"\nvendor = \"sophos\"\noriginal = '*'\n[[action]]\nkind = \"restore\"\npath = 'a'\nsources = [\"store\"]\n",
        "x.toml",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("no reader"), "{err:#}");
}

#[test]
fn two_windows_on_one_volume_is_reported_not_chosen() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    write(
        &root,
        "WINDOWS/system32/dllcache/svchost.exe",
        &good_svchost(),
    );
    // A second install's folder.
    std::fs::create_dir_all(root.join("WINNT2/system32/config")).unwrap();
    std::fs::copy(
        root.join("WINDOWS/system32/config/SOFTWARE"),
        root.join("WINNT2/system32/config/SOFTWARE"),
    )
    .unwrap();
    let before = snapshot(&root);
    let payloads = Payloads {
        playbooks: mcafee(),
        store: empty_store(d.path()),
    };
    let r = evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "run1", None).unwrap();
    assert_eq!(r.len(), 2);
    assert!(
        r.iter()
            .all(|w| w.verdict == crate::report::Verdict::NeedsAttention
                && w.reason.contains("not choosing")),
        "{r:#?}"
    );
    assert_eq!(snapshot(&root), before);
}

#[test]
fn two_different_store_files_for_one_build_are_not_chosen_between() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    let mut german = good_svchost();
    german.extend_from_slice(b" deu");
    let store = store_with(
        &d.path().join("store"),
        &[
            (
                None,
                r"WINDOWS\system32\svchost.exe",
                &good_svchost(),
                Some(2600),
            ),
            (None, r"WINDOWS\system32\svchost.exe", &german, Some(2600)),
        ],
    );
    let r = run_on(&root, &store, &mcafee(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::NeedsAttention, "{r:#?}");
    let restore = r[0].actions.iter().find(|a| a.kind == "restore").unwrap();
    assert!(
        restore.detail.contains("not choosing"),
        "{}",
        restore.detail
    );
    assert!(svchost(&root).is_none());
}

#[test]
fn enablement_package_builds_share_their_base() {
    assert!(same_servicing(19041, 19045));
    assert!(same_servicing(22621, 22631));
    assert!(!same_servicing(19041, 22621));
    assert!(!same_servicing(2195, 2600));
    assert!(same_servicing(2600, 2600));
}

// ---- Safety: crash consistency, rollback, confinement (issue 8) ----

/// Names of temp files a write could leave behind, anywhere on the volume.
fn temp_files(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_keys()
        .filter(|k| k.ends_with(".defib-tmp"))
        .collect()
}

/// Puts back every run still holding changes, newest first.
fn undo_all(root: &Path) {
    while let Some(id) = latest_undoable(root).unwrap() {
        let r = undo(root, None, &id).unwrap();
        assert!(r.problems.is_empty(), "undo {id}: {:?}", r.problems);
    }
}

fn mcafee_victim_with_dllcache(root: &Path) {
    xp_victim(root, 5958);
    write(
        root,
        "WINDOWS/system32/dllcache/svchost.exe",
        &good_svchost(),
    );
}

/// A run killed at any point — every journal line, rename and write —
/// converges: the next run rolls the interrupted one back and repairs to
/// exactly what an uninterrupted run gives, no temp file stays, and undoing
/// every run gives back the original bytes.
#[test]
fn every_interruption_converges_and_loses_nothing() {
    let payloads = Payloads {
        playbooks: mcafee(),
        store: Store::open(Path::new("/nonexistent-store")).unwrap(),
    };
    // The outcome without faults.
    let d = tempfile::tempdir().unwrap();
    let clean = d.path().join("clean");
    mcafee_victim_with_dllcache(&clean);
    let original = snapshot(&clean);
    let r = evaluate_root(&clean, None, "vol", &payloads, Mode::Fix, "ok", None).unwrap();
    assert_eq!(r[0].verdict, crate::report::Verdict::Repaired, "{r:#?}");
    let repaired = snapshot(&clean);
    assert_ne!(repaired, original);

    let mut points = 0;
    for n in 1..200 {
        let root = d.path().join(format!("v{n}"));
        mcafee_victim_with_dllcache(&root);
        journal::set_fault(n, journal::FaultMode::Panic);
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "first", None)
        }));
        journal::set_fault(0, journal::FaultMode::Panic);
        match crashed {
            Ok(_) => break, // every fault point has been tried
            Err(p) => assert!(p.downcast_ref::<journal::FaultInjected>().is_some()),
        }
        points = n;
        // The next run: rolls back, repairs, the same bytes as a clean run.
        let r = evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "second", None).unwrap();
        assert_eq!(
            r[0].verdict,
            crate::report::Verdict::Repaired,
            "fault {n}: {r:#?}"
        );
        assert_eq!(snapshot(&root), repaired, "fault {n}: not converged");
        assert!(
            temp_files(&root).is_empty(),
            "fault {n}: {:?}",
            temp_files(&root)
        );
        // And a third finds nothing to do and changes nothing.
        let r = evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "third", None).unwrap();
        assert_eq!(
            r[0].verdict,
            crate::report::Verdict::Clean,
            "fault {n}: {r:#?}"
        );
        // Undoing everything gives back the victim byte for byte.
        undo_all(&root);
        assert_eq!(snapshot(&root), original, "fault {n}: undo lost bytes");
    }
    assert!(points >= 10, "only {points} fault points were exercised");
}

/// A restore that fails after the DATs were moved must not leave a volume
/// that the next run calls clean: the playbook's own steps are rolled back.
#[test]
fn a_failed_restore_rolls_back_the_neutralized_dats() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    mcafee_victim_with_dllcache(&root);
    let before = snapshot(&root);
    // A directory squatting on the restore's temp name makes the write
    // fail after the three DATs went into the vault.
    std::fs::create_dir_all(root.join("WINDOWS/system32/.svchost.exe.defib-tmp/x")).unwrap();
    let payloads = Payloads {
        playbooks: mcafee(),
        store: empty_store(d.path()),
    };
    let r = evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "run1", None).unwrap();
    let p = &r[0].playbooks[0];
    assert_eq!(p.status, Status::NeedsAttention, "{p:#?}");
    assert!(p.reason.contains("rolled back"), "{}", p.reason);
    assert!(p
        .actions
        .iter()
        .any(|a| a.status == ActionStatus::RolledBack));
    std::fs::remove_dir_all(root.join("WINDOWS/system32/.svchost.exe.defib-tmp")).unwrap();
    assert_eq!(snapshot(&root), before, "the DATs are back where they were");
    // So the next run still sees the damage, and repairs it.
    let r = evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "run2", None).unwrap();
    assert_eq!(r[0].verdict, crate::report::Verdict::Repaired, "{r:#?}");
}

/// `rescue undo` takes the journal from the victim's disk: a path in it
/// that climbs out of the volume, or is absolute, moves nothing.
#[test]
fn undo_refuses_journal_paths_that_leave_the_volume() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    let outside = d.path().join("host.txt");
    std::fs::write(&outside, b"host").unwrap();
    let run = root.join("defib/evil");
    std::fs::create_dir_all(run.join("vault")).unwrap();
    std::fs::write(run.join("vault/x"), b"payload").unwrap();
    let h = journal::sha256_bytes(b"payload");
    for (path, vault) in [
        (r"..\host.txt", r"vault\x"),
        ("/etc/passwd", r"vault\x"),
        (r"ok.txt", r"..\..\..\host.txt"),
    ] {
        let line = serde_json::json!({
            "seq": 1, "state": "done", "op": "neutralize", "playbook": "p",
            "path": path, "vault": vault, "sha256_before": h, "time": "t"
        });
        std::fs::write(run.join("journal.jsonl"), format!("{line}\n")).unwrap();
        let r = undo(&root, None, "evil").unwrap();
        assert!(r.restored.is_empty(), "{path} {vault}: {r:?}");
        assert!(!r.problems.is_empty());
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"host");
    assert!(!d.path().join("etc").exists() && run.join("vault/x").exists());
    assert!(
        undo(&root, None, "../vol").is_err(),
        "run ids name no other folder"
    );
}

/// A `\defib` that is a link off the volume gets no run folder.
#[test]
fn a_linked_defib_folder_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    mcafee_victim_with_dllcache(&root);
    let host = d.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(&host, root.join("defib")).unwrap();
    let payloads = Payloads {
        playbooks: mcafee(),
        store: empty_store(d.path()),
    };
    let r = evaluate_root(&root, None, "vol", &payloads, Mode::Fix, "run1", None);
    let failed = match &r {
        Err(e) => format!("{e:#}"),
        Ok(v) => format!("{v:#?}"),
    };
    assert!(failed.contains("is a link"), "{failed}");
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        0,
        "nothing written off the volume"
    );
}

/// A run killed right after it created its folder changed nothing; the
/// default undo must look past it to the run that did change something.
#[test]
fn default_undo_skips_runs_that_changed_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    mcafee_victim_with_dllcache(&root);
    let before = snapshot(&root);
    let payloads = Payloads {
        playbooks: mcafee(),
        store: empty_store(d.path()),
    };
    evaluate_root(
        &root,
        None,
        "vol",
        &payloads,
        Mode::Fix,
        "20261128T000000Z-ffffffff",
        None,
    )
    .unwrap();
    // Killed right after creating its journal, in the same second.
    journal::RunDir::create(&root, "20261128T000000Z-00000000").unwrap();
    assert_eq!(
        latest_undoable(&root).unwrap().as_deref(),
        Some("20261128T000000Z-ffffffff")
    );
    undo_all(&root);
    assert_eq!(snapshot(&root), before);
}

// ---- Vendor quarantines as restore sources ---------------------------

const AVG_USER32: &str = r"C:\WINDOWS\system32\user32.dll";

/// A good XP SP3 user32.dll: a real PE with its own tail.
fn good_user32() -> Vec<u8> {
    let mut p = pe(Arch::X86, XP);
    p.extend_from_slice(b"user32 fixture");
    p
}

fn avg() -> Vec<Playbook> {
    playbooks()
        .into_iter()
        .filter(|p| p.id == "avg-user32-2008")
        .collect()
}

/// The AVG chest folder on an XP volume (see quarantine::fixture).
fn avg_chest(root: &Path) -> PathBuf {
    root.join("Documents and Settings/All Users/Application Data/AVG/Antivirus/chest")
}

/// An XP SP3 volume after AVG's November 2008 update: AVG 8 installed,
/// user32.dll gone from system32, and the chest holding `items`.
fn xp_avg_victim(root: &Path, items: &[(&str, &str, &[u8])]) {
    xp_victim(root, 5000);
    write(root, "Program Files/AVG/AVG8/avgtray.exe", b"AVG tray");
    if !items.is_empty() {
        crate::quarantine::fixture::install_chest(
            root,
            crate::quarantine::fixture::Chest::AvgXp,
            items,
            1_226_246_400, // 2008-11-09T16:00:00Z
        )
        .unwrap();
    }
}

fn user32(root: &Path) -> Option<Vec<u8>> {
    std::fs::read(root.join("WINDOWS/system32/user32.dll")).ok()
}

/// `find_copy` for `path` on `root`, as a restore would call it.
fn find(
    root: &Path,
    store: &Store,
    path: &str,
    sources: &[crate::playbook::Source],
) -> (Option<(Vec<u8>, String)>, Vec<String>) {
    let installs = crate::windows::find_installs(root).unwrap();
    let t = Target {
        root,
        install: &installs[0],
        store,
        mode: Mode::Scan,
        run_id: "find",
        system: None,
    };
    let ctx = Ctx {
        t: &t,
        run_dir: None,
        writing: false,
        hives: BTreeMap::new(),
        rolled_back: None,
    };
    let parts = ctx.split(path).unwrap();
    ctx.find_copy(&parts, sources)
}

#[test]
fn avg_restores_user32_from_the_chest_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    let good = good_user32();
    xp_avg_victim(
        &root,
        &[(AVG_USER32, "Trojan horse PSW.Banker4.APSA", &good)],
    );
    let r = run_on(&root, &empty_store(d.path()), &avg(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    let restore = &r[0].actions[0];
    let source = restore.source.as_deref().unwrap();
    assert!(
        source.starts_with("avast quarantine ")
            && source.contains("chest")
            && source.contains("5.1.2600.5512"),
        "{source}"
    );
    assert_eq!(user32(&root).unwrap(), good);
    // The quarantine is read, never changed.
    assert!(avg_chest(&root).join("00000001").exists());
    let again = run_on(&root, &empty_store(d.path()), &avg(), Mode::Fix, "run2");
    assert_eq!(again[0].status, Status::Clean, "{again:#?}");
}

#[test]
fn a_quarantined_copy_for_another_architecture_or_build_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    let (x64, w2k) = (pe(Arch::X64, XP), pe(Arch::X86, [5, 0, 2195, 6717]));
    xp_avg_victim(
        &root,
        &[
            (AVG_USER32, "Trojan horse PSW.Banker4.APSA", &x64),
            (AVG_USER32, "Trojan horse PSW.Banker4.APSA", &w2k),
        ],
    );
    write(
        &root,
        "WINDOWS/system32/dllcache/user32.dll",
        &good_user32(),
    );
    let r = run_on(&root, &empty_store(d.path()), &avg(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    let restore = &r[0].actions[0];
    assert!(
        restore.source.as_deref().unwrap().contains("dllcache"),
        "{restore:?}"
    );
    // Both refusals are on record, with the vendor and the record.
    for want in [
        r"avast quarantine Documents and Settings/All Users/Application Data/AVG/Antivirus/chest/00000001: it is x64, Windows is x86",
        "chest/00000002: its version 5.0.2195.6717 is not for build 2600",
    ] {
        assert!(
            restore.detail.contains(want),
            "{want:?} not in {}",
            restore.detail
        );
    }
    assert_eq!(user32(&root).unwrap(), good_user32());
}

#[test]
fn a_detection_glob_that_does_not_match_skips_the_entry() {
    use crate::playbook::Source;
    use crate::quarantine::Vendor;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    let good = good_user32();
    xp_avg_victim(&root, &[(AVG_USER32, "Win32:Trojan-gen", &good)]);
    let store = empty_store(d.path());
    let banker = Source::Quarantine {
        vendor: Vendor::Avast,
        detection: Some("psw.banker4.*".into()),
    };
    let (copy, tried) = find(&root, &store, r"Windows\system32\user32.dll", &[banker]);
    assert!(copy.is_none());
    assert!(
        tried.iter().any(|t| t.contains("chest/00000001")
            && t.contains("\"Win32:Trojan-gen\" does not match \"psw.banker4.*\"; skipped")),
        "{tried:?}"
    );
    // The glob is without case, and `any` finds the same entry.
    for src in [
        Source::Quarantine {
            vendor: Vendor::Any,
            detection: Some("WIN32:trojan-*".into()),
        },
        Source::Quarantine {
            vendor: Vendor::Avast,
            detection: None,
        },
    ] {
        let (copy, _) = find(&root, &store, r"Windows\system32\user32.dll", &[src]);
        assert_eq!(copy.unwrap().0, good);
    }
    // Another vendor's quarantine holds nothing for it.
    let (copy, tried) = find(
        &root,
        &store,
        r"Windows\system32\user32.dll",
        &[Source::Quarantine {
            vendor: Vendor::Defender,
            detection: None,
        }],
    );
    assert!(copy.is_none());
    assert_eq!(
        tried,
        [r"defender quarantine: no entry for WINDOWS\system32\user32.dll"]
    );
    // Through the shipped playbook: the only AVG entry is for another
    // detection, nothing else has a copy, so nothing is restored.
    let r = run_on(&root, &store, &avg(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::NeedsAttention, "{r:#?}");
    assert!(user32(&root).is_none());
}

#[test]
fn a_corrupt_quarantine_record_is_reported_not_used() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_avg_victim(
        &root,
        &[(AVG_USER32, "Trojan horse PSW.Banker4.APSA", &good_user32())],
    );
    // The chest file loses its tail: what it decodes to is not the file.
    let rec = avg_chest(&root).join("00000001");
    let bytes = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &bytes[..bytes.len() / 3]).unwrap();
    let store = empty_store(d.path());
    let (copy, tried) = find(
        &root,
        &store,
        r"Windows\system32\user32.dll",
        &[crate::playbook::Source::Quarantine {
            vendor: crate::quarantine::Vendor::Avast,
            detection: None,
        }],
    );
    assert!(copy.is_none(), "{tried:?}");
    assert!(
        tried.len() == 1
            && tried[0].starts_with("avast quarantine ")
            && tried[0].contains("chest/00000001: "),
        "{tried:?}"
    );
    // A chest without its index: the file is listed as unreadable (its
    // original path is unknown), and the next source is used.
    std::fs::remove_file(avg_chest(&root).join("index.xml")).unwrap();
    write(
        &root,
        "WINDOWS/system32/dllcache/user32.dll",
        &good_user32(),
    );
    let r = run_on(&root, &store, &avg(), Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    let restore = &r[0].actions[0];
    assert!(restore.source.as_deref().unwrap().contains("dllcache"));
    assert!(
        restore.detail.contains("avast quarantine ") && restore.detail.contains("unreadable"),
        "{}",
        restore.detail
    );
}

#[test]
fn mcafee_quarantine_source_reads_through_the_vse_adapter() {
    use crate::playbook::Source;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5958);
    let bup = crate::bup::write_bup(
        r"C:\WINDOWS\system32\svchost.exe",
        "W32/Wecorl.a",
        &good_svchost(),
    )
    .unwrap();
    write(&root, "Quarantine/5bd11f8e.bup", &bup);
    write(&root, "Quarantine/junk.bup", b"not OLE");
    let store = empty_store(d.path());
    let (copy, tried) = find(
        &root,
        &store,
        r"Windows\system32\svchost.exe",
        &[Source::McafeeQuarantine],
    );
    let (data, from) = copy.unwrap();
    assert_eq!(data, good_svchost());
    assert!(
        from.starts_with("McAfee quarantine Quarantine/5bd11f8e.bup"),
        "{from}"
    );
    assert!(
        tried
            .iter()
            .any(|t| t.starts_with("McAfee quarantine Quarantine/junk.bup: unreadable")),
        "{tried:?}"
    );
}

#[test]
fn detect_only_playbooks_report_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("vol");
    xp_victim(&root, 5000);
    write(
        &root,
        "Program Files/Sophos/Sophos Anti-Virus/SavService.exe",
        b"sav",
    );
    let before = snapshot(&root);
    let sophos: Vec<Playbook> = playbooks()
        .into_iter()
        .filter(|p| p.id.starts_with("sophos-"))
        .collect();
    let r = run_on(&root, &empty_store(d.path()), &sophos, Mode::Fix, "run1");
    let x86 = r
        .iter()
        .find(|p| p.id == "sophos-shh-updater-b-2012")
        .unwrap();
    assert_eq!(x86.status, Status::NeedsAttention, "{r:#?}");
    assert!(
        x86.reason.contains("only recognises") && x86.reason.contains("AutoUpdate"),
        "{}",
        x86.reason
    );
    assert!(x86.actions.is_empty());
    let x64 = r
        .iter()
        .find(|p| p.id == "sophos-shh-updater-b-2012-x64")
        .unwrap();
    assert_eq!(x64.status, Status::NotApplicable);
    assert_eq!(snapshot(&root), before);
    assert!(!root.join("defib").exists());
    // With the updater in place it is clean.
    write(&root, "Program Files/Sophos/AutoUpdate/ALsvc.exe", b"alsvc");
    let r = run_on(&root, &empty_store(d.path()), &sophos, Mode::Fix, "run2");
    assert_eq!(r[0].status, Status::NotApplicable);
    assert_eq!(r[1].status, Status::Clean, "{r:#?}");
}

/// A Simplified Chinese (or, with `lang` 0409, US English) XP SP2 after
/// Norton's definitions of 17 May 2007: netapi32.dll and lsasrv.dll gone,
/// Windows File Protection's copies still in dllcache.
fn xp_sp2_norton_victim(root: &Path, lang: &'static str) {
    std::fs::create_dir_all(root.join("WINDOWS/system32/config")).unwrap();
    make_hive(
        &root.join("WINDOWS/system32/config/SOFTWARE"),
        &[(
            r"Microsoft\Windows NT\CurrentVersion",
            &[
                ("ProductName", V::Sz("Microsoft Windows XP")),
                ("CurrentVersion", V::Sz("5.1")),
                ("CurrentBuildNumber", V::Sz("2600")),
                ("CSDVersion", V::Sz("Service Pack 2")),
            ],
        )],
    );
    make_hive(
        &root.join("WINDOWS/system32/config/SYSTEM"),
        &[
            (r"Select", &[("Current", V::Dword(1))]),
            (
                r"ControlSet001\Control\Nls\Language",
                &[("InstallLanguage", V::Sz(lang)), ("Default", V::Sz(lang))],
            ),
        ],
    );
    write(
        root,
        "WINDOWS/system32/ntoskrnl.exe",
        &pe(Arch::X86, [5, 1, 2600, 2180]),
    );
    for f in ["netapi32.dll", "lsasrv.dll"] {
        let mut good = pe(Arch::X86, [5, 1, 2600, 3023]);
        good.extend_from_slice(f.as_bytes());
        write(root, &format!("WINDOWS/system32/dllcache/{f}"), &good);
    }
}

#[test]
fn norton_2007_restores_both_dlls_on_chinese_xp_only() {
    let pbs: Vec<Playbook> = playbooks()
        .into_iter()
        .filter(|p| p.id == "symantec-haxdoor-2007")
        .collect();
    let d = tempfile::tempdir().unwrap();
    let zh = d.path().join("zh");
    xp_sp2_norton_victim(&zh, "0804");
    let r = run_on(&zh, &empty_store(d.path()), &pbs, Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Repaired, "{r:#?}");
    for f in ["netapi32.dll", "lsasrv.dll"] {
        assert_eq!(
            std::fs::read(zh.join("WINDOWS/system32").join(f)).unwrap(),
            std::fs::read(zh.join("WINDOWS/system32/dllcache").join(f)).unwrap()
        );
    }
    // The same damage on an English XP is not this incident.
    let en = d.path().join("en");
    xp_sp2_norton_victim(&en, "0409");
    let before = snapshot(&en);
    let r = run_on(&en, &empty_store(d.path()), &pbs, Mode::Fix, "run1");
    assert_eq!(r[0].status, Status::Clean, "{r:#?}");
    assert!(r[0].reason.contains("zh-cn-install"), "{}", r[0].reason);
    assert_eq!(snapshot(&en), before);
}
