//! Fuzz target `store_manifest`: the harness is `defib_builder::fuzzing::store_manifest`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_builder::fuzzing::store_manifest(data);
});
