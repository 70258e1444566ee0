#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomhub_core::fuzzing::hub_events(data));
