//! The origin check never panics, and only the exact loopback names ever count as local.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microvm_agent::http::routes::is_forwarded;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = hyper::header::HeaderValue::from_bytes(data) else { return };
    let req = hyper::Request::builder().uri("/run").header(hyper::header::HOST, value).body(()).unwrap();
    if !is_forwarded(&req) {
        let host = std::str::from_utf8(data).unwrap();
        let name = if host.starts_with('[') { &host[..=host.find(']').unwrap()] } else { host.split(':').next().unwrap() };
        assert!(["localhost", "127.0.0.1", "[::1]"].contains(&name), "{host:?} counted as local");
    }
});
