//! Fuzz target `buildinfo`: the harness is `defib_rescue::fuzzing::buildinfo`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::buildinfo(data);
});
