//! The platform's part, played locally as it was measured on the live service (docs/platform.md):
//! start the entrypoint in the platform's container (default capabilities, `RLIMIT_NOFILE`
//! 1024, the image's environment), send the TLS probe, poll `/ready` with the builder's headers,
//! "snapshot", `/validate` (builder headers), `/run` with the exact JSON body, `/suspend`, freeze
//! the whole tree, `/resume`, `/terminate`, and wait for the entrypoint to exit. Every call is
//! bounded by its hook's budget, and the consequences are the platform's: a build hook that
//! answers neither 200 nor 503 fails the build; a runtime hook that answers non-200 terminates
//! the VM (a 500 `/suspend` does, measured).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::container::{self, Caps};
use crate::freeze::{self, Tree};
use crate::hooks::{Hook, Hooks};
use crate::http::{self, Caller, Failure};

pub const PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";
/// How often the platform asks `/ready` and `/validate` again after a 503.
const POLL: Duration = Duration::from_millis(50);
/// How often a line says what the wait for `/ready` sees.
const PROGRESS: Duration = Duration::from_secs(3);
/// The longest `runHookPayload` RunMicrovm accepts (4097 characters are rejected; measured).
pub const MAX_PAYLOAD_CHARS: usize = 4096;

pub struct Options {
    pub hooks: Hooks,
    pub host: String,
    /// `runHookPayload`; `None` leaves the field out of the `/run` body, as the platform does.
    pub payload: Option<String>,
    pub microvm_id: String,
    pub suspend_for: Duration,
    /// `host:port/path` of the app itself: `/ready` must not say 200 before it answers.
    pub app_url: Option<(String, u16, String)>,
    pub build_timeout: Duration,
    pub exit_within: Duration,
    pub entrypoint: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub caps: Caps,
    pub region: String,
    pub image: String,
}

enum Call {
    Answer(u16, Duration, Vec<u8>),
    /// Nothing listens yet (only `/ready` may see this without a violation).
    Refused,
    /// No answer; the violation is recorded.
    Failed,
}

struct Sim<'a> {
    o: &'a Options,
    /// The build VM's endpoint: the `Host` of the builder's calls.
    builder: Caller,
    child: Child,
    tree: Tree,
    started: Instant,
    violations: Vec<String>,
    out: std::io::Stdout,
}

/// Runs the whole lifecycle; returns the exit code (0: no violation, 1: violations or a failed
/// build, 2: the entrypoint could not be started).
pub fn run(o: &Options) -> i32 {
    freeze::become_subreaper();
    let cgroup = freeze::prepare();
    let join = freeze::join_path(&cgroup);
    let mut cmd = Command::new(&o.entrypoint[0]);
    cmd.args(&o.entrypoint[1..])
        .stdin(Stdio::null())
        .process_group(0);
    for (k, v) in container::env(&o.region, &o.image).iter().chain(&o.env) {
        cmd.env(k, v);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let caps = o.caps;
    let last_cap = container::last_cap();
    let scratch = std::env::temp_dir().join(format!("microvm-sim-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let identity = if root {
        container::identity_copies(&scratch)
    } else {
        Vec::new()
    };
    // SAFETY: only unshare, mount, setrlimit, prctl and capset (async-signal-safe) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if root {
                container::private_identity(&identity)?;
                container::apply_in_child(caps, last_cap)?;
            }
            Ok(())
        });
    }
    if let Some(path) = join {
        // SAFETY: open/write/close only, between fork and exec: the entrypoint joins the cgroup
        // before it can start anything, so the freezer holds the whole tree.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
                Ok(())
            });
        }
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("microvm-sim: cannot start {:?}: {e}", o.entrypoint[0]);
            return 2;
        }
    };
    let tree = Tree::new(child.id() as i32, cgroup);
    let mut sim = Sim {
        o,
        builder: Caller::Builder {
            endpoint: format!("{}.lambda-microvm.{}.on.aws", http::uuid(), o.region),
        },
        child,
        tree,
        started: Instant::now(),
        violations: Vec::new(),
        out: std::io::stdout(),
    };
    let argv: Vec<String> = o
        .entrypoint
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = format!(
        "{} (pid {}), hook port {}",
        argv.join(" "),
        sim.child.id(),
        o.hooks.port
    );
    sim.say("start", &line);
    let container = if root {
        format!(
            "{}, RLIMIT_NOFILE {}, its own /etc/machine-id, image {}",
            o.caps.describe(),
            container::NOFILE,
            o.image
        )
    } else {
        "not root: the entrypoint keeps this user's capabilities (modelling the platform's needs root)".into()
    };
    sim.say("container", &container);
    let built = sim.lifecycle();
    sim.tree.kill();
    let _ = sim.child.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    sim.report(built)
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{} ms", d.as_millis())
    }
}

