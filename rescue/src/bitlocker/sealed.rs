//! Sealed key files: a key file encrypted to a passphrase, so that a stick
//! carrying every recovery key of a company is not an open book when it is
//! lost.
//!
//! The format is age v1 (the C2SP age specification) with one `scrypt`
//! passphrase stanza: `age-encryption.org/v1`, `-> scrypt <salt> <log2 N>`,
//! the wrapped file key, the header MAC, then ChaCha20-Poly1305 chunks.
//! `defib keys seal` writes it; the reference `age -p` writes the same
//! thing, and `age -d` opens what defib wrote, so nobody depends on defib
//! to get their keys back. The plaintext `defib keys seal` puts inside is
//! a plain `KeyID,RecoveryKey,Device` CSV (see [`canonical_csv`]).
//!
//! scrypt's cost is chosen when sealing (`log2 N`, r = 8, p = 1: memory
//! 128·r·N bytes) and written in the header; [`read_header`] reads it
//! before any work so the rescue can refuse a file that would need more
//! memory than the PC has, instead of being killed half-way.
//!
//! Not here: asking for the passphrase (PID 1's console prompt, host mode's
//! tty), or parsing what a sealed file holds ([`super::keyfile`] does).
//! Nothing here logs a passphrase or plaintext; both are wiped after use.

use super::keyfile::{KeyMaterial, KeyStore};
use age::secrecy::SecretString;
use std::fmt::Write as _;
use std::io::Read;
use zeroize::Zeroizing;

/// The first line of every age v1 file.
pub const MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// The work factor `defib keys seal` uses unless told otherwise: N = 2¹⁶,
/// 64 MiB of memory. See docs/bitlocker.md for the measurements behind it.
pub const DEFAULT_WORK_FACTOR: u8 = 16;
/// Below this a passphrase is too cheap to guess (2¹⁴: 16 MiB).
pub const MIN_WORK_FACTOR: u8 = 14;
/// Above this the rescue would need more than 256 MiB for one try.
pub const MAX_WORK_FACTOR: u8 = 18;

/// Memory one scrypt run needs at `log_n` with age's r = 8.
pub fn memory_for(log_n: u8) -> u64 {
    128 * 8 * (1u64 << log_n.min(40))
}

/// Memory kept free beside scrypt's: the rescue itself, the mapping and
/// the mount that follow. PID 1 cannot be OOM-killed; the kernel would
/// panic instead, so the bound errs on the safe side.
pub const RESERVE: u64 = 32 << 20;

/// The largest work factor whose scrypt fits in `available` bytes of
/// memory with [`RESERVE`] left over, capped at [`MAX_WORK_FACTOR`].
pub fn max_work_factor_for(available: u64) -> u8 {
    let mut n = MAX_WORK_FACTOR;
    while n > 1 && memory_for(n).saturating_add(RESERVE) > available {
        n -= 1;
    }
    n
}

/// `MemAvailable` from `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The work-factor bound for this machine and the memory available it
/// comes from: `/proc/meminfo` under `root`, or [`MAX_WORK_FACTOR`] (and
/// `None`) when it cannot be read.
pub fn max_work_factor_here(root: &std::path::Path) -> (u8, Option<u64>) {
    let avail = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|t| mem_available(&t));
    (avail.map_or(MAX_WORK_FACTOR, max_work_factor_for), avail)
}

/// Why a sealed file did not open. None of these carry key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error(
        "not a sealed key file (it does not start with the age header `age-encryption.org/v1`)"
    )]
    NotSealed,
    #[error("sealed to an age key, not to a passphrase; defib opens passphrase-sealed files only (`defib keys seal`, or `age -p`)")]
    NotPassphrase,
    #[error("the passphrase does not open it")]
    WrongPassphrase,
    #[error(
        "it was sealed with scrypt work factor {required} ({} MiB of memory per try); this machine allows at most {max} ({} MiB): seal it again with a lower --work-factor",
        memory_for(*required) >> 20,
        memory_for(*max) >> 20
    )]
    TooMuchWork { required: u8, max: u8 },
    #[error("damaged sealed key file: {0}")]
    Damaged(String),
    /// The passphrase was right, but what the file holds is no key file.
    #[error("it opened, but holds no usable key: {0}")]
    NoKeys(String),
}

/// What the header says, read without the passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// scrypt's log2 N.
    pub work_factor: u8,
}

