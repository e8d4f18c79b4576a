//! A clone-safe Rust app for microvm-agent (std HTTP, `rand` 0.9), on its client library
//! (`microvm-agent-client`, clients/rust).
//!
//! The trap: any `StdRng` you keep is seeded once, during the image build, and never reseeds by
//! itself (`rand::rng()`, ThreadRng, reseeds only after 64 KiB of output): every clone draws the
//! same numbers. The fix: replace it in a callback the library runs in every clone before the
//! agent answers /run (and on every /resume), seeded from the kernel *and* the agent's seed
//! (`seed_material()`: OS bytes XOR the agent's seed): under the platform's default capabilities
//! and without VMGenID, `OsRng` can return the same bytes in every clone; the seed cannot.
//! `rand::rng()` is seeded from `OsRng` once per thread: in this thread-per-connection server
//! every request gets a fresh one (safe only where the kernel was reseeded); in a long-lived
//! thread (a pool, an async runtime's worker) it is cloned state.
//!
//! GET /probe answers the next value of each common generator and what this template claims for
//! it ("safe", "kernel": safe only where the kernel was reseeded, "none"); tests/vm/runtime_vm.rs
//! measures them in real clones.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng, TryRngCore};

static RNG: Mutex<Option<StdRng>> = Mutex::new(None);
static GENERATION: Mutex<u64> = Mutex::new(0);
/// Made at start-up and never replaced: what a library keeps (the probe's trap).
static STARTUP: Mutex<Option<StdRng>> = Mutex::new(None);

const CLAIMS: [(&str, &str); 4] = [
    ("StdRng kept by the app (replaced by the handler)", "safe"),
    ("StdRng made at start-up", "none"),
    ("rand::rng() in a new thread", "kernel"),
    ("OsRng", "kernel"),
];

/// A generator's next eight draws, as a JSON list: the test compares each clone's value with
/// the others' next draws (a cloned generator read at another position is not a reseeded one).
fn draws(mut next: impl FnMut() -> String) -> String {
    let all: Vec<String> = (0..8).map(|_| format!(r#""{}""#, next())).collect();
    format!("[{}]", all.join(","))
}

fn probe() -> String {
    let os = || {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.try_fill_bytes(&mut b).expect("getrandom");
        b.iter().map(|b| format!("{b:02x}")).collect()
    };
    let values = [
        draws(|| RNG.lock().unwrap().as_mut().expect("seeded").random::<u64>().to_string()),
        draws(|| STARTUP.lock().unwrap().as_mut().expect("seeded").random::<u64>().to_string()),
        draws(|| rand::rng().random::<u64>().to_string()),
        draws(os),
    ];
    let join = |f: &dyn Fn(usize) -> String| (0..CLAIMS.len()).map(f).collect::<Vec<_>>().join(",");
    format!(
        r#"{{"runtime":"Rust (rand 0.9)","generation":{},"values":{{{}}},"claims":{{{}}}}}"#,
        *GENERATION.lock().unwrap(),
        join(&|i| format!(r#""{}":{}"#, CLAIMS[i].0, values[i])),
        join(&|i| format!(r#""{}":"{}""#, CLAIMS[i].0, CLAIMS[i].1)),
    )
}

/// A new generator from the kernel's bytes XOR the agent's seed: uniform if either is, different
/// per clone if the seed is.
fn reseed() {
    *RNG.lock().unwrap() = Some(StdRng::from_seed(microvm_agent_client::seed_material()));
}

/// The generator's next value, drawn from a copy: a fingerprint of its state.
fn fingerprint() -> String {
    let copy = RNG.lock().unwrap().clone();
    format!("{:016x}", copy.expect("seeded").random::<u64>())
}

fn main() {
    reseed();
    *STARTUP.lock().unwrap() = Some(StdRng::from_os_rng());
    // Every clone's /run, every /resume: runs before the agent answers the hook.
    microvm_agent_client::on_new_generation(|g| {
        let before = fingerprint();
        reseed();
        *GENERATION.lock().unwrap() = g.number;
        let reason = g.reason.as_deref().unwrap_or("");
        println!(r#"{{"event":"{reason}","generation":{},"before":"{before}","after":"{}"}}"#, g.number, fingerprint());
        Ok(())
    });
    // Before the VM is frozen (on_terminate: before the app is stopped).
    microvm_agent_client::on_suspend(|g| {
        println!(r#"{{"event":"suspend","generation":{}}}"#, g.number);
        Ok(())
    });
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                    break;
                }
            }
            let (status, text) = match line.split_whitespace().nth(1).unwrap_or("/") {
                "/healthz" => ("200 OK", r#"{"ok":true}"#.to_string()),
                "/probe" => ("200 OK", probe()),
                "/whoami" => {
                    let value: u64 = RNG.lock().unwrap().as_mut().expect("seeded").random();
                    let g = *GENERATION.lock().unwrap();
                    ("200 OK", format!(r#"{{"generation":{g},"random":{value},"fingerprint":"{}"}}"#, fingerprint()))
                }
                _ => ("404 Not Found", r#"{"error":"not found"}"#.to_string()),
            };
            let _ = write!(w, "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len());
        });
    }
}
