//! `microvm-bench [--quick] [--inproc | --inproc-java]`: microvm-agent side by side with its peers, in one run, on
//! this machine (`--inproc`: only the in-process reseed's section, printed; `--inproc-java`: only its Java part). Full runs write `BENCHMARKS.md` and `bench/results.json`; `--quick` (CI) runs every
//! measurement briefly and writes `bench-quick.json` in the target directory, so the suite never rots. Nothing here
//! judges the numbers: the budget lines in BENCHMARKS.md compare them, with the peer measured in
//! the same run.
//!
//! Peers: the hook server of `microvm-ctl` 0.5.0 (installed into a temporary venv from PyPI), a
//! minimal axum server answering 200 to everything (the floor for an HTTP round trip here; this
//! binary re-executed as `__floor`), and tini (from the distribution) for spawn-and-exit.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PREFIX: &str = "/aws/lambda-microvms/runtime/v1";

struct Opts {
    quick: bool,
}

impl Opts {
    fn n(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (relative to the workspace, as cargo
/// takes it), else the workspace's `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers; no memory of ours is involved.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(argv: &[String], env: &[(&str, String)]) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(
        c.spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}")),
    )
}

fn wait_port(port: u16) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ------------------------------------------------------------------ the client

fn request(method: &str, path: &str, port: u16, body: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{conn}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Reads one response; returns its status.
fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            match len {
                Some(len) => {
                    while buf.len() < end + 4 + len {
                        let n = s.read(&mut chunk).ok()?;
                        if n == 0 {
                            return None;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    return Some(status);
                }
                None => {
                    // Close-delimited: read to the end.
                    while s.read(&mut chunk).ok()? > 0 {}
                    return Some(status);
                }
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a new connection; its status and round-trip time.
fn once(port: u16, method: &str, path: &str, body: &str) -> (Option<u16>, Duration) {
    let t = Instant::now();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (None, t.elapsed());
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(&request(method, path, port, body, true))
        .is_err()
    {
        return (None, t.elapsed());
    }
    let status = read_one(&mut s, &mut Vec::new());
    (status, t.elapsed())
}

#[derive(Default)]
struct Stats {
    samples: Vec<Duration>,
    errors: usize,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.samples.clone();
        v.sort();
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1e6
    }
    fn json(&self) -> Value {
        json!({ "n": self.samples.len(), "errors": self.errors, "p50_us": self.pct(0.5), "p99_us": self.pct(0.99), "max_us": self.pct(1.0) })
    }
}

/// `n` requests, each on a new connection.
fn closed_loop(port: u16, method: &str, path: &str, body: &str, n: usize) -> Stats {
    let mut st = Stats::default();
    for _ in 0..n {
        let (status, took) = once(port, method, path, body);
        match status {
            Some(200..=299) => st.samples.push(took),
            _ => st.errors += 1,
        }
    }
    st
}

/// `n` requests on one keep-alive connection.
fn keep_alive(port: u16, method: &str, path: &str, n: usize) -> Stats {
    let mut st = Stats::default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = request(method, path, port, "", false);
    let mut buf = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        if s.write_all(&req).is_err() {
            st.errors += 1;
            break;
        }
        match read_one(&mut s, &mut buf) {
            Some(200..=299) => st.samples.push(t.elapsed()),
            _ => {
                st.errors += 1;
                break;
            }
        }
    }
    st
}

/// 200 threads polling at once, each `per` requests on new connections.
fn pollers_200(port: u16, path: &str, per: usize) -> Stats {
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || closed_loop(port, "GET", &path, "", per))
        })
        .collect();
    let mut all = Stats::default();
    for t in threads {
        let s = t.join().unwrap();
        all.samples.extend(s.samples);
        all.errors += s.errors;
    }
    all
}

// ------------------------------------------------------------------ the subjects

