//! Fuzz target `deb`: the harness is `defib_builder::fuzzing::deb`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_builder::fuzzing::deb(data);
});
