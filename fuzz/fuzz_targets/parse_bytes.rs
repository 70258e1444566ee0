#![no_main]

#[path = "../bodies/core.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::parse_bytes(data));
