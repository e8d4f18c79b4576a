//! The container the platform runs the entrypoint in, as measured on the live service
//! (docs/platform.md): root, but only Docker's default capability set (`0xa80425fb`: no
//! CAP_SYS_ADMIN, so no kernel CRNG reseed ioctl), `RLIMIT_NOFILE` 1024 soft and hard, and the
//! image's identity in the environment. `--caps all` models `additionalOsCapabilities: ["ALL"]`.
//! As root the entrypoint also gets its own `/etc/machine-id` (a private mount of a copy), as a
//! container has: the agent rewrites the machine-id on `/run`, and a simulation must never
//! rewrite the machine's own.

use std::ffi::CString;
use std::io;
use std::path::Path;

/// chown dac_override fowner fsetid kill setgid setuid setpcap net_bind_service net_raw
/// sys_chroot mknod audit_write setfcap.
pub const DEFAULT_CAPS: u64 = 0xa804_25fb;
/// The descriptor limit the platform gives (soft and hard).
pub const NOFILE: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caps {
    /// The platform's default set.
    Default,
    /// `additionalOsCapabilities: ["ALL"]`.
    All,
}

impl Caps {
    pub fn describe(self) -> &'static str {
        match self {
            Caps::Default => "the platform's default capabilities (0xa80425fb, no CAP_SYS_ADMIN)",
            Caps::All => "all capabilities (additionalOsCapabilities: [\"ALL\"])",
        }
    }
}

/// The environment the platform injects (names measured; values made up for the simulation).
pub fn env(region: &str, image: &str) -> Vec<(String, String)> {
    vec![
        (
            "AWS_LAMBDA_MICROVM_IMAGE_ARN".into(),
            format!("arn:aws:lambda:{region}:123456789012:microvm-image:{image}"),
        ),
        ("AWS_LAMBDA_MICROVM_IMAGE_NAME".into(), image.into()),
        ("AWS_LAMBDA_MICROVM_IMAGE_VERSION".into(), "1.0".into()),
        ("AWS_REGION".into(), region.into()),
    ]
}

/// The highest capability number this kernel knows (read before `fork`: no allocation after).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Between `fork` and `exec` in the entrypoint's process: the descriptor limit, then (`Default`)
/// the bounding set cut to the default set and every other set to the same. A root process that
/// then execs gets permitted = effective = bounding | inheritable: exactly the default set, as
/// Docker does it. Only async-signal-safe system calls.
pub fn apply_in_child(caps: Caps, last_cap: u32) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: NOFILE,
        rlim_max: NOFILE,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is shared with the parent.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if caps == Caps::All {
        return Ok(());
    }
    for cap in 0..=last_cap {
        if DEFAULT_CAPS & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let low = DEFAULT_CAPS as u32;
    let high = (DEFAULT_CAPS >> 32) as u32;
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    // SAFETY: capset reads the header and two data structs of the v3 layout that we own.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies of the machine's identity files (`/etc/machine-id`, `/etc/hosts`) in `dir`, each with
/// the path it is mounted over in the entrypoint's own mount namespace (the platform's container
/// has its own; a file the machine lacks has nothing to protect).
pub fn identity_copies(dir: &Path) -> Vec<(CString, CString)> {
    ["/etc/machine-id", "/etc/hosts"]
        .into_iter()
        .filter_map(|target| {
            let original = std::fs::read(target).ok()?;
            let copy = dir.join(target.rsplit('/').next()?);
            std::fs::write(&copy, original).ok()?;
            Some((
                CString::new(copy.to_string_lossy().into_owned()).ok()?,
                CString::new(target).ok()?,
            ))
        })
        .collect()
}

/// In the child, before `exec`: mount and UTS namespaces of its own (as the platform's container
/// has: the agent may set its hostname), with each copy bind-mounted over its original. Only
/// system calls.
pub fn private_identity(copies: &[(CString, CString)]) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: unshare and mount with static or owned NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for (copy, target) in copies {
            check(libc::mount(
                copy.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
        }
    }
    Ok(())
}
