//! One parser per section of the configuration: each reads its keys through a `Section` (which
//! knows every key's dotted path, for the error), checks them completely, and rejects any key it
//! does not know. The types they build are in `config` itself. `[notify]` and `[[secret]]`, the
//! sections about telling the app, are in `telling.rs`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::file::Section;
use super::values;
use super::*;

pub(super) fn dur(s: &Section, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    Ok(s.parsed(key, values::duration)?.unwrap_or(default))
}

/// A duration key that must lie in `min..=max`.
fn bounded(
    s: &Section,
    key: &str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = dur(s, key, default)?;
    if d < min || d > max {
        return Err(ConfigError::new(
            s.key(key),
            format!(
                "{} is out of range ({}..={})",
                values::format_duration(d),
                values::format_duration(min),
                values::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `MICROVM_AGENT_LOG`: `level` or `target=level`, comma-separated. `Targets` itself accepts a
/// bare word as a *target* with no level, so `verbose` would silently turn every line off.
pub(super) fn check_log_filter(filter: &str) -> Result<(), ConfigError> {
    let bad = |why: String| {
        ConfigError::new(
            "MICROVM_AGENT_LOG",
            format!("\"{filter}\": {why} (e.g. \"info\", \"warn,microvm_agent=debug\")"),
        )
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad(format!(
                "\"{directive}\" names no level ({})",
                LEVELS.join(", ")
            )));
        }
    }
    filter
        .parse::<tracing_subscriber::filter::Targets>()
        .map(|_| ())
        .map_err(|e| bad(e.to_string()))
}

/// `[app] capabilities` and `no_new_privileges`: read even in sidecar mode (the helpers the agent
/// starts get them too).
fn privileges(s: &Section) -> Result<Privileges, ConfigError> {
    use crate::sys::caps;
    let bad = |m: String| ConfigError::new(s.key("capabilities"), m);
    let capabilities = match s.string("capabilities") {
        Ok(None) => caps::DOCKER_DEFAULT,
        Ok(Some(word)) => caps::parse_word(word).map_err(bad)?,
        Err(_) => match s.strings("capabilities") {
            Ok(Some(list)) => caps::parse_names(&list).map_err(bad)?,
            _ => {
                return Err(bad(
                    "expected \"default\", \"none\", \"all\" or a list of names".into(),
                ))
            }
        },
    };
    Ok(Privileges {
        capabilities,
        no_new_privileges: s.boolean("no_new_privileges")?,
    })
}

pub(super) fn app(
    s: &Section,
    cli_command: &[OsString],
) -> Result<(Option<App>, Privileges), ConfigError> {
    let privileges = privileges(s)?;
    let command = s.command("command")?;
    let user = s.parsed("user", values::user_spec)?;
    let workdir = s.string("workdir")?.map(PathBuf::from);
    if let Some(w) = &workdir {
        if !w.is_absolute() {
            return Err(ConfigError::new(
                s.key("workdir"),
                format!("\"{}\" must be an absolute path", w.display()),
            ));
        }
    }
    let restart = s
        .choice(
            "restart",
            &[
                ("never", Restart::Never),
                ("on-failure", Restart::OnFailure),
                ("always", Restart::Always),
            ],
        )?
        .unwrap_or(Restart::Never);
    let max_restarts = s.integer("max_restarts", 0..=1_000_000)?.unwrap_or(5) as u32;
    let stop_signal = s
        .parsed("stop_signal", values::signal)?
        .unwrap_or(Signal::SIGTERM);
    if stop_signal == Signal::SIGSTOP {
        return Err(ConfigError::new(
            s.key("stop_signal"),
            "SIGSTOP would freeze the app instead of stopping it",
        ));
    }
    let stop_timeout = bounded(
        s,
        "stop_timeout",
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;
    let reset_after = dur(s, "reset_after", Duration::from_secs(10))?;
    let restart_delay = bounded(
        s,
        "restart_delay",
        Duration::from_millis(100),
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;
    let reseed_in_process = s.boolean("reseed_in_process")?.unwrap_or(true);
    s.finish()?;
    let command = if cli_command.is_empty() {
        command.map(|c| c.into_iter().map(OsString::from).collect())
    } else {
        Some(cli_command.to_vec())
    };
    let app = command.map(|command| App {
        command,
        command_from_cli: !cli_command.is_empty(),
        user,
        workdir,
        restart,
        max_restarts,
        stop_signal,
        stop_timeout,
        reset_after,
        restart_delay,
        reseed_in_process,
    });
    Ok((app, privileges))
}

pub(super) fn ready(s: &Section) -> Result<Ready, ConfigError> {
    let probes = ["http", "tcp", "exec"].iter().filter(|k| s.has(k)).count();
    if probes > 1 {
        return Err(ConfigError::new(
            s.key("http"),
            "set only one of ready.http, ready.tcp, ready.exec",
        ));
    }
    let healthy = s.parsed("healthy_status", values::status_set)?;
    let probe = if let Some(url) = s.parsed("http", values::http_url)? {
        let healthy = healthy
            .clone()
            .unwrap_or_else(|| values::status_set("200-399").expect("valid default"));
        Some(Probe::Http { url, healthy })
    } else if let Some(addr) = s.string("tcp")? {
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err(ConfigError::new(
                    s.key("tcp"),
                    format!("\"{addr}\" is not host:port"),
                ))
            }
        }
        Some(Probe::Tcp {
            addr: addr.to_string(),
        })
    } else {
        s.command("exec")?.map(|command| Probe::Exec { command })
    };
    if healthy.is_some() && !matches!(probe, Some(Probe::Http { .. })) {
        return Err(ConfigError::new(
            s.key("healthy_status"),
            "only applies to ready.http",
        ));
    }
    let interval = bounded(
        s,
        "interval",
        Duration::from_millis(10),
        Duration::from_millis(1),
        Duration::from_secs(60),
    )?;
    let timeout = bounded(
        s,
        "timeout",
        Duration::from_secs(1),
        Duration::from_millis(1),
        Duration::from_secs(600),
    )?;
    s.finish()?;
    Ok(Ready {
        probe,
        interval,
        timeout,
    })
}

pub(super) fn validate(s: &Section) -> Result<Validate, ConfigError> {
    let repeat = s.integer("repeat", 1..=10_000)?.unwrap_or(1) as u32;
    let mut requests = Vec::new();
    for r in s.tables("request")? {
        let method = r.string("method")?.unwrap_or("GET").to_string();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                r.key("method"),
                format!("\"{method}\" is not an HTTP method (e.g. \"GET\", \"POST\")"),
            ));
        }
        let url = r
            .parsed("url", values::http_url)?
            .ok_or_else(|| ConfigError::new(r.key("url"), "is required"))?;
        let body = r.string("body")?.unwrap_or_default().to_string();
        let headers = r.string_map("headers")?;
        for (name, value) in &headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_str(value).is_err()
            {
                return Err(ConfigError::new(
                    format!("{}.{}", r.key("headers"), file::quote(name)),
                    "is not a valid HTTP header",
                ));
            }
        }
        let expect_status = match r.status("expect_status")? {
            Some(s) => s,
            None => values::status_set("200").expect("valid default"),
        };
        let expect_body_contains = r.string("expect_body_contains")?.map(str::to_string);
        r.finish()?;
        requests.push(WarmRequest {
            method,
            url,
            body,
            headers,
            expect_status,
            expect_body_contains,
        });
    }
    s.finish()?;
    Ok(Validate { repeat, requests })
}

