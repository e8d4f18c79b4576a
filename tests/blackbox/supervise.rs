//! Black-box tests of the supervisor against docs/supervision.md: the real binary, the fixture app,
//! both as a plain process and as PID 1 of a fresh PID namespace.

use mva_test_support::agent as common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Says loudly that a check does not apply under an emulator, and why.
fn skip_under_emulation(why: &str) -> bool {
    if emulated() {
        eprintln!("*** skipped under emulation: {why} ***");
    }
    emulated()
}

fn both(mut f: impl FnMut(bool)) {
    f(false);
    f(true);
}

fn spec(pid1: bool) -> Spec {
    let s = Spec::default();
    if pid1 {
        s.pid1()
    } else {
        s
    }
}

/// Runs the agent to completion without the harness's port wait (for exit-code sweeps).
fn run_to_exit(pid1: bool, app: &[&str]) -> std::process::Output {
    let mut argv: Vec<String> = vec![];
    if pid1 {
        argv.extend(PID1.map(String::from));
    }
    argv.extend(agent_argv());
    argv.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            "/tmp/mva-run-to-exit",
            "--",
        ]
        .map(String::from),
    );
    argv.extend(app.iter().map(|s| s.to_string()));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent hung running {app:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.wait_with_output().unwrap()
}

// ---------------------------------------------------------------- starting

#[test]
fn options_stop_at_the_first_non_option_and_output_is_the_apps() {
    both(|pid1| {
        let out = run_to_exit(
            pid1,
            &[
                "sh",
                "-c",
                "printf '%s|' \"$@\"",
                "sh",
                "-x",
                "--listen",
                "--",
            ],
        );
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "-x|--listen|--|",
            "the app's stdout is exactly the app's"
        );
    });
}

#[test]
fn not_found_is_127_and_not_executable_is_126_with_a_message() {
    both(|pid1| {
        let out = run_to_exit(pid1, &["no-such-program-xyz"]);
        assert_eq!(out.status.code(), Some(127));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no-such-program-xyz") && err.contains("No such file"),
            "{err}"
        );
        let tmp = TempDir::new("noexec");
        let file = tmp.join("not-executable");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let out = run_to_exit(pid1, &[file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(126));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not-executable") && err.contains("Permission denied"),
            "{err}"
        );
    });
}