impl Sim<'_> {
    fn say(&mut self, what: &str, detail: &str) {
        let t = self.started.elapsed().as_secs_f64();
        let _ = writeln!(self.out, "{t:>9.3}s  {what:<10} {detail}");
        let _ = self.out.flush();
    }

    fn violation(&mut self, text: String) {
        self.say("VIOLATION", &text);
        self.violations.push(text);
    }

    fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        })
    }

    fn generation(&self) -> String {
        match http::call(
            &self.o.host,
            self.o.hooks.port,
            &Caller::Runtime,
            "GET",
            "/generation",
            b"",
            None,
            Duration::from_secs(1),
        ) {
            Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["generation"].as_u64())
                .map_or("-".into(), |g| g.to_string()),
            _ => "-".into(),
        }
    }

    /// One hook call, checked against its budget. Build hooks come from the builder.
    fn call(&mut self, name: &str, hook: Hook, body: &[u8], content_type: Option<&str>) -> Call {
        let caller = match name {
            "ready" | "validate" => self.builder.clone(),
            _ => Caller::Runtime,
        };
        let t = Instant::now();
        let r = http::call(
            &self.o.host,
            self.o.hooks.port,
            &caller,
            "POST",
            &format!("{PREFIX}{name}"),
            body,
            content_type,
            hook.timeout,
        );
        let took = t.elapsed();
        match r {
            Ok(reply) => {
                if took > hook.timeout {
                    self.violation(format!(
                        "/{name} answered after {} (budget {} s)",
                        ms(took),
                        hook.timeout.as_secs()
                    ));
                }
                Call::Answer(reply.status, took, reply.body)
            }
            Err(Failure::Timeout) => {
                self.violation(format!(
                    "/{name} did not answer within its {} s budget",
                    hook.timeout.as_secs()
                ));
                Call::Failed
            }
            // While the image boots, nothing may listen yet: the platform asks again.
            Err(Failure::Refused) if name == "ready" => Call::Refused,
            Err(Failure::Refused) => {
                self.violation(format!(
                    "/{name}: nothing listens on port {}",
                    self.o.hooks.port
                ));
                Call::Failed
            }
            Err(Failure::Other(e)) => {
                self.violation(format!("/{name}: {e}"));
                Call::Failed
            }
        }
    }

    /// The build fails: the platform's verdict, and a violation.
    fn build_failed(&mut self, why: String) -> bool {
        self.say("BUILD", &format!("FAILED: {why}"));
        self.violation(why);
        false
    }

    /// Sends the platform's TLS probe once something listens on the hook port.
    fn tls_probe(&mut self) -> bool {
        match http::tls_probe(&self.o.host, self.o.hooks.port) {
            None => false,
            Some(what) => {
                self.say(
                    "tls-probe",
                    &format!("a TLS ClientHello to the plaintext hook port: {what}"),
                );
                true
            }
        }
    }

    /// Polls a build-time hook until it says 200 (503: ask again). False: the build failed.
    fn poll(&mut self, name: &str, hook: Hook, deadline: Instant) -> bool {
        let (mut not_yet, mut refused) = (0u32, 0u32);
        let mut probed = name != "ready";
        let mut last = String::new();
        let mut progress = Instant::now();
        let before = self.generation();
        loop {
            if let Some(code) = self.exited() {
                return self.build_failed(format!(
                    "the entrypoint exited with {code} before /{name} answered 200"
                ));
            }
            if Instant::now() > deadline {
                return self.build_failed(format!(
                    "/{name} never answered 200 within {} s",
                    self.o.build_timeout.as_secs()
                ));
            }
            if progress.elapsed() >= PROGRESS {
                progress = Instant::now();
                let seen = if refused > 0 && not_yet == 0 {
                    format!(
                        "connection refused on {}:{} x {refused}",
                        self.o.host, self.o.hooks.port
                    )
                } else {
                    format!("503 x {not_yet}: {last}")
                };
                self.say("waiting", &format!("for /{name} to answer 200: {seen}"));
            }
            if !probed {
                probed = self.tls_probe();
            }
            match self.call(name, hook, b"", None) {
                Call::Refused => refused += 1,
                Call::Failed => {
                    return self.build_failed(format!("/{name} did not answer in its budget"))
                }
                Call::Answer(503, _, body) => {
                    not_yet += 1;
                    last = String::from_utf8_lossy(&body).trim().to_string();
                }
                Call::Answer(200, took, _) => {
                    let mut waited = Vec::new();
                    if not_yet > 0 {
                        waited.push(format!("{not_yet} x 503"));
                    }
                    if refused > 0 {
                        waited.push(format!("{refused} x not listening yet"));
                    }
                    let waited = if waited.is_empty() {
                        String::new()
                    } else {
                        format!(", after {}", waited.join(", "))
                    };
                    let gen = if name == "validate" {
                        format!("   generation {before} -> {}", self.generation())
                    } else {
                        String::new()
                    };
                    self.say(
                        name,
                        &format!(
                            "200 in {} (budget {} s){waited}{gen}",
                            ms(took),
                            hook.timeout.as_secs()
                        ),
                    );
                    return true;
                }
                Call::Answer(status, _, body) => {
                    self.say(
                        name,
                        &format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
                    );
                    return self.build_failed(format!("/{name} answered {status}"));
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// The VM ends: a runtime hook failed, and the platform terminates the VM for it.
    fn terminated(&mut self, why: String) -> bool {
        self.say("VM", &format!("TERMINATED: {why}"));
        self.violation(why);
        self.tree.kill();
        false
    }

    /// A runtime hook: must answer 200 within its budget, or the platform ends the VM.
    fn runtime(&mut self, name: &str, hook: Hook, body: &[u8], content_type: Option<&str>) -> bool {
        if !hook.enabled {
            self.say(name, "(disabled)");
            return true;
        }
        if let Some(code) = self.exited() {
            self.violation(format!("the entrypoint exited with {code} before /{name}"));
            return false;
        }
        let before = self.generation();
        let Call::Answer(status, took, body) = self.call(name, hook, body, content_type) else {
            return self.terminated(format!("/{name} gave no answer in its budget"));
        };
        let after = self.generation();
        let gen = if before != after && after != "-" {
            format!("   generation {before} -> {after}")
        } else {
            String::new()
        };
        self.say(
            name,
            &format!(
                "{status} in {} (budget {} s){gen}",
                ms(took),
                hook.timeout.as_secs()
            ),
        );
        if status != 200 {
            return self.terminated(format!(
                "/{name} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        true
    }

    fn lifecycle(&mut self) -> bool {
        let o = self.o;
        let deadline = Instant::now() + o.build_timeout;
        if o.hooks.ready.enabled {
            if !self.poll("ready", o.hooks.ready, deadline) {
                return false;
            }
            if let Some((host, port, path)) = &o.app_url {
                let r = http::call(
                    host,
                    *port,
                    &Caller::Runtime,
                    "GET",
                    path,
                    b"",
                    None,
                    Duration::from_secs(2),
                );
                if let Err(e) = r {
                    self.violation(format!("/ready said 200 but the app at {host}:{port}{path} does not answer ({e:?})"));
                }
            }
        } else {
            self.say("ready", "(disabled: the platform snapshots without asking)");
            std::thread::sleep(Duration::from_secs(1));
        }
        self.say(
            "snapshot",
            "memory + disk (simulated: the same processes go on as the clone)",
        );
        if o.hooks.validate.enabled && !self.poll("validate", o.hooks.validate, deadline) {
            return false;
        }
        // Exactly the platform's body: the id, and the caller's string only when it set one.
        let mut body = serde_json::Map::new();
        body.insert("microvmId".into(), o.microvm_id.clone().into());
        if let Some(p) = &o.payload {
            body.insert("runHookPayload".into(), p.clone().into());
        }
        let body = serde_json::Value::Object(body).to_string();
        if !self.runtime(
            "run",
            o.hooks.run,
            body.as_bytes(),
            Some("application/json"),
        ) {
            return true;
        }
        if !self.runtime("suspend", o.hooks.suspend, b"", None) {
            return true;
        }
        if !o.suspend_for.is_zero() {
            self.tree.freeze();
            self.say(
                "frozen",
                &format!("for {} ({})", ms(o.suspend_for), self.tree.method()),
            );
            std::thread::sleep(o.suspend_for);
            self.tree.thaw();
        }
        if !self.runtime("resume", o.hooks.resume, b"", None) {
            return true;
        }
        if !o.hooks.terminate.enabled {
            self.say("terminate", "(disabled: the VM is killed)");
            return true;
        }
        if !self.runtime("terminate", o.hooks.terminate, b"", None) {
            return true;
        }
        let t = Instant::now();
        while t.elapsed() < o.exit_within {
            if let Some(code) = self.exited() {
                self.say(
                    "exit",
                    &format!(
                        "the entrypoint exited with {code}, {} after /terminate",
                        ms(t.elapsed())
                    ),
                );
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.violation(format!(
            "the entrypoint did not exit within {} s of /terminate",
            o.exit_within.as_secs()
        ));
        true
    }

    fn report(mut self, built: bool) -> i32 {
        if self.violations.is_empty() && built {
            self.say("result", "OK: no contract violation");
            return 0;
        }
        let n = self.violations.len();
        self.say(
            "result",
            &format!(
                "FAILED: {n} violation(s){}",
                if built { "" } else { ", the build failed" }
            ),
        );
        1
    }
}
