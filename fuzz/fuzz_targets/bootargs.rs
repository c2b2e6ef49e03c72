//! Fuzz target `bootargs`: the harness is `defib_rescue::fuzzing::bootargs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::bootargs(data);
});
