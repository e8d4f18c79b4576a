//! The wall clock against the best reference the VM offers, and stepping it.
//!
//! A VM restored from a snapshot resumes `CLOCK_REALTIME` where the snapshot left it unless the
//! hypervisor corrects the guest's clock (Firecracker does on x86_64 only with `clock_realtime`
//! and kvm-clock; QEMU does not; on aarch64 nothing does). A stale clock makes certificates "not
//! yet valid", signed requests "skewed", tokens expire wrongly. References, best first:
//! 1. **vmclock** (a PTP clock named `vmclock`, Linux 6.13+): the hypervisor's UTC, updated
//!    across live migration and snapshots (Firecracker and QEMU 10 offer the device);
//! 2. **ptp-kvm** (`KVM virtual PTP`): the host's `CLOCK_REALTIME` through a hypercall (x86_64
//!    kvm-clock pairing; aarch64 an SMCCC call served by KVM), nanoseconds;
//! 3. **rtc** (`/sys/class/rtc/rtc0/since_epoch`): whole seconds, so ±0.5 s; it follows the host
//!    only where the hypervisor's RTC does (QEMU `-rtc clock=host`; Firecracker's aarch64 PL031;
//!    Firecracker on x86_64 has none).
//!
//! A PTP clock is read with `clock_gettime` on its descriptor, bracketed by two reads of
//! `CLOCK_REALTIME`: the offset is against the bracket's midpoint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Below this the clock counts as right (and is never stepped): above the RTC's ±0.5 s.
pub const STALE: Duration = Duration::from_secs(1);

/// One comparison of `CLOCK_REALTIME` with a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reading {
    pub source: &'static str,
    /// Reference minus `CLOCK_REALTIME`: positive when the VM's clock is behind.
    pub offset_ms: i64,
}

impl Reading {
    pub fn stale(&self) -> bool {
        self.offset_ms.unsigned_abs() >= STALE.as_millis() as u64
    }
}

/// What the clock step found and did, for the generation and `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClockCheck {
    /// `vmclock`, `ptp-kvm`, `rtc`, or `none` (the VM offers no reference: the clock is
    /// unknown, not right).
    pub source: &'static str,
    /// The reference minus the VM's clock before any step (positive: the VM was behind); absent
    /// without a reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
    /// `stepped`, `within-1s`, `not-stepped:off`, `not-stepped:not-on-the-platform`,
    /// `not-stepped:no-cap-sys-time`,
    /// `not-stepped:ahead-of-reference` (a clock ahead is never stepped back), `failed`,
    /// `no-reference`.
    pub action: &'static str,
}

impl ClockCheck {
    /// No reference to compare with: said, so that "unknown" is not read as "right".
    pub const NONE: ClockCheck = ClockCheck {
        source: "none",
        offset_ms: None,
        action: "no-reference",
    };
}

fn realtime_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// What a PTP clock's name says it is.
pub fn ptp_kind(clock_name: &str) -> Option<&'static str> {
    let n = clock_name.trim().to_ascii_lowercase();
    if n.contains("vmclock") {
        Some("vmclock")
    } else if n == "kvm virtual ptp" {
        Some("ptp-kvm")
    } else {
        None
    }
}

fn read_ptp(dev: &str) -> Option<i128> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dev).ok()?;
    // FD_TO_CLOCKID: a dynamic clock id names the descriptor.
    let id = ((!f.as_raw_fd()) << 3) | 3;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id for an open descriptor and a local timespec.
    (unsafe { libc::clock_gettime(id, &mut ts) } == 0)
        .then(|| i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// A reference the VM offers.
#[derive(Debug)]
enum Reference {
    Ptp { source: &'static str, dev: String },
    Rtc,
}

/// The references, best first, looked for once: a VM's devices are its hypervisor's
/// configuration, the same in the snapshot and in every clone (they do not come and go), so a
/// routine never scans sysfs again, and a VM without any never sends the I/O thread a job.
static REFERENCES: std::sync::OnceLock<Vec<Reference>> = std::sync::OnceLock::new();

fn references() -> &'static [Reference] {
    REFERENCES.get_or_init(|| {
        let mut found: Vec<(usize, &'static str, String)> = std::fs::read_dir("/sys/class/ptp")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = std::fs::read_to_string(e.path().join("clock_name")).ok()?;
                let kind = ptp_kind(&name)?;
                let rank = if kind == "vmclock" { 0 } else { 1 };
                Some((
                    rank,
                    kind,
                    format!("/dev/{}", e.file_name().to_string_lossy()),
                ))
            })
            .collect();
        found.sort();
        let mut refs: Vec<Reference> = found
            .into_iter()
            .map(|(_, source, dev)| Reference::Ptp { source, dev })
            .collect();
        if std::path::Path::new(RTC).exists() {
            refs.push(Reference::Rtc);
        }
        refs
    })
}

