//! Arbitrary bytes through the real connection handling and dispatch: the accept loop's own
//! `serve_connection` (hyper, the header deadline, the body reader, routing, the origin check,
//! the hooks) on an in-memory stream, a fresh agent per input. Whatever arrives, the agent
//! answers HTTP/1.1 or closes, never panics, never answers a 5xx that a bug produced
//! ("internal-error"), and every refusal carries a readable `error`.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use microvm_agent_fuzz::runtime;
use microvm_agent::hooks::{Agent, Links};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn agent() -> Arc<Agent> {
    let dir = std::env::temp_dir().join(format!("mva-fuzz-conn-{}", std::process::id()));
    let text = format!(
        "state_dir = {:?}\n[entropy]\nkernel = \"off\"\n[identity]\nmachine_id = false\n",
        dir.display().to_string()
    );
    let table: toml::Table = text.parse().unwrap();
    let config = microvm_agent::config::from_table(&table, &Default::default(), None).unwrap();
    let links = Links::without_app(&config.state_dir);
    Agent::new(config, links)
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(microvm_agent::http::accept::serve_connection(server, agent()));
        let (mut rd, mut wr) = tokio::io::split(client);
        let exchange = async {
            let _ = wr.write_all(data).await;
            let _ = wr.shutdown().await;
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        // A long poll (`/generation?after=N`) may rightly wait: such inputs end here.
        let Ok(out) = tokio::time::timeout(Duration::from_secs(2), exchange).await else {
            return;
        };
        // An HTTP/1.0 request is answered in HTTP/1.0.
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not HTTP: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(64)])
        );
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("\"internal-error\""), "a hook panicked: {text}");
        for answer in text.split("HTTP/1.").skip(1).filter_map(|a| a.get(2..)) {
            let status: u16 = answer.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            // hyper's own 4xx (a request it could not parse) have no body; ours always do, but
            // an answer to HEAD carries only the headers (HTTP semantics: found by this target).
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if (400..500).contains(&status) && answer.contains("application/json") && !body.is_empty() {
                assert!(body.contains("\"error\""), "a refusal without an error: {answer}");
            }
        }
    });
});
