//! The embedded demo: `microvm-sim` with no arguments runs the agent (this very binary, as
//! `__agent`) supervising a small app (this binary again, as `__demo-app`), so that one command
//! on a fresh checkout shows the whole lifecycle.
//!
//! The demo app is what an image author's app looks like once it is clone-safe: it keeps a
//! user-space generator seeded once at start (the trap), and reseeds it when the agent tells it
//! of a new generation on `POST /__lifecycle`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hooks::Hooks;
use crate::platform::Options;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19000)
}

/// The demo's options and the temporary directory to remove afterwards.
pub fn options() -> (Options, std::path::PathBuf) {
    let me = std::env::current_exe().expect("own path");
    let dir = std::env::temp_dir().join(format!("microvm-sim-demo-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let (hook_port, app_port) = (free_port(), free_port());
    let config = format!(
        r#"[ready]
http = "http://127.0.0.1:{app_port}/healthz"
[[validate.request]]
url = "http://127.0.0.1:{app_port}/"
[notify]
http = "http://127.0.0.1:{app_port}/__lifecycle"
[[secret]]
name = "session-key"
bytes = 16
scrub_on_suspend = true
"#
    );
    let config_path = dir.join("microvm-agent.toml");
    std::fs::write(&config_path, config).expect("demo config");
    let entrypoint = vec![
        me.clone().into_os_string(),
        "__agent".into(),
        "-c".into(),
        config_path.into_os_string(),
        "--listen".into(),
        format!("127.0.0.1:{hook_port}").into(),
        "--state-dir".into(),
        dir.join("state").into_os_string(),
        "--log-format".into(),
        "text".into(),
        "--".into(),
        me.into_os_string(),
        "__demo-app".into(),
        app_port.to_string().into(),
    ];
    let hooks = Hooks {
        port: hook_port,
        ..Hooks::default()
    };
    let o = Options {
        hooks,
        host: "127.0.0.1".into(),
        payload: Some(r#"{"tenant":"demo"}"#.into()),
        microvm_id: "microvm-demo0000000001".into(),
        suspend_for: Duration::from_millis(500),
        app_url: Some(("127.0.0.1".into(), app_port, "/healthz".into())),
        build_timeout: Duration::from_secs(60),
        exit_within: Duration::from_secs(15),
        entrypoint,
        // The timeline is the demo; the agent's own log lines only for what goes wrong.
        env: vec![("MICROVM_AGENT_LOG".into(), "warn".into())],
        caps: crate::container::Caps::Default,
        region: "us-east-1".into(),
        image: "demo".into(),
    };
    (o, dir)
}

struct Xorshift(u64);

impl Xorshift {
    fn seeded() -> Self {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most the length given into our own buffer.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
        Xorshift(u64::from_le_bytes(b) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `__demo-app PORT`: `/healthz`, `/` (a random number), `POST /__lifecycle` (reseed).
pub fn app(port: u16) -> ! {
    let rng = Arc::new(Mutex::new(Xorshift::seeded()));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("demo app port");
    for conn in listener.incoming().flatten() {
        let rng = rng.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(conn.try_clone().expect("socket"));
            let mut w = conn;
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let text = match line.split_whitespace().nth(1).unwrap_or("/") {
                "/__lifecycle" => {
                    *rng.lock().expect("rng") = Xorshift::seeded();
                    "reseeded".to_string()
                }
                "/healthz" => "ok".to_string(),
                _ => format!("a random number: {:016x}", rng.lock().expect("rng").next()),
            };
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        });
    }
    std::process::exit(0)
}
