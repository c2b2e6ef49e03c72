//! Fuzz target `report`: the harness is `defib_rescue::fuzzing::report`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::report(data);
});
