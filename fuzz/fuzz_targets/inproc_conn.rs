//! Arbitrary bytes from an app's process through the real in-process connection handling: the
//! registry's accept loop and `conn::serve` on a real Unix socket, with a generation told while
//! the bytes arrive. Whatever a process sends (a hello or not, answers, garbage, overlong lines),
//! the agent never panics, never registers more than one member for one connection, reports
//! every failure within a line's bound (the process's reason is at most 256 bytes), and forgets
//! the process once its connection ends.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use microvm_agent_fuzz::runtime;
use microvm_agent::clone::inproc::{Current, InProc, Seed};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let dir = std::env::temp_dir().join(format!("mva-fuzz-inproc-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("inproc.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let registry = Arc::new(InProc::default());
        let current: Current = Arc::new(|| None);
        let server = tokio::spawn(registry.clone().serve(listener, current));

        let mut stream = UnixStream::connect(&path).await.unwrap();
        // The first line (a hello, if it is one) first; then a generation is told while the
        // rest arrives.
        let cut = data.iter().position(|&b| b == b'\n').map_or(data.len(), |i| i + 1);
        let _ = stream.write_all(&data[..cut]).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(registry.members().len() <= 1, "one connection, several members");
        let draw = || -> Option<Seed> { Some(Seed::default()) };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        let told = async { registry.tell(1, &draw, deadline).await };
        let rest = async {
            let _ = stream.write_all(&data[cut..]).await;
            let _ = stream.shutdown().await;
        };
        let (told, ()) = tokio::join!(told, rest);
        for line in told.failed.iter().chain(&told.late) {
            assert!(line.len() < 256 + 200, "a report beyond a line's bound: {} bytes", line.len());
        }
        drop(stream);
        // The connection's end is seen: the process is forgotten.
        for _ in 0..200 {
            if registry.members().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(registry.members().is_empty(), "a closed connection stayed registered");
        server.abort();
    });
});
