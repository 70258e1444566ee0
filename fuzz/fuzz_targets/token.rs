#![no_main]

#[path = "../bodies/net.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::token(data));
