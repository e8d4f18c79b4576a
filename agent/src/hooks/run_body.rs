//! The `/run` body, as docs/platform.md describes it.
//!
//! Measured platforms send `{"microvmId": "...", "runHookPayload": "<the caller's string>"}`; the
//! API model says the payload is "delivered as the request body". We accept both: a JSON object
//! whose keys are only `microvmId` and/or `runHookPayload` is the wrapper, and anything else
//! (raw bytes, other JSON, an empty body) is the payload itself. Parsing never fails: a `/run`
//! that answers 400 for what is inside its body terminates the VM.
//!
//! The VM id is taken only from the wrapper: a caller's own payload that happens to contain a
//! `microvmId` field must not be able to name the VM.

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, PartialEq, Eq)]
pub struct RunBody {
    /// The caller's payload, byte-exact.
    pub payload: Vec<u8>,
    pub microvm_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapper<'a> {
    #[serde(rename = "microvmId", default)]
    microvm_id: Option<String>,
    #[serde(rename = "runHookPayload", borrow, default)]
    payload: Option<&'a RawValue>,
}

pub fn parse(body: &[u8]) -> RunBody {
    let raw = || RunBody {
        payload: body.to_vec(),
        microvm_id: None,
    };
    // Only an object can be the wrapper: serde would also accept a struct written as an array
    // (`["vm-1", "payload"]`), which is a caller's payload, not the platform's wrapper.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return raw();
    }
    let Ok(w) = serde_json::from_slice::<Wrapper>(body) else {
        return raw();
    };
    if w.microvm_id.is_none() && w.payload.is_none() {
        // `{}` or `{"microvmId": null}`: not recognisably the wrapper.
        return raw();
    }
    let payload = match w.payload.map(RawValue::get) {
        None | Some("null") => Vec::new(),
        Some(text) if text.starts_with('"') => match serde_json::from_str::<String>(text) {
            Ok(s) => s.into_bytes(),
            Err(_) => return raw(),
        },
        // A payload that is JSON but not a string is kept exactly as it was sent.
        Some(text) => text.as_bytes().to_vec(),
    };
    RunBody {
        payload,
        microvm_id: w.microvm_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: &[u8]) -> (Vec<u8>, Option<String>) {
        let r = parse(body);
        (r.payload, r.microvm_id)
    }

    #[test]
    fn wrapper_forms() {
        assert_eq!(
            p(br#"{"microvmId":"vm-1","runHookPayload":"{\"tenant\":7}"}"#),
            (br#"{"tenant":7}"#.to_vec(), Some("vm-1".into()))
        );
        assert_eq!(
            p(br#"{"microvmId":"vm-1","runHookPayload":null}"#),
            (vec![], Some("vm-1".into()))
        );
        assert_eq!(p(br#"{"microvmId":"vm-1"}"#), (vec![], Some("vm-1".into())));
        assert_eq!(p(br#"{"runHookPayload":"x"}"#), (b"x".to_vec(), None));
        assert_eq!(
            p(br#" { "runHookPayload" : {"a": 1} } "#),
            (br#"{"a": 1}"#.to_vec(), None)
        );
        assert_eq!(
            p(br#"{"runHookPayload":"caf\u00e9"}"#),
            ("café".as_bytes().to_vec(), None)
        );
    }

    #[test]
    fn everything_else_is_the_payload_itself() {
        for body in [
            &b""[..],
            b"hello",
            b"\xff\x00\xfe",
            b"{}",
            b"[1,2]",
            b"\"str\"",
            br#"{"tenant":7}"#,
            br#"{"microvmId":"spoof","tenant":7}"#,
            br#"{"microvmId":5,"runHookPayload":"x"}"#,
            br#"{"runHookPayload":"x""#,
            // Found by the run_body fuzzer: arrays are not the wrapper.
            b"[null,\n 6]",
            br#"["spoof-id", "payload"]"#,
        ] {
            assert_eq!(
                p(body),
                (body.to_vec(), None),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
