//! Fuzz target `bcd`: the harness is `defib_rescue::fuzzing::bcd`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::bcd(data);
});
