//! Builds the in-process helper (`inproc/preload`, a `no_std` shared library; a workspace crate
//! too, for its clippy and unit tests) for the agent's own
//! target and hands its path to the agent (`MICROVM_AGENT_PRELOAD`), which embeds it: an image
//! still copies one file.
//!
//! One `rustc` call, no cargo: the helper has no dependencies, and a nested cargo would contend
//! for the build directory's lock. It links with the toolchain's own `rust-lld`, so no C
//! toolchain is needed for either architecture; the target's `core` is there because the agent
//! is being built for that target.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
        .join("../inproc/preload/src");
    // The whole folder (cargo rescans a directory): a list of files went stale once, when a
    // new module was left out of it.
    println!("cargo:rerun-if-changed={}", src.display());
    let target = std::env::var("TARGET").unwrap();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("libmicrovm-reseed.so");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(&rustc)
        .args([
            "--edition=2021",
            "--crate-type=cdylib",
            "--crate-name=microvm_reseed",
            "--target",
            &target,
            "-Cpanic=abort",
            "-Copt-level=s",
            "-Ccodegen-units=1",
            "-Cdebuginfo=0",
            "-Cstrip=symbols",
            "-Crelocation-model=pic",
            // musl targets link statically by default, which allows no shared library.
            "-Ctarget-feature=-crt-static",
            "-Clinker=rust-lld",
            "-Clinker-flavor=ld.lld",
            "-Clink-self-contained=no",
            // Every import bound at load, then read-only (full RELRO).
            "-Clink-arg=-znow",
            "-Clink-arg=-zrelro",
            "-Dwarnings",
            "-o",
        ])
        .arg(&out)
        .arg(src.join("lib.rs"))
        // The outer build's flags (sanitizers, coverage, target-cpu) are not the helper's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", rustc.to_string_lossy()));
    assert!(
        status.success(),
        "building inproc/preload for {target} failed"
    );
    println!("cargo:rustc-env=MICROVM_AGENT_PRELOAD={}", out.display());
}
