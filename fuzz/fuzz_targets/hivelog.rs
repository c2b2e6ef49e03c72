//! Fuzz target `hivelog`: the harness is `defib_rescue::fuzzing::hivelog`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::hivelog(data);
});