const RTC: &str = "/sys/class/rtc/rtc0/since_epoch";

/// True once it is known that the VM offers no reference at all: then there is nothing to read
/// and the generation says `"source": "none"`.
pub fn none_known() -> bool {
    REFERENCES.get().is_some_and(Vec::is_empty)
}

/// The offset in ms from a reference in ns and the realtime bracket around its reading.
pub fn offset_ms(reference_ns: i128, before_ns: i128, after_ns: i128) -> i64 {
    let mid = before_ns + (after_ns - before_ns) / 2;
    ((reference_ns - mid) / 1_000_000) as i64
}

/// The RTC in whole seconds: the true time lies in `[s, s+1)`, so `s + 0.5` is its midpoint.
pub fn rtc_offset_ms(rtc_secs: i64, realtime_ns: i128) -> i64 {
    let reference = i128::from(rtc_secs) * 1_000_000_000 + 500_000_000;
    ((reference - realtime_ns) / 1_000_000) as i64
}

/// Compares the wall clock with the best reference there is (blocking: sysfs and device reads;
/// run it on the I/O thread).
pub fn read() -> Option<Reading> {
    for r in references() {
        match r {
            Reference::Ptp { source, dev } => {
                let before = realtime_ns();
                if let Some(ns) = read_ptp(dev) {
                    let after = realtime_ns();
                    return Some(Reading {
                        source,
                        offset_ms: offset_ms(ns, before, after),
                    });
                }
            }
            Reference::Rtc => {
                let mut buf = [0u8; 32];
                let text =
                    crate::sys::bounded::read_into(std::path::Path::new(RTC), &mut buf).ok()?;
                let secs: i64 = std::str::from_utf8(text).ok()?.trim().parse().ok()?;
                return Some(Reading {
                    source: "rtc",
                    offset_ms: rtc_offset_ms(secs, realtime_ns()),
                });
            }
        }
    }
    None
}

/// Steps `CLOCK_REALTIME` by `offset_ms` (needs `CAP_SYS_TIME`).
pub fn step(offset_ms: i64) -> std::io::Result<()> {
    let target = realtime_ns() + i128::from(offset_ms) * 1_000_000;
    // `as _`: the field's own type (libc deprecates naming `time_t` on musl).
    let ts = nix::sys::time::TimeSpec::new(
        target.div_euclid(1_000_000_000) as _,
        target.rem_euclid(1_000_000_000) as _,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptp_clocks_are_known_by_name() {
        assert_eq!(ptp_kind("KVM virtual PTP\n"), Some("ptp-kvm"));
        assert_eq!(ptp_kind("vmclock"), Some("vmclock"));
        // A NIC's hardware clock runs on whatever the network set it to (often TAI).
        assert_eq!(ptp_kind("igb"), None);
    }

    #[test]
    fn offsets_are_against_the_midpoint_and_the_rtc_second() {
        assert_eq!(offset_ms(10_000_000_000, 9_000_000_000, 9_000_002_000), 999);
        assert_eq!(offset_ms(9_000_001_000, 9_000_000_000, 9_000_002_000), 0);
        // The RTC says 100 s; realtime 70.2 s: 30.3 s behind (±0.5 s).
        assert_eq!(rtc_offset_ms(100, 70_200_000_000), 30_300);
        assert_eq!(rtc_offset_ms(100, 100_499_000_000), 1);
        let r = Reading {
            source: "rtc",
            offset_ms: -1000,
        };
        assert!(r.stale());
        assert!(!Reading {
            source: "rtc",
            offset_ms: 999
        }
        .stale());
    }
}
