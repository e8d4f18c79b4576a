//! The hook contract as measured on the live service (docs/platform.md, the lines marked
//! "measured"): the builder's headers on the build hooks, which hooks may fail, the monotonic clock
//! across a freeze, the TLS probe, and the platform's environment. Real binary, real sockets.

use mva_test_support::agent as common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

/// The image builder's calls (measured: S4 Q20).
const BUILDER: [(&str, &str); 3] = [
    (
        "Host",
        "3f1c2a9e-5b7d-4c1a-9e2f-0a1b2c3d4e5f.lambda-microvm.us-east-1.on.aws",
    ),
    ("user-agent", "smithy-java/1.6.0"),
    ("x-amzn-requestid", "7d9a8c1e-0000-4000-8000-123456789abc"),
];
/// A stranger through the public endpoint.
const PUBLIC: [(&str, &str); 3] = [
    (
        "Host",
        "3f1c2a9e-5b7d-4c1a-9e2f-0a1b2c3d4e5f.lambda-microvm.us-east-1.on.aws",
    ),
    ("user-agent", "curl/8.5.0"),
    ("x-amzn-requestid", "11111111-2222-4333-8444-555555555555"),
];

fn generation(a: &Agent) -> u64 {
    std::fs::read(a.state("generation"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_builders_validate_is_answered_as_a_local_one_acts_before_run_and_is_409_after() {
    let local = Spec::default().start();
    let builder = Spec::default().start();
    let l = local.post("/validate", b"");
    let b = http(builder.port, "POST", "/validate", &BUILDER, b"");
    assert_eq!(b.status, l.status, "{}", b.text());
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(b.json()["outcome"], l.json()["outcome"]);
    assert_eq!(generation(&builder), 1, "the builder's /validate acted");
    assert_eq!(generation(&local), 1);
    // Polled again (GET too), it answers the same without acting again.
    let again = http(
        builder.port,
        "GET",
        "/aws/lambda-microvms/runtime/v1/validate",
        &BUILDER,
        b"",
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(generation(&builder), 1);

    assert_eq!(builder.post("/run", b"").status, 200);
    for headers in [&BUILDER, &PUBLIC] {
        let r = http(builder.port, "POST", "/validate", headers, b"");
        assert_eq!(
            r.status,
            409,
            "after /run, /validate cannot act: {}",
            r.text()
        );
    }
    assert_eq!(generation(&builder), 2, "only /run made a generation since");
    // The runtime hooks stay closed to forwarded calls, builder-looking or not.
    let r = http(builder.port, "POST", "/suspend", &BUILDER, b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(builder.status()["state"], "running");
}

/// An app that exits for good while a build polls `/ready`: the agent lingers answering 500
/// until the *platform* has heard it. A stranger's `/ready` gets the 500 too, but must not end
/// the linger, or the platform's next poll finds nothing listening.
#[test]
fn a_strangers_ready_does_not_use_up_the_build_failure_linger() {
    let mut a = Spec::default()
        // Never ready (nothing listens there); the app exits after 800 ms and is not restarted.
        .config("[app]\nmax_restarts = 0\n[ready]\ntcp = \"127.0.0.1:1\"\n")
        .fixture(&["sleep", "800"])
        .start();
    assert_eq!(a.get("/ready").status, 503, "the build is polling");
    eventually("the app to fail for good", || {
        a.status()["health"] == "failed"
    });
    let r = http(a.port, "GET", "/ready", &PUBLIC, b"");
    assert_eq!(r.status, 500, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        a.wait_for(Duration::from_millis(1)).is_none(),
        "the agent left after a stranger's /ready: the platform would see connection refused"
    );
    let r = a.get("/ready");
    assert_eq!(
        r.status,
        500,
        "the platform's own poll is answered: {}",
        r.text()
    );
    let t = Instant::now();
    let code = a.wait_for(Duration::from_secs(5));
    assert!(
        code.is_some(),
        "told the platform: the linger ends (within {:?})",
        t.elapsed()
    );
}

#[test]
fn the_builders_ready_ends_the_linger_as_a_local_poll_does() {
    let mut a = Spec::default()
        .config("[app]\nmax_restarts = 0\n[ready]\ntcp = \"127.0.0.1:1\"\n")
        .fixture(&["sleep", "500"])
        .start();
    assert_eq!(
        http(a.port, "GET", "/ready", &BUILDER, b"").status,
        503,
        "the builder's poll counts as the platform polling"
    );
    eventually("the app to fail for good", || {
        a.status()["health"] == "failed"
    });
    assert_eq!(http(a.port, "POST", "/ready", &BUILDER, b"").status, 500);
    assert!(
        a.wait_for(Duration::from_secs(5)).is_some(),
        "the builder has been told: the agent exits without sitting out the linger"
    );
}

/// An agent supervising the clone-app fixture whose lifecycle callback fails in `mode`, with
/// `extra` configuration; `/run` has answered 200.
fn with_callback(mode: &str, extra: &str) -> Agent {
    let (_held, port) = reserve_port();
    let dir = TempDir::new("cb");
    let log = dir.join("lifecycle.log").display().to_string();
    let cfg = format!(
        "[ready]\ntcp = \"127.0.0.1:{port}\"\n[notify]\nhttp = \"http://127.0.0.1:{port}/__lifecycle\"\n{extra}"
    );
    let a = Spec::default()
        .config(&cfg)
        .fixture(&["clone-app", &port.to_string(), &log, mode])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let r = a.post("/run", br#"{"microvmId":"vm-1"}"#);
    assert_eq!(
        r.status,
        200,
        "the callback acknowledges /run: {}",
        r.text()
    );
    std::mem::forget(dir);
    a
}

/// Posts `hook` and checks it answered 200 `degraded` inside its 1 s budget, with the failure
/// in the answer, in `/status` and in an ERROR log line.
fn assert_degraded(a: &Agent, hook: &str, failure: &str) -> serde_json::Value {
    let t = Instant::now();
    let r = a.post(&format!("/{hook}"), b"");
    let took = t.elapsed();
    assert!(
        took < ANSWERED_IN_BUDGET,
        "/{hook} took {took:?}, past its budget"
    );
    assert_eq!(r.status, 200, "/{hook}: {}", r.text());
    let v = r.json();
    assert_eq!(v["outcome"], "degraded", "{v}");
    assert_eq!(v["failure"], failure, "{v}");
    let error = v["error"].as_str().unwrap_or_default().to_string();
    assert!(!error.is_empty(), "{v}");
    let st = &a.status()["hooks"][hook];
    assert_eq!(st["last_outcome"], "degraded", "{st}");
    assert_eq!(st["last_error"], error.as_str(), "{st}");
    assert!(st["degraded"].as_u64().unwrap() >= 1, "{st}");
    a.stderr.wait_for("an ERROR line for the hook", |l| {
        l.contains("\"level\":\"ERROR\"") && l.contains(&format!("\"hook\":\"{hook}\""))
    });
    v
}

#[test]
fn a_callback_that_fails_or_hangs_leaves_suspend_and_resume_answering_200_degraded() {
    for mode in ["fail-after-run", "hang-after-run"] {
        let a = with_callback(mode, "");
        let v = assert_degraded(&a, "suspend", "not-acknowledged");
        assert!(v["error"].as_str().unwrap().contains("acknowledge"), "{v}");
        let v = assert_degraded(&a, "resume", "not-acknowledged");
        assert_eq!(
            v["generation"], 2,
            "the generation was made all the same: {v}"
        );
        assert_eq!(a.status()["state"], "running");
        // /terminate always answers 200.
        let r = a.post("/terminate", b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["outcome"], "degraded", "{}", r.text());
    }
}

#[test]
fn a_hook_named_in_fail_on_answers_its_failure() {
    let a = with_callback(
        "fail-after-run",
        "[hooks]\nfail_on = [\"run\", \"validate\", \"resume\"]\n",
    );
    assert_degraded(&a, "suspend", "not-acknowledged");
    let r = a.post("/resume", b"");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["outcome"], "not-acknowledged");
}

#[test]
fn on_timeout_continue_still_waives_a_missing_ack_for_hooks_in_fail_on() {
    let (_held, port) = reserve_port();
    let dir = TempDir::new("cb");
    let log = dir.join("lifecycle.log").display().to_string();
    let cfg = format!(
        "[ready]\ntcp = \"127.0.0.1:{port}\"\n[notify]\nhttp = \"http://127.0.0.1:{port}/__lifecycle\"\non_timeout = \"continue\"\n"
    );
    let a = Spec::default()
        .config(&cfg)
        .fixture(&["clone-app", &port.to_string(), &log, "fail"])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let r = a.post("/run", b"");
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (200, "ok".into()),
        "{}",
        r.text()
    );
    // Not in fail_on: reported whatever on_timeout says.
    assert_degraded(&a, "suspend", "not-acknowledged");
}

#[test]
fn a_scrub_on_a_read_only_state_directory_is_reported_and_suspend_answers_200() {
    let script = "set -e; d=\"$1\"; shift; mkdir -p \"$d\"; mount -t tmpfs -o size=64k,mode=0755 tmpfs \"$d\"; exec \"$@\"";
    let mut w = private_mounts(script);
    w.push("__STATE__".into());
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let cfg = "[[secret]]\nname = \"session-key\"\nbytes = 16\nscrub_on_suspend = true\n";
    let a = Spec::default().wrapper(&w).config(cfg).start();
    assert_eq!(a.post("/run", b"").status, 200);
    let state = a.dir.join("state");
    let ro = std::process::Command::new("nsenter")
        .args([
            "-t",
            &a.pid().to_string(),
            "-m",
            "mount",
            "-o",
            "remount,ro",
        ])
        .arg(&state)
        .status()
        .unwrap();
    assert!(ro.success(), "remount read-only");
    let v = assert_degraded(&a, "suspend", "scrub-failed");
    assert_eq!(
        v["not_scrubbed"],
        serde_json::json!(["session-key", "(seed)"]),
        "the secret and the app's seed stay on disk: {v}"
    );
    assert!(v["error"].as_str().unwrap().contains("Read-only"), "{v}");
    assert_eq!(a.status()["state"], "suspended");
}

#[test]
fn fail_on_names_are_checked() {
    for (value, key) in [
        ("[\"run\", \"nap\"]", "hooks.fail_on[1]"),
        ("[\"terminate\"]", "hooks.fail_on[0]"),
        ("[\"ready\"]", "hooks.fail_on[0]"),
        ("\"run\"", "hooks.fail_on"),
    ] {
        let dir = TempDir::new("failon");
        let path = dir.join("c.toml");
        std::fs::write(&path, format!("[hooks]\nfail_on = {value}\n")).unwrap();
        let out = agent_command()
            .args(["--check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{value}: {err}");
        assert!(err.contains(key), "{value}: {err}");
    }
    let out = agent_command().arg("--check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fail_on = [\"run\", \"validate\"]"), "{text}");
}

/// Sends SIGSTOP (or SIGCONT) to the agent and everything below it, as the simulator's freeze
/// does: the monotonic clock runs on meanwhile, exactly as on the platform (measured).
fn freeze(a: &Agent, sig: i32) {
    let mut all = vec![a.pid()];
    all.extend(descendants(a.pid()));
    for p in all {
        // SAFETY: kill takes plain integers; no memory of ours is involved.
        unsafe { libc::kill(p as i32, sig) };
    }
}

#[test]
fn a_stop_grace_pending_at_a_freeze_is_not_used_up_by_it() {
    // The app needs 1.5 s of running time after TERM; the grace is 3 s. Frozen for 5 s in the
    // middle, a grace that counted the frozen time would SIGKILL it at the thaw (137).
    let mut a = Spec::default()
        .config("[app]\nstop_timeout = \"3s\"\n")
        .fixture(&["trap-term-awake", "1500", "7"])
        .start();
    a.stdout
        .wait_for("the app to trap TERM", |l| l.contains("trapping"));
    assert_eq!(a.post("/terminate", b"").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    freeze(&a, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    freeze(&a, libc::SIGCONT);
    assert_eq!(a.exit_code(), 7, "{}", a.stderr.text());
    assert!(
        a.stderr.text().contains("armed again"),
        "{}",
        a.stderr.text()
    );
}

#[test]
fn a_restart_backoff_and_a_readiness_probe_pending_at_a_freeze_do_not_burst_after_it() {
    // Backoff: the app fails at once; the first restart waits 1.5 s.
    let backoff = Spec::default()
        .config("[app]\nrestart = \"on-failure\"\nmax_restarts = 50\nrestart_delay = \"1500ms\"\n")
        .fixture(&["exit", "3"])
        .start();
    // Readiness: never passes (nothing listens), probed every 10 ms, a log line every 5 s.
    let probing = Spec::default()
        .config("[ready]\ntcp = \"127.0.0.1:1\"\ninterval = \"10ms\"\n")
        .fixture(&["forever"])
        .start();
    eventually("the first backoff", || {
        backoff.status()["app"]["phase"] == "backoff"
    });
    let restarts_before = backoff.status()["app"]["restarts"].as_u64().unwrap();
    freeze(&backoff, libc::SIGSTOP);
    freeze(&probing, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    freeze(&backoff, libc::SIGCONT);
    freeze(&probing, libc::SIGCONT);
    let thawed = Instant::now();

    // Hooks answer at once, inside their budgets.
    for a in [&backoff, &probing] {
        let t = Instant::now();
        let r = a.get("/ready");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(t.elapsed() < ANSWERED_IN_BUDGET, "{:?}", t.elapsed());
    }
    // The backoff is armed again for its whole 1.5 s: no restart at the thaw.
    std::thread::sleep(Duration::from_millis(400).saturating_sub(thawed.elapsed()));
    assert_eq!(
        backoff.status()["app"]["restarts"].as_u64().unwrap(),
        restarts_before,
        "a restart fired at the thaw, counting the frozen time as backoff"
    );
    eventually("the restart after the backoff", || {
        backoff.status()["app"]["restarts"].as_u64().unwrap() > restarts_before
    });
    // The probe: one "waiting" line for the 6 s gap at the most, not one per missed interval.
    std::thread::sleep(Duration::from_millis(500));
    let waiting = |l: &str| l.contains("waiting for the app to be ready");
    let lines: Vec<String> = probing
        .stderr
        .all()
        .into_iter()
        .filter(|l| waiting(l))
        .collect();
    assert!(
        lines.len() <= 3,
        "waiting lines came in a burst: {lines:#?}"
    );
}

#[test]
fn tls_and_http2_prefaces_before_the_first_ready_are_refused_and_the_port_keeps_answering() {
    let a = Spec::default().start();
    let hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5e, 0x00, 0xff, 0x13,
        0x01,
    ];
    for junk in [hello, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut s = connect(a.port);
        s.write_all(junk).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 505"),
            "answer to {junk:?}: {text}"
        );
    }
    assert_eq!(
        a.status()["hooks"]["ready"]["count"],
        0,
        "this is the first /ready"
    );
    assert_eq!(a.get("/ready").status, 200);
}

#[test]
fn on_the_platform_status_and_the_start_line_name_the_image() {
    let a = Spec::default()
        .env(
            "AWS_LAMBDA_MICROVM_IMAGE_ARN",
            "arn:aws:lambda:us-east-1:123456789012:microvm-image:shop",
        )
        .env("AWS_LAMBDA_MICROVM_IMAGE_NAME", "shop")
        .env("AWS_LAMBDA_MICROVM_IMAGE_VERSION", "3.0")
        .env("AWS_REGION", "us-east-1")
        .start();
    let p = &a.status()["platform"];
    assert_eq!(p["image_name"], "shop", "{p}");
    assert_eq!(p["image_version"], "3.0", "{p}");
    assert_eq!(p["region"], "us-east-1", "{p}");
    let line = a
        .stderr
        .wait_for("the start line", |l| l.contains("serving hooks"));
    assert!(
        line.contains("\"image_name\":\"shop\"") && line.contains("\"image_version\":\"3.0\""),
        "{line}"
    );
    let local = Spec::default().start();
    assert_eq!(local.status()["platform"], serde_json::Value::Null);
}

#[test]
fn a_header_deadline_pending_at_a_freeze_is_not_used_up_by_it() {
    // The header deadline is 10 s from a request's first byte. A client that was part-way
    // through its headers when the VM froze (for longer than that) may finish them after.
    let a = Spec::default().start();
    let mut s = connect(a.port);
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    freeze(&a, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(11));
    freeze(&a, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"Connection: close\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the connection was cut for time it spent frozen: {text:?}"
    );
}
