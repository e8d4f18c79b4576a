//! The sections about telling the app: `[notify]` (how the app hears of each generation, and
//! the pass-through of hooks) and `[[secret]]` (what is rewritten per generation). Like every
//! section parser, each checks its keys completely and rejects any key it does not know.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::file::Section;
use super::sections::dur;
use super::values;
use super::*;

pub(super) fn notify(s: &Section, hooks: &Hooks) -> Result<Notify, ConfigError> {
    let http = s.parsed("http", values::http_url)?;
    let forward = s.parsed("forward", values::http_url)?;
    if forward.as_ref().is_some_and(|u| u.path != "/") {
        return Err(ConfigError::new(
            s.key("forward"),
            "takes the app's base URL (http://HOST:PORT): each hook goes to the path it came on",
        ));
    }
    let signal = s.parsed("signal", values::signal)?;
    if matches!(signal, Some(Signal::SIGKILL | Signal::SIGSTOP)) {
        return Err(ConfigError::new(
            s.key("signal"),
            "KILL and STOP cannot be handled by the app",
        ));
    }
    let exec = s.command("exec")?;
    let mut restart_on = Vec::new();
    for (i, name) in s
        .strings("restart_on")?
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match Event::ALL.iter().find(|(n, _)| n == name) {
            Some((_, e)) if !restart_on.contains(e) => restart_on.push(*e),
            Some(_) => {}
            None => {
                return Err(ConfigError::new(
                    format!("{}[{i}]", s.key("restart_on")),
                    format!("\"{name}\" is not one of \"run\", \"resume\", \"suspend\", \"terminate\", \"validate\""),
                ))
            }
        }
    }
    let timeout = dur(s, "timeout", Duration::from_millis(800))?;
    // The answer must leave before the shortest runtime hook's deadline; a notify timeout that
    // cannot fit would turn every slow acknowledgement into a missed hook.
    let shortest = [
        hooks.run_timeout,
        hooks.resume_timeout,
        hooks.suspend_timeout,
        hooks.terminate_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or_default();
    let room = deadline_after(shortest);
    if timeout >= room {
        return Err(ConfigError::new(
            s.key("timeout"),
            format!(
                "{} does not fit inside the shortest runtime hook budget ({} minus the answer margin = {})",
                values::format_duration(timeout),
                values::format_duration(shortest),
                values::format_duration(room)
            ),
        ));
    }
    let on_timeout = s
        .choice(
            "on_timeout",
            &[("fail", OnTimeout::Fail), ("continue", OnTimeout::Continue)],
        )?
        .unwrap_or(OnTimeout::Fail);
    s.finish()?;
    Ok(Notify {
        http,
        forward,
        signal,
        exec,
        restart_on,
        timeout,
        on_timeout,
    })
}

pub(super) fn secrets(root: &Section) -> Result<Vec<Secret>, ConfigError> {
    let mut out: Vec<Secret> = Vec::new();
    for s in root.tables("secret")? {
        let name = s
            .string("name")?
            .ok_or_else(|| ConfigError::new(s.key("name"), "is required"))?;
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(ConfigError::new(
                s.key("name"),
                format!("\"{name}\" must be 1-128 of A-Z a-z 0-9 . _ - and not start with a dot (it is a file name)"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(ConfigError::new(
                s.key("name"),
                format!("\"{name}\" is defined twice"),
            ));
        }
        let bytes = s.integer("bytes", 1..=65_536)?;
        let exec = s.command("exec")?;
        let encoding = s.choice(
            "encoding",
            &[
                ("hex", Encoding::Hex),
                ("base64", Encoding::Base64),
                ("raw", Encoding::Raw),
            ],
        )?;
        let source = match (bytes, exec) {
            (Some(bytes), None) => SecretSource::Random {
                bytes: bytes as usize,
                encoding: encoding.unwrap_or(Encoding::Hex),
            },
            (None, Some(command)) => {
                if encoding.is_some() {
                    return Err(ConfigError::new(s.key("encoding"), "only applies to generated secrets (bytes = N); exec output is stored as it is"));
                }
                SecretSource::Exec { command }
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    s.key("exec"),
                    "set either bytes or exec, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    s.key("bytes"),
                    "set either bytes (a generated secret) or exec (a command that prints it)",
                ))
            }
        };
        let scrub_on_suspend = s.boolean("scrub_on_suspend")?.unwrap_or(false);
        s.finish()?;
        out.push(Secret {
            name: name.to_string(),
            source,
            scrub_on_suspend,
        });
    }
    Ok(out)
}
