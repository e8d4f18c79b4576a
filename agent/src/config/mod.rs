//! The one validated, immutable configuration: TOML files, then environment variables, then the
//! command line, each overriding the one before. Everything is checked here, before anything
//! starts; an invalid value is a [`ConfigError`] naming the key, and `main` exits 64 with it.
//!
//! No I/O happens here beyond reading the configuration files (user names are resolved by the
//! supervisor at start-up, still before anything starts).

mod cli;
mod file;
mod machine;
pub use machine::{ClockStep, Hostname, Privileges};
mod render;
mod sections;
mod telling;
pub mod values;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

pub use cli::{check_env, parse_args, Action, HELP};
use file::Section;
use sections::{app, check_log_filter, hooks, ready, validate};
use telling::{notify, secrets};
use values::{HttpUrl, StatusSet, UserSpec};

/// An invalid configuration: the key (a dotted TOML path, a `--flag` or an environment variable)
/// and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Calls forwarded from the public endpoint (non-loopback `Host`, or `x-amzn-requestid`) get
    /// 403 on every hook but `/ready`.
    Loopback,
    /// No origin check: for setups that reach the hook port some other way.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelReseed {
    Auto,
    Ioctl,
    Write,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    Fail,
    Continue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
    Raw,
}

/// Lifecycle events the app can be told about (and restarted on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    Run,
    Resume,
    Suspend,
    Terminate,
    Validate,
}

