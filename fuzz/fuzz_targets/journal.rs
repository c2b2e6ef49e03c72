//! Fuzz target `journal`: the harness is `defib_rescue::fuzzing::journal`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::journal(data);
});
