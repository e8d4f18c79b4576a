//! Thin, safe wrappers over what the system offers: atomic state files held by descriptor, bounded
//! reads of files others can write, the
//! I/O thread that runs whatever may block, timers that tell a
//! freeze from elapsed time, capabilities (the app's and the agent's own), the non-blocking log writer, signals (the signalfd and `kill`),
//! what kind of program a file is (ELF: Go, static, dynamic), the outbound HTTP client (a leaf: the supervisor's probes, the notify callbacks and the hook
//! pass-through all use it, so it lives below them), and the platform's environment.

pub mod bounded;
pub mod caps;
pub mod client;
pub mod clock;
pub mod elf;
pub mod logwriter;
pub mod offload;
pub mod platform_env;
pub mod signals;
pub mod state_files;
pub mod wallclock;

/// Locks `m`, whether or not a panic poisoned it. Every mutex of the agent guards plain data
/// that a panic cannot leave half-updated in a way that matters more than the hook port: a hook
/// task that panics answers 500, and every later hook must still get an answer.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
