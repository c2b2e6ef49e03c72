//! `defib keys seal` and `defib keys check`: a fleet's BitLocker key
//! exports sealed to a passphrase (age v1, scrypt; the format is
//! `defib_rescue::bitlocker::sealed`'s) for a stick that may be lost.
//!
//! Sealing reads the plain files with the rescue's own key-file parser, so
//! a file the rescue would not understand is refused here, naming it, and
//! writes the keys as one `KeyID,RecoveryKey,Device` CSV inside the sealed
//! file. Only ciphertext reaches the disk: the temp file of the atomic
//! write already holds the sealed bytes.
//!
//! Not here: the passphrase prompt (`defib_rescue::passphrase`), or
//! anything that prints a key: summaries carry counts and protector IDs.

use anyhow::{bail, Context, Result};
use defib_rescue::bitlocker::keyfile::{KeyMaterial, KeyStore};
use defib_rescue::bitlocker::sealed;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What a sealed file holds, without the keys.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Recovery passwords in it.
    pub keys: usize,
    /// Their protector IDs (`{GUID}`, or the 8-digit short form a file
    /// gave), in file order; keys without an ID are counted apart.
    pub protector_ids: Vec<String>,
    pub without_id: usize,
    /// scrypt's log2 N.
    pub work_factor: u8,
}

fn summary(store: &KeyStore, work_factor: u8) -> Summary {
    let rps: Vec<_> = store
        .records
        .iter()
        .filter(|r| matches!(r.material, KeyMaterial::RecoveryPassword(_)))
        .collect();
    Summary {
        keys: rps.len(),
        protector_ids: rps
            .iter()
            .filter_map(|r| r.id.map(|i| i.to_string()))
            .collect(),
        without_id: rps.iter().filter(|r| r.id.is_none()).count(),
        work_factor,
    }
}

/// Reads the plain key files to seal. Each must give at least one
/// recovery password; `.BEK` startup keys and files already sealed are
/// refused with what to do instead.
pub fn read_plain(paths: &[PathBuf]) -> Result<KeyStore> {
    if paths.is_empty() {
        bail!("no key files given");
    }
    let mut all = KeyStore::new();
    for p in paths {
        let mut one = KeyStore::new();
        let n = one.add_file(p).with_context(|| p.display().to_string())?;
        if !one.sealed.is_empty() {
            bail!(
                "{}: already sealed; give the plain export (or copy this file to the stick as it is)",
                p.display()
            );
        }
        if one
            .records
            .iter()
            .any(|r| matches!(r.material, KeyMaterial::StartupKey(_)))
        {
            bail!(
                "{}: a .BEK startup key cannot go into a sealed CSV; seal it on its own with `age -p -o NAME.BEK.age NAME.BEK`, or copy it to the stick's keys folder",
                p.display()
            );
        }
        if n == 0 {
            bail!(
                "{}: no BitLocker recovery key in it{}",
                p.display(),
                if one.rejected.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", one.rejected.join("; "))
                }
            );
        }
        all.records.extend(one.records);
        all.rejected.extend(one.rejected);
    }
    Ok(all)
}

/// Seals the keys of `paths` to `passphrase` into `out` (which must end in
/// `.age`; an existing file is replaced only with `replace`).
pub fn seal_files(
    paths: &[PathBuf],
    passphrase: &str,
    work_factor: u8,
    out: &Path,
    replace: bool,
) -> Result<Summary> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("--out {}: not a file name", out.display()))?;
    if !name.to_ascii_lowercase().ends_with(".age") {
        bail!(
            "--out {}: name it *.age (e.g. {name}.age): the rescue looks at .age files in the keys folder",
            out.display()
        );
    }
    if out.exists() && !replace {
        bail!(
            "{} exists; choose another name, or give --replace to overwrite it (its keys are lost unless they are in these files)",
            out.display()
        );
    }
    if let Ok(o) = out.canonicalize() {
        if paths.iter().any(|p| p.canonicalize().is_ok_and(|p| p == o)) {
            bail!("--out {} is one of the files to seal", out.display());
        }
    }
    let store = read_plain(paths)?;
    let plain = sealed::canonical_csv(&store);
    let bytes = sealed::seal(plain.as_bytes(), passphrase, work_factor)?;
    drop(plain);
    // Proof before it replaces anything: the bytes open and give the keys.
    let back = check_bytes(&bytes, name, passphrase)?;
    let want = summary(&store, work_factor);
    if back != want {
        bail!(
            "the sealed file does not read back as written ({back:?} vs {want:?}); nothing written"
        );
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    defib_rescue::durable::write_atomic(dir, name, &bytes)?;
    Ok(want)
}

