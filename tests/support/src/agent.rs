//! The black-box harness: start the real `microvm-agent` binary on 127.0.0.1 with a temporary
//! state directory, talk raw HTTP/1.1 to it, read its logs, and kill everything it started when
//! the test ends, even when the test fails.

pub use crate::machine_lock::heavy_tier;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The agent under test: this build, or `MICROVM_AGENT_BIN` (e.g. the aarch64 build), run
/// through `MICROVM_AGENT_RUNNER` when set (e.g. `qemu-aarch64-static`).
pub fn agent_argv() -> Vec<String> {
    let bin =
        std::env::var("MICROVM_AGENT_BIN").unwrap_or_else(|_| crate::repo::built("microvm-agent"));
    match std::env::var("MICROVM_AGENT_RUNNER") {
        Ok(runner) if !runner.is_empty() => vec![runner, bin],
        _ => vec![bin],
    }
}

/// A `Command` for the agent under test.
pub fn agent_command() -> Command {
    let argv = agent_argv();
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// Whether the agent runs under an emulator (some kernel interfaces are then not the host's).
pub fn emulated() -> bool {
    std::env::var("MICROVM_AGENT_RUNNER").is_ok_and(|r| !r.is_empty())
}

/// Raises this test process's descriptor limit to its hard limit (floods hold thousands).
pub fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Generous bound for anything a test waits on: it only guards against hangs, never measures.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// "Answered inside its budget", seen from a test's clock. A hook's budget is 1 s and the agent
/// answers by its own deadline (900 ms after the request arrived, on its clock): that deadline is
/// the property, and a 200 (or the expected 500) is its proof. The test's clock adds whatever a
/// loaded machine adds, so it allows this much, while a hook that waited for what it must never
/// wait for (a hung callback, a 30 s command, a 5 s exec) is still told apart. A tight wall-clock
/// margin here made CI green on an idle machine and red on a busy one (#32); the load tier
/// (tests/attack/crowds.rs, one case at a time) is where a budget itself is the assertion.
pub const ANSWERED_IN_BUDGET: Duration = Duration::from_millis(2500);

/// The fixture app (tests/fixture), built by cargo as an example of the agent package.
pub fn fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test> -> target/<profile>/examples/mva-fixture
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/mva-fixture");
    assert!(
        path.exists(),
        "{} is missing: run the tests through cargo (it builds examples)",
        path.display()
    );
    path
}

pub fn fixture_str() -> String {
    fixture().display().to_string()
}

/// The fixture where another user (the tests' `user = "nobody"` apps) can execute it: a copy in a
/// 0755 directory under the temporary directory, once per test process. A checkout inside a
/// private (0700) home or temporary directory leaves `target/` out of that user's reach, and an
/// app that cannot be executed is otherwise only a timeout. Every directory on the way is checked,
/// and a test that cannot have it says why.
pub fn fixture_for_others() -> String {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = COPY.get_or_init(|| {
        // Named by the build it copies, so runs reuse it and only a rebuild adds one.
        let built = std::fs::metadata(fixture()).unwrap();
        let stamp = built
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("mva-shared-fixture-{stamp}-{}", built.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("mva-fixture");
        if !copy.exists() {
            // Copied aside and renamed: test processes running at once never see half a binary.
            let part = dir.join(format!("mva-fixture.{}", std::process::id()));
            std::fs::copy(fixture(), &part).unwrap();
            std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&part, &copy).unwrap();
        }
        for up in dir.ancestors() {
            let mode = std::fs::metadata(up).map_or(0, |m| m.permissions().mode());
            assert!(
                mode & 0o001 != 0,
                "{} (mode {mode:o}) cannot be entered by other users, so an app run as \
                 `nobody` cannot reach {}: set TMPDIR to a directory they can reach",
                up.display(),
                copy.display()
            );
        }
        copy
    });
    path.display().to_string()
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mva-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines a child wrote, collected by a reader thread, with a condition to wait on.
#[derive(Clone, Default)]
pub struct Lines(
    Arc<(Mutex<Vec<String>>, Condvar)>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl Lines {
    fn collect(self, pipe: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*self.0;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
            self.1.store(true, Ordering::SeqCst);
        });
    }

    /// Waits (briefly) until the writer closed the pipe, so that every line is in.
    fn drained(&self) {
        let t = Instant::now();
        while !self.1.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Waits until a line satisfies `pred`, and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + PATIENCE;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; lines so far:\n{}",
                lines.join("\n")
            );
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.all().iter().filter(|l| pred(l)).count()
    }
}

