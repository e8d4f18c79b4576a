//! The command line and the environment.
//!
//! Options stop at the first non-option, as in tini and env(1): `microvm-agent python3 -u app.py`
//! runs `python3 -u app.py`, and the `-u` is python's. `--` also ends the options. A hand-written
//! parser: the surface is eight options, and a general-purpose parser would cost more bytes in
//! every image than this whole file.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{load, Config, ConfigError, Given, Overrides};

pub const HELP: &str = "\
microvm-agent: lifecycle hooks, PID 1 supervision and clone safety for snapshot-based microVMs

Usage: microvm-agent [OPTIONS] [--] [COMMAND [ARGS]...]

Options (they stop at the first non-option; `--` also ends them):
  -c, --config PATH      TOML file, or a directory of *.toml read in name order, or - for
                         standard input (at most 1 MiB); repeatable, later files override
                         earlier keys [env: MICROVM_AGENT_CONFIG]
                         [default: /etc/microvm-agent.toml, then /etc/microvm-agent.d/*.toml]
      --listen ADDR      hook server address [env: MICROVM_AGENT_LISTEN] [default: 0.0.0.0:9000]
      --state-dir DIR    where generation, payload and secrets are published
                         [env: MICROVM_AGENT_STATE_DIR] [default: /run/microvm-agent]
      --log-format FMT   json or text, on stderr [env: MICROVM_AGENT_LOG_FORMAT] [default: json]
      --check            validate the configuration, print it resolved, exit 0 (or 64)
  -V, --version          print the version
  -h, --help             print this help

Without COMMAND (and without [app] command in the configuration) the agent runs as a sidecar:
it serves the hooks alone. Log level: MICROVM_AGENT_LOG (e.g. \"debug\", \"info,microvm_agent=trace\").
Exit codes: the app's own; 128+N if it died of signal N; 64 for a configuration error;
126/127 when the command cannot be executed / is not found.
";

#[derive(Debug)]
pub enum Action {
    Run(Box<Config>),
    Check(Box<Config>),
    Version,
    Help,
}

/// The environment variables the agent reads.
pub const ENV_VARS: [&str; 5] = [
    "MICROVM_AGENT_CONFIG",
    "MICROVM_AGENT_LISTEN",
    "MICROVM_AGENT_STATE_DIR",
    "MICROVM_AGENT_LOG_FORMAT",
    "MICROVM_AGENT_LOG",
];

/// Every variable the agent reads must be UTF-8: a value that is not would otherwise be read as
/// unset, and `MICROVM_AGENT_CONFIG` would then silently mean "no file".
pub fn check_env(var_os: impl Fn(&str) -> Option<OsString>) -> Result<(), ConfigError> {
    for name in ENV_VARS {
        if var_os(name).is_some_and(|v| v.to_str().is_none()) {
            return Err(ConfigError::new(name, "is not valid UTF-8"));
        }
    }
    Ok(())
}

/// Parses `args` (without the program name) with `env` as the environment lookup, then loads
/// and validates the configuration.
pub fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Action, ConfigError> {
    let mut over = Overrides::default();
    let mut check = false;
    let mut args = args.into_iter();
    let given = |from: &'static str, value: String| Some(Given { from, value });
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let bytes = arg.as_encoded_bytes();
        if bytes.first() != Some(&b'-') || bytes == b"-" {
            over.command.push(arg);
            break;
        }
        let arg = arg.into_string().map_err(|a| {
            ConfigError::new(
                a.to_string_lossy().into_owned(),
                "unknown option (see --help)",
            )
        })?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ if arg.starts_with("-c") && arg.len() > 2 && !arg.starts_with("--") => {
                ("-c".to_string(), Some(arg[2..].to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &str| -> Result<String, ConfigError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| ConfigError::new(flag.to_string(), "needs a value")),
            }
        };
        match name.as_str() {
            "-c" | "--config" => over.config.push(PathBuf::from(value("--config")?)),
            "--listen" => over.listen = given("--listen", value("--listen")?),
            "--state-dir" => over.state_dir = given("--state-dir", value("--state-dir")?),
            "--log-format" => over.log_format = given("--log-format", value("--log-format")?),
            "--check" if inline.is_none() => check = true,
            "-V" | "--version" if inline.is_none() => return Ok(Action::Version),
            "-h" | "--help" if inline.is_none() => return Ok(Action::Help),
            _ => return Err(ConfigError::new(name, "unknown option (see --help)")),
        }
    }
    over.command.extend(args);
    if over.config.is_empty() {
        if let Some(path) = env("MICROVM_AGENT_CONFIG").filter(|p| !p.is_empty()) {
            over.config.push(PathBuf::from(path));
        }
    }
    over.listen = over
        .listen
        .or_else(|| given("MICROVM_AGENT_LISTEN", env("MICROVM_AGENT_LISTEN")?));
    over.state_dir = over
        .state_dir
        .or_else(|| given("MICROVM_AGENT_STATE_DIR", env("MICROVM_AGENT_STATE_DIR")?));
    over.log_format = over
        .log_format
        .or_else(|| given("MICROVM_AGENT_LOG_FORMAT", env("MICROVM_AGENT_LOG_FORMAT")?));
    let config = Box::new(load(&over, env("MICROVM_AGENT_LOG").as_deref())?);
    Ok(if check {
        Action::Check(config)
    } else {
        Action::Run(config)
    })
}
