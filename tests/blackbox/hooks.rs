//! Black-box tests of the hook server: the real binary, real HTTP on 127.0.0.1.

use mva_test_support::agent as common;

use std::io::{BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const HOOKS: [&str; 6] = ["ready", "validate", "run", "resume", "suspend", "terminate"];
const PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";

fn sidecar() -> Agent {
    Spec::default().start()
}

#[test]
fn all_six_hooks_answer_on_both_path_forms_with_json() {
    for prefixed in [false, true] {
        let mut a = sidecar();
        let answer = |hook: &str| {
            let path = if prefixed {
                format!("{PREFIX}{hook}")
            } else {
                format!("/{hook}")
            };
            let r = a.post(&path, b"");
            assert_eq!(r.status, 200, "POST {path}: {}", r.text());
            assert_eq!(r.header("content-type"), Some("application/json"));
            let v = r.json();
            assert_eq!(v["hook"], hook, "{v}");
            assert!(v["outcome"].is_string(), "{v}");
        };
        // /terminate last: after it, the sidecar's work is done and it exits.
        for hook in &HOOKS[..5] {
            answer(hook);
        }
        let hooks = &a.status()["hooks"];
        for hook in &HOOKS[..5] {
            assert_eq!(hooks[hook]["count"], 1, "{hooks}");
            assert_eq!(hooks[hook]["last_status"], 200, "{hooks}");
        }
        answer("terminate");
        assert_eq!(a.exit_code(), 0, "a sidecar exits 0 after /terminate");
    }
}

#[test]
fn methods_are_checked_with_an_allow_header() {
    let a = sidecar();
    for p in [
        "/ready",
        "/validate",
        &format!("{PREFIX}ready"),
        &format!("{PREFIX}validate"),
    ] {
        assert_eq!(a.get(p).status, 200, "GET {p}");
        let r = http(a.port, "PUT", p, &[], b"");
        assert_eq!(r.status, 405, "PUT {p}");
        assert_eq!(r.header("allow"), Some("GET, POST"));
        assert!(r.json()["error"].as_str().unwrap().contains("PUT"));
    }
    for hook in ["run", "resume", "suspend", "terminate"] {
        for p in [format!("/{hook}"), format!("{PREFIX}{hook}")] {
            for m in ["GET", "DELETE", "PATCH"] {
                let r = http(a.port, m, &p, &[], b"");
                assert_eq!(r.status, 405, "{m} {p}");
                assert_eq!(r.header("allow"), Some("POST"), "{m} {p}");
            }
        }
    }
    let r = a.post("/status", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    // Nothing acted.
    assert!(!a.state("run-payload").exists());
    assert_eq!(a.status()["state"], "ready");
}

#[test]
fn unknown_paths_are_404_with_a_readable_error() {
    let a = sidecar();
    for p in [
        "/",
        "/runn",
        "/run/",
        "/RUN",
        "/aws/lambda-microvms/runtime/v2/run",
        "/aws/lambda-microvms/runtime/v1/status",
        "/%ff",
    ] {
        let r = a.post(p, b"");
        assert_eq!(r.status, 404, "{p}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("/ready"),
            "{p}"
        );
    }
}

#[test]
fn bodies_over_64_kib_are_413_and_nothing_is_written() {
    let a = sidecar();
    let big = vec![b'x'; 64 * 1024 + 1];
    let r = a.post("/run", &big);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("65536"));
    assert!(!a.state("run-payload").exists());
    // A chunked body that grows past the limit (no Content-Length to refuse it early).
    let mut s = connect(a.port);
    s.write_all(
        format!(
            "POST /run HTTP/1.1\r\nHost: localhost:{}\r\nTransfer-Encoding: chunked\r\n\r\n",
            a.port
        )
        .as_bytes(),
    )
    .unwrap();
    for _ in 0..3 {
        let _ = s.write_all(format!("{:x}\r\n{}\r\n", 30_000, "y".repeat(30_000)).as_bytes());
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = read_response(&mut BufReader::new(s)).expect("answered");
    assert_eq!(r.status, 413);
    assert!(!a.state("run-payload").exists());
    // Exactly at the limit is fine.
    let r = a.post("/run", &vec![b'z'; 64 * 1024]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        std::fs::read(a.state("run-payload")).unwrap().len(),
        64 * 1024
    );
}

#[test]
fn garbage_and_tls_on_the_port_do_not_disturb_the_listener() {
    let a = sidecar();
    // A TLS 1.2 ClientHello prefix, then plain garbage, then binary noise.
    let hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5e, 0x00, 0xff, 0x13,
        0x01,
    ];
    for junk in [
        hello,
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\xff\xfe\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let mut s = connect(a.port);
        s.write_all(junk).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 505"),
            "answer to junk: {text}"
        );
        assert_eq!(
            a.get("/ready").status,
            200,
            "the next request still answers"
        );
    }
}