/// The agent as PID 1 of fresh PID, mount and UTS namespaces. `--uts`: an agent that is PID 1
/// may set the hostname (`[identity]`); never the test machine's.
pub const PID1: [&str; 6] = [
    "unshare",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--uts",
];

/// How to start an agent.
pub struct Spec {
    pub config: Option<String>,
    pub args: Vec<String>,
    pub app: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`).
    pub pid1: bool,
    /// Wait for the hook port (false for agents expected to fail at start).
    pub wait_ready_port: bool,
    /// A prefix command (e.g. `setpriv ...`) the agent runs under.
    pub wrapper: Vec<String>,
    pub stdin_null: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            config: None,
            args: vec![],
            app: vec![],
            env: vec![],
            pid1: false,
            wait_ready_port: true,
            wrapper: vec![],
            stdin_null: true,
        }
    }
}

impl Spec {
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }
    pub fn app<S: AsRef<str>>(mut self, argv: &[S]) -> Self {
        self.app = argv.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }
    /// The fixture app with these arguments.
    pub fn fixture(self, args: &[&str]) -> Self {
        let mut argv = vec![fixture_str()];
        argv.extend(args.iter().map(|s| s.to_string()));
        self.app(&argv)
    }
    /// The fixture for an app that runs as another user ([`fixture_for_others`]).
    pub fn fixture_for_others(self, args: &[&str]) -> Self {
        let mut argv = vec![fixture_for_others()];
        argv.extend(args.iter().map(|s| s.to_string()));
        self.app(&argv)
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    pub fn pid1(mut self) -> Self {
        self.pid1 = true;
        self
    }
    pub fn no_wait(mut self) -> Self {
        self.wait_ready_port = false;
        self
    }
    pub fn wrapper(mut self, w: &[&str]) -> Self {
        self.wrapper = w.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn start(self) -> Agent {
        Agent::start(self)
    }
}

/// A running agent. Dropping it kills the agent and every process below it.
pub struct Agent {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub stderr: Lines,
    pub stdout: Lines,
    status: Option<ExitStatus>,
    pid1: bool,
}

impl Agent {
    pub fn start(spec: Spec) -> Agent {
        let dir = TempDir::new("agent");
        let mut argv: Vec<String> = Vec::new();
        if spec.pid1 {
            argv.extend(PID1.map(String::from));
        }
        // A wrapper may name the state directory as `__STATE__` (e.g. to mount a filesystem on it).
        let state = dir.join("state").display().to_string();
        argv.extend(spec.wrapper.iter().map(|w| w.replace("__STATE__", &state)));
        argv.extend(agent_argv());
        argv.extend(["--listen", "127.0.0.1:0", "--log-format", "json"].map(String::from));
        argv.push("--state-dir".into());
        argv.push(dir.join("state").display().to_string());
        if let Some(toml) = &spec.config {
            let path = dir.join("agent.toml");
            std::fs::write(&path, toml).unwrap();
            argv.push("-c".into());
            argv.push(path.display().to_string());
        }
        argv.extend(spec.args.iter().cloned());
        if !spec.app.is_empty() {
            argv.push("--".into());
            argv.extend(spec.app.iter().cloned());
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if spec.stdin_null {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .env("MICROVM_AGENT_LOG", "debug")
            .env_remove("MICROVM_AGENT_CONFIG")
            // Its own process group, so that a test's signal never reaches the test runner.
            .process_group(0);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
        let stderr = Lines::default();
        let stdout = Lines::default();
        stderr.clone().collect(child.stderr.take().unwrap());
        stdout.clone().collect(child.stdout.take().unwrap());
        let mut agent = Agent {
            child,
            port: 0,
            dir,
            stderr,
            stdout,
            status: None,
            pid1: spec.pid1,
        };
        if spec.wait_ready_port {
            let line = agent
                .stderr
                .wait_for("the agent to listen", |l| l.contains("serving hooks"));
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            let listen = v["listen"].as_str().expect("listen field");
            agent.port = listen.rsplit(':').next().unwrap().parse().unwrap();
        }
        agent
    }

    /// The agent's pid as seen from the test (inside `unshare`, the child of `unshare`).
    pub fn pid(&self) -> u32 {
        if !self.pid1 {
            return self.child.id();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(p) = children(self.child.id()).first() {
                return *p;
            }
            assert!(Instant::now() < deadline, "no agent below unshare");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The app's pid from `/status` (as the agent sees it: inside a PID namespace, not ours).
    pub fn app_pid(&self) -> Option<i64> {
        self.status()["app"]["pid"].as_i64()
    }

    pub fn state(&self, name: &str) -> PathBuf {
        self.dir.join("state").join(name)
    }

    /// Waits for the agent to exit (bounded by [`PATIENCE`]).
    pub fn wait(&mut self) -> ExitStatus {
        self.wait_for(PATIENCE)
            .unwrap_or_else(|| panic!("agent did not exit; stderr:\n{}", self.stderr.text()))
    }

    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.status = Some(s);
                self.stderr.drained();
                self.stdout.drained();
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit code (panics if the agent died of a signal).
    pub fn exit_code(&mut self) -> i32 {
        let s = self.wait();
        s.code().unwrap_or_else(|| {
            panic!(
                "agent died of a signal: {s:?}; stderr:\n{}",
                self.stderr.text()
            )
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; no memory of ours is involved.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    pub fn get(&self, path: &str) -> Resp {
        http(self.port, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Resp {
        http(self.port, "POST", path, &[], body)
    }

    pub fn status(&self) -> serde_json::Value {
        let r = self.get("/status");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Polls `/ready` until it answers something other than 503.
    pub fn ready_settled(&self) -> Resp {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self.get("/ready");
            if r.status != 503 || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    proc_table()
        .into_iter()
        .filter(|(_, pp, _)| *pp == pid)
        .map(|(p, _, _)| p)
        .collect()
}

/// (pid, ppid, state) of every process.
pub fn proc_table() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_string()) else {
                continue;
            };
            let mut f = rest.split_whitespace();
            let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
            let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            out.push((p, ppid, state));
        }
    }
    out
}

/// Voluntary context switches of every thread of `pid`.
pub fn voluntary_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| {
                    let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                    s.lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Whether a process is alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Polls `cond` until it holds (bounded by [`PATIENCE`]).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub use crate::ports::{refused_port, reserve_port};

/// All descendants of `pid`, children first, from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let table = proc_table();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp, _) in &table {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.status.is_none() {
            let mut all = descendants(self.child.id());
            all.push(self.child.id());
            for p in all {
                // SAFETY: kill takes plain integers; no memory of ours is involved.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            let _ = self.child.wait();
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a new connection, `Host: localhost:<port>` unless `headers` names a Host.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = connect(port);
    s.write_all(&request_bytes(port, method, path, headers, body, true))
        .unwrap();
    read_response(&mut BufReader::new(s)).expect("a response")
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the agent");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

pub fn request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: localhost:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one response (Content-Length framed, as the agent always sends).
pub fn read_response(r: &mut impl BufRead) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// The file's mode bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// A wrapper (for `Spec::wrapper`) that runs `script`, then the agent as `"$@"`, in a private
/// mount namespace: what the fault and identity tests mount there is theirs alone.
pub fn private_mounts(script: &str) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ]
    .map(String::from)
    .to_vec()
}
