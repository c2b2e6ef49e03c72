//! `defib keys seal|check` and `defib reports --keys-used` as an admin
//! runs them: the real binary, files in a temp folder.

use std::path::Path;
use std::process::Command;

const RP: &str = "042647-302313-590458-071500-554323-116567-412181-516978";
const ID: &str = "{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}";

fn defib(args: &[&str], cwd: &Path) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defib"));
    cmd.args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null());
    // A session of its own: no controlling terminal, so a prompt on
    // /dev/tty fails at once instead of waiting on the developer's shell.
    // SAFETY: setsid is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn seal_then_check_with_a_passphrase_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(
        p.join("BitLockerKeys.csv"),
        format!("KeyID,RecoveryKey\r\n{ID},{RP}\r\n"),
    )
    .unwrap();
    std::fs::write(p.join("pass"), "night shift\n").unwrap();
    std::fs::write(p.join("wrong"), "day shift\n").unwrap();

    let (code, out, err) = defib(
        &[
            "keys",
            "seal",
            "BitLockerKeys.csv",
            "--out",
            "keys.csv.age",
            "--passphrase-file",
            "pass",
            "--work-factor",
            "14",
        ],
        p,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("keys.csv.age: 1 recovery key(s) sealed (1 with a key ID), scrypt work factor 14 (16 MiB to open)"),
        "{out}"
    );
    let sealed = std::fs::read(p.join("keys.csv.age")).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n-> scrypt "));

    let (code, out, err) = defib(
        &["keys", "check", "keys.csv.age", "--passphrase-file", "pass"],
        p,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 recovery key(s), scrypt work factor 14"),
        "{out}"
    );
    assert!(out.contains(ID), "the protector ID is listed: {out}");

    let (code, out, err) = defib(
        &[
            "keys",
            "check",
            "keys.csv.age",
            "--passphrase-file",
            "wrong",
        ],
        p,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("the passphrase does not open it"), "{err}");

    // No terminal and no passphrase file: a clear error, nothing written.
    let (code, _, err) = defib(
        &["keys", "seal", "BitLockerKeys.csv", "--out", "again.age"],
        p,
    );
    assert_eq!(code, 2);
    assert!(err.contains("--passphrase-file"), "{err}");
    assert!(!p.join("again.age").exists());

    // The work factor is bounded.
    let (code, _, err) = defib(
        &[
            "keys",
            "seal",
            "BitLockerKeys.csv",
            "--out",
            "x.age",
            "--passphrase-file",
            "pass",
            "--work-factor",
            "22",
        ],
        p,
    );
    assert_ne!(code, 0);
    assert!(err.contains("22"), "{err}");
}

#[test]
fn seal_refuses_a_file_without_keys_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("pass"), "x\n").unwrap();
    std::fs::write(p.join("export.csv"), "Device,KeyID\r\nPC1,{ID}\r\n").unwrap();
    let (code, _, err) = defib(
        &[
            "keys",
            "seal",
            "export.csv",
            "--out",
            "k.age",
            "--passphrase-file",
            "pass",
        ],
        p,
    );
    assert_eq!(code, 2);
    assert!(err.contains("export.csv"), "{err}");
    assert!(err.contains("no recovery key column"), "{err}");
    assert!(!p.join("k.age").exists());
}

#[test]
fn reports_keys_used_is_a_csv_for_the_rotation_script() {
    let d = tempfile::tempdir().unwrap();
    let report = serde_json::json!({
        "schema": 1, "run_id": "20261126T050215Z-1a2b3c4d", "finished": "2026-11-26T05:02:21Z",
        "machine": {"product_serial": "SN-7", "product_uuid": "5eed0000-defb-4000-8000-00000000c0de"},
        "verdict": "repaired",
        "windows": [{
            "volume": "nvme0n1p3",
            "identity": {"computer_name": "ICU-STATION-12"},
            "state": {"ntfs_serial": "5A1E00000000C0DE", "bitlocker": {
                "unlocked": true, "key_protectors": [],
                "unlocked_with": "3fd763f9-74c7-4e90-8fa2-1f6a2e2b4e0c",
                "key_source": "sealed-key-file"}},
            "verdict": "repaired", "playbooks": []
        }]
    });
    std::fs::write(
        d.path().join("PC-20261126T050215Z-1a2b3c4d.json"),
        serde_json::to_vec(&report).unwrap(),
    )
    .unwrap();
    let (code, out, err) = defib(&["reports", "--keys-used", "."], d.path());
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("computer_name,machine_uuid,"), "{out}");
    assert_eq!(
        lines[1],
        format!(
            "ICU-STATION-12,5eed0000-defb-4000-8000-00000000c0de,SN-7,nvme0n1p3,5A1E00000000C0DE,{ID},sealed-key-file,20261126T050215Z-1a2b3c4d,2026-11-26T05:02:21Z,./PC-20261126T050215Z-1a2b3c4d.json"
        )
    );
    let (code, out, _) = defib(&["reports", "--keys-used", "--json", "."], d.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["protector_id"], ID);
}
