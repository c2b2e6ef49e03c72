//! Fuzz target `dm_table`: the harness is `defib_rescue::fuzzing::dm_table`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::dm_table(data);
});
