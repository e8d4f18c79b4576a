//! Noticing a restore without a hook, as defence in depth: a VM restored from a snapshot (or
//! resumed) whose `/run` or `/resume` hook is disabled, late, or never comes.
//!
//! Three event sources, each optional, none polled:
//! - `/dev/vmclock0`: the VMClock device's `vm_generation_counter`, which the hypervisor bumps on
//!   every snapshot load; the device wakes `poll()` when it changes (Linux 7.0, or backports).
//! - the kernel's `NEW_VMGENID=1` uevent (the VMGenID driver, on a netlink socket).
//! - a `timerfd` on CLOCK_REALTIME armed with `TFD_TIMER_CANCEL_ON_SET`: it reports every step of
//!   the wall clock; a forward step of a second or more against the monotonic clock is what a
//!   restore looks like once the guest's clock is corrected.
//!
//! The decisions are in [`Detector`], a pure struct the unit tests feed synthetic events.
//! Whether the routine then runs is the agent's call (`Agent::restore_detected`): not if a hook
//! just made a generation for the same restore, and only on a VM that is serving.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// A wall-clock step at least this far forward counts as a restore.
pub const CLOCK_STEP: Duration = Duration::from_secs(1);

const VMCLOCK_MAGIC: u32 = 0x4b4c_4356; // "VCLK"
const VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT: u64 = 1 << 8;
/// Offset of `vm_generation_counter` in `struct vmclock_abi`.
const VMCLOCK_GEN_OFFSET: usize = 104;

/// Turns raw observations into "this is a restore".
#[derive(Debug, Default)]
pub struct Detector {
    counter: Option<u64>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in nanoseconds, when last seen.
    offset_ns: Option<i128>,
}

impl Detector {
    /// A VM generation counter reading; true when it moved since the last one.
    pub fn counter(&mut self, value: u64) -> bool {
        let moved = self.counter.is_some_and(|old| old != value);
        self.counter = Some(value);
        moved
    }

    /// The wall clock was set; `offset_ns` is the new realtime - monotonic. True for a forward
    /// step of at least [`CLOCK_STEP`].
    pub fn clock_set(&mut self, offset_ns: i128) -> bool {
        let step = self.offset_ns.map(|old| offset_ns - old);
        self.offset_ns = Some(offset_ns);
        step.is_some_and(|s| s >= CLOCK_STEP.as_nanos() as i128)
    }
}

/// Whether a uevent message announces a new VM generation.
pub fn is_vmgenid_uevent(msg: &[u8]) -> bool {
    msg.split(|b| *b == 0)
        .any(|field| field == b"NEW_VMGENID=1")
}

/// Parses a vmclock page: the counter, if the device has one.
pub fn vmclock_counter(page: &[u8]) -> Option<u64> {
    let u32_at = |o: usize| {
        page.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        page.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if u32_at(0)? != VMCLOCK_MAGIC || (u32_at(4)? as usize) < VMCLOCK_GEN_OFFSET + 8 {
        return None;
    }
    if u64_at(24)? & VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT == 0 {
        return None;
    }
    u64_at(VMCLOCK_GEN_OFFSET)
}

fn offset_now() -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let ns = |clock| {
        clock_gettime(clock)
            .map(|ts| i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

/// The sources that could be opened, for `/status`.
pub fn describe(sources: &Sources) -> Vec<&'static str> {
    let mut v = Vec::new();
    if sources.vmclock.is_some() {
        v.push("vmclock");
    }
    if sources.uevent.is_some() {
        v.push("vmgenid-uevent");
    }
    if sources.clock.is_some() {
        v.push("clock-step");
    }
    v
}

pub struct Sources {
    vmclock: Option<AsyncFd<File>>,
    uevent: Option<AsyncFd<OwnedFd>>,
    clock: Option<AsyncFd<OwnedFd>>,
}

impl Sources {
    /// Opens whatever this VM offers. Never fails: a missing source is simply absent.
    pub fn open() -> Sources {
        Sources {
            vmclock: open_vmclock(),
            uevent: open_uevent(),
            clock: open_clock(),
        }
    }
}

fn open_vmclock() -> Option<AsyncFd<File>> {
    let file = File::open("/dev/vmclock0").ok()?;
    let mut page = [0u8; 128];
    file.read_at(&mut page, 0).ok()?;
    vmclock_counter(&page)?;
    // Registration fails (EPERM) on a device without poll support: then it is no source.
    crate::sys::signals::watch_readable(file).ok()
}

fn open_uevent() -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: plain socket calls; the descriptor is owned from here on.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        );
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1; // the kernel's uevents
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        if libc::bind(
            fd.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            len,
        ) != 0
        {
            return None;
        }
        crate::sys::signals::watch_readable(fd).ok()
    }
}

/// Arms the timer far in the future: it never expires, it only reports clock steps.
fn arm(timer: &OwnedFd) -> bool {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: i32::MAX.into(),
            tv_nsec: 0,
        },
    };
    // SAFETY: a valid timerfd and a valid itimerspec.
    unsafe {
        libc::timerfd_settime(
            timer.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
            &spec,
            std::ptr::null_mut(),
        ) == 0
    }
}

fn open_clock() -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: timerfd_create returns a new descriptor we own, or -1.
    let fd = unsafe {
        libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let timer = unsafe { OwnedFd::from_raw_fd(fd) };
    if !arm(&timer) {
        return None;
    }
    crate::sys::signals::watch_readable(timer).ok()
}

