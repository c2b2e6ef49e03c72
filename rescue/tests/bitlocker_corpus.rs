//! BitLocker against real volumes made by Windows 7, 10 and 11 (the
//! cryptsetup test images in `shared/corpora/bitlocker/`, never copied into
//! the repository): metadata as `cryptsetup bitlkDump` reads it, every
//! protector of every image unlocks, the decrypted device hashes to
//! `images.conf`'s SHA256SUM, wrong keys are `WrongKey`, damaged metadata
//! falls back to the next copy, special states are refused, and a volume
//! round-trips through decrypt → re-encrypt.
//!
//! The tarball is extracted (sparse, `tar xJSf`) into a temp dir per test;
//! it takes a few tens of milliseconds.

use defib_rescue::bitlocker::dm::{self, Target};
use defib_rescue::bitlocker::keyfile::{unlock_from_store, KeyStore};
use defib_rescue::bitlocker::keys::{check_group, GroupCheck};
use defib_rescue::bitlocker::metadata::CopyState;
use defib_rescue::bitlocker::soft::{self, PlainReader};
use defib_rescue::bitlocker::{
    assess, read_metadata, unlock, Credential, Guid, PasswordKey, ProtectorKind, Readiness,
    RecoveryPassword, Refusal, StartupKey, UnlockError,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/bitlocker")
}

/// Extracts the images into a fresh temp dir; `None` (test skipped, said
/// loudly) when the corpus is not on this machine.
fn extract() -> Option<tempfile::TempDir> {
    let tarball = corpus_dir().join("bitlk-images.tar.xz");
    if !tarball.exists() {
        eprintln!("SKIP: {} not found", tarball.display());
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let st = Command::new("tar")
        .arg("xJSf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("running tar");
    assert!(st.success(), "tar xJSf failed");
    Some(dir)
}

/// `images.conf`: `[name]` sections of KEY=VALUE.
fn images_conf() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(corpus_dir().join("images.conf")).expect("images.conf");
    let mut out = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            out.insert(name.to_string(), BTreeMap::new());
        } else if let (Some(name), Some((k, v))) = (&current, line.split_once('=')) {
            out.get_mut(name)
                .unwrap()
                .insert(k.to_string(), v.to_string());
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn guid(s: &str) -> Guid {
    Guid::parse(s).unwrap()
}

fn find_bek(dir: &Path, id: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.to_ascii_lowercase().starts_with(&id.to_ascii_lowercase()) && n.ends_with(".BEK")
            })
        })
}

/// Every credential images.conf (and the tarball's .BEK files) gives for
/// one image, with the protector GUID it must open.
fn credentials(
    dir: &Path,
    conf: &BTreeMap<String, String>,
) -> Vec<(&'static str, Credential, Guid)> {
    let get = |k: &str| conf.get(k).filter(|v| !v.is_empty());
    let mut out = Vec::new();
    if let (Some(rp), Some(g)) = (get("RP"), get("RP_VMK_GUID")) {
        out.push((
            "RP",
            Credential::RecoveryPassword(RecoveryPassword::parse(rp).unwrap()),
            guid(g),
        ));
    }
    if let (Some(pw), Some(g)) = (get("PW"), get("PW_VMK_GUID")) {
        out.push(("PW", Credential::Password(PasswordKey::new(pw)), guid(g)));
    }
    if let Some(g) = get("SK_VMK_GUID") {
        let bek = find_bek(dir, &g[..8]).expect("the startup key's .BEK is in the tarball");
        let sk = StartupKey::parse(&std::fs::read(bek).unwrap()).unwrap();
        out.push(("BEK", Credential::StartupKey(sk), guid(g)));
    }
    if let Some(g) = get("CLEARKEY_VMK_GUID") {
        out.push(("clear key", Credential::ClearKey, guid(g)));
    }
    out
}

/// Images the rescue may map (the others are special states, refused).
fn mappable(name: &str) -> bool {
    !name.contains("partially-encrypted") && !name.ends_with("-eow")
}

