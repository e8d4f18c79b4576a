//! What the test tiers share (`tests/README.md`), one crate instead of files included by path
//! into every test binary:
//!
//! - [`agent`]: the agent under test (built, or `MICROVM_AGENT_BIN` through
//!   `MICROVM_AGENT_RUNNER`), started on port 0 with a temporary state directory, raw HTTP/1.1 to
//!   it, its logs, and everything it started killed when the test ends;
//! - [`ports`]: ports for the apps the tests start, reserved for the test's life (never a port
//!   that was free a moment ago);
//! - [`machine_lock`]: one heavy tier on this machine at a time;
//! - [`repo`]: the binaries cargo built, the repository's root, the tools the templates need,
//!   a template's build context;
//! - [`vm`]: what `tests/vm/prepare.sh` prepared, initramfs writing and QEMU guests over QMP.

pub mod agent;
pub mod machine_lock;
pub mod ports;
pub mod repo;
pub mod vm;
