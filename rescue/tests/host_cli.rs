//! `rescue scan|fix|undo --root` as an admin runs it on a Linux host
//! against a mounted Windows volume (here a folder shaped like one).

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpora")
        .join(rel);
    assert!(
        p.exists(),
        "corpus file {} is missing: the shared corpora must sit beside the repo",
        p.display()
    );
    p
}

fn rescue(args: &[&str], root: &Path) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .args(args)
        .arg("--root")
        .arg(root)
        .arg("--payloads")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A Windows 10 volume whose SOFTWARE hive is unreadable, so the build
/// comes from ntoskrnl.exe's version (a real Microsoft PE from the
/// corpora), with CrowdStrike's bad channel file in place.
fn victim(dir: &Path) -> PathBuf {
    let root = dir.join("vol");
    let sys = root.join("Windows/System32");
    std::fs::create_dir_all(sys.join("config")).unwrap();
    std::fs::write(sys.join("config/SOFTWARE"), b"not a hive").unwrap();
    std::fs::copy(corpus("pe/kernel32.dll"), sys.join("ntoskrnl.exe")).unwrap();
    let cs = sys.join("drivers/CrowdStrike");
    std::fs::create_dir_all(&cs).unwrap();
    let bad = cs.join("C-00000291-00000000-00000032.sys");
    std::fs::write(&bad, [0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1, 0]).unwrap();
    // Stamped like the broken update (files from 05:27 UTC on are good).
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_721_362_153); // 2024-07-19T04:09:13Z
    std::fs::File::options()
        .write(true)
        .open(&bad)
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::write(cs.join("C-00000285-00000000-00000001.sys"), b"keep").unwrap();
    root
}

