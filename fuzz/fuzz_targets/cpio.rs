//! Fuzz target `cpio`: the harness is `defib_builder::fuzzing::cpio`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_builder::fuzzing::cpio(data);
});
