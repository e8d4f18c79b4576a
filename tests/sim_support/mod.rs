//! What the simulator package's tests share: where cargo put the binaries they run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A binary that `cargo test --workspace` built next to this test (`target/<profile>/<rel>`).
pub fn built(rel: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(rel);
    assert!(
        p.exists(),
        "{} missing: run the tests through cargo test --workspace",
        p.display()
    );
    p.display().to_string()
}

pub fn agent() -> String {
    built("microvm-agent")
}

pub fn fixture() -> String {
    built("examples/mva-fixture")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