pub(super) fn hooks(s: &Section) -> Result<Hooks, ConfigError> {
    // The platform's ranges (docs/platform.md): build hooks 1-3600 s, runtime hooks 1-60 s.
    let (one, build_max, run_max) = (
        Duration::from_secs(1),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    let h = Hooks {
        ready_timeout: bounded(s, "ready_timeout", Duration::from_secs(30), one, build_max)?,
        validate_timeout: bounded(
            s,
            "validate_timeout",
            Duration::from_secs(30),
            one,
            build_max,
        )?,
        run_timeout: bounded(s, "run_timeout", one, one, run_max)?,
        resume_timeout: bounded(s, "resume_timeout", one, one, run_max)?,
        suspend_timeout: bounded(s, "suspend_timeout", one, one, run_max)?,
        terminate_timeout: bounded(s, "terminate_timeout", one, one, run_max)?,
        trust: s
            .choice(
                "trust",
                &[("loopback", Trust::Loopback), ("any", Trust::Any)],
            )?
            .unwrap_or(Trust::Loopback),
        fail_on: fail_on(s)?,
    };
    s.finish()?;
    Ok(h)
}

/// `[hooks] fail_on`: which hooks may fail on purpose. `ready` and `terminate` are not choices:
/// `/ready` always answers the app's health (503 = not yet, 500 = failed for good), and
/// `/terminate` always answers 200 (the VM ends either way).
fn fail_on(s: &Section) -> Result<Vec<Event>, ConfigError> {
    let Some(names) = s.strings("fail_on")? else {
        return Ok(vec![Event::Run, Event::Validate]);
    };
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = format!("{}[{i}]", s.key("fail_on"));
        let event = match name.as_str() {
            "run" => Event::Run,
            "validate" => Event::Validate,
            "resume" => Event::Resume,
            "suspend" => Event::Suspend,
            "terminate" => {
                return Err(ConfigError::new(
                    key,
                    "/terminate always answers 200: the VM ends whatever it answers",
                ))
            }
            "ready" => {
                return Err(ConfigError::new(
                    key,
                    "/ready always answers the app's health (503 not yet, 500 failed for good)",
                ))
            }
            other => {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "\"{other}\" is not one of \"run\", \"validate\", \"resume\", \"suspend\""
                    ),
                ))
            }
        };
        if !out.contains(&event) {
            out.push(event);
        }
    }
    Ok(out)
}