#[test]
fn bitlocker_metadata_reads_like_cryptsetup() {
    let Some(dir) = extract() else { return };
    let conf = images_conf();
    let oracle = Command::new("cryptsetup").arg("--version").output().is_ok();
    if !oracle {
        eprintln!(
            "NOTE: cryptsetup not installed; checking against recorded bitlkDump values only"
        );
    }
    for (name, c) in &conf {
        let path = dir.path().join(format!("{name}.img"));
        let meta = read_metadata(&mut File::open(&path).unwrap(), 0).unwrap();
        assert_eq!(meta.volume_guid, guid(&c["GUID"]), "{name}");
        assert_eq!(meta.version, 2);
        assert_eq!(meta.used_copy, 0, "{name}: first copy is valid");
        let method = meta.method.unwrap();
        assert_eq!(method.dm_cipher(), c["CIPHER"], "{name}");
        for (k, v) in c {
            if k.ends_with("_VMK_GUID") && !v.is_empty() {
                assert!(
                    meta.vmks().any(|p| p.guid == guid(v)),
                    "{name}: protector {k}"
                );
            }
        }
        if oracle {
            let out = Command::new("cryptsetup")
                .arg("bitlkDump")
                .arg(&path)
                .output()
                .unwrap();
            let dump = String::from_utf8_lossy(&out.stdout);
            let field = |label: &str| -> Vec<u64> {
                let mut v = Vec::new();
                let mut lines = dump.lines();
                while let Some(l) = lines.next() {
                    if l.contains(label) {
                        for l in lines.by_ref() {
                            if let Some(x) = l.trim().strip_prefix("Offset:") {
                                v.push(
                                    x.trim()
                                        .trim_end_matches(" [bytes]")
                                        .trim()
                                        .parse()
                                        .unwrap(),
                                );
                            } else if let Some(x) = l.trim().strip_prefix("Size:") {
                                v.push(
                                    x.trim()
                                        .trim_end_matches(" [bytes]")
                                        .trim()
                                        .parse()
                                        .unwrap(),
                                );
                                break;
                            }
                        }
                    }
                }
                v
            };
            let areas = field("FVE metadata area");
            assert_eq!(
                areas,
                meta.metadata_offsets
                    .iter()
                    .flat_map(|&o| [o, 65536])
                    .collect::<Vec<_>>(),
                "{name}: metadata areas"
            );
            assert_eq!(
                field("Volume header"),
                vec![meta.volume_header_offset, meta.volume_header_size],
                "{name}: volume header"
            );
            assert!(
                dump.contains(&format!("Sector size:  \t{} [bytes]", meta.sector_size)),
                "{name}"
            );
            assert!(
                dump.contains(&format!("Volume size:  \t{} [bytes]", meta.encrypted_size)),
                "{name}"
            );
            let dumped_vmks = dump.matches(": VMK").count();
            assert_eq!(dumped_vmks, meta.vmks().count(), "{name}: VMK count");
            for v in meta.vmks() {
                assert!(dump.contains(&v.guid.to_string()), "{name}: {}", v.guid);
            }
        }
    }
    // Recorded from cryptsetup 2.6.1 `bitlkDump` (so the check stands
    // without the oracle installed).
    let elephant = read_metadata(
        &mut File::open(dir.path().join("bitlk-aes-cbc-elephant-128.img")).unwrap(),
        0,
    )
    .unwrap();
    assert_eq!(elephant.metadata_offsets, [34603008, 67809280, 101015552]);
    assert_eq!(
        (elephant.volume_header_offset, elephant.volume_header_size),
        (44224512, 8192)
    );
    let k4 = read_metadata(
        &mut File::open(dir.path().join("bitlk-aes-xts-128-4k.img")).unwrap(),
        0,
    )
    .unwrap();
    assert_eq!(k4.sector_size, 4096);
    assert_eq!(k4.metadata_offsets, [35213312, 46256128, 57909248]);
    let togo = read_metadata(
        &mut File::open(dir.path().join("bitlk-togo-aes-xts-128.img")).unwrap(),
        0,
    )
    .unwrap();
    assert!(togo.togo);
    assert_eq!(
        (togo.volume_header_offset, togo.volume_header_size),
        (92342272, 5258240)
    );
}

#[test]
fn bitlocker_protector_kinds_and_ids_as_windows_shows_them() {
    let Some(dir) = extract() else { return };
    let sc = read_metadata(
        &mut File::open(dir.path().join("bitlk-aes-xts-128-smart-card.img")).unwrap(),
        0,
    )
    .unwrap();
    let kinds: Vec<_> = sc.vmks().map(|v| (v.guid.short_id(), v.kind)).collect();
    assert!(
        kinds.contains(&("7D2245B9".into(), ProtectorKind::SmartCard)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("1F9DA098".into(), ProtectorKind::RecoveryPassword)),
        "{kinds:?}"
    );
    // A password cannot open a smart-card-only protector: the error lists
    // what the volume has, with IDs as the recovery screen shows them.
    let e = unlock(&sc, &Credential::Password(PasswordKey::new("anaconda"))).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, UnlockError::NoProtector { .. }), "{msg}");
    assert!(
        msg.contains("smart-card key ID 7D2245B9 ({7D2245B9-CCD5-49D0-B4F5-653162A71744})"),
        "{msg}"
    );
    assert!(msg.contains("not usable here"), "{msg}");
    assert!(!ProtectorKind::SmartCard.usable_offline());
    assert!(!ProtectorKind::Tpm.usable_offline());
    assert!(!ProtectorKind::TpmPin.usable_offline());
}

