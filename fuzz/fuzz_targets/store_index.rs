//! Fuzz target `store_index`: the harness is `defib_rescue::fuzzing::store_index`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::store_index(data);
});
