//! Fuzz target `bup`: the harness is `defib_rescue::fuzzing::bup`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::bup(data);
});