/// Release-only in the default run: 26 stretches of 2²⁰ SHA-256 rounds
/// and twelve 100 MiB decrypts take ~9 minutes unoptimised, ~10 s
/// optimised. `cargo test --release -p defib-rescue --test
/// bitlocker_corpus -- --nocapture` runs it (or `--include-ignored`).
#[test]
#[cfg_attr(debug_assertions, ignore = "slow unoptimised: run with --release")]
fn bitlocker_every_protector_unlocks_and_the_plain_device_hashes_right() {
    let Some(dir) = extract() else { return };
    let conf = images_conf();
    let mut passed = Vec::new();
    for (name, c) in &conf {
        let path = dir.path().join(format!("{name}.img"));
        let meta = read_metadata(&mut File::open(&path).unwrap(), 0).unwrap();
        let mut fveks = Vec::new();
        for (label, cred, expected) in credentials(dir.path(), c) {
            let t = Instant::now();
            let u = unlock(&meta, &cred).unwrap_or_else(|e| panic!("{name} {label}: {e}"));
            assert_eq!(u.protector, expected, "{name} {label}");
            eprintln!(
                "{name}: {label} opens {} in {:?}",
                u.protector.short_id(),
                t.elapsed()
            );
            fveks.push(u.key);
            passed.push(format!("{name}/{label}"));
        }
        assert!(!fveks.is_empty(), "{name}: no credential");
        assert!(
            fveks.windows(2).all(|w| w[0].expose() == w[1].expose()),
            "{name}: every protector yields the same FVEK"
        );
        let len = std::fs::metadata(&path).unwrap().len();
        let want = c.get("SHA256SUM").filter(|s| !s.is_empty());
        if !mappable(name) {
            let err = dm::plan(&meta, len).unwrap_err();
            assert!(err.downcast_ref::<Refusal>().is_some(), "{name}: {err:#}");
            eprintln!("{name}: refused: {err}");
            continue;
        }
        let plan = dm::plan(&meta, len).unwrap();
        let mut reader = PlainReader::new(File::open(&path).unwrap(), 0, plan, &fveks[0]).unwrap();
        let t = Instant::now();
        let sum = hex(&soft::plain_sha256(&mut reader).unwrap());
        eprintln!("{name}: plain SHA-256 in {:?}", t.elapsed());
        if let Some(want) = want {
            assert_eq!(&sum, want, "{name}: decrypted device hash");
        }
        // The plain volume starts with the file system the corpus names.
        let mut boot = [0u8; 512];
        reader.seek(SeekFrom::Start(0)).unwrap();
        reader.read_exact(&mut boot).unwrap();
        assert!(
            &boot[3..11] == b"NTFS    " || &boot[3..11] == b"MSDOS5.0" || &boot[82..87] == b"FAT32",
            "{name}: {:?}",
            &boot[3..11]
        );
    }
    eprintln!("unlocked: {}", passed.join(", "));
}

fn open_meta(dir: &Path, name: &str) -> defib_rescue::bitlocker::Metadata {
    read_metadata(&mut File::open(dir.join(format!("{name}.img"))).unwrap(), 0).unwrap()
}

/// The first sector of the plain volume.
fn plain_boot(dir: &Path, name: &str, key: &defib_rescue::bitlocker::VolumeKey) -> [u8; 512] {
    let path = dir.join(format!("{name}.img"));
    let meta = read_metadata(&mut File::open(&path).unwrap(), 0).unwrap();
    let plan = dm::plan(&meta, std::fs::metadata(&path).unwrap().len()).unwrap();
    let mut r = PlainReader::new(File::open(&path).unwrap(), 0, plan, key).unwrap();
    let mut boot = [0u8; 512];
    r.read_exact(&mut boot).unwrap();
    boot
}

/// Keys that need no stretch (startup key, clear key) unlock in any build,
/// and the plain boot sector carries the NTFS serial images.conf names.
#[test]
fn bitlocker_startup_key_and_clear_key_unlock_quickly() {
    let Some(dir) = extract() else { return };
    let conf = images_conf();
    for (name, label) in [
        ("bitlk-aes-xts-128-startup-key", "BEK"),
        ("bitlk-aes-xts-128-clearkey-only", "clear key"),
    ] {
        let meta = open_meta(dir.path(), name);
        let (_, cred, expected) = credentials(dir.path(), &conf[name])
            .into_iter()
            .find(|(l, _, _)| *l == label)
            .unwrap();
        let u = unlock(&meta, &cred).unwrap();
        assert_eq!(u.protector, expected);
        let boot = plain_boot(dir.path(), name, &u.key);
        assert_eq!(&boot[3..11], b"NTFS    ", "{name}");
        let serial = u64::from_le_bytes(boot[0x48..0x50].try_into().unwrap());
        assert_eq!(
            format!("{serial:016X}"),
            conf[name]["UUID"],
            "{name}: NTFS serial"
        );
    }
}

