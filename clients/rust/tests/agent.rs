//! The Rust client library against the real agent of this workspace: a new generation and its
//! acknowledgement, a callback that returns an error, one that panics and one that never returns,
//! suspend and terminate. The app is `examples/app.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug")
}

struct Agent {
    child: Child,
    port: u16,
    out: PathBuf,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: the agent stops the app first.
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

impl Agent {
    /// `None` when the agent or the example app is not built (then the test says it skipped,
    /// and fails under MICROVM_AGENT_REQUIRE_VM, as CI runs it).
    fn start(mode: &str) -> Option<Agent> {
        let (bin, app) = (
            target().join("microvm-agent"),
            target().join("examples/app"),
        );
        if !bin.exists() || !app.exists() {
            assert!(
                std::env::var_os("MICROVM_AGENT_REQUIRE_VM").is_none(),
                "not built: {bin:?} {app:?}"
            );
            eprintln!("SKIPPED: build the agent and this crate's example first");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("mva-rust-client-{mode}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(dir.join("agent.toml"), "[hooks]\nrun_timeout = \"2s\"\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "text",
            ])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("-c")
            .arg(dir.join("agent.toml"))
            .arg("--")
            .arg(&app)
            .env("MVA_RUST_TEST_APP", mode)
            .env("MVA_RUST_TEST_OUT", &out)
            .env("MICROVM_AGENT_LOG", "warn")
            .env_remove("MICROVM_AGENT_INPROC")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let a = Agent {
            child,
            port,
            out,
            dir,
        };
        a.wait_for("the app to start", || !a.read("started").is_empty());
        a.wait_for("the library to register", || {
            a.status().contains("\"kind\":\"app\"")
        });
        Some(a)
    }

    fn status(&self) -> String {
        TcpStream::connect(("127.0.0.1", self.port))
            .map(|_| http(self.port, "GET", "/status").1)
            .unwrap_or_default()
    }

    fn read(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.out.join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn wait_for(&self, why: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "waited for {why}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_new_generation_runs_the_callbacks_in_order_before_the_hook_answers() {
    let Some(a) = Agent::start("ok") else { return };
    assert!(a.read("generations").is_empty(), "nothing at start");
    let (status, body) = http(a.port, "POST", "/run");
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.read("order"), ["first", "second"]);
    let gens = a.read("generations");
    assert_eq!(gens.len(), 1);
    assert!(
        gens[0].starts_with("1_") && gens[0].ends_with("_true"),
        "{gens:?}"
    );
    assert!(a
        .status()
        .contains(&gens[0].split('_').nth(1).unwrap().to_string()));
    assert_eq!(http(a.port, "POST", "/suspend").0, 200);
    assert_eq!(a.read("events"), ["suspend_1"]);
    assert_eq!(http(a.port, "POST", "/resume").0, 200);
    let draws = a.read("draws");
    assert!(draws.len() == 2 && draws[0] != draws[1], "{draws:?}");
    // The agent's deadline came with each line: inside the hook's budget, not yet past.
    let budgets = a.read("budgets");
    assert_eq!(budgets.len(), 2, "{budgets:?}");
    for ms in &budgets {
        let ms: u64 = ms.parse().unwrap();
        assert!(ms > 0 && ms <= 2000, "{budgets:?}");
    }
    assert_eq!(http(a.port, "POST", "/terminate").0, 200);
    a.wait_for("the terminate callback", || {
        a.read("events").contains(&"terminate_2".to_string())
    });
}

#[test]
fn a_callback_that_fails_fails_run_and_only_reports_on_resume() {
    for (mode, want) in [
        ("error", "the app's callback broke"),
        ("panic", "panic: the app's callback panicked"),
    ] {
        let Some(a) = Agent::start(mode) else { return };
        let (status, body) = http(a.port, "POST", "/run");
        assert!(
            status == 500 && body.contains(want),
            "{mode}: {status} {body}"
        );
        assert_eq!(http(a.port, "POST", "/resume").0, 200, "{mode}");
    }
}

#[test]
fn a_callback_that_never_returns_fails_run_inside_its_budget() {
    let Some(a) = Agent::start("hang") else {
        return;
    };
    let t = Instant::now();
    let (status, body) = http(a.port, "POST", "/run");
    assert!(
        status == 500 && body.contains("did not acknowledge"),
        "{status} {body}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered inside run_timeout (2 s)"
    );
}
