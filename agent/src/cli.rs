//! The `microvm-agent` command: parse the configuration (exit 64 on any error), set up logging on
//! stderr, build a current-thread runtime and hand over to [`crate::run`].

use std::process::ExitCode;

use crate::config::{self, Action, LogFormat};
use crate::sys::signals::Signals;

const EX_USAGE: u8 = crate::EX_USAGE as u8;
const EX_OSERR: u8 = crate::EX_OSERR as u8;
const EX_IOERR: u8 = crate::EX_IOERR as u8;

/// The whole command: what `main` runs, and what the simulator runs when it plays the agent.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    // First, before any thread exists: no signal may be lost or kill us from here on.
    let signals = match Signals::block_all() {
        Ok(s) => s,
        Err(e) => {
            complain(format_args!("cannot set up signal handling: {e}"));
            return ExitCode::from(EX_OSERR);
        }
    };
    let action = config::check_env(|k| std::env::var_os(k))
        .and_then(|()| config::parse_args(args, |k| std::env::var(k).ok()))
        .and_then(|action| {
            // The app's user is resolved before anything starts (and in --check): an unknown one
            // is a configuration error, not a start that binds the port and then fails.
            if let Action::Check(c) | Action::Run(c) = &action {
                if let Some(spec) = c.app.as_ref().and_then(|a| a.user.as_ref()) {
                    crate::supervise::spawn::resolve_user(spec)
                        .map_err(|e| config::ConfigError::new("app.user", e))?;
                }
            }
            Ok(action)
        });
    let config = match action {
        Err(e) => {
            complain(format_args!("configuration error: {e}"));
            return ExitCode::from(EX_USAGE);
        }
        Ok(Action::Help) => return out(config::HELP),
        Ok(Action::Version) => return out(&format!("{}\n", version())),
        Ok(Action::Check(c)) => {
            if let Err(e) = writable(&c.state_dir) {
                complain(format_args!("configuration error: state_dir: {e}"));
                return ExitCode::from(EX_USAGE);
            }
            let report = format!(
                "{c}{}{}{}",
                machine_report(&crate::clone::machine::Facts::read()),
                crate::clone::inproc::setup::report(&c),
                caps_report(&c)
            );
            return out(&report);
        }
        Ok(Action::Run(c)) => {
            // A state directory that is not safe to write secrets into (a link, another user's,
            // open to others' writes) is refused before anything starts. One the system cannot
            // give yet (read-only, not mounted) is not fatal: the hooks that need it say why.
            if let Err(crate::sys::state_files::OpenError::Refused(why)) =
                crate::sys::state_files::StateDir::open(&c.state_dir)
            {
                complain(format_args!(
                    "configuration error: state_dir: {}: {why}",
                    c.state_dir.display()
                ));
                return ExitCode::from(EX_USAGE);
            }
            *c
        }
    };
    init_logging(&config);
    crate::supervise::spawn::raise_nofile();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // The blocking pool is only used for name lookups; a small VM must not die of threads.
        .max_blocking_threads(2)
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EX_OSERR);
        }
    };
    let code = runtime.block_on(async {
        let listener = match crate::http::accept::bind(config.listen) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, listen = %config.listen, "cannot listen on the hook port");
                return i32::from(EX_OSERR);
            }
        };
        crate::run(config, listener, signals, std::future::pending()).await
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Everything the command prints on stdout goes through here, once, never through `print!`:
/// that panics when the reader has gone (`--check | head -1`; SIGPIPE is blocked, so the write
/// fails with EPIPE instead of killing us). A reader that stopped reading wanted no more: exit 0,
/// as ripgrep and other well-behaved tools do. Any other failure to write is EX_IOERR.
fn out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            complain(format_args!("cannot write to standard output: {e}"));
            ExitCode::from(EX_IOERR)
        }
    }
}

/// A line on stderr for a person, before logging exists or instead of it. Never `eprintln!`: that
/// panics when stderr is a pipe nobody reads any more, and a message is not worth a panic.
pub(crate) fn complain(message: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "microvm-agent: {message}");
}

