//! Fuzz target `volstate`: the harness is `defib_rescue::fuzzing::volstate`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::volstate(data);
});