/// Opens a sealed file with `passphrase` and says what it holds.
pub fn check(path: &Path, passphrase: &str) -> Result<Summary> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_bytes(&bytes, &name, passphrase).with_context(|| path.display().to_string())
}

fn check_bytes(bytes: &[u8], name: &str, passphrase: &str) -> Result<Summary> {
    let header = sealed::read_header(bytes)?;
    let mut store = KeyStore::new();
    store
        .sealed
        .push(defib_rescue::bitlocker::keyfile::SealedFile {
            name: name.to_string(),
            bytes: bytes.to_vec(),
        });
    // The host can afford any work factor `seal` writes.
    for (_, r) in store.open_sealed(passphrase, sealed::MAX_WORK_FACTOR) {
        r?;
    }
    Ok(summary(&store, header.work_factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RP: &str = "042647-302313-590458-071500-554323-116567-412181-516978";
    const WF: u8 = sealed::MIN_WORK_FACTOR;

    #[test]
    fn seal_two_exports_and_check() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("BitLockerKeys.csv");
        std::fs::write(
            &a,
            format!("KeyID,RecoveryKey\r\n{{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}},{RP}\r\n"),
        )
        .unwrap();
        let b = d
            .path()
            .join("BitLocker Recovery Key 11111111-2222-3333-4444-555555555555.TXT");
        std::fs::write(&b, format!("Recovery Key:\r\n{RP}\r\n")).unwrap();
        let out = d.path().join("keys.csv.age");
        let s = seal_files(&[a.clone(), b.clone()], "pp", WF, &out, false).unwrap();
        assert_eq!(s.keys, 2);
        assert_eq!(
            s.protector_ids,
            [
                "{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}",
                "{11111111-2222-3333-4444-555555555555}"
            ]
        );
        let bytes = std::fs::read(&out).unwrap();
        assert!(sealed::is_sealed(&bytes));
        assert!(!String::from_utf8_lossy(&bytes).contains("042647"));
        // No temp file is left beside it.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(check(&out, "pp").unwrap(), s);
        let e = check(&out, "nope").unwrap_err();
        assert!(
            format!("{e:#}").contains("passphrase does not open it"),
            "{e:#}"
        );
        // Not replaced without --replace; replaced with it.
        let e = seal_files(std::slice::from_ref(&a), "pp", WF, &out, false).unwrap_err();
        assert!(format!("{e:#}").contains("exists"), "{e:#}");
        assert_eq!(seal_files(&[a], "pp", WF, &out, true).unwrap().keys, 1);
    }

    #[test]
    fn refusals_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.csv");
        std::fs::write(&empty, "KeyID,RecoveryKey\r\n").unwrap();
        let out = d.path().join("k.age");
        let e = seal_files(&[empty], "pp", WF, &out, false).unwrap_err();
        assert!(
            format!("{e:#}").contains("empty.csv: no BitLocker recovery key"),
            "{e:#}"
        );
        let junk = d.path().join("notes.txt");
        std::fs::write(&junk, "nothing here").unwrap();
        let e = seal_files(std::slice::from_ref(&junk), "pp", WF, &out, false).unwrap_err();
        assert!(format!("{e:#}").contains("notes.txt"), "{e:#}");
        let e = seal_files(&[junk], "pp", WF, &d.path().join("k.csv"), false).unwrap_err();
        assert!(format!("{e:#}").contains("name it *.age"), "{e:#}");
        let already = d.path().join("s.age");
        std::fs::write(
            &already,
            sealed::seal(b"KeyID,RecoveryKey\r\n", "x", WF).unwrap(),
        )
        .unwrap();
        let e = seal_files(&[already], "pp", WF, &out, false).unwrap_err();
        assert!(format!("{e:#}").contains("already sealed"), "{e:#}");
        assert!(!out.exists(), "nothing written on a refusal");
    }
}
