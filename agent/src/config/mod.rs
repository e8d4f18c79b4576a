//! The one validated, immutable configuration: TOML files, then environment variables, then the
//! command line, each overriding the one before. Everything is checked here, before anything
//! starts; an invalid value is a [`ConfigError`] naming the key, and `main` exits 64 with it.
//!
//! No I/O happens here beyond reading the configuration files (user names are resolved by the
//! supervisor at start-up, still before anything starts).

mod cli;
mod file;
mod render;
pub mod values;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

pub use cli::{check_env, parse_args, Action, HELP};
use file::Section;
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

fn dur(s: &Section, key: &str, default: Duration) -> Result<Duration, ConfigError> {
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

    let app = app(&root.table("app")?, &over.command)?;
    let ready = ready(&root.table("ready")?)?;
    let validate = validate(&root.table("validate")?)?;
    let hooks = hooks(&root.table("hooks")?)?;
    let entropy = root.table("entropy")?;
    let kernel_reseed = entropy
        .choice(
            "kernel",
            &[
                ("auto", KernelReseed::Auto),
                ("ioctl", KernelReseed::Ioctl),
                ("write", KernelReseed::Write),
                ("off", KernelReseed::Off),
            ],
        )?
        .unwrap_or(KernelReseed::Auto);
    entropy.finish()?;
    let notify = notify(&root.table("notify")?, &hooks)?;
    let secrets = secrets(&root)?;
    let identity = root.table("identity")?;
    // `true`/`false`, or "auto" (the default). A boolean reads naturally; "auto" is a string.
    let machine_id = match identity.boolean("machine_id") {
        Ok(Some(true)) => MachineId::Always,
        Ok(Some(false)) => MachineId::Never,
        Ok(None) => MachineId::Auto,
        Err(_) if identity.string("machine_id").ok().flatten() == Some("auto") => MachineId::Auto,
        Err(_) => {
            return Err(ConfigError::new(
                identity.key("machine_id"),
                "must be true, false or \"auto\"",
            ))
        }
    };
    identity.finish()?;
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
    })
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `MICROVM_AGENT_LOG`: `level` or `target=level`, comma-separated. `Targets` itself accepts a
/// bare word as a *target* with no level, so `verbose` would silently turn every line off.
fn check_log_filter(filter: &str) -> Result<(), ConfigError> {
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

fn app(s: &Section, cli_command: &[OsString]) -> Result<Option<App>, ConfigError> {
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
    s.finish()?;
    let command = if cli_command.is_empty() {
        command.map(|c| c.into_iter().map(OsString::from).collect())
    } else {
        Some(cli_command.to_vec())
    };
    Ok(command.map(|command| App {
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
    }))
}

fn ready(s: &Section) -> Result<Ready, ConfigError> {
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

fn validate(s: &Section) -> Result<Validate, ConfigError> {
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

fn hooks(s: &Section) -> Result<Hooks, ConfigError> {
    // The platform's ranges (CONTRACT.md): build hooks 1-3600 s, runtime hooks 1-60 s.
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

fn notify(s: &Section, hooks: &Hooks) -> Result<Notify, ConfigError> {
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
    let room = crate::budget::deadline_after(shortest);
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

fn secrets(root: &Section) -> Result<Vec<Secret>, ConfigError> {
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

#[cfg(test)]
mod tests;