#[test]
fn scan_fix_undo_on_a_mounted_volume() {
    let d = tempfile::tempdir().unwrap();
    let root = victim(d.path());
    let bad = root.join("Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys");

    let (code, out) = rescue(&["scan", "--json"], &root);
    assert_eq!(code, 1, "scan finds damage: exit 1\n{out}");
    let r: serde_json::Value = serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    // Found by id: the shipped playbooks are many, sorted by file name.
    let cs = r["windows"][0]["playbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "crowdstrike-c00000291")
        .unwrap();
    assert_eq!(cs["status"], "found", "{r:#}");
    assert!(
        r["windows"][0]["identity"]["notes"]
            .to_string()
            .contains("ntoskrnl"),
        "{r:#}"
    );
    assert!(
        bad.exists() && !root.join("defib").exists(),
        "scan writes nothing"
    );

    let (code, out) = rescue(&["fix", "--dry-run"], &root);
    assert_eq!(code, 1, "{out}");
    assert!(bad.exists());

    let (code, out) = rescue(&["fix"], &root);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("VERDICT: REPAIRED"), "{out}");
    assert!(!bad.exists());
    assert!(root
        .join("Windows/System32/drivers/CrowdStrike/C-00000285-00000000-00000001.sys")
        .exists());
    let runs: Vec<_> = std::fs::read_dir(root.join("defib")).unwrap().collect();
    assert_eq!(runs.len(), 1);
    let run = runs[0].as_ref().unwrap().path();
    for f in ["journal.jsonl", "report.json", "report.txt"] {
        assert!(run.join(f).is_file(), "{f} missing in {}", run.display());
    }

    let (code, out) = rescue(&["fix"], &root);
    assert_eq!(code, 0, "second run: nothing to do\n{out}");
    assert_eq!(
        std::fs::read_dir(root.join("defib")).unwrap().count(),
        1,
        "a clean run writes no run folder"
    );

    let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .args(["undo", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        [0xAA, 0xAA, 0xAA, 0xAA, 1, 0, 0x23, 1, 0]
    );
}

#[test]
fn no_windows_exits_3_and_bad_payloads_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let (code, out) = rescue(&["scan"], d.path());
    assert_eq!(code, 3, "{out}");
    let pb = d.path().join("p/playbooks");
    std::fs::create_dir_all(&pb).unwrap();
    std::fs::write(pb.join("bad.toml"), "schema = 1\nid = \"x\"\ntitle = \n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .args(["scan", "--root"])
        .arg(d.path())
        .arg("--payloads")
        .arg(d.path().join("p"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml:3:"), "{err}");
}

/// Host mode and the image decide "may I write" in one function: a
/// hibernation file that cannot be read as a known state blocks writing
/// on a mounted folder too (it used to write).
#[test]
fn an_unknown_hibernation_file_blocks_fix_on_a_mounted_volume() {
    let d = tempfile::tempdir().unwrap();
    let root = victim(d.path());
    std::fs::write(
        root.join("hiberfil.sys"),
        b"XYZW and not a header Windows writes",
    )
    .unwrap();
    let (code, out) = rescue(&["fix", "--json"], &root);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("hibernat"), "{out}");
    assert!(!root.join("defib").exists(), "nothing written: {out}");
    assert!(root
        .join("Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys")
        .exists());
}

/// Two installations on one volume: the advice names `--windows`, and it
/// exists and picks one.
#[test]
fn windows_flag_picks_one_of_two_installations() {
    let d = tempfile::tempdir().unwrap();
    let root = victim(d.path());
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(root.join("Windows"))
        .arg(root.join("Windows.old"))
        .status()
        .unwrap();
    assert!(copy.success());
    let (_, out) = rescue(&["fix", "--json"], &root);
    assert!(out.contains("--windows"), "{out}");
    assert!(
        !root.join("defib").exists(),
        "nothing chosen, nothing written"
    );
    let (code, out) = rescue(&["fix", "--windows", "windows", "--json"], &root);
    assert_eq!(code, 0, "{out}");
    assert!(!root
        .join("Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys")
        .exists());
    assert!(root
        .join("Windows.old/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys")
        .exists());
    let (code, out) = rescue(&["fix", "--windows", "WINNT", "--json"], &root);
    assert_ne!(code, 0);
    assert!(out.contains("no Windows installation there"), "{out}");
}

/// A real kill (abort, as a power cut) at every fault point of a fix, run
/// as an admin runs it; the next `rescue fix` converges and `rescue undo`
/// puts every byte back.
#[test]
fn a_fix_killed_at_any_point_converges_on_the_next_run() {
    let mut n = 1;
    loop {
        let d = tempfile::tempdir().unwrap();
        let root = victim(d.path());
        let bad =
            root.join("Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys");
        let bad_bytes = std::fs::read(&bad).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
            .args(["fix", "--json", "--root"])
            .arg(&root)
            .arg("--payloads")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads"))
            .env("DEFIB_FAULT", n.to_string())
            .output()
            .unwrap();
        if o.status.success() {
            break; // past the last fault point: the fix ran through
        }
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("fault injected"),
            "point {n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (code, out) = rescue(&["fix", "--json"], &root);
        assert_eq!(code, 0, "point {n}: {out}");
        assert!(!bad.exists(), "point {n}: repaired");
        let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
            .args(["undo", "--root"])
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "point {n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(std::fs::read(&bad).unwrap(), bad_bytes, "point {n}");
        n += 1;
        assert!(n < 100, "fault points never ran out");
    }
    assert!(n > 4, "only {} fault points", n - 1);
}

/// A BCD store on an ESP folder, merged by hivexregedit into the empty
/// hive Windows wrote: the default entry in Safe Mode (network).
fn esp_with_safe_mode(dir: &Path) -> PathBuf {
    let esp = dir.join("esp");
    let boot = esp.join("EFI/Microsoft/Boot");
    std::fs::create_dir_all(&boot).unwrap();
    let bcd = boot.join("BCD");
    std::fs::copy(corpus("registry/yarp-EmptyHive"), &bcd).unwrap();
    let mut perm = std::fs::metadata(&bcd).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&bcd, perm).unwrap();
    let p = r"HKEY_LOCAL_MACHINE\BCD\Objects";
    let bm = r"{9dea862c-5cdd-4e70-acc1-f32b344d4795}";
    let os = r"{0c7a1e52-6f3d-4b8e-9d21-7a5b3c9e1f04}";
    let reg = format!(
        "Windows Registry Editor Version 5.00\n\n[{p}]\n\n[{p}\\{bm}]\n\n[{p}\\{bm}\\Elements]\n\n\
         [{p}\\{bm}\\Elements\\23000003]\n\"Element\"=\"{os}\"\n\n[{p}\\{os}]\n\n[{p}\\{os}\\Elements]\n\n\
         [{p}\\{os}\\Elements\\12000002]\n\"Element\"=\"\\\\Windows\\\\system32\\\\winload.efi\"\n\n\
         [{p}\\{os}\\Elements\\25000080]\n\"Element\"=hex:01,00,00,00,00,00,00,00\n\n"
    );
    let reg_path = dir.join("bcd.reg");
    std::fs::write(&reg_path, reg).unwrap();
    let o = Command::new("hivexregedit")
        .args(["--merge", "--prefix", r"HKEY_LOCAL_MACHINE\BCD"])
        .arg(&bcd)
        .arg(&reg_path)
        .output()
        .expect("hivexregedit is required for these tests: scripts/setup --test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    esp
}

#[test]
fn esp_flag_reads_the_bcd_and_undo_of_the_store_needs_it() {
    let d = tempfile::tempdir().unwrap();
    let root = victim(d.path());
    let esp = esp_with_safe_mode(d.path());
    let bcd = esp.join("EFI/Microsoft/Boot/BCD");
    let original = std::fs::read(&bcd).unwrap();
    let esp_s = esp.to_str().unwrap();

    let (code, out) = rescue(&["scan", "--esp", esp_s], &root);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("safeboot network"), "{out}");
    assert!(
        out.contains("crowdstrike-safe-mode [Clean]"),
        "the bad file is still there\n{out}"
    );

    // One run: the file into the vault, then Safe Mode cleared.
    let (code, out) = rescue(&["fix", "--esp", esp_s], &root);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("crowdstrike-safe-mode [Repaired]"), "{out}");
    assert!(out.contains("safeboot not set"), "{out}");
    assert_ne!(std::fs::read(&bcd).unwrap(), original);

    // Undo without --esp: the file comes back, the store is reported.
    let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .args(["undo", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("PROBLEM") && text.contains("--esp"), "{text}");
    assert!(root
        .join("Windows/System32/drivers/CrowdStrike/C-00000291-00000000-00000032.sys")
        .exists());
    let o = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .args(["undo", "--esp", esp_s, "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains(r"put back EFI\Microsoft\Boot\BCD"), "{text}");
    assert_eq!(std::fs::read(&bcd).unwrap(), original, "byte for byte");

    // A --esp that is not a folder is an error naming it, before anything.
    let (code, out) = rescue(&["scan", "--esp", "/nonexistent/esp"], &root);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--esp /nonexistent/esp: not a folder"),
        "{out}"
    );
}

/// `--key-file SEALED.age --passphrase-file F`: the sealed file is opened
/// before anything else, a wrong passphrase or a damaged file stops the
/// run with an error naming the file, and the passphrase is never printed.
#[test]
fn a_sealed_key_file_opens_with_the_passphrase_file() {
    use defib_rescue::bitlocker::sealed::{seal, MIN_WORK_FACTOR};
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("empty-volume");
    std::fs::create_dir_all(&root).unwrap();
    let csv = "KeyID,RecoveryKey\r\n{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C},042647-302313-590458-071500-554323-116567-412181-516978\r\n";
    let sealed = d.path().join("keys.csv.age");
    let bytes = seal(csv.as_bytes(), "staple battery", MIN_WORK_FACTOR).unwrap();
    std::fs::write(&sealed, &bytes).unwrap();
    let right = d.path().join("right");
    std::fs::write(&right, "staple battery\n").unwrap();
    let wrong = d.path().join("wrong");
    std::fs::write(&wrong, "horse\n").unwrap();
    let s = sealed.to_str().unwrap();

    let (code, out) = rescue(
        &[
            "scan",
            "--key-file",
            s,
            "--passphrase-file",
            right.to_str().unwrap(),
        ],
        &root,
    );
    assert_eq!(code, 3, "opened, then no Windows in the folder: {out}");
    assert!(out.contains("keys.csv.age: 1 key(s)"), "{out}");
    let mut outputs = vec![out];

    let (code, out) = rescue(
        &[
            "scan",
            "--key-file",
            s,
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
        &root,
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("the passphrase opens none of the sealed key files (keys.csv.age)"),
        "{out}"
    );
    outputs.push(out);

    let cut = d.path().join("cut.csv.age");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let (code, out) = rescue(
        &[
            "scan",
            "--key-file",
            cut.to_str().unwrap(),
            "--passphrase-file",
            right.to_str().unwrap(),
        ],
        &root,
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cut.csv.age: damaged sealed key file"),
        "{out}"
    );
    outputs.push(out);

    let (code, out) = rescue(
        &["scan", "--passphrase-file", right.to_str().unwrap()],
        &root,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no --key-file is sealed"), "{out}");
    outputs.push(out);
    for out in outputs {
        assert!(
            !out.contains("staple battery") && !out.contains("horse") && !out.contains("042647"),
            "a secret was printed: {out}"
        );
    }
}

/// `--startup-key` takes only a real .BEK and names the file when it is
/// not one; `--password-file` wants the password on its first line; the
/// password never reaches the output.
#[test]
fn startup_key_and_password_file_flags_check_their_files() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("empty-volume");
    std::fs::create_dir_all(&root).unwrap();
    let not_bek = d.path().join("notes.BEK");
    std::fs::write(&not_bek, b"this is not a startup key").unwrap();
    let (code, out) = rescue(&["scan", "--startup-key", not_bek.to_str().unwrap()], &root);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--startup-key") && out.contains("notes.BEK"),
        "{out}"
    );

    let empty = d.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let (code, out) = rescue(&["scan", "--password-file", empty.to_str().unwrap()], &root);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--password-file") && out.contains("empty"),
        "{out}"
    );

    let pw = d.path().join("pw");
    std::fs::write(&pw, "anaconda\n").unwrap();
    let (code, out) = rescue(&["scan", "--password-file", pw.to_str().unwrap()], &root);
    assert_eq!(code, 3, "read, then no Windows in the folder: {out}");
    assert!(!out.contains("anaconda"), "the password was printed: {out}");

    // The corpus' real startup key is taken.
    let tarball = corpus("bitlocker/bitlk-images.tar.xz");
    let st = std::process::Command::new("tar")
        .arg("xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(d.path())
        .arg("4381F759-C4F8-4DE0-BB61-FC33A831BDA5.BEK")
        .status()
        .unwrap();
    assert!(st.success());
    let bek = d.path().join("4381F759-C4F8-4DE0-BB61-FC33A831BDA5.BEK");
    let (code, out) = rescue(&["scan", "--startup-key", bek.to_str().unwrap()], &root);
    assert_eq!(code, 3, "{out}");
}