/// Whether `bytes` is an age file (by its first line, not its name).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Reads the age header's stanzas: exactly one, of type `scrypt`, with a
/// decimal work factor. Bounded: the header of a passphrase-sealed file is
/// under 200 bytes, so only the first 4 KiB are looked at.
pub fn read_header(bytes: &[u8]) -> Result<Header, SealError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
    let head = &rest[..rest.len().min(4096)];
    let mut stanzas: Vec<Vec<&[u8]>> = Vec::new();
    let mut ended = false;
    for line in head.split(|&b| b == b'\n') {
        if let Some(s) = line.strip_prefix(b"-> ") {
            stanzas.push(s.split(|&b| b == b' ').collect());
        } else if line.starts_with(b"---") {
            ended = true;
            break;
        }
    }
    if !ended {
        return Err(SealError::Damaged(
            "the age header has no end (`---` line): truncated or not an age file".into(),
        ));
    }
    match stanzas.as_slice() {
        [s] if s.first() == Some(&&b"scrypt"[..]) => {
            let n = s
                .get(2)
                .filter(|a| s.len() == 3 && !a.is_empty() && a.len() <= 2)
                .and_then(|a| std::str::from_utf8(a).ok())
                .filter(|a| a.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|a| a.parse::<u8>().ok())
                .filter(|n| (1..64).contains(n))
                .ok_or_else(|| {
                    SealError::Damaged("the scrypt stanza has no valid work factor".into())
                })?;
            Ok(Header { work_factor: n })
        }
        [] => Err(SealError::Damaged("the age header has no recipient".into())),
        s if s.iter().any(|s| s.first() == Some(&&b"scrypt"[..])) => Err(SealError::Damaged(
            "a passphrase stanza must be the only one in an age header".into(),
        )),
        _ => Err(SealError::NotPassphrase),
    }
}

/// Encrypts `plain` to `passphrase` with scrypt work factor `log_n`.
pub fn seal(plain: &[u8], passphrase: &str, log_n: u8) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        (MIN_WORK_FACTOR..=MAX_WORK_FACTOR).contains(&log_n),
        "work factor {log_n} is outside {MIN_WORK_FACTOR}..={MAX_WORK_FACTOR}"
    );
    anyhow::ensure!(!passphrase.is_empty(), "the passphrase is empty");
    let mut r = age::scrypt::Recipient::new(SecretString::from(passphrase.to_owned()));
    r.set_work_factor(log_n);
    age::encrypt(&r, plain).map_err(|e| anyhow::anyhow!("sealing: {e}"))
}

/// Decrypts a sealed file in memory. Refuses before any scrypt work when
/// the header asks for more than `max_log_n`. The plaintext buffer is
/// sized once (it is never longer than the file), so it is not copied
/// around by reallocation, and is wiped on drop.
pub fn unseal(
    sealed: &[u8],
    passphrase: &str,
    max_log_n: u8,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let header = read_header(sealed)?;
    if header.work_factor > max_log_n {
        return Err(SealError::TooMuchWork {
            required: header.work_factor,
            max: max_log_n,
        });
    }
    let mut id = age::scrypt::Identity::new(SecretString::from(passphrase.to_owned()));
    id.set_max_work_factor(max_log_n);
    let decryptor = age::Decryptor::new_buffered(sealed).map_err(damaged)?;
    let mut reader = decryptor
        .decrypt(std::iter::once(&id as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                SealError::WrongPassphrase
            }
            age::DecryptError::ExcessiveWork { required, .. } => SealError::TooMuchWork {
                required,
                max: max_log_n,
            },
            other => damaged(other),
        })?;
    let mut plain = Zeroizing::new(Vec::with_capacity(sealed.len()));
    reader.read_to_end(&mut plain).map_err(|e| {
        SealError::Damaged(format!(
            "the encrypted content is truncated or altered ({e})"
        ))
    })?;
    Ok(plain)
}

fn damaged(e: age::DecryptError) -> SealError {
    SealError::Damaged(match e {
        age::DecryptError::InvalidMac => {
            "the header's MAC does not match: the file was altered".into()
        }
        age::DecryptError::InvalidHeader => "the age header is malformed".into(),
        age::DecryptError::UnknownFormat => "an age version this defib does not know".into(),
        other => other.to_string(),
    })
}

/// The plaintext `defib keys seal` writes: a CrowdStrike-style CSV that
/// every reader of key files knows, with the device name when the source
/// gave one. Keys without an ID keep an empty `KeyID` (the rescue tries
/// them on every recovery-password protector). Startup keys are not
/// included: the caller refuses `.BEK` files before this.
pub fn canonical_csv(store: &KeyStore) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("KeyID,RecoveryKey,Device\r\n"));
    for r in &store.records {
        let KeyMaterial::RecoveryPassword(rp) = &r.material else {
            continue;
        };
        let id = r.id.map(|i| i.to_string()).unwrap_or_default();
        let device = r.device.as_deref().unwrap_or("");
        let digits = rp.digits();
        let _ = write!(out, "{id},{},{}\r\n", digits.as_str(), csv_cell(device));
    }
    out
}