#[test]
fn bitlocker_wrong_and_foreign_startup_keys() {
    let Some(dir) = extract() else { return };
    let meta = open_meta(dir.path(), "bitlk-aes-xts-128-startup-key");
    // The tarball's other .BEK belongs to no protector of this volume.
    let other =
        StartupKey::parse(&std::fs::read(find_bek(dir.path(), "AA80A52B").unwrap()).unwrap())
            .unwrap();
    let e = unlock(&meta, &Credential::StartupKey(other)).unwrap_err();
    assert!(
        matches!(e, UnlockError::StartupKeyNotForThisVolume { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("AA80A52B"), "{e}");
    // The right file with one key byte changed: the AES-CCM tag says no.
    let mut bytes = std::fs::read(find_bek(dir.path(), "4381F759").unwrap()).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    let bad = StartupKey::parse(&bytes).unwrap();
    let e = unlock(&meta, &Credential::StartupKey(bad)).unwrap_err();
    match &e {
        UnlockError::WrongKey { tried } => {
            assert_eq!(tried, &vec![guid("4381f759-c4f8-4de0-bb61-fc33a831bda5")])
        }
        other => panic!("expected WrongKey, got {other}"),
    }
    assert!(e.to_string().contains("4381F759"), "{e}");
    // A clear key on a volume without one.
    let e = unlock(&meta, &Credential::ClearKey).unwrap_err();
    assert!(matches!(e, UnlockError::NoProtector { .. }), "{e}");
}

/// Wrong recovery password and wrong password: one stretch each.
#[test]
#[cfg_attr(debug_assertions, ignore = "slow unoptimised: run with --release")]
fn bitlocker_wrong_recovery_password_and_password() {
    let Some(dir) = extract() else { return };
    let conf = images_conf();
    let meta = open_meta(dir.path(), "bitlk-aes-xts-128");
    let foreign = RecoveryPassword::parse(&conf["bitlk-aes-cbc-128"]["RP"]).unwrap();
    let e = unlock(&meta, &Credential::RecoveryPassword(foreign)).unwrap_err();
    assert!(matches!(e, UnlockError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("64311DEA"), "{e}");
    let e = unlock(&meta, &Credential::Password(PasswordKey::new("anaconda!"))).unwrap_err();
    assert!(matches!(e, UnlockError::WrongKey { .. }), "{e}");
}

/// Copies an image into `dir` and corrupts bytes of metadata copies.
fn corrupt_copy(src: &Path, dst: &Path, copies: &[usize], fix_crc: bool) {
    patch_copies(src, dst, copies, fix_crc, |block| block[64 + 32] ^= 0xff);
}

/// Copies an image and changes each listed metadata copy with `patch`
/// (then, if asked, makes its CRC-32 match again).
fn patch_copies(
    src: &Path,
    dst: &Path,
    copies: &[usize],
    fix_crc: bool,
    patch: impl Fn(&mut [u8]),
) {
    std::fs::copy(src, dst).unwrap();
    let meta = read_metadata(&mut File::open(dst).unwrap(), 0).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)
        .unwrap();
    for &i in copies {
        let at = meta.metadata_offsets[i];
        let mut block = vec![0u8; 65536];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut block).unwrap();
        // e.g. the metadata header's nonce counter (+64+32): parses either way.
        patch(&mut block);
        if fix_crc {
            let len = (u16::from_le_bytes([block[8], block[9]]) as usize) << 4;
            let crc = crc32(&block[..len]);
            block[len + 4..len + 8].copy_from_slice(&crc.to_le_bytes());
        }
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&block).unwrap();
    }
}

/// CRC-32 (IEEE), written out here so the test does not trust the
/// library's choice of polynomial.
fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn bitlocker_damaged_metadata_falls_back_and_tampering_is_caught() {
    let Some(dir) = extract() else { return };
    let src = dir.path().join("bitlk-aes-xts-128-clearkey-only.img");
    // Two of three copies fail their CRC: the third is used, and unlocks
    // (its sealed hash matches).
    let two_bad = dir.path().join("two-bad.img");
    corrupt_copy(&src, &two_bad, &[0, 1], false);
    let meta = read_metadata(&mut File::open(&two_bad).unwrap(), 0).unwrap();
    assert_eq!(meta.used_copy, 2);
    for c in &meta.copies[..2] {
        assert!(
            matches!(c, CopyState::Invalid(e) if e.contains("CRC-32 mismatch")),
            "{c:?}"
        );
    }
    let u = unlock(&meta, &Credential::ClearKey).unwrap();
    assert_eq!(u.protector, guid("f99f18e8-0348-4a6b-afdf-58b1dd71f0d1"));
    // All three bad: a clear error naming each copy.
    let all_bad = dir.path().join("all-bad.img");
    corrupt_copy(&src, &all_bad, &[0, 1, 2], false);
    let e = read_metadata(&mut File::open(&all_bad).unwrap(), 0).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("copy 1") && msg.contains("copy 3") && msg.contains("CRC-32"),
        "{msg}"
    );
    // A copy altered with its CRC fixed up passes the CRC but not the
    // VMK-sealed SHA-256.
    let forged = dir.path().join("forged.img");
    corrupt_copy(&src, &forged, &[0], true);
    let meta = read_metadata(&mut File::open(&forged).unwrap(), 0).unwrap();
    assert_eq!(meta.used_copy, 0);
    let e = unlock(&meta, &Credential::ClearKey).unwrap_err();
    assert!(matches!(e, UnlockError::Integrity(_)), "{e}");
    // Every copy claims an unknown block version (CRC intact): a typed
    // refusal, not a guess.
    let v3 = dir.path().join("v3.img");
    patch_copies(&src, &v3, &[0, 1, 2], true, |b| b[10] = 3);
    let e = read_metadata(&mut File::open(&v3).unwrap(), 0).unwrap_err();
    assert_eq!(
        e.downcast_ref::<Refusal>(),
        Some(&Refusal::UnsupportedVersion(3)),
        "{e:#}"
    );
}

