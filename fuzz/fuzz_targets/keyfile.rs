//! Fuzz target `keyfile`: the harness is `defib_rescue::fuzzing::keyfile`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::keyfile(data);
});
