//! Any TOML text: the configuration either loads or names a key, and what `--check` prints of a
//! loaded configuration loads again to the same configuration (bodies and header values aside).
#![no_main]
use libfuzzer_sys::fuzz_target;
use microvm_agent::config::{from_table, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = text.parse::<toml::Table>() else { return };
    match from_table(&table, &Overrides::default(), None) {
        Err(e) => assert!(!e.key.is_empty(), "an error must name a key"),
        Ok(config) => {
            let printed = config.to_string();
            let again: toml::Table = printed.parse().unwrap_or_else(|e| panic!("--check output is not TOML: {e}\n{printed}"));
            let back = from_table(&again, &Overrides::default(), None).unwrap_or_else(|e| panic!("--check output does not load: {e}\n{printed}"));
            let mut expected = config.clone();
            for r in &mut expected.validate.requests {
                r.body.clear();
                r.headers.clear();
            }
            assert_eq!(back, expected, "{printed}");
        }
    }
});
