//! One heavy tier on this machine at a time, whichever `cargo test` runs it.
//!
//! The heavy tiers (the clone tests in QEMU, the runtime clone test, the chaos tier, the crowds,
//! and the floods of `abuse_and_faults.rs` and `public_endpoint.rs`) each assert time budgets
//! with the machine to themselves in mind: a restored VM under TCG answering `/run` within 1 s, hooks under a
//! crowd within 0.1 s. Two `cargo test --workspace` run side by side (a second checkout, an
//! editor's test runner, CI's retry beside a developer) reach the same tiers at about the same
//! time: the clone test of each then ran four QEMU guests on two cores, and both failed "did not
//! acknowledge" (#32); a flood test of one run beside the 1,200 pollers of another answered `/run`
//! after 2.5 and 4.2 s. So the first test of a heavy tier in a test binary takes an exclusive
//! `flock` on a file in the temporary directory and the process keeps it until it exits: the
//! other run's heavy tier waits for it (its light tests go on), and the tests inside one binary
//! still run as they always did.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;

static HELD: OnceLock<std::fs::File> = OnceLock::new();

/// Waits until no other process runs a heavy tier, then holds the machine until this one exits.
pub fn heavy_tier() {
    HELD.get_or_init(|| {
        let path = std::env::temp_dir().join("microvm-agent-heavy-tier.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let started = std::time::Instant::now();
        // SAFETY: flock on a descriptor this File owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "flock: {e}");
        }
        if started.elapsed().as_secs() >= 1 {
            eprintln!(
                "(waited {:?} for another test run's heavy tier)",
                started.elapsed()
            );
        }
        file
    });
}