impl Event {
    pub const ALL: [(&'static str, Event); 5] = [
        ("run", Event::Run),
        ("resume", Event::Resume),
        ("suspend", Event::Suspend),
        ("terminate", Event::Terminate),
        ("validate", Event::Validate),
    ];

    pub fn as_str(self) -> &'static str {
        Event::ALL
            .iter()
            .find(|(_, e)| *e == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    /// `MICROVM_AGENT_LOG`, already checked to parse as a `tracing` target filter.
    pub log_filter: String,
    /// The files that were read, in order, for `--check`.
    pub files_read: Vec<PathBuf>,
    /// `None`: sidecar mode, hooks only.
    pub app: Option<App>,
    pub ready: Ready,
    pub validate: Validate,
    pub hooks: Hooks,
    pub kernel_reseed: KernelReseed,
    pub notify: Notify,
    pub secrets: Vec<Secret>,
    /// `[identity] machine_id`: rewrite `/etc/machine-id` on `/run`.
    pub machine_id: MachineId,
    /// `[identity] hostname`: a per-VM hostname on `/run` (needs CAP_SYS_ADMIN).
    pub hostname: Hostname,
    /// `[identity] boot_id`: a per-VM `/proc/sys/kernel/random/boot_id` on `/run` (a bind mount;
    /// needs CAP_SYS_ADMIN). Same rule as `machine_id`.
    pub boot_id: MachineId,
    /// `[clock] step`: step a stale wall clock (needs CAP_SYS_TIME).
    pub clock_step: ClockStep,
    /// `[app] capabilities`, `[app] no_new_privileges`: what the app and the helpers get.
    pub privileges: Privileges,
}

/// When the agent rewrites `/etc/machine-id` on `/run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineId {
    /// On the platform (`AWS_LAMBDA_MICROVM_IMAGE_ARN` set) or as PID 1 (the container is the
    /// agent's): never the machine of someone trying the agent out on their laptop.
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug, PartialEq)]
pub struct App {
    /// The program and its arguments, byte-exact (the CLI may pass non-UTF-8 arguments).
    pub command: Vec<OsString>,
    /// The command came after `--` on the command line (an image's CMD), not from `[app]`.
    pub command_from_cli: bool,
    pub user: Option<UserSpec>,
    pub workdir: Option<PathBuf>,
    pub restart: Restart,
    pub max_restarts: u32,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// A run that stayed up this long resets the crash-loop counter.
    pub reset_after: Duration,
    /// The first restart's delay; it doubles with each quick failure, up to 50 times itself
    /// (at most 5 s beyond that).
    pub restart_delay: Duration,
    /// `reseed_in_process` (default on): the app's processes get the in-process reseed helpers
    /// (`LD_PRELOAD`, Python's `sitecustomize`, Node's `--require`), and every new generation
    /// waits for them (`clone::inproc`).
    pub reseed_in_process: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Http { url: HttpUrl, healthy: StatusSet },
    Tcp { addr: String },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    /// `None`: a running app is ready.
    pub probe: Option<Probe>,
    pub interval: Duration,
    /// How long one probe attempt may take.
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Validate {
    pub repeat: u32,
    pub requests: Vec<WarmRequest>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WarmRequest {
    pub method: String,
    pub url: HttpUrl,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub expect_status: StatusSet,
    pub expect_body_contains: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hooks {
    pub ready_timeout: Duration,
    pub validate_timeout: Duration,
    pub run_timeout: Duration,
    pub resume_timeout: Duration,
    pub suspend_timeout: Duration,
    pub terminate_timeout: Duration,
    pub trust: Trust,
    /// The hooks whose failure answers non-200 (default `run` and `validate`). A non-200 from a
    /// runtime hook makes the platform terminate the VM (a 500 `/suspend` does, measured), so
    /// every other hook reports trouble in its JSON, the log and `/status` instead.
    pub fail_on: Vec<Event>,
}

impl Hooks {
    /// Whether a failure of `event`'s hook may answer non-200.
    pub fn fails_on(&self, event: Event) -> bool {
        self.fail_on.contains(&event)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Notify {
    pub http: Option<HttpUrl>,
    /// `forward`: the app's own hook server (a base URL). Each platform hook is passed through
    /// to it on the same path after the agent's own work; the app's 2xx acknowledges.
    pub forward: Option<HttpUrl>,
    pub signal: Option<Signal>,
    pub exec: Option<Vec<String>>,
    pub restart_on: Vec<Event>,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SecretSource {
    Random { bytes: usize, encoding: Encoding },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Secret {
    pub name: String,
    pub source: SecretSource,
    pub scrub_on_suspend: bool,
}

/// A value given on the command line or in the environment, with where it came from (`--listen`
/// or `MICROVM_AGENT_LISTEN`), so that an error names what the user actually wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Given {
    pub from: &'static str,
    pub value: String,
}

/// What the command line and the environment contribute on top of the files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub config: Vec<PathBuf>,
    pub listen: Option<Given>,
    pub state_dir: Option<Given>,
    pub log_format: Option<Given>,
    pub command: Vec<OsString>,
}

pub const DEFAULT_FILES: [&str; 2] = ["/etc/microvm-agent.toml", "/etc/microvm-agent.d"];

/// Loads the files (the `-c` paths, or the default locations), applies the overrides and
/// validates everything.
pub fn load(over: &Overrides, env_log: Option<&str>) -> Result<Config, ConfigError> {
    let (table, files_read) = if over.config.is_empty() {
        let defaults: Vec<PathBuf> = DEFAULT_FILES.iter().map(PathBuf::from).collect();
        file::load(&defaults, false)?
    } else {
        file::load(&over.config, true)?
    };
    let mut config = from_table(&table, over, env_log)?;
    config.files_read = files_read;
    Ok(config)
}

/// Builds the configuration from a merged TOML table and the overrides. Public for tests.
pub fn from_table(
    table: &toml::Table,
    over: &Overrides,
    env_log: Option<&str>,
) -> Result<Config, ConfigError> {
    let root = Section::root(table);
    let file_listen = root.string("listen")?;
    let file_state = root.string("state_dir")?;
    let file_log = root.string("log_format")?;
    let (listen_key, listen) = match &over.listen {
        Some(g) => (g.from, g.value.as_str()),
        None => ("listen", file_listen.unwrap_or("0.0.0.0:9000")),
    };
    let listen: SocketAddr = listen.parse().map_err(|_| {
        ConfigError::new(
            listen_key,
            format!("\"{listen}\" is not an address (write e.g. \"0.0.0.0:9000\")"),
        )
    })?;
    let (state_key, state_dir) = match &over.state_dir {
        Some(g) => (g.from, g.value.as_str()),
        None => ("state_dir", file_state.unwrap_or("/run/microvm-agent")),
    };
    let state_dir = PathBuf::from(state_dir);
    if !state_dir.is_absolute() {
        return Err(ConfigError::new(
            state_key,
            format!("\"{}\" must be an absolute path", state_dir.display()),
        ));
    }
    let (log_key, log) = match &over.log_format {
        Some(g) => (g.from, g.value.as_str()),
        None => ("log_format", file_log.unwrap_or("json")),
    };
    let log_format = match log {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            return Err(ConfigError::new(
                log_key,
                format!("\"{other}\" is not one of \"json\", \"text\""),
            ))
        }
    };
    let log_filter = env_log.unwrap_or("info").to_string();
    check_log_filter(&log_filter)?;

    let (app, privileges) = app(&root.table("app")?, &over.command)?;
    let ready = ready(&root.table("ready")?)?;
    let validate = validate(&root.table("validate")?)?;
    let hooks = hooks(&root.table("hooks")?)?;
    let kernel_reseed = machine::entropy(&root.table("entropy")?)?;
    let notify = notify(&root.table("notify")?, &hooks)?;
    let secrets = secrets(&root)?;
    let (machine_id, hostname, boot_id) = machine::identity(&root.table("identity")?)?;
    let clock_step = machine::clock(&root.table("clock")?)?;
    root.finish()?;
    Ok(Config {
        listen,
        state_dir,
        log_format,
        log_filter,
        files_read: Vec::new(),
        app,
        ready,
        validate,
        hooks,
        kernel_reseed,
        notify,
        secrets,
        machine_id,
        hostname,
        boot_id,
        clock_step,
        privileges,
    })
}

/// The longest margin kept between our answer and the platform's timeout.
pub const MAX_MARGIN: Duration = Duration::from_millis(250);

/// How long after a hook arrives its answer must be sent.
pub fn deadline_after(budget: Duration) -> Duration {
    budget - (budget / 10).min(MAX_MARGIN)
}

#[cfg(test)]
mod tests;
