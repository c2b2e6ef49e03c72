//! Fuzz target `quarantine`: the harness is `defib_rescue::fuzzing::quarantine`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::quarantine(data);
});
