//! Fuzz target `bitlocker`: the harness is `defib_rescue::fuzzing::bitlocker`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::bitlocker(data);
});