#[test]
fn the_app_starts_with_a_clean_signal_state() {
    if skip_under_emulation("qemu-user's own host signal mask leaks into the programs it execs") {
        return;
    }
    both(|pid1| {
        // The agent's own parent ignores HUP and PIPE; the agent blocks everything. Neither leaks.
        let mut a = spec(pid1)
            .wrapper(&["sh", "-c", "trap '' HUP PIPE; exec \"$@\"", "sh"])
            .app(&["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
            .start();
        assert_eq!(a.exit_code(), 0);
        let out = a.stdout.text();
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
    });
}

#[test]
fn an_app_that_exits_at_once_never_hangs_the_agent_1000_times() {
    let started = Instant::now();
    for i in 0..1000 {
        let out = run_to_exit(i % 2 == 1, &["true"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("1000 x `microvm-agent true` took {:?}", started.elapsed());
}

#[test]
fn term_right_after_launch_is_never_lost_or_a_hang_1000_times() {
    let mut by_signal = 0;
    for i in 0..1000 {
        let mut child = agent_command()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                "/tmp/mva-term-early",
                "--",
                "sleep",
                "100",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if i % 3 == 1 {
            std::thread::sleep(Duration::from_micros(500));
        }
        // SAFETY: kill takes plain integers; no memory of ours is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("run {i}: the agent hung after an early SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(143), _) => {}
            // TERM before `main` blocked signals (the Rust runtime's start-up): the default action.
            (None, Some(libc::SIGTERM)) => by_signal += 1,
            other => panic!("run {i}: unexpected status {other:?}"),
        }
    }
    eprintln!("{by_signal} of 1000 early TERMs arrived before main() and took the default action");
}

// ---------------------------------------------------------------- exit codes

#[test]
fn every_exit_code_is_passed_through() {
    let fixture = fixture_str();
    both(|pid1| {
        for n in 0..=255 {
            let out = run_to_exit(pid1, &[&fixture, "exit", &n.to_string()]);
            assert_eq!(out.status.code(), Some(n), "pid1={pid1}");
        }
    });
}

#[test]
fn death_by_signal_is_128_plus_the_signal() {
    let fixture = fixture_str();
    both(|pid1| {
        for (sig, code) in [
            (libc::SIGTERM, 143),
            (libc::SIGKILL, 137),
            (libc::SIGSEGV, 139),
            (libc::SIGABRT, 134),
            (libc::SIGINT, 130),
        ] {
            let out = run_to_exit(pid1, &[&fixture, "kill", &sig.to_string()]);
            assert_eq!(out.status.code(), Some(code), "signal {sig}, pid1={pid1}");
        }
    });
}

#[test]
fn the_exit_code_is_the_main_apps_even_with_coalesced_sigchld_200_times() {
    let fixture = fixture_str();
    for i in 0..200 {
        let out = run_to_exit(i % 2 == 0, &[&fixture, "exit-with-child"]);
        assert_eq!(
            out.status.code(),
            Some(5),
            "run {i}: the child's 3 must not win"
        );
    }
}

// ---------------------------------------------------------------- signals

const FORWARDED: [(i32, &str); 19] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGINT, "SIGINT"),
];

#[test]
fn every_catchable_signal_reaches_the_app_once_in_order() {
    both(|pid1| {
        let log = TempDir::new("sig");
        let file = log.join("signals");
        let f = file.to_str().unwrap();
        let mut a = spec(pid1).fixture(&["signals", f]).start();
        let read = || std::fs::read_to_string(&file).unwrap_or_default();
        eventually("the app to start", || read().starts_with("ready"));
        let mut expected = vec!["ready".to_string()];
        for (sig, name) in FORWARDED {
            if emulated()
                && [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL].contains(&sig)
            {
                continue; // qemu-user takes the fault signals for its own guest
            }
            a.signal(sig);
            expected.push(name.to_string());
            eventually(&format!("{name} to arrive"), || {
                read().lines().count() == expected.len()
            });
        }
        // SIGTERM last: the app records it and exits 0, and so does the agent.
        a.signal(libc::SIGTERM);
        expected.push("SIGTERM".into());
        assert_eq!(a.exit_code(), 0, "{}", a.stderr.text());
        let got: Vec<String> = read().lines().map(str::to_string).collect();
        assert_eq!(got, expected, "pid1={pid1}");
    });
}

#[test]
fn as_pid1_sigterm_kills_a_default_app_with_143() {
    let mut a = Spec::default().pid1().app(&["sleep", "1000"]).start();
    a.get("/ready");
    a.signal(libc::SIGTERM);
    assert_eq!(a.exit_code(), 143);
}

#[test]
fn an_app_that_traps_term_gets_its_time_and_its_exit_code() {
    both(|pid1| {
        let mut a = spec(pid1).fixture(&["trap-term", "2000", "7"]).start();
        a.stdout.wait_for("the app to trap SIGTERM", |l| {
            l.contains("trapping SIGTERM")
        });
        let t = Instant::now();
        a.signal(libc::SIGTERM);
        assert_eq!(a.exit_code(), 7);
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "the app was not killed early ({:?})",
            t.elapsed()
        );
    });
}

#[test]
fn forwarding_to_an_app_that_already_died_is_harmless() {
    let tmp = TempDir::new("dead");
    let pids = tmp.join("pids");
    // The orphan must stay ours to drain: as PID 1 when the emulator cannot make us a subreaper.
    let mut a = spec(emulated())
        .config("[app]\nstop_timeout = \"2s\"\n")
        .fixture(&[
            "leave-children",
            "1",
            "0",
            pids.to_str().unwrap(),
            "ignore-term",
        ])
        .start();
    // The app exits at once; its child ignores TERM, so the agent drains for 2 s.
    eventually("the app to exit", || a.status()["app"]["pid"].is_null());
    for sig in [libc::SIGUSR1, libc::SIGHUP, libc::SIGWINCH] {
        a.signal(sig);
    }
    assert_eq!(a.exit_code(), 0);
}

// ---------------------------------------------------------------- zombies and orphans

#[test]
fn a_hundred_orphans_are_reaped() {
    both(|pid1| {
        let f = fixture_str();
        let a = spec(pid1)
            .app(&["sh", "-c", &format!("{f} orphans 100; exec sleep 1000")])
            .start();
        let agent = a.pid();
        eventually("all orphans reaped and only `sleep` left", || {
            let procs = proc_table();
            let tree = descendants(agent);
            let zombies = procs
                .iter()
                .filter(|(p, _, s)| tree.contains(p) && *s == 'Z')
                .count();
            zombies == 0
                && tree.len() == 1
                && std::fs::read_to_string(format!("/proc/{}/comm", tree[0]))
                    .unwrap_or_default()
                    .trim()
                    == "sleep"
        });
    });
}

#[test]
fn descendants_left_by_the_main_app_get_term_then_kill_and_the_main_code_wins() {
    both(|pid1| {
        for ignore in [false, true] {
            let tmp = TempDir::new("leave");
            let pids = tmp.join("pids");
            let mut args = vec!["leave-children", "3", "3", pids.to_str().unwrap()];
            if ignore {
                args.push("ignore-term");
            }
            let mut a = spec(pid1)
                .config("[app]\nstop_timeout = \"300ms\"\n")
                .fixture(&args)
                .start();
            assert_eq!(a.exit_code(), 3, "pid1={pid1} ignore={ignore}");
            let left: Vec<u32> = std::fs::read_to_string(&pids)
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            assert_eq!(left.len(), 3);
            if !pid1 && !emulated() {
                // Without a namespace the pids are ours to check: every one of them is gone.
                // (Under qemu-user there is no PR_SET_CHILD_SUBREAPER: orphans go to init.)
                for p in left {
                    assert!(!alive(p), "child {p} outlived the agent (ignore={ignore})");
                }
            }
        }
    });
}

// ---------------------------------------------------------------- stopping

/// The ignore-term fixture says so once SIGTERM is ignored; before that a TERM would kill it.
fn wait_ignoring(a: &Agent) {
    a.stdout.wait_for("the app to ignore SIGTERM", |l| {
        l.contains("ignoring SIGTERM")
    });
}

#[test]
fn stop_escalates_to_sigkill_after_stop_timeout() {
    both(|pid1| {
        let mut a = spec(pid1)
            .config("[app]\nstop_timeout = \"300ms\"\n")
            .fixture(&["ignore-term"])
            .start();
        wait_ignoring(&a);
        a.get("/ready");
        a.signal(libc::SIGTERM);
        assert_eq!(a.exit_code(), 137);
        assert!(a.stderr.text().contains("killing what is left"));
    });
}

#[test]
fn terminate_answers_inside_its_budget_and_the_stop_finishes() {
    both(|pid1| {
        // An app that dies at once: /terminate reports it stopped, with its code.
        let mut a = spec(pid1).app(&["sleep", "1000"]).start();
        let r = a.post("/terminate", b"");
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["outcome"], "stopped", "{v}");
        assert_eq!(v["exit_code"], 143);
        assert_eq!(a.exit_code(), 143);

        // An app that ignores TERM: /terminate answers before its 1 s budget, the kill follows.
        let mut a = spec(pid1)
            .config("[app]\nstop_timeout = \"3s\"\n")
            .fixture(&["ignore-term"])
            .start();
        wait_ignoring(&a);
        let t = Instant::now();
        let r = a.post("/terminate", b"");
        let took = t.elapsed();
        assert_eq!(
            (r.status, r.json()["outcome"].as_str().unwrap()),
            (200, "stopping")
        );
        // Before the stop it reports ended (the kill at 3 s): causal, not a margin.
        assert!(
            took < Duration::from_secs(3),
            "answered after {took:?}: it waited for the stop"
        );
        // Repeated: idempotent, still 200 and inside the budget, reporting the stop's progress.
        assert_eq!(a.post("/terminate", b"").status, 200);
        assert_eq!(a.exit_code(), 137);
    });
}

