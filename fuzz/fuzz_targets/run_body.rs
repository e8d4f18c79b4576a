//! The /run body never fails to parse; a body that is not the wrapper is the payload, exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microvm_agent::hooks::run_body;

fuzz_target!(|data: &[u8]| {
    let r = run_body::parse(data);
    if r.microvm_id.is_none() && r.payload != data {
        // Only the wrapper may change the bytes: it must then have been a JSON object.
        assert!(serde_json_like_object(data), "payload changed for a non-wrapper body");
    }
});

fn serde_json_like_object(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}
