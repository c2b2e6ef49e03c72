//! Fuzz target `sbat`: the harness is `defib_builder::fuzzing::sbat`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_builder::fuzzing::sbat(data);
});
