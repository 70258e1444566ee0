#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomhub_net::fuzzing::config(data));
