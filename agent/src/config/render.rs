//! `--check` output: the resolved configuration as TOML that the agent would read back the same
//! way, with every default spelled out. Warm-up request bodies and header values are shown only
//! by size: they may carry credentials, and `--check` output ends up in build logs.

use std::fmt::{self, Write};

use super::values::format_duration as d;
use super::*;

fn q(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(s).unwrap_or_default()
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let inner: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", inner.join(", "))
}

fn sig(s: Signal) -> &'static str {
    s.as_str()
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut o = String::new();
        let files: Vec<String> = self
            .files_read
            .iter()
            .map(|p| match p.to_str() {
                Some("-") => "- (standard input)".to_string(),
                _ => p.display().to_string(),
            })
            .collect();
        writeln!(
            o,
            "# microvm-agent {} --check: the resolved configuration",
            env!("CARGO_PKG_VERSION")
        )?;
        if files.is_empty() {
            writeln!(o, "# files read: none (defaults only)")?;
        } else {
            writeln!(o, "# files read, in order: {}", files.join(", "))?;
        }
        match &self.app {
            None => writeln!(
                o,
                "# mode: sidecar: no app command in the files or on the command line, so the agent\n\
                 #   serves the hooks alone. In an image whose ENTRYPOINT ends in \"--\", the CMD is\n\
                 #   the app: check with it, `microvm-agent -c FILE --check -- CMD...`"
            )?,
            Some(a) if a.command_from_cli => writeln!(
                o,
                "# mode: supervising the app below; its command comes from the command line"
            )?,
            Some(_) => writeln!(
                o,
                "# mode: supervising the app below; its command comes from [app] command"
            )?,
        }
        writeln!(o, "listen = {}", q(&self.listen.to_string()))?;
        writeln!(
            o,
            "state_dir = {}",
            q(&self.state_dir.display().to_string())
        )?;
        let log = match self.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        writeln!(o, "log_format = {}", q(log))?;
        writeln!(o, "# log filter (MICROVM_AGENT_LOG): {}", self.log_filter)?;

        if let Some(app) = &self.app {
            let cmd: Vec<String> = app
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            writeln!(o, "\n[app]\ncommand = {}", list(&cmd))?;
            if let Some(u) = &app.user {
                writeln!(o, "user = {}", q(&u.to_string()))?;
            }
            if let Some(w) = &app.workdir {
                writeln!(o, "workdir = {}", q(&w.display().to_string()))?;
            }
            let restart = match app.restart {
                Restart::Never => "never",
                Restart::OnFailure => "on-failure",
                Restart::Always => "always",
            };
            writeln!(
                o,
                "restart = {}\nmax_restarts = {}",
                q(restart),
                app.max_restarts
            )?;
            writeln!(
                o,
                "stop_signal = {}\nstop_timeout = {}",
                q(sig(app.stop_signal)),
                q(&d(app.stop_timeout))
            )?;
            writeln!(o, "reset_after = {}", q(&d(app.reset_after)))?;
            writeln!(o, "restart_delay = {}", q(&d(app.restart_delay)))?;
            writeln!(o, "reseed_in_process = {}", app.reseed_in_process)?;
        }
        let p = &self.privileges;
        let default =
            p.capabilities == crate::sys::caps::DOCKER_DEFAULT && p.no_new_privileges.is_none();
        if self.app.is_some() || !default {
            if self.app.is_none() {
                writeln!(o, "\n[app]")?;
            }
            let caps = match p.capabilities {
                crate::sys::caps::DOCKER_DEFAULT => q("default"),
                0 => q("none"),
                u64::MAX => q("all"),
                mask => {
                    let names: Vec<String> = crate::sys::caps::names(mask)
                        .iter()
                        .map(|n| n.to_ascii_uppercase())
                        .collect();
                    list(&names)
                }
            };
            writeln!(o, "capabilities = {caps}")?;
            if let Some(nnp) = p.no_new_privileges {
                writeln!(o, "no_new_privileges = {nnp}")?;
            }
        }

        writeln!(o, "\n[ready]")?;
        match &self.ready.probe {
            None => writeln!(o, "# no probe: a running app is ready")?,
            Some(Probe::Http { url, healthy }) => writeln!(
                o,
                "http = {}\nhealthy_status = {}",
                q(&url.to_string()),
                q(&healthy.to_string())
            )?,
            Some(Probe::Tcp { addr }) => writeln!(o, "tcp = {}", q(addr))?,
            Some(Probe::Exec { command }) => writeln!(o, "exec = {}", list(command))?,
        }
        writeln!(
            o,
            "interval = {}\ntimeout = {}",
            q(&d(self.ready.interval)),
            q(&d(self.ready.timeout))
        )?;

        writeln!(o, "\n[validate]\nrepeat = {}", self.validate.repeat)?;
        for r in &self.validate.requests {
            writeln!(
                o,
                "[[validate.request]]\nmethod = {}\nurl = {}",
                q(&r.method),
                q(&r.url.to_string())
            )?;
            if !r.body.is_empty() {
                writeln!(o, "# body: {} bytes (not shown)", r.body.len())?;
            }
            for (name, _) in &r.headers {
                writeln!(o, "# header {name}: (value not shown)")?;
            }
            writeln!(o, "expect_status = {}", q(&r.expect_status.to_string()))?;
            if let Some(c) = &r.expect_body_contains {
                writeln!(o, "expect_body_contains = {}", q(c))?;
            }
        }

        let h = &self.hooks;
        writeln!(o, "\n[hooks]")?;
        for (name, t) in [
            ("ready_timeout", h.ready_timeout),
            ("validate_timeout", h.validate_timeout),
            ("run_timeout", h.run_timeout),
            ("resume_timeout", h.resume_timeout),
            ("suspend_timeout", h.suspend_timeout),
            ("terminate_timeout", h.terminate_timeout),
        ] {
            writeln!(o, "{name} = {}", q(&d(t)))?;
        }
        let trust = match h.trust {
            Trust::Loopback => "loopback",
            Trust::Any => "any",
        };
        writeln!(o, "trust = {}", q(trust))?;
        let fail_on: Vec<String> = h.fail_on.iter().map(|e| q(e.as_str())).collect();
        writeln!(o, "fail_on = [{}]", fail_on.join(", "))?;

        let kernel = match self.kernel_reseed {
            KernelReseed::Auto => "auto",
            KernelReseed::Ioctl => "ioctl",
            KernelReseed::Write => "write",
            KernelReseed::Off => "off",
        };
        writeln!(o, "\n[entropy]\nkernel = {}", q(kernel))?;
        let machine_id = match self.machine_id {
            MachineId::Auto => q("auto"),
            MachineId::Always => "true".into(),
            MachineId::Never => "false".into(),
        };
        writeln!(o, "\n[identity]\nmachine_id = {machine_id}")?;
        let hostname = match &self.hostname {
            Hostname::Auto => "auto",
            Hostname::Keep => "keep",
            Hostname::Prefix(p) => p,
        };
        writeln!(o, "hostname = {}", q(hostname))?;
        let boot_id = match self.boot_id {
            MachineId::Auto => q("auto"),
            MachineId::Always => "true".into(),
            MachineId::Never => "false".into(),
        };
        writeln!(o, "boot_id = {boot_id}")?;
        let step = match self.clock_step {
            ClockStep::Auto => "auto",
            ClockStep::Off => "off",
        };
        writeln!(o, "\n[clock]\nstep = {}", q(step))?;

        let n = &self.notify;
        writeln!(o, "\n[notify]")?;
        if let Some(u) = &n.http {
            writeln!(o, "http = {}", q(&u.to_string()))?;
        }
        if let Some(u) = &n.forward {
            writeln!(o, "forward = {}", q(&u.to_string()))?;
        }
        if let Some(s) = n.signal {
            writeln!(o, "signal = {}", q(sig(s)))?;
        }
        if let Some(e) = &n.exec {
            writeln!(o, "exec = {}", list(e))?;
        }
        let restart_on: Vec<&str> = n.restart_on.iter().map(|e| e.as_str()).collect();
        let on_timeout = match n.on_timeout {
            OnTimeout::Fail => "fail",
            OnTimeout::Continue => "continue",
        };
        writeln!(
            o,
            "restart_on = {}\ntimeout = {}\non_timeout = {}",
            list(&restart_on),
            q(&d(n.timeout)),
            q(on_timeout)
        )?;

        for s in &self.secrets {
            writeln!(o, "\n[[secret]]\nname = {}", q(&s.name))?;
            match &s.source {
                SecretSource::Random { bytes, encoding } => {
                    let enc = match encoding {
                        Encoding::Hex => "hex",
                        Encoding::Base64 => "base64",
                        Encoding::Raw => "raw",
                    };
                    writeln!(o, "bytes = {bytes}\nencoding = {}", q(enc))?;
                }
                SecretSource::Exec { command } => writeln!(o, "exec = {}", list(command))?,
            }
            writeln!(o, "scrub_on_suspend = {}", s.scrub_on_suspend)?;
        }
        f.write_str(&o)
    }
}