#[test]
fn the_agent_does_not_sit_out_the_grace_period() {
    let mut a = Spec::default()
        .config("[app]\nstop_timeout = \"60s\"\n")
        .app(&["sleep", "1000"])
        .start();
    a.get("/ready");
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert_eq!(a.exit_code(), 143);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "waited {:?} of a 60 s grace period",
        t.elapsed()
    );
}

#[test]
fn a_second_stop_request_does_not_restart_the_timer() {
    let mut a = Spec::default()
        .config("[app]\nstop_timeout = \"3s\"\n")
        .fixture(&["ignore-term"])
        .start();
    wait_ignoring(&a);
    a.get("/ready");
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    a.signal(libc::SIGTERM);
    assert_eq!(a.exit_code(), 137);
    // Killed at ~3 s; a restarted timer would have killed at ~5 s.
    assert!(
        t.elapsed() < Duration::from_millis(4500),
        "killed after {:?}",
        t.elapsed()
    );
}

#[test]
fn stopping_during_restart_backoff_completes_at_once() {
    let mut a = Spec::default()
        .config("[app]\nrestart = \"always\"\nmax_restarts = 100\n")
        .fixture(&["exit", "4"])
        .start();
    // After 6 quick failures the next backoff is 3.2 s.
    eventually("six restarts", || {
        a.status()["app"]["restarts"].as_u64().unwrap_or(0) >= 6
    });
    eventually("the backoff", || a.status()["app"]["phase"] == "backoff");
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert_eq!(a.exit_code(), 4, "the last exit code of the app");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "stop waited out the backoff: {:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------- restarting

fn starts(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn on_failure_restarts_until_max_restarts_then_exits_non_zero() {
    let tmp = TempDir::new("onfail");
    let log = tmp.join("starts");
    let mut a = Spec::default()
        .config("[app]\nrestart = \"on-failure\"\nmax_restarts = 3\n")
        .fixture(&["write-exit", log.to_str().unwrap(), "9"])
        .start();
    assert_eq!(a.exit_code(), 9);
    assert_eq!(starts(&log), 4, "the first run and three restarts");
    let logs = a.stderr.text();
    assert_eq!(
        a.stderr.count(|l| l.contains("the app will be restarted")),
        3,
        "{logs}"
    );
    let line = a.stderr.wait_for("a restart line", |l| {
        l.contains("the app will be restarted")
    });
    for field in [
        "\"reason\":\"exited\"",
        "\"exit\":\"exit code 9\"",
        "\"attempt\":1",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(logs.contains("giving up"));

    // Exit 0 is success: no restart.
    let log0 = tmp.join("starts0");
    let mut a = Spec::default()
        .config("[app]\nrestart = \"on-failure\"\n")
        .fixture(&["write-exit", log0.to_str().unwrap(), "0"])
        .start();
    assert_eq!(a.exit_code(), 0);
    assert_eq!(starts(&log0), 1);
}

#[test]
fn always_restarts_even_on_success_but_not_after_a_requested_stop() {
    let tmp = TempDir::new("always");
    let log = tmp.join("starts");
    let mut a = Spec::default()
        .config("[app]\nrestart = \"always\"\nmax_restarts = 2\n")
        .fixture(&["write-exit", log.to_str().unwrap(), "0"])
        .start();
    assert_ne!(
        a.exit_code(),
        0,
        "giving up is a failure even when every run exited 0"
    );
    assert_eq!(starts(&log), 3);

    let mut a = Spec::default()
        .config("[app]\nrestart = \"always\"\n")
        .app(&["sleep", "1000"])
        .start();
    a.get("/ready");
    let first = a.app_pid();
    a.signal(libc::SIGTERM);
    assert_eq!(
        a.exit_code(),
        143,
        "a stop the agent requested is not restarted"
    );
    assert!(first.is_some());
}

#[test]
fn a_run_that_stayed_up_resets_the_failure_count() {
    let tmp = TempDir::new("reset");
    let log = tmp.join("starts");
    let script = format!("echo started >> {}; sleep 0.3; exit 1", log.display());
    let mut a = Spec::default()
        .config("[app]\nrestart = \"on-failure\"\nmax_restarts = 1\nreset_after = \"100ms\"\n")
        .app(&["sh", "-c", &script])
        .start();
    eventually("more restarts than max_restarts", || starts(&log) >= 4);
    a.signal(libc::SIGTERM);
    a.wait();
}

#[test]
fn after_a_restart_signals_and_readiness_follow_the_new_app() {
    let tmp = TempDir::new("restart-sig");
    let (_held, port) = reserve_port();
    let file = tmp.join("signals");
    let f = fixture_str();
    // First instance: serve HTTP (ready), then die; the next one records signals.
    let script = format!(
        "if [ -e {m} ]; then exec {f} signals {s}; else touch {m}; {f} serve {port} 0 /dev/null & sleep 0.5; kill $!; exit 1; fi",
        m = tmp.join("marker").display(),
        s = file.display()
    );
    let cfg = format!("[app]\nrestart = \"on-failure\"\n[ready]\ntcp = \"127.0.0.1:{port}\"\n");
    let a = Spec::default()
        .config(&cfg)
        .app(&["sh", "-c", &script])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let first = a.app_pid();
    eventually("a restart", || {
        a.status()["app"]["restarts"] == 1 && a.app_pid().is_some()
    });
    assert_ne!(a.app_pid(), first);
    // The second instance never listens: readiness went back to 503.
    assert_eq!(a.get("/ready").status, 503);
    eventually("the new app", || std::fs::read_to_string(&file).is_ok());
    a.signal(libc::SIGUSR1);
    eventually("USR1 at the new app", || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("SIGUSR1")
    });
}

// ---------------------------------------------------------------- readiness

/// Polls `/ready` until it answers something other than `status`.
fn ready_until_not(a: &Agent, status: u16) -> Resp {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = a.get("/ready");
        if r.status != status || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn http_readiness_503_then_200_then_500_when_the_app_dies() {
    both(|pid1| {
        let tmp = TempDir::new("ready-http");
        let (_held, port) = reserve_port();
        let cfg = format!("[ready]\nhttp = \"http://127.0.0.1:{port}/healthz\"\n");
        let reqs = tmp.join("requests");
        let mut a = spec(pid1)
            .config(&cfg)
            .fixture(&["serve", &port.to_string(), "400", reqs.to_str().unwrap()])
            .start();
        let r = a.get("/ready");
        assert_eq!(r.status, 503, "not ready before the app listens");
        assert_eq!(r.json()["outcome"], "not-ready");
        assert_eq!(a.ready_settled().status, 200);
        assert_eq!(a.status()["health"], "up");
        assert!(std::fs::read_to_string(&reqs)
            .unwrap()
            .contains("GET /healthz"));
        // The app dies for good: /ready says 500 at once (the build fails fast), then the agent exits.
        let app = descendants(a.pid())[0];
        // SAFETY: kill takes plain integers; no memory of ours is involved.
        unsafe { libc::kill(app as i32, libc::SIGKILL) };
        let r = ready_until_not(&a, 200);
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(a.exit_code(), 137);
    });
}

#[test]
fn ready_answers_500_once_the_app_has_failed_for_good() {
    both(|pid1| {
        let (_held, port) = reserve_port();
        let cfg = format!("[ready]\ntcp = \"127.0.0.1:{port}\"\n");
        let script = format!(
            "{} serve {port} 0 /dev/null & sleep 0.6; exit 3",
            fixture_str()
        );
        let mut a = spec(pid1).config(&cfg).app(&["sh", "-c", &script]).start();
        assert_eq!(a.ready_settled().status, 200);
        let r = ready_until_not(&a, 200);
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.json()["last_exit"], "exit code 3", "{}", r.text());
        assert_eq!(
            a.exit_code(),
            3,
            "having said so, the agent exits with the app's code"
        );
    });
}

#[test]
fn a_probe_that_sees_404_is_not_healthy() {
    let tmp = TempDir::new("ready-404");
    let (_held, port) = reserve_port();
    let cfg = format!("[ready]\nhttp = \"http://127.0.0.1:{port}/missing\"\n");
    let a = Spec::default()
        .config(&cfg)
        .fixture(&[
            "serve",
            &port.to_string(),
            "0",
            tmp.join("r").to_str().unwrap(),
        ])
        .start();
    eventually("the probe to reach the app", || {
        std::fs::read_to_string(tmp.join("r"))
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
    });
    assert_eq!(a.get("/ready").status, 503);
    assert!(a.status()["app"]["last_probe"]
        .as_str()
        .unwrap()
        .contains("404"));
}

#[test]
fn tcp_and_exec_probes() {
    let (_held, port) = reserve_port();
    let a = Spec::default()
        .config(&format!("[ready]\ntcp = \"127.0.0.1:{port}\"\n"))
        .fixture(&["serve", &port.to_string(), "300", "/dev/null"])
        .start();
    assert_eq!(a.get("/ready").status, 503);
    assert_eq!(a.ready_settled().status, 200);

    let tmp = TempDir::new("exec-probe");
    let flag = tmp.join("up");
    let cfg = format!(
        "[ready]\nexec = [\"test\", \"-e\", \"{}\"]\ninterval = \"20ms\"\n",
        flag.display()
    );
    let a = Spec::default().config(&cfg).app(&["sleep", "1000"]).start();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.get("/ready").status, 503);
    assert!(a.status()["app"]["last_probe"]
        .as_str()
        .unwrap()
        .contains("exit code 1"));
    std::fs::write(&flag, "").unwrap();
    assert_eq!(a.ready_settled().status, 200);
    // The probe helpers were reaped: only the app is left below the agent.
    eventually("probe helpers reaped", || descendants(a.pid()).len() == 1);
}

#[test]
fn without_a_probe_a_running_app_is_ready() {
    let a = Spec::default().app(&["sleep", "1000"]).start();
    assert_eq!(a.ready_settled().status, 200);
    let st = a.status();
    assert_eq!(st["app"]["phase"], "running");
    assert!(st["app"]["pid"].as_i64().unwrap() > 0);
    assert_eq!(st["app"]["restarts"], 0);
    assert_eq!(st["mode"], "supervisor");
}

#[test]
fn the_last_probe_result_is_logged_every_few_seconds_not_every_try() {
    // A port that stays closed for the whole test (a free one was once taken by another test's
    // listener under emulation, and the app looked ready).
    let (_closed, port) = refused_port();
    let a = Spec::default()
        .config(&format!("[ready]\ntcp = \"127.0.0.1:{port}\"\n"))
        .app(&["sleep", "1000"])
        .start();
    let line = a.stderr.wait_for("a waiting line", |l| {
        l.contains("waiting for the app to be ready")
    });
    assert!(line.contains("cannot connect"), "{line}");
    assert_eq!(
        a.stderr
            .count(|l| l.contains("waiting for the app to be ready")),
        1,
        "not on every try"
    );
}

// ---------------------------------------------------------------- warm-up

#[test]
fn validate_runs_the_warm_up_requests_through_the_app() {
    let tmp = TempDir::new("warm");
    let (_held, port) = reserve_port();
    let reqs = tmp.join("requests");
    let cfg = format!(
        r#"
[ready]
tcp = "127.0.0.1:{port}"
[validate]
repeat = 3
[[validate.request]]
method = "POST"
url = "http://127.0.0.1:{port}/execute"
body = '{{"code": "print(1)"}}'
headers = {{ "content-type" = "application/json" }}
expect_status = 200
expect_body_contains = "ok"
[[validate.request]]
url = "http://127.0.0.1:{port}/warm"
"#
    );
    let a = Spec::default()
        .config(&cfg)
        .fixture(&["serve", &port.to_string(), "0", reqs.to_str().unwrap()])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let r = a.post("/validate", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["warmup_requests"], 6);
    let seen = std::fs::read_to_string(&reqs).unwrap();
    assert_eq!(
        seen.lines()
            .filter(|l| l.starts_with("POST /execute")
                && l.contains("application/json")
                && l.ends_with(r#"{"code": "print(1)"}"#))
            .count(),
        3,
        "{seen}"
    );
    assert_eq!(
        seen.lines().filter(|l| l.starts_with("GET /warm")).count(),
        3,
        "{seen}"
    );
    // Polled again: the same answer, without sending the requests again.
    assert_eq!(a.post("/validate", b"").status, 200);
    assert_eq!(
        std::fs::read_to_string(&reqs)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("GET /warm"))
            .count(),
        3
    );
}

#[test]
fn a_failing_warm_up_request_is_named_and_a_slow_one_answers_503_first() {
    let (_held, port) = reserve_port();
    let cfg = format!("[ready]\ntcp = \"127.0.0.1:{port}\"\n[[validate.request]]\nurl = \"http://127.0.0.1:{port}/fail\"\n");
    let a = Spec::default()
        .config(&cfg)
        .fixture(&["serve", &port.to_string(), "0", "/dev/null"])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let r = a.post("/validate", b"");
    assert_eq!(r.status, 500);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("validate.request[0]") && err.contains("/fail") && err.contains("500"),
        "{err}"
    );

    let cfg = format!("[ready]\ntcp = \"127.0.0.1:{port}\"\n[hooks]\nvalidate_timeout = \"1s\"\n[[validate.request]]\nurl = \"http://127.0.0.1:{port}/slow\"\n");
    let port2 = port;
    drop(a);
    let a = Spec::default()
        .config(&cfg)
        .fixture(&["serve", &port2.to_string(), "0", "/dev/null"])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let r = a.post("/validate", b"");
    assert_eq!(
        (r.status, r.json()["outcome"].as_str().unwrap()),
        (503, "warming-up"),
        "{}",
        r.text()
    );
    eventually("the slow warm-up to pass", || {
        a.post("/validate", b"").status == 200
    });
}

// ---------------------------------------------------------------- users, idle

#[test]
fn the_app_runs_as_another_user_with_home_and_groups() {
    let mut a = Spec::default()
        .config("[app]\nuser = \"nobody\"\nworkdir = \"/tmp\"\n")
        .fixture_for_others(&["whoami"])
        .start();
    assert_eq!(a.exit_code(), 0);
    let out = a.stdout.text();
    assert!(out.contains("Uid:\t65534\t65534\t65534\t65534"), "{out}");
    assert!(out.contains("Gid:\t65534\t65534\t65534\t65534"), "{out}");
    assert!(out.contains("USER=nobody"), "{out}");
    assert!(out.contains("HOME=/nonexistent"), "{out}");
    assert!(out.contains("cwd=/tmp"), "{out}");
    assert!(out.contains("MICROVM_AGENT_STATE_DIR=/"), "{out}");
    let groups = out.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        !groups.split_whitespace().any(|g| g == "0"),
        "root's groups were dropped: {groups}"
    );

    let mut a = Spec::default()
        .config("[app]\nuser = \"1234:4321\"\n")
        .fixture_for_others(&["whoami"])
        .start();
    assert_eq!(a.exit_code(), 0);
    assert!(
        a.stdout.text().contains("Uid:\t1234\t1234"),
        "{}",
        a.stdout.text()
    );
    assert!(a.stdout.text().contains("Gid:\t4321\t4321"));

    let mut a = Spec::default()
        .config("[app]\nuser = \"no-such-user-xyz\"\n")
        .app(&["true"])
        .no_wait()
        .start();
    assert_eq!(a.exit_code(), 64);
    assert!(a.stderr.text().contains("app.user"), "{}", a.stderr.text());
}

