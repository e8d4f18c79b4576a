//! The system calls of the split: cutting a child's sets between `fork` and `exec`, and the
//! agent dropping its own. Everything here is async-signal-safe (plain system calls).

use super::{ForChild, Sets};

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's permitted, effective and inheritable sets (async-signal-safe).
fn capset(permitted: u64, effective: u64, inheritable: u64) -> bool {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: a valid v3 header and two data structs, as capset(2) requires.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0 }
}

fn capget() -> Option<(u64, u64)> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a valid v3 header and room for two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    (r == 0).then(|| {
        let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        (
            join(data[0].permitted, data[1].permitted),
            join(data[0].effective, data[1].effective),
        )
    })
}

/// In the child between `fork` and `exec`, before it changes its user (cutting the bounding set
/// needs `CAP_SETPCAP`). Only system calls: async-signal-safe. Errors are returned as the raw
/// errno (the spawn then fails with it: a child that would run with more than it should must not
/// run).
pub fn apply_in_child(c: &ForChild) -> Result<(), i32> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM)
    };
    for cap in 0..=c.last_cap.min(63) {
        if c.bounding & (1u64 << cap) == 0 {
            // SAFETY: prctl with plain integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 && errno() != libc::EINVAL {
                return Err(errno());
            }
        }
    }
    // SAFETY: prctl with plain integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    // Inheritable emptied: for a root program `exec` computes permitted as inheritable |
    // bounding, so a full inheritable set would undo the cut.
    if let Some((permitted, effective)) = capget() {
        if !capset(permitted, effective, 0) {
            return Err(errno());
        }
    }
    if c.no_new_privileges {
        // SAFETY: prctl with plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// The agent drops what it does not use: effective to `keeps`, permitted and bounding to
/// `keeps | app`, inheritable empty. The app's set stays permitted (not effective) because
/// `exec` under `no_new_privileges` gives a child no capability its parent did not have
/// permitted. Returns what it holds afterwards.
pub fn drop_own(keeps: u64, app: u64, last_cap: u32) -> Result<Sets, String> {
    for cap in 0..=last_cap.min(63) {
        if (keeps | app) & (1u64 << cap) == 0 {
            // SAFETY: prctl with plain integer arguments.
            unsafe {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
    }
    if !capset(keeps | app, keeps, 0) {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(Sets::of_self())
}
