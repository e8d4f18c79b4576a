//! This VM's line of generations, and what the routine remembers between runs.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::clone::generation::Generations;
use crate::clone::record::Record;

/// This VM's line of generations, and what the routine remembers between runs.
#[derive(Default)]
pub struct Lineage {
    /// The agent's generator and the published generations.
    pub generations: Generations,
    /// The VM's id from the `/run` body: per-clone input, and in every generation.
    pub microvm_id: Mutex<Option<String>>,
    /// The last new-generation routine, for `/status`.
    pub last_routine: Mutex<Option<Record>>,
    /// When the last routine ran for a hook or a detected restore, so that the same restore seen
    /// again right after (another source, or the clock step that routine made) is not redone.
    pub last_hook_routine: Mutex<Option<Instant>>,
    /// The clock's offset from its reference as the last comparison left it (ms; after a step,
    /// 0): a later one a second staler is a restore.
    pub clock_baseline: Mutex<Option<i64>>,
    /// A stale-clock comparison is running: requests meanwhile start none.
    pub clock_comparing: std::sync::atomic::AtomicBool,
}
