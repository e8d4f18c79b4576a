//! Hardening: abuse of the hook port and injected faults. Every hook must still be answered inside
//! its budget with an outcome that says what happened, and nothing may be left half-written.

use mva_test_support::agent as common;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

// ------------------------------------------------------------------ the listener

#[test]
fn ten_thousand_idle_connections_do_not_lock_the_platform_out() {
    heavy_tier();
    raise_own_fd_limit();
    let a = Spec::default().app(&["sleep", "1000"]).start();
    a.get("/ready");
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(a.pid());
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        match TcpStream::connect(("127.0.0.1", a.port)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect {} failed: {e}", idle.len()),
        }
    }
    // During the flood, the platform's calls get through, and the work of each finished inside
    // its budget (the agent answers "timeout" or "busy" when it does not): counted, not timed.
    let r = a.post("/run", br#"{"microvmId":"vm-flood"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "ok", "{}", r.text());
    let answered = (0..20)
        .filter(|_| a.get("/ready").json()["outcome"] == "ready")
        .count();
    assert_eq!(answered, 20, "platform polls answered during the flood");
    let during = rss_kib(a.pid());
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.get("/ready").status, 200);
    let after = rss_kib(a.pid());
    eprintln!(
        "RSS: {before} KiB before, {during} KiB with 10,000 connections open, {after} KiB after"
    );
    // Bounded by the connection table, not by the flood (512 live connections at the most).
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} to {during} KiB"
    );
    assert!(
        after < before + 8 * 1024,
        "RSS stayed at {after} KiB (from {before})"
    );
}

#[test]
fn a_client_sending_headers_a_byte_at_a_time_is_cut_off() {
    heavy_tier();
    let a = Spec::default().start();
    let mut s = connect(a.port);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A byte every 500 ms: the 10 s header deadline lets about 20 in. Counted, not timed.
    let mut closed = false;
    let mut accepted = 0;
    for b in b"GET /ready HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        accepted += 1;
        std::thread::sleep(Duration::from_millis(500));
        if accepted >= 30 {
            break;
        }
    }
    if !closed {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        closed = out.is_empty() || String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408");
    }
    assert!(
        closed,
        "the slow client was never cut off ({accepted} bytes accepted)"
    );
    assert!(accepted < 30, "cut off only after {accepted} bytes");
    assert_eq!(a.get("/ready").status, 200, "the listener still serves");
}

