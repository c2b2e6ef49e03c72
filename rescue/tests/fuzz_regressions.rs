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