/// The agent under measurement: the shipped form of this workspace (`scripts/build-static.sh
/// x86_64`, the static musl build), or `MICROVM_AGENT_BIN` (another build, to compare two
/// revisions on the same machine and run).
fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MICROVM_AGENT_BIN") {
        return PathBuf::from(bin);
    }
    let target = "x86_64-unknown-linux-musl";
    let ok = Command::new(root().join("scripts/build-static.sh"))
        .arg("x86_64")
        .current_dir(root())
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "scripts/build-static.sh x86_64 failed");
    target_dir().join(format!("shipped/{target}/release/microvm-agent"))
}

struct Agent {
    proc: Proc,
    port: u16,
    _dir: PathBuf,
}

fn start_agent(bin: &Path, config: &str, app: &[&str]) -> Agent {
    // The state directory on tmpfs, as in the VM (/run there); a disk would add fsync time.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    start_agent_in(&base, bin, config, app)
}

/// An agent whose state directory is on the temporary directory's file system (not `/dev/shm`,
/// often mounted `noexec`, where the in-process reseed's OpenSSL helper is left out).
fn start_agent_on_disk(bin: &Path, config: &str, app: &[&str]) -> Agent {
    start_agent_in(&std::env::temp_dir(), bin, config, app)
}

fn start_agent_in(base: &Path, bin: &Path, config: &str, app: &[&str]) -> Agent {
    let port = free_port();
    let dir = base.join(format!("mva-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.toml"), config).unwrap();
    let mut argv: Vec<String> = vec![
        bin.display().to_string(),
        "-c".into(),
        dir.join("agent.toml").display().to_string(),
    ];
    argv.extend([
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
    ]);
    if !app.is_empty() {
        argv.push("--".into());
        argv.extend(app.iter().map(|s| s.to_string()));
    }
    let proc = spawn(&argv, &[("MICROVM_AGENT_LOG", "error".into())]);
    wait_port(port);
    Agent {
        proc,
        port,
        _dir: dir,
    }
}

/// The microvm-ctl 0.5.0 hook server in a temporary venv; `None` if PyPI is out of reach.
fn start_peer() -> Option<(Proc, u16)> {
    let venv = std::env::temp_dir().join("mva-bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .ok()?
            .success();
        let pip = venv.join("bin/pip");
        if !ok
            || !Command::new(&pip)
                .args(["install", "-q", "microvm-ctl==0.5.0"])
                .status()
                .ok()?
                .success()
        {
            return None;
        }
    }
    let port = free_port();
    let code = format!("from microvm.hooks.server import HookApp\nHookApp().serve(port={port})");
    let proc = spawn(&[python.display().to_string(), "-c".into(), code], &[]);
    wait_port(port);
    Some((proc, port))
}

fn start_floor() -> (Proc, u16) {
    let port = free_port();
    let me = std::env::current_exe().unwrap().display().to_string();
    let proc = spawn(&[me, "__floor".into(), port.to_string()], &[]);
    wait_port(port);
    (proc, port)
}

fn floor(port: u16) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = axum::Router::new().fallback(|| async { "ok" });
        use axum::serve::ListenerExt;
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap()
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        axum::serve(l, app).await.unwrap();
    });
    std::process::exit(0)
}

