//! The small value languages: durations, status sets, signal names, user specs, URLs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microvm_agent::config::values;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = values::duration(s) {
        let printed = values::format_duration(d);
        let again = values::duration(&printed).expect("a printed duration parses");
        assert!(again.abs_diff(d) < std::time::Duration::from_micros(1), "{s:?} -> {printed}");
    }
    if let Ok(set) = values::status_set(s) {
        assert_eq!(values::status_set(&set.to_string()).unwrap(), set);
    }
    let _ = values::signal(s);
    if let Ok(u) = values::user_spec(s) {
        assert_eq!(values::user_spec(&u.to_string()).unwrap(), u);
    }
    if let Ok(u) = values::http_url(s) {
        assert_eq!(values::http_url(&u.to_string()).unwrap(), u);
    }
});
