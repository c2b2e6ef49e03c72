//! Fuzz target `secureboot`: the harness is `defib_rescue::fuzzing::secureboot`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::secureboot(data);
});