/// A trivial app that acknowledges every lifecycle callback (`__ack PORT`).
fn ack(port: u16) -> ! {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    for mut s in l.incoming().flatten() {
        let mut buf = Vec::new();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut chunk = [0u8; 2048];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
    std::process::exit(0)
}

/// The in-process reseed's cost (`[app] reseed_in_process`, on by default), side by side with
/// it switched off: `/resume` (a new generation) with 1 and 8 Node.js HTTP servers taking part
/// (each registers twice: its OpenSSL and its runtime), the memory each such process adds, and
/// what the helpers add to a process's start. `None` fields: no `node` here.
fn inproc(bin: &Path, o: &Opts) -> Value {
    let Some(node) = which("node") else {
        return json!("unavailable: no node");
    };
    let mut out = json!({});
    // Two apps: a server that did a start-up's work first (16 MB of short-lived objects, what
    // loading a small framework allocates), as any app that is snapshotted after its warm-up;
    // and a bare server that allocated almost nothing since it started, whose V8 young
    // generation is still at its first size (the first scavenge, which any JavaScript activity
    // triggers, grows it by a megabyte and takes about a millisecond).
    const STARTED: &str =
        "for(let r=0;r<16;r++){const a=[];for(let i=0;i<20000;i++)a.push({i,s:\"x\"+i})}";
    // And servers that draw from `Math.random` every 5 ms (a busy app's steady use), so that
    // every generation finds something to reset in each: the Node helper's worst case, where
    // the others show the common one (a process that drew nothing since the last generation is
    // left asleep).
    const DRAWING: &str = "for(let r=0;r<16;r++){const a=[];for(let i=0;i<20000;i++)a.push({i,s:\"x\"+i})};setInterval(Math.random,5)";
    for (procs, app, suffix) in [
        (1usize, STARTED, ""),
        (8, STARTED, ""),
        (8, "", "_bare"),
        (8, DRAWING, "_drawing"),
    ] {
        // Both agents at once, each with its own Node servers, and their /resume interleaved
        // pair by pair: what the helpers cost is the difference at the same moment, not between
        // two periods of a noisy machine.
        let start = |on: bool| {
            let script = format!(
                "for i in $(seq {procs}); do {node} -e '{app};require(\"http\").createServer().listen(0, \"127.0.0.1\")' & done; wait"
            );
            let cfg = format!("[app]\nreseed_in_process = {on}\n");
            let a = start_agent_on_disk(bin, &cfg, &["sh", "-c", &script]);
            let _ = once(a.port, "POST", &format!("{PREFIX}/run"), "{}");
            a
        };
        let agents = [(true, start(true)), (false, start(false))];
        for (on, a) in &agents {
            // Every process registered (on), or every process running (off).
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let v = status_json(a.port).unwrap_or_default();
                let n = if *on {
                    v["inproc"]["processes"].as_array().map_or(0, Vec::len) as u64
                } else {
                    // (`_total` is new; an older agent listed them all.)
                    v["inproc"]["not_taking_part_total"]
                        .as_u64()
                        .unwrap_or_else(|| {
                            v["inproc"]["not_taking_part"]
                                .as_array()
                                .map_or(0, |l| l.len() as u64)
                        })
                };
                if n >= 2 * procs as u64 || (!on && n > procs as u64) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Node's own start-up (its heap, its modules) settles in both modes before anything
        // is measured: the helpers' share is the difference.
        std::thread::sleep(Duration::from_secs(3));
        let node_mem = |a: &Agent, field: &str| -> Vec<u64> {
            descendants(a.proc.0.id())
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "node")
                })
                .map(|p| status_field(p, field))
                .collect()
        };
        let before: Vec<[Vec<u64>; 2]> = agents
            .iter()
            .map(|(_, a)| [node_mem(a, "VmRSS:"), node_mem(a, "RssAnon:")])
            .collect();
        let mut resume = [Stats::default(), Stats::default()];
        // The memory a generation leaves behind is read after 300 of them; the latency goes on
        // to 2,000 samples a mode: a 99th percentile of 300 is their third largest, which one
        // unlucky moment of the machine decides (measured: the same build's p99 moved by 0.6 ms
        // from run to run at 300).
        let (generations, samples) = (o.n(300, 10), o.n(2000, 10));
        let mut after: Vec<[Vec<u64>; 2]> = Vec::new();
        for round in 0..samples.max(generations) {
            if round == generations {
                after = agents
                    .iter()
                    .map(|(_, a)| [node_mem(a, "VmRSS:"), node_mem(a, "RssAnon:")])
                    .collect();
            }
            for (i, (_, a)) in agents.iter().enumerate() {
                let _ = once(a.port, "POST", &format!("{PREFIX}/suspend"), "");
                let (status, took) = once(a.port, "POST", &format!("{PREFIX}/resume"), "");
                match status {
                    Some(200) => resume[i].samples.push(took),
                    _ => resume[i].errors += 1,
                }
            }
        }
        if after.is_empty() {
            after = agents
                .iter()
                .map(|(_, a)| [node_mem(a, "VmRSS:"), node_mem(a, "RssAnon:")])
                .collect();
        }
        let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len().max(1) as u64;
        for (i, (on, _)) in agents.iter().enumerate() {
            let [rss, anon] = &after[i];
            let key = format!("{}_{procs}_node{suffix}", if *on { "on" } else { "off" });
            out[key] = json!({
                "resume": resume[i].json(),
                "node_rss_kib_mean": mean(rss),
                // What 300 generations left behind in each process (after minus before): all of
                // its resident memory, and its private (anonymous) part alone (the rest is the
                // node binary's and libraries' pages, shared by every Node process).
                "node_rss_kib_growth_mean": mean(rss).saturating_sub(mean(&before[i][0])),
                "node_anon_kib_growth_mean": mean(anon).saturating_sub(mean(&before[i][1])),
            });
        }
        out[format!("resume_p99_above_off_{procs}_node{suffix}_us")] =
            json!(resume[0].pct(0.99) - resume[1].pct(0.99));
        for (_, a) in agents {
            stop_with_app(a);
        }
    }
    // Start-up: `node -e 0` and `python3 -c pass` with the helpers' environment (an agent's,
    // socket listening) and without.
    let a = start_agent_on_disk(bin, "", &["sleep", "100000"]);
    let state = a._dir.join("state");
    let mut inproc_env = helpers_env(&state);
    inproc_env.extend([
        (
            "PYTHONPATH",
            state.join("inproc/python").display().to_string(),
        ),
        (
            "NODE_OPTIONS",
            format!(
                "--require {}",
                state.join("inproc/node/microvm-reseed.js").display()
            ),
        ),
    ]);
    let python = which("python3").unwrap_or_else(|| "python3".into());
    for (name, argv) in [
        ("node", vec![node.as_str(), "-e", "0"]),
        ("python3", vec![python.as_str(), "-c", "pass"]),
    ] {
        let runs = o.n(30, 3);
        out[format!("startup_ms_{name}")] = json!({
            "off": median_start_ms(&argv, &[], runs),
            "on": median_start_ms(&argv, &inproc_env, runs),
        });
    }
    drop(a);
    out["java"] = inproc_java(bin, o);
    out
}

