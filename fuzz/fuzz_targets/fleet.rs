//! Fuzz target `fleet`: the harness is `defib_builder::fuzzing::fleet`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_builder::fuzzing::fleet(data);
});