#[test]
fn bitlocker_special_states_are_refused_with_a_reason() {
    let Some(dir) = extract() else { return };
    for name in [
        "bitlk-aes-xts-128-eow",
        "bitlk-partially-encrypted-aes-cbc-128",
    ] {
        let meta = open_meta(dir.path(), name);
        let e = dm::plan(&meta, 100 << 20).unwrap_err();
        // Both carry the encrypt-on-write identifier in the boot sector:
        // which sectors are encrypted lives in a bitmap, not a range.
        assert_eq!(
            e.downcast_ref::<Refusal>(),
            Some(&Refusal::EncryptOnWrite),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("unlock it in Windows"), "{e}");
    }
    // The other refusals, on a healthy volume's metadata with one field
    // changed (no corpus image has them).
    let good = open_meta(dir.path(), "bitlk-aes-xts-128");
    let len = 100 << 20;
    assert!(dm::plan(&good, len).is_ok());
    let mut m = good.clone();
    m.current_state = 2;
    assert_eq!(
        dm::plan(&m, len).unwrap_err().downcast_ref::<Refusal>(),
        Some(&Refusal::ConversionInProgress {
            current: 2,
            next: 4
        })
    );
    let mut m = good.clone();
    m.encrypted_size = 50 << 20;
    assert!(matches!(
        dm::plan(&m, len).unwrap_err().downcast_ref::<Refusal>(),
        Some(Refusal::PartiallyEncrypted { .. })
    ));
    let mut m = good.clone();
    m.version = 3;
    assert_eq!(
        dm::plan(&m, len).unwrap_err().downcast_ref::<Refusal>(),
        Some(&Refusal::UnsupportedVersion(3))
    );
    // One sector short is slack, not a partial conversion.
    let mut m = good.clone();
    m.encrypted_size = len - 512;
    assert!(dm::plan(&m, len).is_ok());
    // Smart card: the offline-unusable protector is reported, not tried;
    // with the recovery password gone, nothing usable is left.
    let sc = open_meta(dir.path(), "bitlk-aes-xts-128-smart-card");
    let status = assess(&sc, len);
    assert!(
        matches!(&status, Readiness::Ready { usable } if usable.len() == 1),
        "{status}"
    );
    assert!(
        status
            .to_string()
            .contains("recovery-password key ID 1F9DA098"),
        "{status}"
    );
    let mut only_sc = sc.clone();
    only_sc.entries.retain(|d| match &d.value {
        defib_rescue::bitlocker::metadata::Value::Vmk(v) => v.kind == ProtectorKind::SmartCard,
        _ => true,
    });
    let status = assess(&only_sc, len);
    assert!(
        matches!(status, Readiness::NoOfflineProtector { .. }),
        "{status}"
    );
    assert!(
        status
            .to_string()
            .contains("smart-card key ID 7D2245B9 ({7D2245B9-CCD5-49D0-B4F5-653162A71744})"),
        "{status}"
    );
    let eow = open_meta(dir.path(), "bitlk-aes-xts-128-eow");
    assert_eq!(
        assess(&eow, len),
        Readiness::Refused(Refusal::EncryptOnWrite)
    );
}

