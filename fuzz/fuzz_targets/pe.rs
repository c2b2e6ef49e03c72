//! Fuzz target `pe`: the harness is `defib_rescue::fuzzing::pe`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::pe(data);
});
