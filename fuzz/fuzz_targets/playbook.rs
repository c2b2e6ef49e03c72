//! Fuzz target `playbook`: the harness is `defib_rescue::fuzzing::playbook`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = defib_rescue::fuzzing::playbook(data);
});
