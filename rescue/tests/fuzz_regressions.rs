//! Replays every committed fuzz crash input in `fuzz/regressions/<target>/`
//! for the rescue's targets through the same harness the fuzzer runs
//! (`defib_rescue::fuzzing`), on stable: each must be refused or read
//! without a panic. The builder's targets replay in
//! `builder/tests/fuzz_regressions.rs`. See docs/fuzzing.md.

use defib_rescue::fuzzing::TARGETS;
use std::path::Path;

#[test]
fn rescue_fuzz_regressions_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            // A panic fails the test naming the input; an error must say something.
            if let Err(e) = harness(&data) {
                assert!(
                    !format!("{e:#}").trim().is_empty(),
                    "{}: refused with an empty error",
                    f.display()
                );
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} rescue fuzz regression inputs");
}

/// The harnesses added for the BitLocker, key-file, hive-log, BCD,
/// quarantine and DM-table parsers, smoke-run on stable: real inputs from
/// the corpora and a few thousand cheap mutations of them must be refused
/// or accepted, never panic. (The fuzzer goes much further; this keeps a
/// broken harness or a shallow panic out of main.)
#[test]
fn new_harnesses_survive_real_and_mutated_inputs() {
    let corpora = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora");
    let hive = std::fs::read(corpora.join("registry/yarp-EmptyHive")).unwrap();
    let mut with_log = (hive.len() as u32).to_le_bytes().to_vec();
    with_log.extend_from_slice(&hive);
    with_log.extend_from_slice(&hive[..4096]);
    let csv = b"KeyID,RecoveryKey\n{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C},042647-302313-590458-071500-554323-116567-412181-516978\n".to_vec();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("hivelog", with_log),
        ("bcd", hive.clone()),
        ("keyfile", csv.clone()),
        ("quarantine", b"\x0b\xad\0\0garbage record".to_vec()),
        (
            "dm_table",
            b"0 16 crypt aes-xts-plain64 00 0 /dev/sda 0\n16 8 zero\n".to_vec(),
        ),
        // A sealed key file at a work factor the harness will run.
        ("sealed", {
            let mut r =
                age::scrypt::Recipient::new(age::secrecy::SecretString::from("fuzz".to_string()));
            r.set_work_factor(10);
            age::encrypt(&r, &csv).unwrap()
        }),
        ("bitlocker", {
            let mut v = vec![0u8; 8192];
            v[3..11].copy_from_slice(b"-FVE-FS-");
            v
        }),
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for (name, seed) in seeds {
        let (_, h) = defib_rescue::fuzzing::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no harness {name}"));
        let _ = h(&seed);
        let _ = h(&[]);
        for _ in 0..300 {
            let mut m = seed.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if m.is_empty() {
                    break;
                }
                let at = (x as usize) % m.len();
                m[at] = (x >> 32) as u8;
            }
            if x.is_multiple_of(5) {
                m.truncate((x as usize >> 8) % (m.len() + 1));
            }
            let _ = h(&m);
        }
    }
}