/// The Java agent's cost, side by side with the switch off: a JVM's start (`java -cp . Hello`,
/// with the helpers' environment and without: the native helper adds the agent to the
/// launcher), and `/resume` with 4 JVMs taking part, the two agents' `/resume`s interleaved.
fn inproc_java(bin: &Path, o: &Opts) -> Value {
    let (Some(java), Some(javac)) = (which("java"), which("javac")) else {
        return json!("unavailable: no java or javac");
    };
    let mut out = json!({});
    let classes = std::env::temp_dir().join(format!("mva-bench-java-{}", std::process::id()));
    std::fs::create_dir_all(&classes).unwrap();
    std::fs::write(
        classes.join("Hello.java"),
        "public class Hello { public static void main(String[] a) throws Exception {\n\
         if (a.length > 0) Thread.sleep(Long.MAX_VALUE); } }\n",
    )
    .unwrap();
    let built = Command::new(&javac)
        .arg("-d")
        .arg(&classes)
        .arg(classes.join("Hello.java"))
        .status();
    if !built.is_ok_and(|s| s.success()) {
        return json!("unavailable: javac failed");
    }
    let cp = classes.display().to_string();
    let servers = 4;
    let start = |on: bool| {
        let script = format!(
            "for i in $(seq {servers}); do {java} -Xshare:auto -cp {cp} Hello wait & done; wait"
        );
        let cfg = format!("[app]\nreseed_in_process = {on}\n");
        let a = start_agent_on_disk(bin, &cfg, &["sh", "-c", &script]);
        let _ = once(a.port, "POST", &format!("{PREFIX}/run"), "{}");
        a
    };
    let agents = [(true, start(true)), (false, start(false))];
    // Every JVM registered (on), or running (off).
    for (on, a) in &agents {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let v = status_json(a.port).unwrap_or_default();
            let n = if *on {
                v["inproc"]["processes"].as_array().map_or(0, Vec::len)
            } else {
                v["inproc"]["not_taking_part_total"].as_u64().unwrap_or(0) as usize
            };
            if n >= servers {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Measured as a clone finds its JVMs: past the Java helper's warm-up (it starts 3 s after the
    // JVM and runs 6,000 rounds, a millisecond or more apart), which the snapshot of a running
    // app has behind it. During it, the first generations pay for the JIT (BENCHMARKS.md).
    std::thread::sleep(Duration::from_secs(if o.quick { 1 } else { 15 }));
    let mut resume = [Stats::default(), Stats::default()];
    for _ in 0..o.n(2000, 10) {
        for (i, (_, a)) in agents.iter().enumerate() {
            let _ = once(a.port, "POST", &format!("{PREFIX}/suspend"), "");
            let (status, took) = once(a.port, "POST", &format!("{PREFIX}/resume"), "");
            match status {
                Some(200) => resume[i].samples.push(took),
                _ => resume[i].errors += 1,
            }
        }
    }
    let members = status_json(agents[0].1.port).unwrap_or_default()["inproc"]["processes"]
        .as_array()
        .map_or(0, Vec::len);
    out[format!("on_{servers}_java")] = json!({ "resume": resume[0].json(), "members": members });
    out[format!("off_{servers}_java")] = json!({ "resume": resume[1].json() });
    out[format!("resume_p99_above_off_{servers}_java_us")] =
        json!(resume[0].pct(0.99) - resume[1].pct(0.99));
    for (_, a) in agents {
        stop_with_app(a);
    }
    // A JVM's start, with the helpers' environment (an agent's, socket listening) and without.
    let a = start_agent_on_disk(bin, "", &["sleep", "100000"]);
    let state = a._dir.join("state");
    let env = helpers_env(&state);
    let runs = o.n(30, 3);
    let argv = [java.as_str(), "-cp", &cp, "Hello"];
    // Alternating, so that a noisy moment of the machine falls on both.
    let (mut off, mut on) = (vec![], vec![]);
    for _ in 0..3 {
        off.push(median_start_ms(&argv, &[], runs));
        on.push(median_start_ms(&argv, &env, runs));
    }
    out["startup_ms_java"] = json!({ "off": off, "on": on });
    drop(a);
    let _ = std::fs::remove_dir_all(&classes);
    out
}

/// The environment the agent gives its app's processes for the native helper (the state
/// directory's socket and library), as a process started beside the app would have it.
fn helpers_env(state: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "MICROVM_AGENT_INPROC",
            state.join("inproc.sock").display().to_string(),
        ),
        (
            "LD_PRELOAD",
            state
                .join("inproc/libmicrovm-reseed.so")
                .display()
                .to_string(),
        ),
    ]
}

