//! A stale clock as a restore signal: the hooks' side of the routine's clock check
//! (`clone::per_vm`).

use super::Agent;
use crate::clone::per_vm::read_clock;
use crate::sys::wallclock;

impl Agent {
    /// A stale clock as a restore signal, for a clone whose hooks never come: when the app asks
    /// `/generation` or `/status` (its long-poll comes back after a restore), the clock is
    /// compared with its reference; a second or more staler than the last comparison left it
    /// means the VM was stopped and restored, and the routine runs (`restore_detected`). The
    /// first comparison only sets the baseline (a build VM's app that polls sets it before the
    /// snapshot).
    pub async fn clock_says_restored(self: std::sync::Arc<Self>) {
        use crate::hooks::lifecycle::State::{Ready, Running, Suspended};
        if !matches!(self.state(), Ready | Running | Suspended) {
            return;
        }
        // One comparison at a time: a burst of requests costs one read, not one each.
        use std::sync::atomic::Ordering::Relaxed;
        if self.lineage.clock_comparing.swap(true, Relaxed) {
            return;
        }
        let reading = read_clock().await;
        self.lineage.clock_comparing.store(false, Relaxed);
        let Some(reading) = reading else {
            return;
        };
        let staler = {
            let mut base = crate::sys::lock(&self.lineage.clock_baseline);
            let staler =
                base.is_some_and(|b| reading.offset_ms - b >= wallclock::STALE.as_millis() as i64);
            if base.is_none() {
                *base = Some(reading.offset_ms);
            }
            staler
        };
        if staler {
            self.restore_detected("clock-stale").await;
        }
    }
}
