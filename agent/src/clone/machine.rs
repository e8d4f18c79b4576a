//! What this machine offers for clone safety, read from the kernel (nothing here is configured):
//! whether the agent holds `CAP_SYS_ADMIN` (the kernel reseed ioctls need it; the platform's
//! default capability set lacks it), whether a VMGenID driver is bound or a vmclock device counts
//! VM generations (then the kernel reseeds its own CRNG on a restore), and which hardware random
//! instruction the CPU has. `--check` prints these; every generation records the verdict as
//! `kernel_crng`.

use std::path::Path;

use serde::Serialize;

use crate::clone::entropy::Reseeded;

/// Whether the kernel's CRNG is known to differ between clones after this generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelCrng {
    /// The agent's `RNDRESEEDCRNG` worked: the CRNG was reseeded from per-clone input.
    Reseeded,
    /// The hypervisor tells the guest kernel (VMGenID, or a vmclock generation counter): the
    /// kernel reseeds itself on a restore.
    Platform,
    /// Neither: `getrandom` may return the same bytes in every clone until the kernel's next
    /// scheduled reseed (every 60 s once booted, and only when something draws).
    NotReseeded,
}

impl KernelCrng {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelCrng::Reseeded => "reseeded",
            KernelCrng::Platform => "platform",
            KernelCrng::NotReseeded => "not-reseeded",
        }
    }

    pub fn verdict(reseeded: Reseeded, facts: &Facts) -> KernelCrng {
        if reseeded == Reseeded::Ioctl {
            KernelCrng::Reseeded
        } else if facts.vmgenid || facts.vmclock {
            KernelCrng::Platform
        } else {
            KernelCrng::NotReseeded
        }
    }
}

/// The machine's facts, as `--check` reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Facts {
    pub cap_sys_admin: bool,
    /// A VMGenID driver is bound (ACPI, or the device-tree driver of Linux 6.10+).
    pub vmgenid: bool,
    /// `/dev/vmclock0` with a VM generation counter.
    pub vmclock: bool,
    /// `rdseed`, `rdrand`, `rndr`, or `none`.
    pub hardware_random: &'static str,
}

impl Facts {
    /// The facts, read once per process on first use (the first routine; normally in each clone,
    /// after the restore). They describe the machine, not the VM: the image's capability set, the
    /// machine type's devices, the CPU model are the same for the build VM and all its clones,
    /// so even a value read before the snapshot holds after it. Keeps a few sysfs reads off every
    /// hook's path.
    pub fn get() -> &'static Facts {
        static FACTS: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();
        FACTS.get_or_init(Facts::read)
    }

    pub fn read() -> Facts {
        Facts {
            cap_sys_admin: crate::sys::caps::Sets::of_self().has(crate::sys::caps::SYS_ADMIN),
            vmgenid: vmgenid_bound(),
            vmclock: vmclock_counts_generations(),
            hardware_random: crate::clone::entropy::hardware_random_source(),
        }
    }
}

/// A driver directory that holds at least one bound device (a symlink per device).
fn driver_bound(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
    })
}

fn vmgenid_bound() -> bool {
    [
        "/sys/bus/acpi/drivers/vmgenid",
        "/sys/bus/platform/drivers/vmgenid",
    ]
    .iter()
    .any(|d| driver_bound(Path::new(d)))
}

fn vmclock_counts_generations() -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open("/dev/vmclock0") else {
        return false;
    };
    let mut page = [0u8; 128];
    file.read_at(&mut page, 0).is_ok() && crate::clone::restore::vmclock_counter(&page).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(vmgenid: bool, vmclock: bool) -> Facts {
        Facts {
            cap_sys_admin: false,
            vmgenid,
            vmclock,
            hardware_random: "none",
        }
    }

    #[test]
    fn the_verdict_says_only_what_is_known() {
        assert_eq!(
            KernelCrng::verdict(Reseeded::Ioctl, &facts(false, false)),
            KernelCrng::Reseeded
        );
        assert_eq!(
            KernelCrng::verdict(Reseeded::Write, &facts(true, false)),
            KernelCrng::Platform
        );
        assert_eq!(
            KernelCrng::verdict(Reseeded::Failed, &facts(false, true)),
            KernelCrng::Platform
        );
        assert_eq!(
            KernelCrng::verdict(Reseeded::Write, &facts(false, false)),
            KernelCrng::NotReseeded
        );
        assert_eq!(
            KernelCrng::verdict(Reseeded::Off, &facts(false, false)),
            KernelCrng::NotReseeded
        );
    }

    #[test]
    fn a_driver_directory_without_devices_is_not_bound() {
        let d = std::env::temp_dir().join(format!("mva-driver-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bind"), "").unwrap();
        std::fs::write(d.join("uevent"), "").unwrap();
        assert!(
            !driver_bound(&d),
            "files only: the driver exists, no device"
        );
        std::os::unix::fs::symlink("/", d.join("QEMUVGID:00")).unwrap();
        assert!(driver_bound(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
