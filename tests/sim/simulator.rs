//! Black-box tests of `microvm-sim`: it passes a well-behaved entrypoint and catches each kind of
//! contract violation, with tiny entrypoints that misbehave on purpose.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mva_test_support::ports::{reserve_port, Reserved};
use mva_test_support::repo as support;
use support::{agent, fixture};

const SIM: &str = env!("CARGO_BIN_EXE_microvm-sim");

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("mva-sim-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hooks_json(dir: &Tmp, port: u16, extra_vm: &str) -> String {
    let path = dir.0.join("hooks.json");
    let json = format!(
        r#"{{"port": {port},
            "microvmImageHooks": {{"ready": "ENABLED", "readyTimeoutInSeconds": 30, "validate": "ENABLED"}},
            "microvmHooks": {{"run": "ENABLED", "resume": "ENABLED", "suspend": "ENABLED", "terminate": "ENABLED"{extra_vm}}}}}"#
    );
    std::fs::write(&path, json).unwrap();
    path.display().to_string()
}

/// Runs the simulator to completion (it bounds every step itself; the test only guards hangs).
fn sim(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(SIM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("microvm-sim hung: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&stdout).into_owned() + &String::from_utf8_lossy(&stderr);
    (status.code().unwrap_or(-1), text)
}

/// One simulated image: a temporary directory, a hook port reserved for it and its
/// `hooks.json` (every hook enabled). [`Image::sim`] runs the simulator with options, then an
/// entrypoint: the fixture's stand-in hook server ([`Image::fake_hooks`]), the real agent
/// ([`Image::agent`]), or any command.
struct Image {
    dir: Tmp,
    _held: Reserved,
    port: u16,
    hooks: String,
}

impl Image {
    fn new(tag: &str) -> Image {
        let dir = Tmp::new(tag);
        let (held, port) = reserve_port();
        let hooks = hooks_json(&dir, port, "");
        Image {
            dir,
            _held: held,
            port,
            hooks,
        }
    }

    /// `microvm-sim --hooks <hooks.json> <opts> -- <entrypoint>`.
    fn sim(&self, opts: &[&str], entrypoint: &[String]) -> (i32, String) {
        let mut args = vec!["--hooks", &self.hooks];
        args.extend_from_slice(opts);
        args.push("--");
        args.extend(entrypoint.iter().map(String::as_str));
        sim(&args)
    }

    /// The fixture's stand-in hook server on this image's port, misbehaving as `mode` says.
    fn fake_hooks(&self, mode: &[&str]) -> Vec<String> {
        argv(&[&fixture(), "fake-hooks", &self.port.to_string()], mode)
    }

    /// The agent on this image's port, its state in [`Image::state`], `options` before the
    /// app's command line.
    fn agent(&self, options: &[&str], app: &[&str]) -> Vec<String> {
        let (listen, state) = (format!("127.0.0.1:{}", self.port), self.state());
        let head = [
            &agent(),
            "--listen",
            &listen,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        argv(&head, options)
            .into_iter()
            .chain(argv(&["--"], app))
            .collect()
    }

    fn state(&self) -> PathBuf {
        self.dir.0.join("state")
    }
}

fn argv(a: &[&str], b: &[&str]) -> Vec<String> {
    a.iter().chain(b).map(|s| s.to_string()).collect()
}

/// The simulator over the fixture's stand-in hook server, misbehaving in `mode`.
fn fake_hooks(tag: &str, mode: &str) -> (i32, String) {
    let image = Image::new(tag);
    image.sim(&[], &image.fake_hooks(&[mode]))
}

#[test]
fn the_demo_runs_the_whole_lifecycle_and_exits_0() {
    let (code, out) = sim(&[]);
    assert_eq!(code, 0, "{out}");
    for step in [
        "ready",
        "snapshot",
        "validate",
        "run",
        "suspend",
        "frozen",
        "resume",
        "terminate",
        "exit",
        "OK: no contract violation",
    ] {
        assert!(
            out.contains(step),
            "{step} missing from the timeline:\n{out}"
        );
    }
    assert!(out.contains("generation 1 -> 2"), "{out}");
}

#[test]
fn a_well_behaved_entrypoint_passes_and_disabled_hooks_are_skipped() {
    let image = Image::new("good");
    let (code, out) = image.sim(&["--suspend-for", "100ms"], &image.fake_hooks(&[]));
    assert_eq!(code, 0, "the control case must pass:\n{out}");

    let port = image.port;
    let path = image.dir.0.join("partial.json");
    std::fs::write(&path, format!(r#"{{"port": {port}, "microvmImageHooks": {{"ready": "ENABLED"}}, "microvmHooks": {{"run": "ENABLED"}}}}"#)).unwrap();
    let (code, out) = sim(&[
        "--hooks",
        path.to_str().unwrap(),
        "--suspend-for",
        "0s",
        "--",
        &fixture(),
        "fake-hooks",
        &port.to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("suspend    (disabled)")
            && out.contains("terminate  (disabled: the VM is killed)"),
        "{out}"
    );
    assert!(
        !out.contains("validate   200"),
        "validate is disabled:\n{out}"
    );
}

#[test]
fn a_hook_over_its_budget_is_a_violation() {
    let (code, out) = fake_hooks("slow", "slow-run");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/run did not answer within its 1 s budget"),
        "{out}"
    );
}

#[test]
fn a_non_200_from_a_runtime_hook_is_a_violation() {
    let (code, out) = fake_hooks("500", "run-500");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("VM         TERMINATED: /run answered 500"),
        "{out}"
    );
}

#[test]
fn a_suspend_answering_500_terminates_the_vm() {
    let (code, out) = fake_hooks("s500", "suspend-500");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("TERMINATED: /suspend answered 500"), "{out}");
    assert!(
        !out.contains(" resume ") && !out.contains(" frozen "),
        "a terminated VM is neither frozen nor resumed:\n{out}"
    );
}

#[test]
fn build_hooks_come_with_the_builder_headers_and_refusing_them_fails_the_build() {
    let (code, out) = fake_hooks("strict", "strict-origin");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("BUILD      FAILED: /validate answered 403"),
        "the builder's /validate looks forwarded; refusing it fails the build:\n{out}"
    );
    assert!(
        !out.contains(" run "),
        "no VM runs from a failed build:\n{out}"
    );
}

#[test]
fn the_entrypoint_gets_the_platforms_container() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: modelling the platform's capabilities needs root");
        return;
    }
    let image = Image::new("caps");
    let run = |caps: &str| {
        let opts = [
            "--suspend-for",
            "0s",
            "--caps",
            caps,
            "--image",
            "probe-image",
        ];
        image.sim(&opts, &image.fake_hooks(&["report"]))
    };
    let (code, out) = run("default");
    assert_eq!(code, 0, "{out}");
    for want in [
        "CapEff:\t00000000a80425fb",
        "CapPrm:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapInh:\t00000000a80425fb",
        "RLIMIT_NOFILE 1024 1024",
        "AWS_LAMBDA_MICROVM_IMAGE_NAME=probe-image",
        "AWS_LAMBDA_MICROVM_IMAGE_ARN=arn:aws:lambda:us-east-1:",
        "AWS_LAMBDA_MICROVM_IMAGE_VERSION=",
        "AWS_REGION=us-east-1",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let (code, out) = run("all");
    assert_eq!(code, 0, "{out}");
    let full = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .unwrap()
        .replace("CapBnd", "CapEff");
    assert!(
        out.contains(&full),
        "{full} missing with --caps all:\n{out}"
    );
    assert!(out.contains("RLIMIT_NOFILE 1024 1024"), "{out}");
}

#[test]
fn the_tls_probe_reaches_the_port_before_ready_and_the_agent_still_answers() {
    let image = Image::new("tls");
    let app = image.agent(&[], &[&fixture(), "forever"]);
    let (code, out) = image.sim(&["--suspend-for", "0s"], &app);
    assert_eq!(code, 0, "{out}");
    let probe = out
        .lines()
        .position(|l| l.contains("tls-probe"))
        .unwrap_or_else(|| panic!("no TLS probe:\n{out}"));
    assert!(
        out.lines().nth(probe).unwrap().contains("answered 400")
            || out
                .lines()
                .nth(probe)
                .unwrap()
                .contains("closed by the server"),
        "{out}"
    );
    let ready = out
        .lines()
        .position(|l| l.contains(" ready ") && l.contains("200 in"))
        .unwrap_or_else(|| panic!("no /ready 200:\n{out}"));
    assert!(
        probe < ready,
        "the probe comes before the first /ready 200:\n{out}"
    );
}

#[test]
fn the_run_body_is_the_platforms_exactly() {
    let image = Image::new("body");
    let state = image.state();
    let app = image.agent(&[], &[&fixture(), "forever"]);
    let go = |extra: &[&str]| image.sim(&[&["--suspend-for", "0s"], extra].concat(), &app);
    let (code, out) = go(&["--payload", r#"{"tenant":"t1"}"#]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read(state.join("run-payload")).unwrap(),
        br#"{"tenant":"t1"}"#
    );
    let id = std::fs::read_to_string(state.join("microvm-id")).unwrap();
    let uuid = id.strip_prefix("microvm-").expect("microvm-<uuid>");
    assert_eq!(uuid.len(), 36, "{id}");
    assert_eq!(uuid.matches('-').count(), 4, "{id}");

    // No --payload: the field is absent, so the payload is empty (not the string "null").
    let (code, out) = go(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(state.join("run-payload")).unwrap(), b"");

    let long = "x".repeat(4097);
    let (code, out) = sim(&["--payload", &long, "--", "true"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("4097 characters"), "{out}");
    let ok = "é".repeat(4096);
    let (code, out) = sim(&["--payload", &ok, "--build-timeout", "1s", "--", "true"]);
    assert_ne!(code, 2, "4096 characters (more bytes) are accepted:\n{out}");
}

#[test]
fn help_and_version_are_conventional() {
    let out = Command::new(SIM).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--hooks",
        "--payload",
        "--microvm-id",
        "--suspend-for",
        "--caps",
        "--region",
        "--image",
        "--app-url",
        "--host",
        "--build-timeout",
        "--exit-within",
        "--version",
    ] {
        assert!(text.contains(opt), "{opt} missing from --help");
    }
    assert!(text.contains("[1s]") && text.contains("[300s]") && text.contains("[15s]"));
    let out = Command::new(SIM).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("microvm-sim "));
}

#[test]
fn waiting_for_ready_says_what_it_sees() {
    let image = Image::new("progress");
    let port = image.port;
    // Nothing ever listens on the hook port (a port typo).
    let (code, out) = image.sim(&["--build-timeout", "4s"], &argv(&["sleep", "30"], &[]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("connection refused on 127.0.0.1:{port}")),
        "{out}"
    );
}

#[test]
fn ready_200_before_the_app_answers_is_a_violation() {
    let image = Image::new("early");
    let (_held_app, app) = reserve_port();
    let app_url = format!("http://127.0.0.1:{app}/healthz");
    let (code, out) = image.sim(&["--app-url", &app_url], &image.fake_hooks(&[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/ready said 200 but the app"), "{out}");

    // The real agent with a readiness probe does not make that mistake: the app listens late.
    let agent_cfg = image.dir.0.join("agent.toml");
    std::fs::write(&agent_cfg, format!("[ready]\nhttp = \"{app_url}\"\n")).unwrap();
    let serve = [&fixture(), "serve", &app.to_string(), "700", "/dev/null"];
    let entrypoint = image.agent(&["-c", agent_cfg.to_str().unwrap()], &serve);
    let opts = ["--app-url", &app_url, "--suspend-for", "100ms"];
    let (code, out) = image.sim(&opts, &entrypoint);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("x 503"),
        "the agent answered 503 while the app came up:\n{out}"
    );
}

#[test]
fn an_entrypoint_that_does_not_exit_after_terminate_is_a_violation() {
    let image = Image::new("noexit");
    let (code, out) = image.sim(&["--exit-within", "1s"], &image.fake_hooks(&["no-exit"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("did not exit within 1 s of /terminate"),
        "{out}"
    );
}

#[test]
fn an_entrypoint_that_never_gets_ready_fails_the_build() {
    let image = Image::new("never");
    let (code, out) = image.sim(&["--build-timeout", "1s"], &argv(&["sleep", "30"], &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("never answered 200"), "{out}");
}

/// The simulator, with a 1.5 s suspend, running `prefix` then the agent supervising the fixture's
/// ticker (it writes a timestamp every 20 ms to `ticks`).
fn suspended_ticker(image: &Image, prefix: &[&str], ticks: &std::path::Path) -> (i32, String) {
    let agent = image.agent(&[], &[&fixture(), "tick", ticks.to_str().unwrap()]);
    let entrypoint: Vec<String> = argv(prefix, &[]).into_iter().chain(agent).collect();
    image.sim(&["--suspend-for", "1500ms"], &entrypoint)
}

/// The longest gap between two ticks, in ms.
fn longest_gap(ticks: &std::path::Path) -> u64 {
    let t: Vec<u64> = std::fs::read_to_string(ticks)
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

#[test]
fn suspend_freezes_the_whole_process_tree() {
    let image = Image::new("freeze");
    let ticks = image.dir.0.join("ticks");
    let (code, out) = suspended_ticker(&image, &[], &ticks);
    assert_eq!(code, 0, "{out}");
    let longest = longest_gap(&ticks);
    // The app ticks every 20 ms: only a frozen tree leaves a gap of the whole suspension.
    assert!(
        longest >= 1400,
        "the app kept running while suspended (longest gap {longest} ms)\n{out}"
    );
}

#[test]
fn bad_hooks_json_is_refused_with_the_key() {
    let dir = Tmp::new("badjson");
    let path = dir.0.join("h.json");
    std::fs::write(&path, r#"{"microvmHooks": {"run": "ENABLED"}}"#).unwrap();
    let (code, out) = sim(&["--hooks", path.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("microvmImageHooks.ready"), "{out}");
}

#[test]
fn a_simulation_never_rewrites_the_machines_own_machine_id() {
    // The simulator sets the platform's environment, so the agent rewrites the machine-id on
    // /run, as it should in a VM: the simulator gives the entrypoint its own copy.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/etc/machine-id").exists() {
        eprintln!("SKIP: needs root and an /etc/machine-id");
        return;
    }
    let before = std::fs::read("/etc/machine-id").unwrap();
    let image = Image::new("mid");
    let app = image.agent(&[], &[&fixture(), "forever"]);
    let (code, out) = image.sim(&["--suspend-for", "0s"], &app);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("cannot rewrite the machine-id"), "{out}");
    assert_eq!(
        std::fs::read("/etc/machine-id").unwrap(),
        before,
        "the host's machine-id changed"
    );
}

#[test]
fn a_daemon_that_double_forked_out_of_the_entrypoint_is_frozen_and_ended_with_the_vm() {
    // On the platform a daemon stays inside the VM: it is frozen by a suspend and gone with the
    // VM. The simulator is a child subreaper, so the orphan comes to it (this machine has no
    // cgroup v2 freezer: the SIGSTOP fallback is what runs here).
    let image = Image::new("daemon");
    let ticks = image.dir.0.join("ticks");
    let daemon = image.dir.0.join("daemon-ticks");
    let script = format!("({} tick {} &); exec \"$@\"", fixture(), daemon.display());
    let (code, out) = suspended_ticker(&image, &["sh", "-c", &script, "sh"], &ticks);
    assert_eq!(code, 0, "{out}");
    let longest = longest_gap(&daemon);
    assert!(
        longest >= 1400,
        "the daemon kept running while suspended ({longest} ms)\n{out}"
    );
    let before = std::fs::metadata(&daemon).unwrap().len();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        std::fs::metadata(&daemon).unwrap().len(),
        before,
        "the daemon outlived the simulated VM"
    );
}

#[test]
fn a_hooks_file_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = Tmp::new("hooksfifo");
    let fifo = dir.0.join("hooks.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        let (code, out) = sim(&["--hooks", path, "--", "true"]);
        assert_eq!(code, 2, "{path}: {out}");
        assert!(out.contains("not a regular file"), "{path}: {out}");
    }
}
