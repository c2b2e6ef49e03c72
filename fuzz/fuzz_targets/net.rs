//! Fuzz target `net`: the harness is `defib_rescue::fuzzing::net`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::net(data);
});
