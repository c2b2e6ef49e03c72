//! Fuzz target `sealed`: the harness is `defib_rescue::fuzzing::sealed`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::sealed(data);
});