/// Quotes a CSV cell when it needs it (RFC 4180).
fn csv_cell(s: &str) -> String {
    if s.contains([',', ';', '"', '\t', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests seal at the lowest allowed work factor: the format and the
    /// code path are the same, only scrypt's N differs.
    const WF: u8 = MIN_WORK_FACTOR;
    const RP: &str = "042647-302313-590458-071500-554323-116567-412181-516978";
    const ID: &str = "{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}";

    fn sample_csv() -> String {
        format!("KeyID,RecoveryKey\r\n{ID},{RP}\r\n")
    }

    #[test]
    fn round_trip_and_header() {
        let sealed = seal(sample_csv().as_bytes(), "correct horse", WF).unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(read_header(&sealed).unwrap().work_factor, WF);
        assert!(
            !sealed.windows(6).any(|w| w == b"042647"),
            "the key is not in the sealed bytes"
        );
        let plain = unseal(&sealed, "correct horse", MAX_WORK_FACTOR).unwrap();
        assert_eq!(plain.as_slice(), sample_csv().as_bytes());
    }

    #[test]
    fn wrong_passphrase_is_told_apart_from_damage() {
        let sealed = seal(b"KeyID,RecoveryKey\r\n", "right", WF).unwrap();
        assert_eq!(
            unseal(&sealed, "wrong", MAX_WORK_FACTOR).unwrap_err(),
            SealError::WrongPassphrase
        );
        // Truncated inside the payload: the header opens, the content does not.
        let cut = &sealed[..sealed.len() - 5];
        assert!(matches!(
            unseal(cut, "right", MAX_WORK_FACTOR),
            Err(SealError::Damaged(_))
        ));
        // Truncated inside the header.
        assert!(matches!(
            unseal(&sealed[..40], "right", MAX_WORK_FACTOR),
            Err(SealError::Damaged(_))
        ));
        // A flipped byte in the payload.
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            unseal(&flipped, "right", MAX_WORK_FACTOR),
            Err(SealError::Damaged(_))
        ));
        assert_eq!(
            unseal(b"KeyID,RecoveryKey\r\n", "right", MAX_WORK_FACTOR).unwrap_err(),
            SealError::NotSealed
        );
    }

    #[test]
    fn work_factor_is_checked_before_any_work() {
        let sealed = seal(b"x", "p", 15).unwrap();
        assert_eq!(
            unseal(&sealed, "p", 14).unwrap_err(),
            SealError::TooMuchWork {
                required: 15,
                max: 14
            }
        );
        // A forged header asking for 2^40 is refused from the header alone.
        let forged =
            b"age-encryption.org/v1\n-> scrypt AAAAAAAAAAAAAAAAAAAAAA 40\nAAAA\n--- AAAA\n";
        assert!(matches!(
            unseal(forged, "p", MAX_WORK_FACTOR),
            Err(SealError::TooMuchWork { required: 40, .. })
        ));
        assert!(seal(b"x", "p", MIN_WORK_FACTOR - 1).is_err());
        assert!(seal(b"x", "p", MAX_WORK_FACTOR + 1).is_err());
        assert!(
            seal(b"x", "", WF).is_err(),
            "an empty passphrase is refused"
        );
    }

    #[test]
    fn memory_bound_follows_the_machine() {
        assert_eq!(memory_for(16), 64 << 20);
        assert_eq!(max_work_factor_for(16 << 30), MAX_WORK_FACTOR);
        // 64 MiB + the reserve fit in 100 MiB free; 128 MiB + 32 do not.
        assert_eq!(max_work_factor_for(100 << 20), 16);
        assert_eq!(max_work_factor_for(96 << 20), 16);
        assert_eq!(max_work_factor_for(95 << 20), 15);
        assert_eq!(max_work_factor_for(0), 1);
        let meminfo = "MemTotal:         243560 kB\nMemFree:          190000 kB\nMemAvailable:     201234 kB\n";
        assert_eq!(mem_available(meminfo), Some(201234 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn headers_of_other_kinds() {
        let x25519 = b"age-encryption.org/v1\n-> X25519 abc\nAAAA\n--- AAAA\n";
        assert_eq!(read_header(x25519).unwrap_err(), SealError::NotPassphrase);
        let two = b"age-encryption.org/v1\n-> scrypt abc 16\nAAAA\n-> X25519 abc\nAAAA\n--- AAAA\n";
        assert!(matches!(read_header(two), Err(SealError::Damaged(_))));
        for bad_n in ["", "x", "0", "64", "016", "1 2"] {
            let h = format!("age-encryption.org/v1\n-> scrypt abc {bad_n}\nAAAA\n--- AAAA\n");
            assert!(
                matches!(read_header(h.as_bytes()), Err(SealError::Damaged(_))),
                "{bad_n:?}"
            );
        }
        let none = b"age-encryption.org/v1\n--- AAAA\n";
        assert!(matches!(read_header(none), Err(SealError::Damaged(_))));
        assert!(matches!(
            read_header(b"age-encryption.org/v1\n-> scrypt abc 16\n"),
            Err(SealError::Damaged(_))
        ));
    }

    #[test]
    fn sealed_files_in_the_keys_folder_wait_for_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let csv = sample_csv();
        std::fs::write(
            dir.path().join("BitLockerKeys.csv.age"),
            seal(csv.as_bytes(), "pass phrase", WF).unwrap(),
        )
        .unwrap();
        // Named like a plain CSV: recognised by its header, not its name.
        std::fs::write(
            dir.path().join("other.csv"),
            seal(csv.as_bytes(), "another one", WF).unwrap(),
        )
        .unwrap();
        // Opens with the right passphrase but holds no key.
        std::fs::write(
            dir.path().join("notes.age"),
            seal(b"lunch at noon\n", "pass phrase", WF).unwrap(),
        )
        .unwrap();
        let mut store = KeyStore::new();
        assert_eq!(store.add_dir(dir.path()).unwrap(), 0);
        assert!(
            store.records.is_empty(),
            "nothing parsed before the passphrase"
        );
        assert!(store.rejected.is_empty(), "{:?}", store.rejected);
        assert_eq!(store.sealed.len(), 3);

        let tried = store.open_sealed("wrong", MAX_WORK_FACTOR);
        assert!(tried
            .iter()
            .all(|(_, r)| *r == Err(SealError::WrongPassphrase)));
        assert_eq!(store.sealed.len(), 3, "a wrong passphrase keeps them all");

        let mut tried = store.open_sealed("pass phrase", MAX_WORK_FACTOR);
        tried.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(tried[0].0, "BitLockerKeys.csv.age");
        assert_eq!(tried[0].1, Ok(1));
        assert!(matches!(&tried[1], (n, Err(SealError::NoKeys(_))) if n == "notes.age"));
        assert_eq!(tried[2].1, Err(SealError::WrongPassphrase));
        assert_eq!(store.sealed.len(), 1, "only other.csv is still sealed");
        let g = crate::bitlocker::Guid::parse(ID).unwrap();
        let c = store.candidates(&g);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].source.starts_with("sealed:BitLockerKeys.csv.age:"),
            "{}",
            c[0].source
        );
    }

    #[test]
    fn a_sealed_windows_txt_and_bek_by_inner_name() {
        let txt = format!("BitLocker Drive Encryption recovery key\r\nIdentifier:\r\n\t{ID}\r\nRecovery Key:\r\n\t{RP}\r\n");
        let mut store = KeyStore::new();
        store.sealed.push(crate::bitlocker::keyfile::SealedFile {
            name: "BitLocker Recovery Key X.TXT.age".into(),
            bytes: seal(txt.as_bytes(), "p", WF).unwrap(),
        });
        store.sealed.push(crate::bitlocker::keyfile::SealedFile {
            name: "garbage.BEK.age".into(),
            bytes: seal(&[0u8; 100], "p", WF).unwrap(),
        });
        let tried = store.open_sealed("p", MAX_WORK_FACTOR);
        assert_eq!(tried[0].1, Ok(1));
        assert!(matches!(tried[1].1, Err(SealError::NoKeys(_))), "{tried:?}");
        assert_eq!(store.records.len(), 1);
    }

    #[test]
    fn canonical_csv_reads_back_the_same_keys() {
        let mut s = KeyStore::new();
        s.add_csv(
            &format!("Device,KeyID,RecoveryKey\r\n\"WARD, 3\",{ID},{RP}\r\n,,{RP}\r\n"),
            "in.csv",
        )
        .unwrap();
        let csv = canonical_csv(&s);
        let mut back = KeyStore::new();
        assert_eq!(back.add_csv(&csv, "back.csv").unwrap(), 2);
        assert_eq!(back.records[0].id, s.records[0].id);
        assert_eq!(back.records[0].device.as_deref(), Some("WARD, 3"));
        assert!(back.records[1].id.is_none());
        let (KeyMaterial::RecoveryPassword(a), KeyMaterial::RecoveryPassword(b)) =
            (&s.records[0].material, &back.records[0].material)
        else {
            panic!("not recovery passwords");
        };
        assert_eq!(a.digits().as_str(), b.digits().as_str());
        assert_eq!(a.digits().as_str(), RP);
    }
}
