//! Fuzz target `winreg`: the harness is `defib_rescue::fuzzing::winreg`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::winreg(data);
});