/// The median wall time (ms) of `runs` starts of `argv` to its exit, with `env` added.
fn median_start_ms(argv: &[&str], env: &[(&str, String)], runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let _ = Command::new(argv[0])
                .args(&argv[1..])
                .envs(env.iter().map(|(k, v)| (*k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

/// Stops an agent and its app. The app is `sh` with its servers in the background: killing the
/// agent leaves them running, and the next configuration would be measured beside them.
fn stop_with_app(a: Agent) {
    let app = descendants(a.proc.0.id());
    drop(a);
    for p in app {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
}

fn which(name: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// Every descendant of `pid` (through `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(pp) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
        {
            parent_of.push((p, pp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(q) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == q {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

fn status_json(port: u16) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(&request("GET", "/status", port, "", true))
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    serde_json::from_slice(&raw[end + 4..]).ok()
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field).map(|v| {
                v.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

fn switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| status_field_path(&t.path().join("status"), "voluntary_ctxt_switches:"))
                .sum()
        })
        .unwrap_or(0)
}

fn status_field_path(p: &Path, field: &str) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Whole-process time of `argv` over `n` runs: (p50, mean) in microseconds.
fn spawn_time(argv: &[&str], n: usize) -> Option<(f64, f64)> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !s.success() {
            return None;
        }
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[v.len() / 2], v.iter().sum::<f64>() / v.len() as f64))
}

// ------------------------------------------------------------------ the bare routine

/// Each step of the agent's last routine (from `/status`), added to its samples.
fn record_steps(port: u16, steps: &mut std::collections::BTreeMap<String, Vec<f64>>) {
    if let Some(v) = status_json(port) {
        for st in v["last_routine"]["steps"].as_array().into_iter().flatten() {
            steps
                .entry(st["step"].as_str().unwrap_or("?").to_string())
                .or_default()
                .push(st["us"].as_f64().unwrap_or(0.0));
        }
    }
}

/// The routine with nothing configured and no app (`/resume` after `/suspend`, `n` pairs, one
/// plain client, a new connection each) and the peer's empty `/run`, interleaved request by
/// request with the same client: a noisy neighbour then slows both alike, and the ratio is the
/// routine's own cost against a hook server that does nothing. The routine's step timings come
/// from `/status` after every pair (p50 and p99 per step).
fn bare_routine(bin: &Path, o: &Opts) -> Value {
    let n = o.n(600, 60);
    let a = start_agent(bin, "", &[]);
    let _ = once(a.port, "POST", &format!("{PREFIX}/run"), "{}");
    let peer = start_peer();
    let body = "{\"microvmId\":\"bench\",\"runHookPayload\":\"x\"}";
    let mut resume = Stats::default();
    let mut peer_run = Stats::default();
    let mut steps: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..n {
        let _ = once(a.port, "POST", &format!("{PREFIX}/suspend"), "");
        let (status, took) = once(a.port, "POST", &format!("{PREFIX}/resume"), "");
        match status {
            Some(200) => resume.samples.push(took),
            _ => resume.errors += 1,
        }
        if let Some((_, port)) = &peer {
            match once(*port, "POST", &format!("{PREFIX}/run"), body) {
                (Some(200..=299), took) => peer_run.samples.push(took),
                _ => peer_run.errors += 1,
            }
        }
        record_steps(a.port, &mut steps);
    }
    drop(a);
    let steps: serde_json::Map<String, Value> = steps
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
            (
                k,
                json!({ "p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0) }),
            )
        })
        .collect();
    let mut out = json!({ "agent_resume": resume.json(), "steps": steps });
    if peer.is_some() {
        out["ratio_agent_p99_to_peer_p50"] = json!(resume.pct(0.99) / peer_run.pct(0.5));
        out["peer_run"] = peer_run.json();
    }
    out
}

// ------------------------------------------------------------------ the run

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__floor") => floor(args[2].parse().unwrap()),
        Some("__ack") => ack(args[2].parse().unwrap()),
        _ => {}
    }
    let o = Opts {
        quick: args.iter().any(|a| a == "--quick"),
    };
    if args.iter().any(|a| a == "--routine") {
        // Only the bare routine against the peer's empty /run, printed (nothing written).
        let v = bare_routine(&agent_bin(), &o);
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return;
    }
    if args.iter().any(|a| a == "--inproc-java") {
        // Only the Java agent's part of it.
        let v = inproc_java(&agent_bin(), &o);
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return;
    }
    if args.iter().any(|a| a == "--inproc") {
        // Only the in-process reseed's section, printed (nothing written).
        let v = inproc(&agent_bin(), &o);
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return;
    }
    let mut r = serde_json::Map::new();
    let bin = agent_bin();
    let me = std::env::current_exe().unwrap().display().to_string();
    eprintln!(
        "microvm-bench{}: agent {}",
        if o.quick { " --quick" } else { "" },
        bin.display()
    );

    // Hook latency, empty configuration.
    let lat_n = o.n(5000, 200);
    let a = start_agent(&bin, "", &["sleep", "100000"]);
    let _ = once(a.port, "POST", &format!("{PREFIX}/run"), "");
    let (floor_proc, floor_port) = start_floor();
    r.insert(
        "floor_get".into(),
        closed_loop(floor_port, "GET", "/", "", lat_n).json(),
    );
    r.insert(
        "floor_keepalive".into(),
        keep_alive(floor_port, "GET", "/", lat_n).json(),
    );
    drop(floor_proc);
    r.insert(
        "agent_ready".into(),
        closed_loop(a.port, "GET", &format!("{PREFIX}/ready"), "", lat_n).json(),
    );
    r.insert(
        "agent_resume_empty".into(),
        closed_loop(a.port, "POST", &format!("{PREFIX}/resume"), "", lat_n).json(),
    );
    r.insert(
        "agent_keepalive".into(),
        keep_alive(a.port, "GET", &format!("{PREFIX}/ready"), lat_n).json(),
    );
    // Memory and idle cost of the agent supervising an app, readiness passed.
    let pid = a.proc.0.id();
    r.insert(
        "agent_idle_rss_kib".into(),
        json!(status_field(pid, "VmRSS:")),
    );
    let idle = Duration::from_secs(if o.quick { 3 } else { 30 });
    let before = switches(pid);
    std::thread::sleep(idle);
    r.insert(
        "agent_idle_switches".into(),
        json!({ "seconds": idle.as_secs(), "voluntary": switches(pid) - before }),
    );
    // 200 concurrent /ready pollers.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let per = o.n(25, 3);
    let mut pollers = pollers_200(a.port, &format!("{PREFIX}/ready"), per).json();
    pollers["peak_rss_kib"] = json!(status_field(pid, "VmHWM:"));
    r.insert("agent_200_pollers".into(), pollers);
    // The same load on the floor: what 200 client threads on this machine cost by themselves.
    let (floor_proc, floor_port) = start_floor();
    r.insert(
        "floor_200_pollers".into(),
        pollers_200(floor_port, "/", per).json(),
    );
    drop(floor_proc);
    drop(a);

    // The full routine on /resume: kernel reseed, two secrets, an HTTP notify acknowledged by an app.
    let ack_port = free_port();
    let cfg = format!(
        "[ready]\ntcp = \"127.0.0.1:{ack_port}\"\n[notify]\nhttp = \"http://127.0.0.1:{ack_port}/__lifecycle\"\n[[secret]]\nname = \"a\"\nbytes = 32\n[[secret]]\nname = \"b\"\nbytes = 32\nencoding = \"base64\"\n"
    );
    let a = start_agent(&bin, &cfg, &[&me, "__ack", &ack_port.to_string()]);
    wait_port(ack_port);
    while once(a.port, "GET", "/ready", "").0 != Some(200) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = once(
        a.port,
        "POST",
        &format!("{PREFIX}/run"),
        "{\"microvmId\":\"bench\"}",
    );
    let mut routine = Stats::default();
    let mut steps: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for i in 0..o.n(2000, 100) {
        let _ = once(a.port, "POST", &format!("{PREFIX}/suspend"), "");
        let (status, took) = once(a.port, "POST", &format!("{PREFIX}/resume"), "");
        match status {
            Some(200) => routine.samples.push(took),
            _ => routine.errors += 1,
        }
        if i % 10 == 0 {
            // Where the time goes: the routine's own step timings, from /status.
            record_steps(a.port, &mut steps);
        }
    }
    let mut routine = routine.json();
    let medians: serde_json::Map<String, Value> = steps
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            (k, json!(v[v.len() / 2]))
        })
        .collect();
    routine["steps_p50_us"] = Value::Object(medians);
    r.insert("agent_resume_routine".into(), routine);
    drop(a);

    r.insert("inproc".into(), inproc(&bin, &o));

    // Readiness: from the app's port accepting to /ready 200 (probe interval 10 ms).
    let mut noticed = Vec::new();
    for _ in 0..o.n(10, 2) {
        let p = free_port();
        let a = start_agent(
            &bin,
            &format!("[ready]\ntcp = \"127.0.0.1:{p}\"\ninterval = \"10ms\"\n"),
            &["sleep", "100000"],
        );
        std::thread::sleep(Duration::from_millis(100));
        let listener = TcpListener::bind(("127.0.0.1", p)).unwrap();
        let t = Instant::now();
        while once(a.port, "GET", "/ready", "").0 != Some(200) {}
        noticed.push(t.elapsed().as_secs_f64() * 1e3);
        drop(listener);
    }
    noticed.sort_by(|a, b| a.total_cmp(b));
    r.insert("readiness_ms".into(), json!({ "interval_ms": 10, "median": noticed[noticed.len() / 2], "max": noticed[noticed.len() - 1] }));

    // Start-up: exec to the hook port accepting.
    let mut startup = Vec::new();
    for _ in 0..o.n(30, 5) {
        let port = free_port();
        let t = Instant::now();
        let p = spawn(
            &[
                bin.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--state-dir".into(),
                "/tmp/mva-bench-startup".into(),
            ],
            &[],
        );
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_micros(100));
        }
        startup.push(t.elapsed().as_secs_f64() * 1e3);
        drop(p);
    }
    startup.sort_by(|a, b| a.total_cmp(b));
    r.insert(
        "agent_startup_ms".into(),
        json!({ "median": startup[startup.len() / 2] }),
    );

    // Spawn overhead: `X true` against `tini true` and bare `true`.
    let n = o.n(300, 20);
    let agent_true = [
        bin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        "/tmp/mva-bench-true",
        "--",
        "true",
    ];
    let mut spawn = json!({ "runs": n });
    if let Some((p50, mean)) = spawn_time(&["true"], n) {
        spawn["true"] = json!({ "p50_us": p50, "mean_us": mean });
    }
    if let Some((p50, mean)) = spawn_time(&agent_true, n) {
        spawn["agent"] = json!({ "p50_us": p50, "mean_us": mean });
    }
    if let Some((p50, mean)) = spawn_time(&["tini", "-s", "--", "true"], n) {
        spawn["tini"] = json!({ "p50_us": p50, "mean_us": mean });
    }
    r.insert("spawn".into(), spawn);

    // The peer's hook server.
    match start_peer() {
        Some((proc, port)) => {
            let body = "{\"microvmId\":\"bench\",\"runHookPayload\":\"x\"}";
            r.insert(
                "peer_run".into(),
                closed_loop(port, "POST", &format!("{PREFIX}/run"), body, lat_n).json(),
            );
            r.insert(
                "peer_ready".into(),
                closed_loop(port, "GET", &format!("{PREFIX}/ready"), "", lat_n).json(),
            );
            r.insert(
                "peer_keepalive".into(),
                keep_alive(port, "GET", &format!("{PREFIX}/ready"), o.n(200, 20)).json(),
            );
            r.insert(
                "peer_idle_rss_kib".into(),
                json!(status_field(proc.0.id(), "VmRSS:")),
            );
        }
        None => {
            r.insert(
                "peer".into(),
                json!("unavailable: microvm-ctl could not be installed from PyPI"),
            );
        }
    }

    // Sizes of the shipped static binaries.
    if !o.quick {
        let _ = Command::new(root().join("scripts/dist.sh")).status();
    }
    let mut sizes = json!({});
    for arch in ["x86_64", "aarch64"] {
        if let Ok(m) = std::fs::metadata(root().join(format!("dist/microvm-agent-{arch}"))) {
            sizes[arch] = json!(m.len());
        }
    }
    r.insert("size_bytes".into(), sizes);

    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "date": String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ").output().map(|o| o.stdout).unwrap_or_default()).trim(),
    });
    r.insert("machine".into(), machine);
    let results = Value::Object(r);
    let text = serde_json::to_string_pretty(&results).unwrap();
    let out = if o.quick {
        target_dir().join("bench-quick.json")
    } else {
        root().join("bench/results.json")
    };
    std::fs::write(&out, &text).unwrap();
    println!("{text}");
    eprintln!("written: {}", out.display());
}