/// `TCP_NODELAY` on the agent's side of a connection, read through `pidfd_getfd` (root only).
fn agent_socket_nodelay(agent_pid: u32, client: &std::net::TcpStream) -> Option<bool> {
    let client_port = client.local_addr().ok()?.port();
    let server_port = client.peer_addr().ok()?.port();
    // Find the socket inode of the agent's side: local = server_port, remote = client_port.
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let lp = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
        let rp = u16::from_str_radix(f[2].rsplit(':').next()?, 16).ok()?;
        (lp == server_port && rp == client_port).then(|| f[9].to_string())
    })?;
    let target = format!("socket:[{inode}]");
    let fd = std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            (link.to_string_lossy() == target)
                .then(|| e.file_name().to_string_lossy().parse::<i32>().ok())?
        })?;
    // SAFETY: the pidfd calls take integers; getsockopt writes into the int and length we own;
    // both descriptors we get are closed here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, agent_pid as i32, 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let ours = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        if ours < 0 {
            return None;
        }
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(
            ours,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &mut v as *mut _ as *mut _,
            &mut len,
        );
        libc::close(ours);
        (rc == 0).then_some(v != 0)
    }
}

#[test]
fn keep_alive_connections_are_reused_and_have_nodelay() {
    let a = sidecar();
    let s = connect(a.port);
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut took = Vec::new();
    for i in 0..200 {
        let path = if i % 2 == 0 { "/ready" } else { "/status" };
        let t = Instant::now();
        w.write_all(&request_bytes(a.port, "GET", path, &[], b"", false))
            .unwrap();
        let resp = read_response(&mut r).expect("answer on the same connection");
        took.push(t.elapsed());
        assert_eq!(resp.status, 200);
    }
    assert_eq!(
        agent_socket_nodelay(a.pid(), &s),
        Some(true),
        "TCP_NODELAY on the agent's socket"
    );
    took.sort();
    // Reported, not asserted (wall-clock limits belong in bench/): the benchmark holds the budget.
    eprintln!(
        "keep-alive round trips: p50 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

fn run_once(body: &[u8]) -> (Agent, Resp) {
    let a = sidecar();
    let r = http(
        a.port,
        "POST",
        "/run",
        &[("Content-Type", "application/json")],
        body,
    );
    (a, r)
}

#[test]
fn run_body_shapes_are_written_exactly_with_their_modes() {
    let cases: Vec<(&[u8], &[u8], Option<&str>)> = vec![
        (
            br#"{"microvmId":"vm-123","runHookPayload":"{\"tenant\":\"t1\"}"}"#,
            br#"{"tenant":"t1"}"#,
            Some("vm-123"),
        ),
        (
            br#"{"microvmId":"vm-9","runHookPayload":null}"#,
            b"",
            Some("vm-9"),
        ),
        (br#"{"runHookPayload":"plain text"}"#, b"plain text", None),
        (
            b"raw bytes \xff\x00 not json",
            b"raw bytes \xff\x00 not json",
            None,
        ),
        (br#"{"tenant":"t2"}"#, br#"{"tenant":"t2"}"#, None),
        (b"", b"", None),
    ];
    for (body, payload, id) in cases {
        let (a, r) = run_once(body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            std::fs::read(a.state("run-payload")).unwrap(),
            payload,
            "payload for {:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(mode(&a.state("run-payload")), 0o600);
        match id {
            Some(id) => {
                assert_eq!(std::fs::read_to_string(a.state("microvm-id")).unwrap(), id);
                assert_eq!(r.json()["microvm_id"], id);
                assert_eq!(a.status()["microvm_id"], id);
            }
            None => assert!(!a.state("microvm-id").exists()),
        }
        let leftovers: Vec<_> = std::fs::read_dir(a.state(""))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

#[test]
fn run_replay_is_200_and_a_different_run_is_409_without_effect() {
    let body = br#"{"microvmId":"vm-1","runHookPayload":"first"}"#;
    let (a, r) = run_once(body);
    assert_eq!(r.json()["outcome"], "ok");
    let r = a.post(&format!("{PREFIX}run"), body);
    assert_eq!(
        (r.status, r.json()["outcome"].as_str().unwrap()),
        (200, "replay"),
        "byte-identical replay, other path form"
    );
    let r = a.post("/run", br#"{"microvmId":"vm-2","runHookPayload":"second"}"#);
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("different"));
    assert_eq!(std::fs::read(a.state("run-payload")).unwrap(), b"first");
    assert_eq!(
        std::fs::read_to_string(a.state("microvm-id")).unwrap(),
        "vm-1"
    );
    assert_eq!(a.status()["hooks"]["run"]["count"], 3);
}

#[test]
fn lifecycle_rules_hold_over_http() {
    // An app that takes its time to stop, so that the agent is still there after /terminate.
    let a = Spec::default()
        .config("[app]\nstop_timeout = \"30s\"\n")
        .fixture(&["ignore-term"])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    assert_eq!(
        a.post("/suspend", b"").json()["outcome"],
        "ignored",
        "suspend before run does nothing"
    );
    assert_eq!(a.post("/run", b"").status, 200);
    assert_eq!(a.status()["state"], "running");
    assert_eq!(a.post("/resume", b"").json()["outcome"], "already");
    assert_eq!(a.post("/suspend", b"").json()["outcome"], "suspended");
    assert_eq!(a.post("/suspend", b"").json()["outcome"], "already");
    assert_eq!(a.status()["state"], "suspended");
    assert_eq!(a.post("/resume", b"").json()["outcome"], "resumed");
    assert_eq!(a.post("/validate", b"").status, 409, "validate after run");
    assert_eq!(a.post("/terminate", b"").json()["outcome"], "stopping");
    assert_eq!(
        a.post("/terminate", b"").json()["outcome"],
        "stopping",
        "a repeated /terminate answers 200 and does not stop twice"
    );
    assert_eq!(a.status()["hooks"]["terminate"]["count"], 2);
    assert_eq!(
        a.get("/ready").status,
        503,
        "after /terminate, /ready answers 503"
    );
    assert_eq!(a.status()["state"], "terminating");
}

#[test]
fn forwarded_calls_are_refused_and_act_on_nothing() {
    let a = sidecar();
    let variants: Vec<Vec<(&str, &str)>> = vec![
        vec![("Host", "abc123.lambda-microvms.us-east-1.on.aws")],
        vec![("Host", "localhost:9000"), ("x-amzn-requestid", "5f0e7a")],
        vec![("Host", "127.0.0.1"), ("X-Amzn-RequestId", "5f0e7a")],
        vec![("Host", "LOCALHOST:9000")],
    ];
    for headers in &variants {
        for hook in ["run", "resume", "suspend", "terminate"] {
            let r = http(
                a.port,
                "POST",
                &format!("/{hook}"),
                headers,
                br#"{"runHookPayload":"x"}"#,
            );
            assert_eq!(r.status, 403, "{hook} with {headers:?}");
            assert!(r.json()["error"]
                .as_str()
                .unwrap()
                .contains("public endpoint"));
        }
        let r = http(a.port, "GET", "/status", headers, b"");
        assert_eq!(r.status, 403, "status with {headers:?}");
        // /ready may be read by anyone: it changes nothing. /validate too (the image builder's
        // calls look forwarded): before /run it acts as the builder's would, after /run it
        // is refused (409) -- tests/blackbox/platform_contract.rs.
        assert_eq!(http(a.port, "GET", "/ready", headers, b"").status, 200);
    }
    // Host missing (HTTP/1.0) and an absolute-form target.
    for raw in [
        "POST /run HTTP/1.0\r\nContent-Length: 0\r\n\r\n".to_string(),
        format!("POST http://localhost:{}/run HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", a.port, a.port),
    ] {
        let mut s = connect(a.port);
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_response(&mut BufReader::new(s)).unwrap();
        assert_eq!(r.status, 403, "{raw:?}");
    }
    assert!(!a.state("run-payload").exists(), "nothing was written");
    let st = a.status();
    assert_eq!(st["state"], "ready");
    assert_eq!(
        st["hooks"]["run"]["count"], 0,
        "refused calls never reached the hook"
    );
}

#[test]
fn trust_any_turns_the_origin_check_off() {
    let a = Spec::default().config("[hooks]\ntrust = \"any\"\n").start();
    let r = http(
        a.port,
        "POST",
        "/run",
        &[("Host", "public.example"), ("x-amzn-requestid", "1")],
        b"p",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read(a.state("run-payload")).unwrap(), b"p");
}

#[test]
fn no_payload_byte_or_header_value_reaches_the_logs() {
    let marker = "Zq7PAYLOADmarker";
    let a = sidecar();
    let body = format!(r#"{{"microvmId":"vm-log","runHookPayload":"{marker}-secret"}}"#);
    let r = http(
        a.port,
        "POST",
        "/run",
        &[("Authorization", "Bearer HDRmarker42")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    a.post("/run", format!("{marker}-other").as_bytes()); // 409, must not be logged either
    a.post("/nope", marker.as_bytes());
    drop(a.post("/resume", marker.as_bytes()));
    a.signal(libc::SIGTERM);
    let mut a = a;
    assert_eq!(a.exit_code(), 0);
    let logs = a.stderr.text() + &a.stdout.text();
    assert!(
        logs.contains("\"hook\":\"run\""),
        "hook lines are logged:\n{logs}"
    );
    for needle in [marker, "HDRmarker42", "Bearer"] {
        assert!(
            !logs.contains(needle),
            "{needle} leaked into the logs:\n{logs}"
        );
    }
    assert!(
        a.stdout.all().is_empty(),
        "the agent never writes to stdout"
    );
}

#[test]
fn hook_log_lines_carry_hook_outcome_status_and_time() {
    let a = sidecar();
    a.post("/run", b"x");
    let line = a
        .stderr
        .wait_for("the run log line", |l| l.contains("\"hook\":\"run\""));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["status"], 200);
    assert!(v["elapsed_us"].is_u64(), "{v}");
    assert_eq!(v["level"], "INFO");
}

#[test]
fn sidecar_exits_0_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut a = sidecar();
        a.signal(sig);
        assert_eq!(a.exit_code(), 0);
    }
}

fn agent_cmd(args: &[&str]) -> std::process::Output {
    agent_command()
        .args(args)
        .env_remove("MICROVM_AGENT_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn every_kind_of_bad_configuration_exits_64_naming_the_key() {
    let dir = TempDir::new("badcfg");
    let cases = [
        ("bogus_key = 1\n", "bogus_key"),
        ("[app]\nstop_timeout = \"10 parsecs\"\n", "app.stop_timeout"),
        ("[app]\nstop_signal = \"SIGFOO\"\n", "app.stop_signal"),
        ("[app]\nrestart = \"sometimes\"\n", "app.restart"),
        ("listen = \"not-an-address\"\n", "listen"),
        (
            "[ready]\nhttp = \"http://127.0.0.1:8080/\"\ntcp = \"127.0.0.1:8080\"\n",
            "ready.http",
        ),
        ("[hooks]\nrun_timeout = \"2m\"\n", "hooks.run_timeout"),
        ("[[secret]]\nname = \"../x\"\nbytes = 8\n", "secret[0].name"),
        ("[notify]\ntimeout = \"5s\"\n", "notify.timeout"),
        ("this is not toml", "config"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.join(&format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        for extra in [&[][..], &["--check"][..]] {
            let mut args = vec!["-c", path.to_str().unwrap()];
            args.extend_from_slice(extra);
            let out = agent_cmd(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{toml:?} {extra:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(
                err.contains(&format!("{key}:")) || err.contains(key),
                "{key} not named in: {err}"
            );
            assert!(out.stdout.is_empty());
        }
    }
    for (args, key) in [
        (vec!["--listen", "nowhere"], "--listen"),
        (vec!["--log-format", "xml"], "--log-format"),
        (vec!["--state-dir", "relative/dir"], "--state-dir"),
        (vec!["--frobnicate"], "--frobnicate"),
        (
            vec!["-c", "/definitely/not/here.toml"],
            "/definitely/not/here.toml",
        ),
    ] {
        let out = agent_cmd(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    for (var, value) in [
        ("MICROVM_AGENT_LISTEN", "x:y"),
        ("MICROVM_AGENT_LOG", "info,=["),
        ("MICROVM_AGENT_LOG_FORMAT", "yaml"),
    ] {
        let out = agent_command()
            .env(var, value)
            .env_remove("MICROVM_AGENT_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}: {err}");
        assert!(err.contains(var), "{var} not named in: {err}");
    }
}

#[test]
fn check_prints_the_resolved_configuration_without_secrets() {
    let dir = TempDir::new("check");
    let path = dir.join("a.toml");
    std::fs::write(
        &path,
        r#"
[app]
command = ["/app/server", "--port", "8080"]
[[validate.request]]
url = "http://127.0.0.1:8080/x"
body = "BODYmarker"
headers = { authorization = "Bearer HEADERmarker" }
[[secret]]
name = "session-key"
bytes = 32
"#,
    )
    .unwrap();
    let out = agent_cmd(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "files read, in order:",
        "a.toml",
        "command = [\"/app/server\", \"--port\", \"8080\"]",
        "stop_timeout = \"10s\"",
        "run_timeout = \"1s\"",
        "name = \"session-key\"",
        "[hooks]",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(
        !text.contains("BODYmarker") && !text.contains("HEADERmarker"),
        "{text}"
    );
    // The printed configuration reads back and resolves to the same text.
    let again = dir.join("again.toml");
    std::fs::write(&again, text.as_bytes()).unwrap();
    let out2 = agent_cmd(&["--check", "-c", again.to_str().unwrap()]);
    assert_eq!(
        out2.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("# files read") && !l.contains("not shown)"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&String::from_utf8_lossy(&out2.stdout)), strip(&text));
}

#[test]
fn version_and_help() {
    let out = agent_cmd(&["-V"]);
    assert_eq!(out.status.code(), Some(0));
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("microvm-agent "), "{v}");
    assert!(
        v.contains("(commit ") && v.contains("-linux-"),
        "names the commit and target: {v}"
    );
    let out = agent_cmd(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--state-dir",
        "--log-format",
        "--check",
        "MICROVM_AGENT_CONFIG",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}

#[test]
fn the_hook_port_taken_is_a_clear_start_up_failure() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let out = agent_cmd(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        "/tmp/mva-port-taken",
    ]);
    assert_eq!(out.status.code(), Some(71));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on the hook port"));
}

#[test]
fn idle_sidecar_does_not_wake_up() {
    let a = sidecar();
    a.get("/ready");
    let switches = || -> u64 {
        std::fs::read_dir(format!("/proc/{}/task", a.pid()))
            .unwrap()
            .flatten()
            .map(|t| {
                let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .map(|v| v.trim().parse::<u64>().unwrap())
                    .unwrap_or(0)
            })
            .sum()
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(3));
    let woke = switches() - before;
    assert!(woke <= 3, "the idle agent woke up {woke} times in 3 s");
}
