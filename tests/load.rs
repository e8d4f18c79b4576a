//! The load tier: what the app and a crowd of its clients can do to the hooks from the agent's
//! own side (round four of the black-box attack). Every case here has a time budget as its
//! property (a hook answers inside it or the VM is lost), so the cases run one at a time (a lock:
//! no case is another's load), and each asserts the agent's own budget or the issue's, with the
//! load that the case is about and nothing else.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
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
