//! The `--hooks` JSON, exactly as an image author passes it to `create-microvm-image --hooks`
//! (the `Hooks` shape of the lambda-microvms API model, 2025-09-09):
//!
//! ```json
//! {"port": 9000,
//!  "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": 30,
//!                        "validate": "ENABLED", "validateTimeoutInSeconds": 30},
//!  "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 1, "resume": "ENABLED", ...}}
//! ```
//! Missing hooks are DISABLED, missing timeouts take the platform's defaults; without `--hooks`
//! every hook is enabled with the defaults.

use std::time::Duration;

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub enabled: bool,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooks {
    pub port: u16,
    pub ready: Hook,
    pub validate: Hook,
    pub run: Hook,
    pub resume: Hook,
    pub suspend: Hook,
    pub terminate: Hook,
}

const fn on(secs: u64) -> Hook {
    Hook {
        enabled: true,
        timeout: Duration::from_secs(secs),
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            port: 9000,
            ready: on(30),
            validate: on(30),
            run: on(1),
            resume: on(1),
            suspend: on(1),
            terminate: on(1),
        }
    }
}

fn group<'a>(
    root: &'a Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<&'a Map<String, Value>>, String> {
    match root.get(key) {
        None => Ok(None),
        Some(Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(format!("{key}.{k}: unknown key"));
            }
            Ok(Some(m))
        }
        Some(_) => Err(format!("{key}: expected an object")),
    }
}

fn hook(
    group: Option<&Map<String, Value>>,
    path: &str,
    name: &str,
    default_secs: u64,
    max_secs: u64,
) -> Result<Hook, String> {
    let Some(g) = group else {
        return Ok(Hook {
            enabled: false,
            timeout: Duration::from_secs(default_secs),
        });
    };
    let enabled = match g.get(name) {
        None => false,
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        Some(v) => {
            return Err(format!(
                "{path}.{name}: expected \"ENABLED\" or \"DISABLED\", found {v}"
            ))
        }
    };
    let key = format!("{name}TimeoutInSeconds");
    let secs = match g.get(&key) {
        None => default_secs,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max_secs).contains(&n) => n,
            _ => {
                return Err(format!(
                    "{path}.{key}: expected an integer from 1 to {max_secs}, found {v}"
                ))
            }
        },
    };
    Ok(Hook {
        enabled,
        timeout: Duration::from_secs(secs),
    })
}

impl Hooks {
    pub fn from_json(text: &str) -> Result<Hooks, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let root = v.as_object().ok_or("expected a JSON object")?;
        if let Some(k) = root
            .keys()
            .find(|k| !["port", "microvmImageHooks", "microvmHooks"].contains(&k.as_str()))
        {
            return Err(format!("{k}: unknown key"));
        }
        let port = match root.get("port") {
            None => 9000,
            Some(p) => p
                .as_u64()
                .filter(|p| (1..=65535).contains(p))
                .ok_or(format!("port: expected 1-65535, found {p}"))? as u16,
        };
        let image = group(
            root,
            "microvmImageHooks",
            &[
                "ready",
                "readyTimeoutInSeconds",
                "validate",
                "validateTimeoutInSeconds",
            ],
        )?;
        let vm = group(
            root,
            "microvmHooks",
            &[
                "run",
                "runTimeoutInSeconds",
                "resume",
                "resumeTimeoutInSeconds",
                "suspend",
                "suspendTimeoutInSeconds",
                "terminate",
                "terminateTimeoutInSeconds",
            ],
        )?;
        let h = Hooks {
            port,
            ready: hook(image, "microvmImageHooks", "ready", 30, 3600)?,
            validate: hook(image, "microvmImageHooks", "validate", 30, 3600)?,
            run: hook(vm, "microvmHooks", "run", 1, 60)?,
            resume: hook(vm, "microvmHooks", "resume", 1, 60)?,
            suspend: hook(vm, "microvmHooks", "suspend", 1, 60)?,
            terminate: hook(vm, "microvmHooks", "terminate", 1, 60)?,
        };
        let runtime = [h.validate, h.run, h.resume, h.suspend, h.terminate];
        if runtime.iter().any(|x| x.enabled) && !h.ready.enabled {
            return Err("microvmImageHooks.ready: must be ENABLED when any other hook is (the platform refuses the image)".into());
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_shape() {
        let h = Hooks::from_json(
            r#"{"port": 9100, "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": 60},
                "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 5, "terminate": "DISABLED"}}"#,
        )
        .unwrap();
        assert_eq!(h.port, 9100);
        assert_eq!(
            h.ready,
            Hook {
                enabled: true,
                timeout: Duration::from_secs(60)
            }
        );
        assert!(!h.validate.enabled && !h.resume.enabled && !h.terminate.enabled);
        assert_eq!(h.run.timeout, Duration::from_secs(5));
        assert_eq!(
            h.suspend.timeout,
            Duration::from_secs(1),
            "platform default"
        );
    }

    #[test]
    fn refuses_what_the_platform_refuses() {
        for (bad, what) in [
            (r#"{"microvmHooks": {"run": "ENABLED"}}"#, "ready"),
            (r#"{"microvmImageHooks": {"ready": "ON"}}"#, "ready"),
            (
                r#"{"microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 61}, "microvmImageHooks": {"ready": "ENABLED"}}"#,
                "runTimeoutInSeconds",
            ),
            (r#"{"port": 0}"#, "port"),
            (r#"{"hooks": {}}"#, "hooks"),
            (r#"{"microvmHooks": {"runn": "ENABLED"}}"#, "runn"),
        ] {
            let e = Hooks::from_json(bad).unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }
}
