//! The sections about the machine rather than the app: `[entropy]`, `[identity]`, `[clock]`.

use super::file::Section;
use super::*;

/// `[identity] hostname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hostname {
    /// `microvm-<12 hex>`, where the machine-id would be rewritten (on the platform or as PID 1).
    Auto,
    Keep,
    /// `<prefix>-<12 hex>`, wherever the agent may.
    Prefix(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockStep {
    /// Step the wall clock forward to the best reference when it is a second or more behind.
    Auto,
    /// Only measure and report.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// The mask the app gets (`u64::MAX`: `"all"`, no split).
    pub capabilities: u64,
    /// `None`: on when something is dropped.
    pub no_new_privileges: Option<bool>,
}

pub(super) fn entropy(entropy: &Section) -> Result<KernelReseed, ConfigError> {
    let kernel_reseed = entropy
        .choice(
            "kernel",
            &[
                ("auto", KernelReseed::Auto),
                ("ioctl", KernelReseed::Ioctl),
                ("write", KernelReseed::Write),
                ("off", KernelReseed::Off),
            ],
        )?
        .unwrap_or(KernelReseed::Auto);
    entropy.finish()?;
    Ok(kernel_reseed)
}

/// `true`/`false`, or "auto" (the default). A boolean reads naturally; "auto" is a string.
fn auto_bool(s: &Section, key: &str) -> Result<MachineId, ConfigError> {
    match s.boolean(key) {
        Ok(Some(true)) => Ok(MachineId::Always),
        Ok(Some(false)) => Ok(MachineId::Never),
        Ok(None) => Ok(MachineId::Auto),
        Err(_) if s.string(key).ok().flatten() == Some("auto") => Ok(MachineId::Auto),
        Err(_) => Err(ConfigError::new(
            s.key(key),
            "must be true, false or \"auto\"",
        )),
    }
}

pub(super) fn identity(
    identity: &Section,
) -> Result<(MachineId, Hostname, MachineId), ConfigError> {
    let machine_id = auto_bool(identity, "machine_id")?;
    let hostname = match identity.string("hostname")? {
        None | Some("auto") => Hostname::Auto,
        Some("keep") => Hostname::Keep,
        Some(prefix) => Hostname::Prefix(
            hostname_prefix(prefix).map_err(|m| ConfigError::new(identity.key("hostname"), m))?,
        ),
    };
    let boot_id = auto_bool(identity, "boot_id")?;
    identity.finish()?;
    Ok((machine_id, hostname, boot_id))
}

pub(super) fn clock(clock: &Section) -> Result<ClockStep, ConfigError> {
    let step = clock
        .choice(
            "step",
            &[("auto", ClockStep::Auto), ("off", ClockStep::Off)],
        )?
        .unwrap_or(ClockStep::Auto);
    clock.finish()?;
    Ok(step)
}

/// A hostname prefix: a DNS label that leaves room for `-` and 12 hex digits (63 in all).
fn hostname_prefix(p: &str) -> Result<String, String> {
    let ok = !p.is_empty()
        && p.len() <= 50
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !p.starts_with('-');
    if ok {
        Ok(p.to_ascii_lowercase())
    } else {
        Err(format!(
            "\"{p}\" is not \"auto\", \"keep\" or a prefix of 1-50 letters, digits and '-' \
             (not starting with '-')"
        ))
    }
}