fn init_logging(config: &config::Config) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = config.log_filter.parse().unwrap_or_default();
    // Never a blocking write to stderr: a stalled log reader must not stop the hooks.
    let sink = crate::sys::logwriter::Sink::stderr(config.log_format == LogFormat::Json);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sink)
        .with_ansi(false);
    match config.log_format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .init(),
    }
}

/// `microvm-agent 0.1.0 (commit 1a2b3c4, aarch64-linux-musl)`: the release, the commit it was
/// built from (`MICROVM_AGENT_COMMIT` at build time, which `scripts/dist.sh` sets), the target.
pub fn version() -> String {
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "gnu") {
        "gnu"
    } else {
        "other"
    };
    format!(
        "microvm-agent {} (commit {}, {}-{}-{env})",
        env!("CARGO_PKG_VERSION"),
        option_env!("MICROVM_AGENT_COMMIT").unwrap_or("unknown"),
        std::env::consts::ARCH,
        std::env::consts::OS,
    )
}

/// `--check`: can the agent write its state directory? It creates it if needed (and removes
/// what it created), and writes and removes one file in it.
fn writable(dir: &std::path::Path) -> Result<(), String> {
    let created = !dir.exists();
    let result = crate::sys::state_files::StateDir::open(dir)
        .map_err(std::io::Error::from)
        .and_then(|d| {
            d.write("microvm-agent-check", b"", 0o600, None)?;
            d.remove("microvm-agent-check").map(drop)
        })
        .map_err(|e| format!("{}: cannot write there: {e}", dir.display()));
    if created {
        let _ = std::fs::remove_dir(dir);
    }
    result
}

/// What `--check` says about the machine it runs on (run it in the image at build time), as TOML
/// comments so the output still reads back as configuration.
fn machine_report(f: &crate::clone::machine::Facts) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let crng = if f.cap_sys_admin {
        "reseeded (the agent's RNDRESEEDCRNG will work)"
    } else if f.vmgenid || f.vmclock {
        "platform (the kernel reseeds itself on a restore)"
    } else {
        "not-reseeded: getrandom may be the same in every clone; use the agent's seed, or \
         additionalOsCapabilities [\"ALL\"]"
    };
    format!(
        "\n# this machine, for clone safety:\n\
         #   CAP_SYS_ADMIN: {} (the kernel reseed ioctls need it)\n\
         #   VMGenID driver bound: {}\n\
         #   vmclock generation counter: {}\n\
         #   hardware random instruction: {}\n\
         #   kernel_crng after /run: {crng}\n",
        yes(f.cap_sys_admin),
        yes(f.vmgenid),
        yes(f.vmclock),
        f.hardware_random,
    )
}

/// What `--check` says about capabilities: what the agent holds here, what the app would get,
/// and what the agent would keep for itself.
fn caps_report(c: &config::Config) -> String {
    use crate::sys::caps;
    let plan = caps::Plan::for_self(c.privileges.capabilities, c.privileges.no_new_privileges);
    let r = plan.report(plan.held);
    let held = caps::names(plan.held.effective).join(",");
    let mut out = format!(
        "\n# capabilities:\n#   the agent holds: {} ({})\n#   the app and every helper get: {} ({}){}\n",
        caps::hex(plan.held.effective),
        if held.is_empty() { "none" } else { &held },
        r.app,
        r.app_names.join(","),
        if r.no_new_privileges {
            ", no_new_privileges"
        } else {
            ""
        },
    );
    if let Some(keeps) = plan.agent_keeps {
        out += &format!(
            "#   the agent keeps only: {} ({})\n",
            caps::hex(keeps),
            caps::names(keeps).join(",")
        );
    } else if !r.split {
        out += "#   no split: the app gets what the agent holds\n";
    }
    if let Some(note) = &r.note {
        out += &format!("#   NOTE: {note}\n");
    }
    out
}