#[test]
fn the_idle_agent_does_not_wake_up_with_an_app_running() {
    both(|pid1| {
        let (_held, port) = reserve_port();
        let a = spec(pid1)
            .config(&format!("[ready]\nhttp = \"http://127.0.0.1:{port}/\"\n"))
            .fixture(&["serve", &port.to_string(), "100", "/dev/null"])
            .start();
        assert_eq!(a.ready_settled().status, 200);
        std::thread::sleep(Duration::from_millis(200));
        let pid = a.pid();
        let before = voluntary_switches(pid);
        std::thread::sleep(Duration::from_secs(3));
        let woke = voluntary_switches(pid) - before;
        assert!(
            woke <= 3,
            "pid1={pid1}: the idle agent woke up {woke} times in 3 s"
        );
    });
}

// ---------------------------------------------------------------- resources

#[test]
fn memory_stays_flat_over_ten_thousand_reaps_and_a_thousand_restarts() {
    if skip_under_emulation("the emulator's translation cache grows the process's RSS") {
        return;
    }
    // 10,000 orphans: each a grandchild of the app, re-parented to the agent and reaped by it.
    let tmp = TempDir::new("rss");
    let f = fixture_str();
    let flag = tmp.join("go");
    let script = format!("while [ ! -e {g} ]; do sleep 0.01; done; {f} orphans 5000; {f} orphans 5000; exec sleep 1000", g = flag.display());
    let a = Spec::default().app(&["sh", "-c", &script]).start();
    a.get("/ready");
    let pid = a.pid();
    // Warm the allocator with a first small batch of work before the baseline.
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(pid);
    std::fs::write(&flag, "").unwrap();
    eventually("10,000 orphans reaped", || {
        let tree = descendants(pid);
        tree.len() == 1
            && std::fs::read_to_string(format!("/proc/{}/comm", tree[0]))
                .unwrap_or_default()
                .trim()
                == "sleep"
    });
    let after_reaps = rss_kib(pid);
    eprintln!("RSS: {before} KiB before, {after_reaps} KiB after 10,000 reaps");
    assert!(
        after_reaps <= before + 256,
        "RSS grew from {before} to {after_reaps} KiB over 10,000 reaps"
    );
    drop(a);

    // 1,000 restarts, as fast as the supervisor allows.
    let cfg = "[app]\nrestart = \"always\"\nmax_restarts = 100000\nrestart_delay = \"0ms\"\nreset_after = \"0s\"\n";
    let a = Spec::default().config(cfg).app(&["true"]).start();
    let pid = a.pid();
    eventually("50 restarts", || {
        a.status()["app"]["restarts"].as_u64().unwrap_or(0) >= 50
    });
    let before = rss_kib(pid);
    eventually("1,050 restarts", || {
        a.status()["app"]["restarts"].as_u64().unwrap_or(0) >= 1050
    });
    let after = rss_kib(pid);
    eprintln!("RSS: {before} KiB after 50 restarts, {after} KiB after 1,050");
    assert!(
        after <= before + 256,
        "RSS grew from {before} to {after} KiB over 1,000 restarts"
    );
}