#[test]
fn bitlocker_dm_tables_for_xts_elephant_and_4k() {
    let Some(dir) = extract() else { return };
    let xts = open_meta(dir.path(), "bitlk-aes-xts-128");
    let plan = dm::plan(&xts, 104857600).unwrap();
    eprintln!("bitlk-aes-xts-128:\n{}", plan.describe());
    // Offsets as cryptsetup bitlkDump shows them, in 512-byte sectors:
    // header 35278848 (68904) x 8192 (16); metadata areas of 128 sectors.
    assert_eq!(
        plan.segments[0],
        dm::Segment {
            start: 0,
            len: 16,
            target: Target::Crypt {
                device_offset: 68904,
                iv_offset: 68904
            }
        }
    );
    // As bitlkDump prints them: areas at 35213312, 46256128, 57909248 (64 KiB
    // each), volume header at 35278848 (8 KiB).
    assert_eq!(
        plan.reserved_ranges(),
        vec![
            (35213312, 35278848),
            (35278848, 35287040),
            (46256128, 46321664),
            (57909248, 57974784)
        ]
    );
    let zeros: Vec<_> = plan
        .segments
        .iter()
        .filter(|s| s.target == Target::Zero)
        .map(|s| (s.start * 512, s.len * 512))
        .collect();
    let mut expect: Vec<_> = xts.metadata_offsets.iter().map(|&o| (o, 65536)).collect();
    expect.push((35278848, 8192));
    expect.sort();
    // Touching areas stay separate zero segments, as cryptsetup has them.
    assert_eq!(zeros, expect);
    // Contiguous, identity-mapped crypt everywhere else.
    let mut at = 0;
    for s in &plan.segments {
        assert_eq!(s.start, at);
        if let Target::Crypt {
            device_offset,
            iv_offset,
        } = s.target
        {
            assert_eq!(device_offset, iv_offset);
            if s.start != 0 {
                assert_eq!(device_offset, s.start);
            }
        }
        at += s.len;
    }
    assert_eq!(at * 512, 104857600);
    let key =
        defib_rescue::bitlocker::VolumeKey::from_bytes(xts.method.unwrap(), &[0x11; 32]).unwrap();
    let table = dm::render_table(&plan, &key, "/dev/sda2").unwrap();
    assert!(
        table.starts_with(&format!(
            "0 16 crypt aes-xts-plain64 {} 68904 /dev/sda2 68904\n",
            "11".repeat(32)
        )),
        "{}",
        table.as_str()
    );
    assert!(!plan.describe().contains("1111"), "describe() holds no key");
    assert!(!format!("{plan:?}").contains("1111"));

    let el = open_meta(dir.path(), "bitlk-aes-cbc-elephant-128");
    let plan = dm::plan(&el, 134217728).unwrap();
    eprintln!("bitlk-aes-cbc-elephant-128:\n{}", plan.describe());
    assert_eq!(
        plan.describe().lines().next(),
        Some("0 16 crypt aes-cbc-elephant <key> 86376 <device> 86376")
    );
    let key =
        defib_rescue::bitlocker::VolumeKey::from_bytes(el.method.unwrap(), &[0x22; 32]).unwrap();
    assert!(dm::render_table(&plan, &key, "/dev/sdb1")
        .unwrap()
        .contains(&format!("crypt aes-cbc-elephant {} ", "22".repeat(32))));
    assert!(dm::render_table(&plan, &key, "bad path").is_err());

    let k4 = open_meta(dir.path(), "bitlk-aes-xts-128-4k");
    let plan = dm::plan(&k4, 104857600).unwrap();
    eprintln!("bitlk-aes-xts-128-4k:\n{}", plan.describe());
    for line in plan.describe().lines().filter(|l| l.contains("crypt")) {
        assert!(
            line.ends_with(" 2 iv_large_sectors sector_size:4096"),
            "{line}"
        );
    }
    for s in &plan.segments {
        assert_eq!(s.start % 8, 0);
        assert_eq!(s.len % 8, 0);
    }
}

#[test]
fn bitlocker_key_files_find_the_corpus_keys() {
    let Some(dir) = extract() else { return };
    let conf = images_conf();
    let keys = tempfile::tempdir().unwrap();
    // A CrowdStrike-style CSV of every recovery password in the corpus,
    // IDs upper-case in braces.
    let mut csv = String::from("KeyID,RecoveryKey\n");
    for c in conf.values() {
        if let (Some(id), Some(rp)) = (c.get("RP_VMK_GUID"), c.get("RP")) {
            if !id.is_empty() {
                csv.push_str(&format!("{{{}}},{rp}\n", id.to_uppercase()));
            }
        }
    }
    std::fs::write(keys.path().join("BitLockerKeys.csv"), csv).unwrap();
    for bek in [
        "4381F759-C4F8-4DE0-BB61-FC33A831BDA5.BEK",
        "AA80A52B-9B66-47AE-B097-33F536FFBB07.BEK",
    ] {
        std::fs::copy(dir.path().join(bek), keys.path().join(bek)).unwrap();
    }
    let mut store = KeyStore::new();
    let n = store.add_dir(keys.path()).unwrap();
    assert_eq!(
        n, 15,
        "13 recovery passwords + 2 startup keys; rejected: {:?}",
        store.rejected
    );
    for (name, c) in &conf {
        let meta = open_meta(dir.path(), name);
        for v in meta.vmks() {
            let found = store.candidates(&v.guid);
            let expect = match v.kind {
                ProtectorKind::RecoveryPassword => {
                    c.get("RP_VMK_GUID") == Some(&v.guid.to_string())
                }
                ProtectorKind::StartupKey => true,
                _ => false,
            };
            assert_eq!(
                found.len(),
                usize::from(expect),
                "{name} {} {:?}",
                v.guid,
                v.kind
            );
        }
    }
    // The startup key found through the store opens its volume.
    let meta = open_meta(dir.path(), "bitlk-aes-xts-128-startup-key");
    let sk = meta
        .vmks()
        .find(|v| v.kind == ProtectorKind::StartupKey)
        .unwrap();
    let cred = store.candidates(&sk.guid)[0].credential();
    assert!(unlock(&meta, &cred).is_ok());
    // unlock_from_store tries it before the recovery password the CSV
    // also has for this volume.
    let u = unlock_from_store(&meta, &store).unwrap();
    assert_eq!(u.kind, ProtectorKind::StartupKey);
    // A volume none of the files knows.
    let clear = open_meta(dir.path(), "bitlk-aes-xts-128-clearkey-only");
    let e = unlock_from_store(&clear, &store).unwrap_err();
    assert!(matches!(e, UnlockError::NoKeyForVolume { .. }), "{e}");
    assert!(e.to_string().contains("F99F18E8"), "{e}");
}