#[test]
fn oversized_headers_invalid_paths_pipelining_and_half_closed_sockets() {
    heavy_tier();
    let a = Spec::default().start();
    // Oversized headers: refused, and the listener goes on.
    let big = "x".repeat(64 * 1024);
    let mut s = connect(a.port);
    let _ = s.write_all(
        format!("GET /ready HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(
        out.is_empty() || text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert_eq!(a.get("/ready").status, 200);

    // A path that is not UTF-8.
    let mut s = connect(a.port);
    s.write_all(b"POST /\xff\xfe/run HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s));
    assert!(
        r.as_ref()
            .is_none_or(|r| r.status == 400 || r.status == 404),
        "{r:?}"
    );
    assert!(!a.state("run-payload").exists());

    // Three pipelined requests in one write: three answers, in order.
    let s = connect(a.port);
    let mut w = s.try_clone().unwrap();
    let mut req = request_bytes(a.port, "GET", "/ready", &[], b"", false);
    req.extend(request_bytes(a.port, "GET", "/status", &[], b"", false));
    req.extend(request_bytes(a.port, "POST", "/nope", &[], b"", true));
    w.write_all(&req).unwrap();
    let mut r = BufReader::new(s);
    let statuses: Vec<u16> = (0..3)
        .map(|_| read_response(&mut r).expect("an answer").status)
        .collect();
    assert_eq!(statuses, [200, 200, 404]);

    // Half-closed: the request is complete, the client stops writing; the answer still comes.
    let mut s = connect(a.port);
    s.write_all(&request_bytes(a.port, "GET", "/ready", &[], b"", false))
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let r = read_response(&mut BufReader::new(s)).expect("answered after a half-close");
    assert_eq!(r.status, 200);
}

// ------------------------------------------------------------------ faults

/// An agent whose state directory is a fresh tmpfs in its own mount namespace, mounted with
/// `options` (e.g. `ro`, `size=16k`), after running `prep` in it.
fn in_mount_ns(options: &str, prep: &str) -> Spec {
    let script = format!("set -e; d=\"$1\"; shift; mkdir -p \"$d\"; mount -t tmpfs -o size=64k,mode=0755 tmpfs \"$d\"; {prep}; mount -o remount,{options} \"$d\"; exec \"$@\"");
    let mut w = private_mounts(&script);
    w.push("__STATE__".into());
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    Spec::default().wrapper(&w)
}

#[test]
fn a_read_only_state_directory_fails_run_clearly_and_writes_nothing() {
    heavy_tier();
    let a = in_mount_ns("ro", "true").start();
    let r = a.post("/run", br#"{"runHookPayload":"x"}"#);
    assert_eq!(r.status, 500, "{}", r.text());
    // The failure itself, not "timeout": it was found and answered inside the budget.
    assert_eq!(r.json()["outcome"], "state-dir-error");
    assert!(
        r.json()["error"].as_str().unwrap().contains("Read-only"),
        "{}",
        r.text()
    );
    assert_eq!(
        a.status()["hooks"]["run"]["last_outcome"],
        "state-dir-error"
    );
    assert!(
        a.stderr
            .text()
            .contains("cannot prepare the state directory")
            || a.stderr.text().contains("cannot write the run payload")
    );
}

#[test]
fn a_full_state_directory_fails_the_routine_and_leaves_no_half_written_file() {
    heavy_tier();
    let cfg = "[[secret]]\nname = \"big\"\nbytes = 65536\n";
    let a = in_mount_ns(
        "rw,size=64k",
        "dd if=/dev/zero of=\"$d/filler\" bs=1k count=40 2>/dev/null",
    )
    .config(cfg)
    .start();
    let r = a.post("/run", b"");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["outcome"], "secret-failed");
    assert!(
        r.json()["error"].as_str().unwrap().contains("big"),
        "{}",
        r.text()
    );
    let st = a.status();
    assert!(st["last_routine"]["error"]
        .as_str()
        .unwrap()
        .contains("big"));
    assert!(st["generation"].is_null(), "nothing published");
}

#[test]
fn an_unwritable_dev_urandom_is_reported_as_a_failed_reseed() {
    heavy_tier();
    // No CAP_SYS_ADMIN and /dev/urandom read-only: the kernel step fails, and says so. (That the
    // agent's own generator still diverges per clone is entropy::tests::per_clone_input_*.)
    let script = "set -e; mount -t tmpfs tmpfs /mnt; echo x > /mnt/ro; mount --bind -o ro /mnt/ro /dev/urandom; exec \"$@\"";
    let mut wrapper = private_mounts(script);
    wrapper.extend(
        [
            "setpriv",
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            "--",
        ]
        .map(String::from),
    );
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let cfg = "[[secret]]\nname = \"k\"\nbytes = 16\n";
    let a = Spec::default().wrapper(&wrapper).config(cfg).start();
    let r = a.post("/run", br#"{"microvmId":"vm-1"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.state("generation")).unwrap()).unwrap();
    assert_eq!(
        g["kernel_reseed"], "failed",
        "never claims a reseed that did not happen"
    );
    assert!(a.status()["last_routine"]["kernel_note"]
        .as_str()
        .unwrap()
        .contains("/dev/urandom"));
}

#[test]
fn stopped_for_seconds_in_a_restart_backoff_then_continued_every_hook_still_answers() {
    heavy_tier();
    let cfg = "[app]\nrestart = \"always\"\nmax_restarts = 100\nrestart_delay = \"2s\"\n";
    let a = Spec::default().config(cfg).fixture(&["exit", "1"]).start();
    eventually("the backoff", || a.status()["app"]["phase"] == "backoff");
    // As a suspend would: the whole agent frozen for a while, then continued.
    a.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    a.signal(libc::SIGCONT);
    // Each hook's work finished inside its budget (else "timeout" or "busy"): counted.
    for (hook, outcome) in [
        ("/run", "ok"),
        ("/suspend", "suspended"),
        ("/resume", "resumed"),
    ] {
        let r = a.post(hook, b"");
        assert_eq!(r.status, 200, "{hook}: {}", r.text());
        assert_eq!(r.json()["outcome"], outcome, "{hook}: {}", r.text());
    }
    // The backoff did not stall: the app is restarted again.
    let restarts = a.status()["app"]["restarts"].as_u64().unwrap();
    eventually("another restart after the freeze", || {
        a.status()["app"]["restarts"].as_u64().unwrap() > restarts
    });
}

#[test]
fn secret_names_cannot_escape_the_state_directory() {
    heavy_tier();
    for name in ["../escape", "a/b", "..", ".hidden", "/abs"] {
        let dir = TempDir::new("escape");
        let path = dir.join("c.toml");
        std::fs::write(&path, format!("[[secret]]\nname = {name:?}\nbytes = 8\n")).unwrap();
        let out = agent_command()
            .args(["--check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{name}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("secret[0].name"),
            "{name}"
        );
    }
}

#[test]
fn a_state_directory_that_cannot_be_created_fails_run_clearly() {
    heavy_tier();
    // The state directory's parent is a file: it cannot be created at start, and /run says why.
    let dir = TempDir::new("nostate");
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, "a file, not a directory").unwrap();
    let state = blocker.join("state");
    let a = Spec::default()
        .arg("--state-dir")
        .arg(state.to_str().unwrap())
        .start();
    assert!(
        a.stderr
            .text()
            .contains("cannot prepare the state directory"),
        "{}",
        a.stderr.text()
    );
    let r = a.post("/run", b"x");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["outcome"], "state-dir-error");
    assert_eq!(a.get("/ready").status, 200, "the other hooks still answer");
}
