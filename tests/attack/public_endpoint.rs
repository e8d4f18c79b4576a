//! Hardening, round three: what someone who reaches the hook port through the public endpoint (or
//! an app's own workers) could do to a healthy VM, and slow storage after a restore. Each test
//! reproduces one finding of the black-box attack as it was run, and checks what the platform
//! sees: every hook answered inside its budget, with the outcome it should have. Real binary, real
//! sockets; descriptor limits as on the platform (`prlimit --nofile=1024:1024`).

use mva_test_support::agent as common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The platform's descriptor limit for the agent (docs/platform.md: 1024, hard).
const PLATFORM_NOFILE: &[&str] = &["prlimit", "--nofile=1024:1024", "--"];

/// Headers of a request forwarded from the public endpoint.
const FORWARDED: &[(&str, &str)] = &[
    ("Host", "abc.lambda-microvms.us-east-1.on.aws"),
    ("x-amzn-requestid", "0f0e0d0c"),
];

/// An agent whose app is the fixture's HTTP server on a free port, ready when it accepts;
/// `section(port)` adds the rest of the configuration. The log directory lives as long as the agent.
fn serving_agent(
    section: impl Fn(u16) -> String,
    wrapper: &[&str],
    env: &[(&str, &str)],
) -> (Agent, TempDir) {
    let (_held, port) = reserve_port();
    let logs = TempDir::new("stranger");
    let log = logs.join("requests.log");
    let cfg = format!("[ready]\ntcp = \"127.0.0.1:{port}\"\n{}", section(port));
    let mut spec = Spec::default().config(&cfg).wrapper(wrapper).fixture(&[
        "serve",
        &port.to_string(),
        "0",
        log.to_str().unwrap(),
    ]);
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    let a = spec.start();
    assert_eq!(a.ready_settled().status, 200);
    (a, logs)
}

/// The fixture's server as the notify target, with a secret: every routine writes files, reads
/// `/dev/urandom` and connects to the app.
fn busy_agent(wrapper: &[&str]) -> (Agent, TempDir) {
    serving_agent(
        |port| {
            format!(
                "[notify]\nhttp = \"http://127.0.0.1:{port}/__lifecycle\"\n[[secret]]\nname = \"k\"\nbytes = 16\n"
            )
        },
        wrapper,
        &[],
    )
}

/// A hook the platform calls: answered 200 with `outcome`, inside the budget (the agent answers
/// "timeout" when its work does not finish in time, and the platform's own budget is the
/// connection's: a late answer is a failed hook).
fn platform_hook(a: &Agent, path: &str, body: &[u8], outcome: &str) -> Resp {
    let t = Instant::now();
    let r = a.post(path, body);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.json()["outcome"], outcome, "{path}: {}", r.text());
    // The crowd is the case here, and the budget the property: the platform's own 1 s, strict.
    // (These tests are a heavy tier: no other run's load shares the machine with them.)
    assert!(
        took < Duration::from_secs(1),
        "{path} answered after {took:?}, past its 1 s budget"
    );
    eprintln!("{path}: {} in {took:?}", r.json()["outcome"]);
    r
}

