//! Any argument vector and environment: a configuration or an error naming what was wrong.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microvm_agent::config::parse_args;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\n');
    let env_line = parts.next().unwrap_or_default().to_string();
    let args: Vec<std::ffi::OsString> = parts.map(Into::into).collect();
    // Never read files the fuzzer names (-c /dev/zero would never end): only the defaults.
    if args.iter().any(|a| a.to_string_lossy().starts_with("-c") || a.to_string_lossy().starts_with("--c")) {
        return;
    }
    let env = |k: &str| (k == "MICROVM_AGENT_LISTEN" || k == "MICROVM_AGENT_LOG").then(|| env_line.clone());
    if let Err(e) = parse_args(args, env) {
        assert!(!e.key.is_empty());
    }
});