/// Watches every open source until the process ends, and hands each restore to `on_restore`
/// (the wiring passes `Agent::restore_detected`: this module does not know the agent, so the
/// dependency points down, `hooks -> clone`). One restore is handled before the next is read.
pub async fn watch<F, Fut>(mut sources: Sources, mut on_restore: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut counter, mut clock) = (Detector::default(), Detector::default());
    if let Some(fd) = &sources.vmclock {
        let mut page = [0u8; 128];
        if fd.get_ref().read_at(&mut page, 0).is_ok() {
            counter.counter(vmclock_counter(&page).unwrap_or(0));
        }
    }
    clock.clock_set(offset_now());
    loop {
        let source = tokio::select! {
            Some(s) = next_vmclock(&sources.vmclock, &mut counter) => s,
            Some(s) = next_uevent(&sources.uevent) => s,
            Some(s) = next_clock(&mut sources.clock, &mut clock) => s,
            else => return,
        };
        on_restore(source).await;
    }
}

/// Resolves with a source name when the counter moved; `None` when the source is gone.
async fn next_vmclock(fd: &Option<AsyncFd<File>>, detector: &mut Detector) -> Option<&'static str> {
    let fd = fd.as_ref()?;
    loop {
        let mut guard = fd.readable().await.ok()?;
        let mut page = [0u8; 128];
        let value = guard
            .get_inner()
            .read_at(&mut page, 0)
            .ok()
            .and_then(|_| vmclock_counter(&page));
        guard.clear_ready();
        if value.is_some_and(|v| detector.counter(v)) {
            return Some("vmclock");
        }
    }
}

async fn next_uevent(fd: &Option<AsyncFd<OwnedFd>>) -> Option<&'static str> {
    let fd = fd.as_ref()?;
    let mut buf = vec![0u8; 8192];
    loop {
        let mut guard = fd.readable().await.ok()?;
        // SAFETY: a zeroed sockaddr_nl is a valid value of that plain C struct.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: recvfrom into our own buffer and address, with their true sizes.
        let n = unsafe {
            libc::recvfrom(
                guard.get_inner().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        if n < 0 {
            guard.clear_ready();
            continue;
        }
        // Only the kernel (port 0) speaks for the VM generation: a process in the VM that can
        // send to the uevent group (udev, or anyone with the capability) must not trigger a
        // new generation by writing `NEW_VMGENID=1`.
        if from.nl_pid == 0 && is_vmgenid_uevent(&buf[..n as usize]) {
            return Some("vmgenid-uevent");
        }
    }
}

async fn next_clock(
    fd: &mut Option<AsyncFd<OwnedFd>>,
    detector: &mut Detector,
) -> Option<&'static str> {
    let timer = fd.as_ref()?;
    loop {
        let mut guard = timer.readable().await.ok()?;
        let mut buf = [0u8; 8];
        // SAFETY: reading the expiration count into our buffer.
        let n = unsafe { libc::read(guard.get_inner().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        let cancelled =
            n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECANCELED);
        guard.clear_ready();
        if !cancelled {
            continue;
        }
        if !arm(guard.get_inner()) {
            *fd = None;
            return None;
        }
        if detector.clock_set(offset_now()) {
            return Some("clock-step");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_changes_are_restores_the_first_reading_is_not() {
        let mut d = Detector::default();
        assert!(!d.counter(5), "the first reading is the baseline");
        assert!(!d.counter(5));
        assert!(d.counter(6));
        assert!(!d.counter(6));
        assert!(d.counter(1), "any change, not only upwards");
    }

    #[test]
    fn forward_clock_steps_of_a_second_are_restores() {
        let mut d = Detector::default();
        let s = 1_000_000_000i128;
        assert!(!d.clock_set(100 * s), "baseline");
        assert!(
            !d.clock_set(100 * s + s / 2),
            "a half-second NTP step is not"
        );
        assert!(d.clock_set(3700 * s), "an hour forward is");
        assert!(!d.clock_set(3600 * s), "backwards is not");
        assert!(d.clock_set(3602 * s));
    }

    #[test]
    fn uevents() {
        assert!(is_vmgenid_uevent(
            b"change@/devices/LNXSYSTM:00/VMGENID\0ACTION=change\0NEW_VMGENID=1\0SEQNUM=5\0"
        ));
        assert!(!is_vmgenid_uevent(
            b"add@/devices/x\0ACTION=add\0NEW_VMGENID=10\0"
        ));
        assert!(!is_vmgenid_uevent(b""));
    }

    #[test]
    fn vmclock_pages_are_validated_before_trusted() {
        let mut page = [0u8; 128];
        page[0..4].copy_from_slice(&VMCLOCK_MAGIC.to_le_bytes());
        page[4..8].copy_from_slice(&4096u32.to_le_bytes());
        page[104..112].copy_from_slice(&42u64.to_le_bytes());
        assert_eq!(
            vmclock_counter(&page),
            None,
            "no VM_GEN_COUNTER_PRESENT flag"
        );
        page[24..32].copy_from_slice(&VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT.to_le_bytes());
        assert_eq!(vmclock_counter(&page), Some(42));
        page[0] ^= 1;
        assert_eq!(vmclock_counter(&page), None, "bad magic");
        assert_eq!(vmclock_counter(&page[..50]), None, "short read");
    }
}