/// Decrypt → re-encrypt gives back the original image byte for byte; a
/// changed plain volume re-encrypts into an image every protector still
/// opens, showing the change (how fixtures with any NTFS tree are built).
#[test]
#[cfg_attr(debug_assertions, ignore = "slow unoptimised: run with --release")]
fn bitlocker_decrypt_reencrypt_round_trip_and_fixture() {
    let Some(dir) = extract() else { return };
    let conf = images_conf();
    for name in [
        "bitlk-aes-xts-128-startup-key",
        "bitlk-aes-cbc-elephant-128",
        "bitlk-togo-aes-cbc-128",
        "bitlk-aes-xts-128-4k",
    ] {
        let path = dir.path().join(format!("{name}.img"));
        let meta = open_meta(dir.path(), name);
        let (_, cred, _) = credentials(dir.path(), &conf[name])
            .into_iter()
            .last()
            .unwrap();
        let key = unlock(&meta, &cred).unwrap().key;
        let len = std::fs::metadata(&path).unwrap().len();
        let plan = dm::plan(&meta, len).unwrap();
        let plain_path = dir.path().join("plain.raw");
        let mut reader = PlainReader::new(File::open(&path).unwrap(), 0, plan, &key).unwrap();
        std::io::copy(&mut reader, &mut File::create(&plain_path).unwrap()).unwrap();
        let out = dir.path().join("again.img");
        soft::reencrypt_with_plain(&path, &key, &plain_path, &out).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&path).unwrap(),
            "{name}: round trip differs"
        );

        // Change the plain volume (a byte of the boot sector's boot code)
        // and build a new BitLocker image from it.
        let mut plain = std::fs::read(&plain_path).unwrap();
        plain[0x100] ^= 0x5a;
        std::fs::write(&plain_path, &plain).unwrap();
        soft::reencrypt_with_plain(&path, &key, &plain_path, &out).unwrap();
        let meta2 = read_metadata(&mut File::open(&out).unwrap(), 0).unwrap();
        let key2 = unlock(&meta2, &cred).unwrap().key;
        let plan2 = dm::plan(&meta2, len).unwrap();
        let mut r = PlainReader::new(File::open(&out).unwrap(), 0, plan2, &key2).unwrap();
        assert_eq!(
            hex(&soft::plain_sha256(&mut r).unwrap()),
            hex(&sha256(&plain)),
            "{name}"
        );
        // Data in a reserved range is refused before anything is written.
        let zero_at = meta.metadata_offsets[1] as usize;
        plain[zero_at + 10] = 1;
        std::fs::write(&plain_path, &plain).unwrap();
        let e = soft::reencrypt_with_plain(&path, &key, &plain_path, &out).unwrap_err();
        assert!(format!("{e:#}").contains("reserved"), "{e:#}");
        // A plain volume of the wrong size is refused.
        std::fs::write(&plain_path, &plain[..plain.len() - 512]).unwrap();
        assert!(soft::reencrypt_with_plain(&path, &key, &plain_path, &out).is_err());
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Prints how long the stretch takes (the whole cost of a password or
/// recovery-password unlock). Meaningful with --release.
#[test]
#[cfg_attr(debug_assertions, ignore = "timing is meaningful only with --release")]
fn bitlocker_key_derivation_time() {
    let rp =
        RecoveryPassword::parse("042647-302313-590458-071500-554323-116567-412181-516978").unwrap();
    let t = Instant::now();
    let _ = rp.protector_key(&[7u8; 16]);
    let rp_time = t.elapsed();
    let pw = PasswordKey::new("anaconda");
    let t = Instant::now();
    let _ = pw.protector_key(&[7u8; 16]);
    eprintln!(
        "key derivation (2^20 SHA-256 rounds): recovery password {rp_time:?}, password {:?}",
        t.elapsed()
    );
}

#[test]
fn bitlocker_group_check_is_exported_for_typing() {
    assert_eq!(check_group("042647"), GroupCheck::Valid);
}

/// The volume at a byte offset inside a larger "disk" (a partition): the
/// metadata, the key and the plain reader all honour the offset.
#[test]
fn bitlocker_volume_inside_a_disk_image() {
    let Some(dir) = extract() else { return };
    let name = "bitlk-aes-xts-128-startup-key";
    let src = dir.path().join(format!("{name}.img"));
    let disk = dir.path().join("disk.img");
    let offset = 1u64 << 20;
    {
        let mut out = File::create(&disk).unwrap();
        out.set_len(offset).unwrap();
        out.seek(SeekFrom::Start(offset)).unwrap();
        std::io::copy(&mut File::open(&src).unwrap(), &mut out).unwrap();
    }
    let meta = read_metadata(&mut File::open(&disk).unwrap(), offset).unwrap();
    assert_eq!(meta.volume_offset, offset);
    let bek = StartupKey::parse(&std::fs::read(find_bek(dir.path(), "4381F759").unwrap()).unwrap())
        .unwrap();
    let key = unlock(&meta, &Credential::StartupKey(bek)).unwrap().key;
    let len = std::fs::metadata(&src).unwrap().len();
    let plan = dm::plan(&meta, len).unwrap();
    let mut r = PlainReader::new(File::open(&disk).unwrap(), offset, plan, &key).unwrap();
    let mut boot = [0u8; 512];
    r.read_exact(&mut boot).unwrap();
    assert_eq!(&boot[3..11], b"NTFS    ");
    assert_eq!(
        format!(
            "{:016X}",
            u64::from_le_bytes(boot[0x48..0x50].try_into().unwrap())
        ),
        images_conf()[name]["UUID"]
    );
    // Reading across segment borders gives the same bytes as reading
    // sector by sector.
    let border = meta.metadata_offsets[0];
    let mut whole = vec![0u8; 8192];
    r.seek(SeekFrom::Start(border - 4096)).unwrap();
    r.read_exact(&mut whole).unwrap();
    let mut pieces = Vec::new();
    for i in 0..16u64 {
        let mut s = [0u8; 512];
        r.seek(SeekFrom::Start(border - 4096 + i * 512)).unwrap();
        r.read_exact(&mut s).unwrap();
        pieces.extend_from_slice(&s);
    }
    assert_eq!(whole, pieces);
    assert!(
        whole[4096..].iter().all(|&b| b == 0),
        "metadata area reads as zeros"
    );
}

/// A device made of a few byte runs at given offsets, zeros elsewhere:
/// the boot sector and one metadata copy without 35 MB of padding.
struct Runs {
    runs: Vec<(u64, Vec<u8>)>,
    len: u64,
    pos: u64,
}

impl Read for Runs {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        out[..n].fill(0);
        for (at, bytes) in &self.runs {
            let (s, e) = (
                self.pos.max(*at),
                (self.pos + n as u64).min(at + bytes.len() as u64),
            );
            if s < e {
                out[(s - self.pos) as usize..(e - self.pos) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Runs {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        if let SeekFrom::Start(p) = to {
            self.pos = p;
        }
        Ok(self.pos)
    }
}

/// A real metadata block with random bytes changed (and its CRC made to
/// match, so the parser sees the damage): parsing and unlocking either
/// succeed or fail with an error, never panic or hang, and a block that
/// differs from what the VMK sealed never unlocks.
#[test]
fn bitlocker_mutated_real_metadata_never_panics() {
    let Some(dir) = extract() else { return };
    let src = dir.path().join("bitlk-aes-xts-128-clearkey-only.img");
    let meta = read_metadata(&mut File::open(&src).unwrap(), 0).unwrap();
    let at = meta.metadata_offsets[0];
    let mut f = File::open(&src).unwrap();
    let mut boot = vec![0u8; 512];
    f.read_exact(&mut boot).unwrap();
    let mut block = vec![0u8; 65536];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut block).unwrap();
    let block_len = (u16::from_le_bytes([block[8], block[9]]) as usize) << 4;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut parsed, mut changed) = (0, 0);
    for round in 0..2000 {
        let mut m = block.clone();
        for _ in 0..(1 + round % 4) {
            let pos = rnd() as usize % block_len;
            m[pos] = if round % 3 == 0 { 0xff } else { rnd() as u8 };
        }
        let len = (u16::from_le_bytes([m[8], m[9]]) as usize) << 4;
        if len + 8 <= m.len() {
            let crc = crc32(&m[..len]);
            m[len + 4..len + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let same = m[..block_len] == block[..block_len];
        // Copies 2 and 3 read as zeros here: only the mutated copy 1 counts.
        let mut dev = Runs {
            runs: vec![(0, boot.clone()), (at, m)],
            len: 100 << 20,
            pos: 0,
        };
        let Ok(meta) = read_metadata(&mut dev, 0) else {
            continue;
        };
        parsed += 1;
        let opened = unlock(&meta, &Credential::ClearKey);
        if !same {
            changed += 1;
            assert!(opened.is_err(), "round {round}: altered metadata unlocked");
        }
        let _ = dm::plan(&meta, 100 << 20);
        let _ = assess(&meta, 100 << 20);
    }
    eprintln!(
        "mutated metadata: {parsed}/2000 parsed ({changed} altered), none of the altered unlocked"
    );
}
