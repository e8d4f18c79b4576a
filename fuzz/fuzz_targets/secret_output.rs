//! The secret-output path: whatever an `exec` secret's command writes (up to the 64 KiB limit and
//! beyond it), the value published is exactly those bytes, written atomically with mode 0600, or
//! (over the limit) nothing at all: never a cut value. And the encodings of `bytes` secrets are
//! exact: hex and base64 decode back to the bytes drawn.
#![no_main]
use std::os::unix::fs::PermissionsExt;

use libfuzzer_sys::fuzz_target;
use microvm_agent::clone::secrets;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("mva-fuzz-secret-{}", std::process::id()));
    let dir = microvm_agent::sys::state_files::StateDir::open(&path).unwrap();
    let file = path.join("value");
    let _ = std::fs::remove_file(&file);
    // Inputs stand for the captured stdout; repeat them to reach past the limit too.
    let repeat = data.first().map_or(1, |b| 1 + usize::from(*b) * 4);
    let output: Vec<u8> = data.iter().copied().cycle().take(data.len() * repeat).collect();
    match secrets::exec_value(output.clone()) {
        Ok(value) => {
            assert!(output.len() <= secrets::MAX_VALUE, "{} bytes accepted", output.len());
            dir.write("value", &value, 0o600, None).unwrap();
            assert_eq!(std::fs::read(&file).unwrap(), output, "the value must be the bytes, exactly");
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        Err(e) => {
            assert!(output.len() > secrets::MAX_VALUE, "refused {} bytes: {e}", output.len());
            assert!(e.contains("65536"), "{e}");
        }
    }
    for enc in [microvm_agent::config::Encoding::Hex, microvm_agent::config::Encoding::Base64] {
        let text = secrets::encode(data, enc);
        assert_eq!(decode(&text, enc), data, "{enc:?}");
    }
});

/// Reference decoders, written independently of the encoder under test.
fn decode(text: &[u8], enc: microvm_agent::config::Encoding) -> Vec<u8> {
    match enc {
        microvm_agent::config::Encoding::Hex => text
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect(),
        _ => {
            let val = |c: u8| match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => panic!("not base64: {c}"),
            };
            let mut out = Vec::new();
            for quad in text.chunks(4) {
                let pad = quad.iter().filter(|&&c| c == b'=').count();
                let n = quad
                    .iter()
                    .filter(|&&c| c != b'=')
                    .fold(0u32, |acc, &c| (acc << 6) | u32::from(val(c)))
                    << (6 * pad);
                let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
                out.extend_from_slice(&bytes[..3 - pad]);
            }
            out
        }
    }
}
