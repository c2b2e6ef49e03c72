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
use defib_rescue::bitlocker::keys::{check_group, GroupCheck};
use defib_rescue::bitlocker::metadata::CopyState;
use defib_rescue::bitlocker::soft::{self, PlainReader};
use defib_rescue::bitlocker::{
    read_metadata, unlock, Credential, Guid, PasswordKey, ProtectorKind, RecoveryPassword, Refusal,
    StartupKey, UnlockError,
};
use std::collections::BTreeMap;
use std::fs::File;
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
fn metadata_reads_like_cryptsetup() {
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
fn protector_kinds_and_ids_as_windows_shows_them() {
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

#[test]
fn every_protector_unlocks_and_the_plain_device_hashes_right() {
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
        use std::io::{Read, Seek, SeekFrom};
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