/// Opens `rate` connections a second for `secs`, each sending a `/validate` that announces a
/// body it never sends, and holds every one of them (as the attack did).
fn flood(port: u16, rate: u32, secs: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(secs) && !stop.load(Ordering::SeqCst) {
            let due = start.elapsed().as_secs_f64() * f64::from(rate);
            while (sent as f64) < due {
                sent += 1;
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let mut head = String::from("POST /validate HTTP/1.1\r\n");
                    for (k, v) in FORWARDED {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("Content-Length: 1000\r\n\r\n");
                    let _ = s.write_all(head.as_bytes());
                    held.push(s);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        held.len()
    })
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Finding 1: a connection flood used to exhaust the agent's 1024 descriptors, and the
/// platform's `/run` answered 500 (`Too many open files`), `/suspend` and `/resume` degraded.
#[test]
fn a_connection_flood_at_300_and_600_a_second_leaves_the_platforms_hooks_whole() {
    heavy_tier();
    raise_own_fd_limit();
    for rate in [300, 600] {
        let (a, _logs) = busy_agent(PLATFORM_NOFILE);
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = flood(a.port, rate, 4, stop.clone());
        // Let the flood fill the table first (at 300/s: 512 connections in under 2 s).
        std::thread::sleep(Duration::from_millis(2500));
        let fds = descriptors(a.pid());
        platform_hook(&a, "/run", br#"{"microvmId":"vm-flood"}"#, "ok");
        platform_hook(&a, "/suspend", b"", "suspended");
        platform_hook(&a, "/resume", b"", "resumed");
        stop.store(true, Ordering::SeqCst);
        let held = flooder.join().unwrap();
        eprintln!(
            "{rate}/s: {held} connections held by the flood, the agent had {fds} descriptors"
        );
        assert!(held > 512, "the flood filled the table ({held})");
        assert!(
            fds < 1024 - 128,
            "descriptors stay clear of the limit: {fds}"
        );
        let st = a.status();
        for hook in ["run", "suspend", "resume"] {
            assert_eq!(st["hooks"][hook]["degraded"], 0, "{hook}: {st}");
        }
    }
}

/// Finding 2: a stranger's `/validate` held the one-acting-hook guard through a 3 s warm-up, and
/// the platform's `/run` 0.3 s later answered 500 `busy`, which terminates the VM.
#[test]
fn a_strangers_validate_with_a_long_warm_up_never_makes_run_fail() {
    heavy_tier();
    // The fixture's /slow/N answers after N ms: three 1-second requests.
    let (a, _logs) = serving_agent(
        |port| {
            format!(
                "[validate]\nrepeat = 3\n[[validate.request]]\nurl = \"http://127.0.0.1:{port}/slow/1000\"\n"
            )
        },
        &[],
        &[],
    );
    let port_a = a.port;
    let stranger = std::thread::spawn(move || http(port_a, "POST", "/validate", FORWARDED, b""));
    std::thread::sleep(Duration::from_millis(300));
    let r = platform_hook(&a, "/run", br#"{"microvmId":"vm-w"}"#, "ok");
    assert!(
        r.json()["generation"].as_u64().unwrap() >= 1,
        "{}",
        r.text()
    );
    let v = stranger.join().unwrap();
    assert!(
        [409, 503].contains(&v.status),
        "the stranger's validate was cancelled or is still warming: {}",
        v.text()
    );
    // And after /run, validate is a conflict, for anyone.
    assert_eq!(
        http(a.port, "POST", "/validate", FORWARDED, b"").status,
        409
    );
}

/// The app takes 4 s to acknowledge `/terminate` (and nothing else): a hook that works far longer
/// than a connection evicted from a full table used to live (2 s).
const SLOW_TERMINATE: &str = "[hooks]\nrun_timeout = \"6s\"\nresume_timeout = \"6s\"\n\
    suspend_timeout = \"6s\"\nterminate_timeout = \"6s\"\n[notify]\n\
    exec = [\"sh\", \"-c\", \"[ \\\"$MICROVM_EVENT\\\" != terminate ] || sleep 4\"]\ntimeout = \"5s\"\n";

/// Finding 3: a `/terminate` whose connection was evicted mid-hook (520 idle connections opened
/// 1 s into it) never stopped the app: its work ran in the connection's future, which was dropped.
#[test]
fn a_terminate_whose_connection_is_evicted_still_stops_the_app_and_the_agent_exits() {
    heavy_tier();
    raise_own_fd_limit();
    let mut a = Spec::default()
        .config(SLOW_TERMINATE)
        .app(&["sleep", "1000"])
        .wrapper(PLATFORM_NOFILE)
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let app = a.app_pid().expect("the app runs") as u32;
    let port = a.port;
    let terminate = std::thread::spawn(move || {
        let mut s = connect(port);
        s.write_all(&request_bytes(port, "POST", "/terminate", &[], b"", true))
            .unwrap();
        read_response(&mut BufReader::new(s))
    });
    std::thread::sleep(Duration::from_secs(1));
    let idle: Vec<TcpStream> = (0..520).map(|_| connect(a.port)).collect();
    let exited = a.wait_for(PATIENCE);
    let answer = terminate.join().unwrap();
    eprintln!("terminate answered: {:?}", answer.as_ref().map(Resp::text));
    assert!(exited.is_some(), "the agent exited after /terminate");
    assert!(!alive(app), "the app was stopped");
    assert_eq!(
        answer.map(|r| r.status),
        Some(200),
        "and the platform got its answer"
    );
    drop(idle);
}

/// Finding 3, the other way: 1,200 app workers long-polling `GET /generation?after=N` and
/// reconnecting whenever they are closed used to evict the platform's hook connections, and a
/// `/terminate` still working was cut with them.
#[test]
fn twelve_hundred_reconnecting_long_pollers_never_cost_the_platform_a_hook() {
    heavy_tier();
    raise_own_fd_limit();
    let mut a = Spec::default()
        .config(&format!(
            "{SLOW_TERMINATE}[[secret]]\nname = \"k\"\nbytes = 16\n"
        ))
        .app(&["sleep", "1000"])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let port = a.port;
    let pollers: Vec<_> = (0..1200)
        .map(|_| {
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut after = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        // Refused (the agent has gone): back off, as a worker does. (At 10 ms,
                        // 1,200 threads spinning on refused connects starved the agent's one
                        // thread of the CPU it needed to finish its own exit.)
                        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                            std::thread::sleep(Duration::from_millis(250));
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let path = format!("/generation?after={after}");
                        if s.write_all(&request_bytes(port, "GET", &path, &[], b"", false))
                            .is_err()
                        {
                            continue;
                        }
                        if let Some(r) = read_response(&mut BufReader::new(s)) {
                            answers.fetch_add(1, Ordering::Relaxed);
                            after = r.json()["generation"].as_u64().unwrap_or(after);
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    platform_hook(&a, "/run", br#"{"microvmId":"vm-poll"}"#, "ok");
    platform_hook(&a, "/suspend", b"", "suspended");
    platform_hook(&a, "/resume", b"", "resumed");
    let t = a.post("/terminate", b"");
    let exited = a.wait_for(PATIENCE);
    stop.store(true, Ordering::SeqCst);
    for p in pollers {
        p.join().unwrap();
    }
    eprintln!(
        "{} long-poll answers; terminate: {}",
        answers.load(Ordering::Relaxed),
        t.text()
    );
    assert_eq!(t.status, 200, "{}", t.text());
    let log: Vec<String> = a
        .stderr
        .all()
        .into_iter()
        .filter(|l| !l.contains("connection table full"))
        .collect();
    assert!(
        exited.is_some(),
        "the agent exited after /terminate; its last lines:\n{}",
        log[log.len().saturating_sub(25)..].join("\n")
    );
}

/// An agent under `strace` with `faults` injected (its own threads and children too), and a
/// `/run` sent to it with a `/status` 200 ms into it: the `/run` answer, how long it took, whether
/// `/status` was answered before it (an order, not a time), and the agent.
fn run_under_faults(faults: &[&str], cfg: &str) -> (Resp, Duration, bool, Agent) {
    // --seccomp-bpf: only the traced calls stop the agent, not every syscall it makes.
    let mut wrapper = vec!["strace", "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null"];
    wrapper.extend_from_slice(faults);
    let a = Spec::default()
        .config(cfg)
        .app(&["sleep", "1000"])
        .wrapper(&wrapper)
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let port = a.port;
    let run = std::thread::spawn(move || {
        let t = Instant::now();
        let r = http(port, "POST", "/run", &[], br#"{"runHookPayload":"p"}"#);
        (r, t.elapsed(), Instant::now())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(a.status().is_object());
    let status_answered = Instant::now();
    let (r, took, run_answered) = run.join().unwrap();
    eprintln!("/run: {} in {took:?}", r.text());
    (r, took, status_answered < run_answered, a)
}

/// Finding 4: state-file writes (with `fsync`) ran on the runtime's one thread: with each
/// `fsync` delayed 100 ms, `/run` answered after its budget, and `/status` waited behind it. Now
/// the state directory is written without `fsync`, on the I/O thread: with every `fsync` and every
/// rename delayed (three renames: payload, seed, generation), `/run` answers inside its budget and
/// `/status` is answered while `/run` is still writing.
#[test]
fn slow_storage_never_blocks_the_hooks() {
    heavy_tier();
    let (r, took, status_first, _a) = run_under_faults(
        &[
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-e",
            "inject=fsync,fdatasync:delay_enter=100000",
            "-e",
            "inject=rename,renameat,renameat2:delay_enter=150000",
        ],
        "[entropy]\nkernel = \"off\"\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // "ok" is the agent's own deadline met (past it: 500 "timeout"); the rest is causal.
    assert_eq!(r.json()["outcome"], "ok", "{}", r.text());
    assert!(took < ANSWERED_IN_BUDGET, "{took:?}");
    assert!(
        status_first,
        "/status was answered while /run was still writing"
    );
}

/// Finding 4, `exec`: a notify command whose `execve` took 2 s (a binary paged in from a restored
/// VM's disk) made `/run` answer at 2.01 s: the standard library waits for the exec, and it ran on
/// the runtime's thread. Now it runs on the I/O thread, inside the notification's time limit.
/// The assertions are causal: `/run` answered before the injected 5 s delay ended, and `/status`
/// was answered while `/run` waited. (It asserted "within 1 s" under strace, and failed the
/// README's test command on its first run in a fresh clone, 2 times of 3: #32.)
#[test]
fn a_slow_exec_never_blocks_the_hooks() {
    heavy_tier();
    const INJECTED: Duration = Duration::from_secs(5);
    let delay = format!("inject=execve:delay_enter={}", INJECTED.as_micros());
    let (r, took, status_first, a) = run_under_faults(
        // Only the notify command's exec (`-P`): the agent's own and the app's start at once.
        &["-P", "/bin/true", "-e", "trace=execve", "-e", &delay],
        "[entropy]\nkernel = \"off\"\n[notify]\nexec = [\"/bin/true\"]\ntimeout = \"500ms\"\n\
         on_timeout = \"continue\"\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["outcome"],
        "ok",
        "waived by on_timeout: {}",
        r.text()
    );
    assert!(took < INJECTED, "answered after the exec ended: {took:?}");
    assert!(
        status_first,
        "/status answered while /run waited for the exec"
    );
    let notify = &a.status()["last_routine"]["notify"];
    assert!(notify.to_string().contains("did not start"), "{notify}");
}

/// Finding 5: a state directory that another user created first was trusted: a `secrets` link
/// planted in it made the agent (root) chmod and chown the directory it pointed to.
#[test]
fn a_state_directory_someone_else_prepared_is_refused_and_its_links_never_followed() {
    heavy_tier();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("planted");
    let victim = dir.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("secrets")).unwrap();
    let nobody = std::ffi::CString::new(state.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path we own.
    assert_eq!(unsafe { libc::chown(nobody.as_ptr(), 65534, 65534) }, 0);
    let cfg = "[app]\nuser = \"nobody\"\n[[secret]]\nname = \"k\"\nbytes = 8\n";
    let cfg_path = dir.join("agent.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let start = |state: &std::path::Path| {
        agent_command()
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .arg("-c")
            .arg(&cfg_path)
            .args(["--", "true"])
            .output()
            .unwrap()
    };
    let out = start(&state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("state_dir") && err.contains("uid 65534"),
        "{err}"
    );
    // A 1777 directory of root's is refused too, and left as it was.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = start(&open);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by group or others"));
    assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o7777, 0o1777);
    // A link planted in a directory the agent made (here: by the app's user inside `secrets`,
    // the one place that user may write) is replaced, never followed.
    let a = Spec::default().config(cfg).app(&["sleep", "1000"]).start();
    assert_eq!(a.post("/run", b"").status, 200);
    let planted = victim.join("file");
    std::fs::remove_file(a.state("secrets/k")).unwrap();
    std::os::unix::fs::symlink(&planted, a.state("secrets/k")).unwrap();
    assert_eq!(a.post("/suspend", b"").status, 200);
    assert_eq!(a.post("/resume", b"").json()["outcome"], "resumed");
    assert!(
        !planted.exists(),
        "the secret was not written through the link"
    );
    assert!(std::fs::symlink_metadata(a.state("secrets/k"))
        .unwrap()
        .is_file());
    let m = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (0o755, 0),
        "the victim is untouched"
    );
}

/// Minor: a pass-through app that answered its `/run` with 200 and a body over 1 MiB was taken as
/// a refusal (500: the VM dies). Its status is its answer; the body is kept up to the limit.
#[test]
fn a_pass_through_app_answering_200_with_a_large_body_has_said_200() {
    heavy_tier();
    let (a, _logs) = serving_agent(
        |port| format!("[notify]\nforward = \"http://127.0.0.1:{port}\"\n"),
        &[],
        &[("FIXTURE_RUN_BODY_BYTES", "2000000")],
    );
    let r = a.post("/run", b"");
    assert_eq!(r.status, 200, "{}", &r.text()[..r.text().len().min(300)]);
    assert_eq!(r.json()["outcome"], "ok");
    assert_eq!(
        r.json()["app"]["status"],
        200,
        "{}",
        &r.text()[..r.text().len().min(300)]
    );
    let body = r.json()["app"]["body"].as_str().unwrap_or_default().len();
    eprintln!("the app's answer, folded: {body} bytes");
    assert!(
        body > 1000,
        "the app's large answer was forwarded, cut: {body}"
    );
}

/// Minor: `/generation` long-polls were closed without an answer when the agent exited.
#[test]
fn a_long_poll_gets_its_answer_when_the_agent_exits() {
    heavy_tier();
    let mut a = Spec::default().app(&["sleep", "1000"]).start();
    assert_eq!(a.ready_settled().status, 200);
    let port = a.port;
    let poll = std::thread::spawn(move || http(port, "GET", "/generation?after=0", &[], b""));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.post("/terminate", b"").status, 200);
    assert!(a.wait_for(PATIENCE).is_some());
    let r = poll.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["generation"], 0, "{}", r.text());
}
