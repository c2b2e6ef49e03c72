//! Fuzz target `store_import`: the harness is `defib_builder::fuzzing::store_import`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_builder::fuzzing::store_import(data);
});
