//! The load tier: what the app and a crowd of its clients can do to the hooks from the agent's
//! own side (round four of the black-box attack). Every case here has a time budget as its
//! property (a hook answers inside it or the VM is lost), so the cases run one at a time (a lock:
//! no case is another's load), and each asserts the agent's own budget or the issue's, with the
//! load that the case is about and nothing else.

use mva_test_support::agent as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    heavy_tier();
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` threads asking `path` in a loop as fast as they can, each on a new connection, without
/// back-off: what a monitoring loop or a naive client does. Stops when dropped.
struct Crowd {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub answered: Arc<AtomicUsize>,
}

impl Crowd {
    fn start(port: u16, n: usize, path: &'static str) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|_| {
                let (stop, answered) = (stop.clone(), answered.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        use std::io::Write;
                        let _ = s.write_all(&request_bytes(port, "GET", path, &[], b"", true));
                        if read_response(&mut std::io::BufReader::new(s)).is_some() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Crowd {
            stop,
            threads,
            answered,
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A hook, timed from the test's side.
fn timed(a: &Agent, path: &str) -> (Resp, Duration) {
    let t = Instant::now();
    let r = a.post(path, b"{}");
    (r, t.elapsed())
}

/// Round four, finding 1: every `/status` walked the app's whole process tree on the runtime's
/// one thread (an O(n^2) check and a `comm` read per process): 1,500 processes and 16 pollers
/// held `/suspend` and `/resume` for 1.1-3.3 s. Now the walk is linear, on a blocking thread,
/// once a second for every poller. The budget: each hook in 0.1 s (measured here: at
/// most ~15 ms). Against 1dd49b7 `/run` answered 500 `timeout` (past its 1 s).
#[test]
fn sixteen_status_pollers_and_1500_app_processes_leave_the_hooks_their_budget() {
    let _serial = serial();
    let a = Spec::default()
        .app(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 1500 ]; do sleep 1000 & i=$((i+1)); done; echo spawned; wait",
        ])
        .start();
    a.stdout.wait_for("1,500 processes", |l| l == "spawned");
    eventually("1,500 processes in /status", || {
        let inproc = &a.status()["inproc"];
        // (The total is new; the agent before it listed every process.)
        let n = inproc["not_taking_part_total"]
            .as_u64()
            .or_else(|| inproc["not_taking_part"].as_array().map(|l| l.len() as u64));
        n.is_some_and(|n| n >= 1500)
    });
    // The control: the same hooks without the pollers (printed, for the reader of a failure).
    let (r, took) = timed(&a, "/validate");
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("without pollers: /validate {took:?}");
    let pollers = Crowd::start(a.port, 16, "/status");
    eventually("the pollers are answered", || {
        pollers.answered.load(Ordering::Relaxed) > 100
    });
    let mut worst = Vec::new();
    for (path, ok) in [("/run", 200), ("/suspend", 200), ("/resume", 200)] {
        let (r, took) = timed(&a, path);
        assert_eq!(r.status, ok, "{path}: {}", r.text());
        worst.push((path, took));
    }
    let before = pollers.answered.load(Ordering::Relaxed);
    // Several rounds: one lucky answer proves nothing.
    for _ in 0..5 {
        for path in ["/suspend", "/resume"] {
            let (r, took) = timed(&a, path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            worst.push((path, took));
        }
    }
    let served = pollers.answered.load(Ordering::Relaxed) - before;
    drop(pollers);
    eprintln!("with 16 pollers ({served} /status answered meanwhile): {worst:?}");
    let slow: Vec<_> = worst
        .iter()
        .filter(|(_, t)| *t > Duration::from_millis(100))
        .collect();
    assert!(
        slow.is_empty(),
        "hooks over 0.1 s with 16 pollers ({served} /status answered meanwhile): {slow:?}"
    );
    let st = a.status();
    assert_eq!(
        st["inproc"]["not_taking_part"].as_array().unwrap().len(),
        64,
        "the list is cut, the total said: {}",
        st["inproc"]["not_taking_part_total"]
    );
}

/// A 503 past the long-poll cap: its `Retry-After` and its body.
type Busy = (Option<String>, String);

/// 1,200 app workers long-polling `GET /generation?after=N`, each reconnecting at once whenever
/// its connection ends or is refused: no back-off anywhere (the naive loop). Stops when dropped.
struct Pollers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    answers: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    /// The first 503 a poller got.
    first_busy: Arc<Mutex<Option<Busy>>>,
}

impl Pollers {
    fn start(port: u16, n: usize) -> Pollers {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let first_busy = Arc::new(Mutex::new(None));
        let threads = (0..n)
            .map(|_| {
                let (stop, answers, busy) = (stop.clone(), answers.clone(), busy.clone());
                let first_busy = first_busy.clone();
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        use std::io::Write;
                        let mut after = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port))
                            else {
                                continue;
                            };
                            let _ = s.set_read_timeout(Some(Duration::from_secs(70)));
                            let path = format!("/generation?after={after}");
                            let req = request_bytes(port, "GET", &path, &[], b"", true);
                            if s.write_all(&req).is_err() {
                                continue;
                            }
                            let Some(r) = read_response(&mut std::io::BufReader::new(s)) else {
                                continue;
                            };
                            if r.status == 503 {
                                busy.fetch_add(1, Ordering::Relaxed);
                                let mut first = first_busy.lock().unwrap();
                                if first.is_none() {
                                    *first =
                                        Some((r.header("retry-after").map(String::from), r.text()));
                                }
                            } else if let Some(g) =
                                serde_json::from_slice::<serde_json::Value>(&r.body)
                                    .ok()
                                    .and_then(|v| v["generation"].as_u64())
                            {
                                answers.fetch_add(1, Ordering::Relaxed);
                                after = g;
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        Pollers {
            stop,
            threads,
            answers,
            busy,
            first_busy,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Round four, finding 3: 1,200 such pollers, then `/run`, `/suspend`, `/resume`, `/terminate`:
/// every hook's connection was closed without an answer, and 15 s after `/terminate` the agent
/// was still running (the `/run` had never been read: state `ready`). Round three's test passed
/// only because its pollers backed off. Now long-polls have a cap of their own (half the
/// connection table): past it a poll is answered at once, 503 with `Retry-After`, so the table
/// always has room for the hooks; and the hook port's listener stays open (not accepting) until
/// the agent exits, so a crowd that reconnects at once waits in the kernel's queue instead of
/// spinning on refused connections and starving the agent's exit. With the agent's descriptor
/// limit 8192 and 1024 (the platform's). Against 1dd49b7 (its release build; the last assertion
/// left out, the agent having no cap): at 8192 the hooks answered and the agent exited 0.03 to
/// 7.8 s after `/terminate`; at 1024 `/run` failed, `secret-failed`: "No file descriptors
/// available". Now: hooks 0.2-0.4 s (debug build), exit 2.1-6.0 s after `/terminate` (the 2 s
/// drain, and the rest under load), inside the stop budget this test asserts (10 s).
#[test]
fn twelve_hundred_pollers_that_never_back_off_cost_no_hook_and_no_exit() {
    let _serial = serial();
    raise_own_fd_limit();
    for nofile in [8192, 1024] {
        let limit = format!("--nofile={nofile}:{nofile}");
        let mut a = Spec::default()
            .wrapper(&["prlimit", &limit, "--"])
            .config("[[secret]]\nname = \"k\"\nbytes = 16\n")
            .app(&["sleep", "1000"])
            .start();
        assert_eq!(a.ready_settled().status, 200);
        let mut pollers = Pollers::start(a.port, 1200);
        eventually("the pollers are waiting", || {
            // (An agent before the long-poll count: two seconds, as the test of round three.)
            match a.status()["hooks_port"]["long_polls"].as_u64() {
                Some(n) => n > 100,
                None => {
                    std::thread::sleep(Duration::from_secs(2));
                    true
                }
            }
        });
        let mut took = Vec::new();
        for (path, outcome) in [
            ("/run", "ok"),
            ("/suspend", "suspended"),
            ("/resume", "resumed"),
        ] {
            let (r, t) = timed(&a, path);
            assert_eq!(r.status, 200, "nofile {nofile}: {path}: {}", r.text());
            assert_eq!(r.json()["outcome"], outcome, "nofile {nofile}: {path}");
            took.push((path, t));
        }
        let (r, t) = timed(&a, "/terminate");
        took.push(("/terminate", t));
        assert_eq!(r.status, 200, "nofile {nofile}: /terminate: {}", r.text());
        let answered = Instant::now();
        let exited = a.wait_for(Duration::from_secs(10));
        let exit_took = answered.elapsed();
        pollers.stop();
        eprintln!(
            "nofile {nofile}: {took:?}; exited {exit_took:?} after /terminate's answer; {} \
             long-poll answers, {} 503",
            pollers.answers.load(Ordering::Relaxed),
            pollers.busy.load(Ordering::Relaxed)
        );
        assert!(
            exited.is_some(),
            "nofile {nofile}: the agent still runs 10 s (the app's stop_timeout) after /terminate"
        );
        let late: Vec<_> = took
            .iter()
            .filter(|(_, t)| *t >= Duration::from_secs(1))
            .collect();
        assert!(
            late.is_empty(),
            "nofile {nofile}: past the 1 s budget: {late:?}"
        );
        assert!(
            pollers.busy.load(Ordering::Relaxed) > 0,
            "the cap was reached (the case is what it says)"
        );
        // The answer past the cap says when to ask again, and why, in words.
        let (retry_after, body) = pollers.first_busy.lock().unwrap().clone().unwrap();
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
        let error = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].to_string();
        assert!(
            error.contains("too many long-polls waiting") && error.contains("ask again in 1 s"),
            "{error}"
        );
    }
}
