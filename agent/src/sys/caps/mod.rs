//! Capabilities: what the agent holds, what the app gets, and the agent keeping only what it uses.
//!
//! `additionalOsCapabilities: ["ALL"]` is the one way to let the agent reseed the kernel's CRNG
//! without VMGenID, and it used to hand every capability to the app too: the code a sandbox runs
//! could `ptrace` the agent, load a module, set the clock. So when the agent holds more than the
//! app should get, the two are split:
//! - every process the agent starts (the app, probes, notify and secret commands) gets
//!   `[app] capabilities` (default: Docker's default set, what the app would have had without
//!   `ALL`): the bounding set is cut to it before `exec`, the inheritable and ambient sets are
//!   emptied, so a root app's permitted and effective sets become exactly it at `exec`, and a
//!   non-root app gets no more than its files' capabilities within it; `no_new_privileges`
//!   (default on when something is dropped) stops set-uid and file-capability programs from
//!   regaining anything;
//! - the agent itself keeps [`AGENT_USES`] effective (what each is for is said there), drops the
//!   rest from its effective set, and cuts its permitted and bounding sets to what it keeps plus
//!   what the app gets (a child under `no_new_privileges` can get at `exec` only what its
//!   parent had permitted).
//!
//! The kernel's rule that makes this hold against the app: a process may trace (or read the
//! memory or environment of) a process of the same uid only if its permitted set is a superset
//! of the target's, or it has `CAP_SYS_PTRACE` (`cap_ptrace_access_check`).

use std::fmt::Write as _;

mod apply;
pub use apply::{apply_in_child, drop_own};

/// Docker's default set (and the platform's, measured): chown dac_override fowner fsetid kill
/// setgid setuid setpcap net_bind_service net_raw sys_chroot mknod audit_write setfcap.
pub const DOCKER_DEFAULT: u64 = 0xa804_25fb;

/// Every capability Linux 6.x knows, by bit.
pub const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

pub const CHOWN: u32 = 0;
pub const DAC_OVERRIDE: u32 = 1;
pub const FOWNER: u32 = 3;
pub const KILL: u32 = 5;
pub const SETGID: u32 = 6;
pub const SETUID: u32 = 7;
pub const SETPCAP: u32 = 8;
pub const SYS_ADMIN: u32 = 21;
pub const SYS_TIME: u32 = 25;

const fn bit(cap: u32) -> u64 {
    1 << cap
}

/// What the agent keeps when it splits, and why:
/// - `sys_admin`: the kernel reseed (`RNDRESEEDCRNG`), the per-VM hostname and the `boot_id`
///   bind mount;
/// - `sys_time`: stepping a stale wall clock after a restore;
/// - `setuid`, `setgid`: starting the app and its helpers as `[app] user`;
/// - `setpcap`: cutting each child's bounding set before `exec`;
/// - `kill`: signalling the app's processes when they run as another user;
/// - `chown`, `fowner`: the state files, the seed and the reseed socket belong to the app's user;
/// - `dac_override`: `/etc/machine-id` is usually read-only (0444) and may be bind-mounted, so
///   it is written in place.
pub const AGENT_USES: u64 = bit(SYS_ADMIN)
    | bit(SYS_TIME)
    | bit(SETUID)
    | bit(SETGID)
    | bit(SETPCAP)
    | bit(KILL)
    | bit(CHOWN)
    | bit(FOWNER)
    | bit(DAC_OVERRIDE);

/// Parses `[app] capabilities`: `"default"`, `"none"`, `"all"` (no split), a `0x` mask, or a
/// list of names (`"net_raw"`, `"CAP_NET_RAW"`, any case).
pub fn parse_names(names: &[String]) -> Result<u64, String> {
    let mut mask = 0;
    for n in names {
        let lower = n.to_ascii_lowercase();
        let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
        match NAMES.iter().position(|k| *k == bare) {
            Some(i) => mask |= 1u64 << i,
            None => {
                return Err(format!(
                    "\"{n}\" is not a capability (e.g. \"NET_BIND_SERVICE\", \"CAP_NET_RAW\")"
                ))
            }
        }
    }
    Ok(mask)
}

pub fn parse_word(word: &str) -> Result<u64, String> {
    match word {
        "default" => Ok(DOCKER_DEFAULT),
        "none" => Ok(0),
        "all" => Ok(u64::MAX),
        hex if hex.starts_with("0x") => u64::from_str_radix(&hex[2..], 16)
            .map_err(|_| format!("\"{hex}\" is not a hexadecimal mask")),
        other => Err(format!(
            "\"{other}\" is not \"default\", \"none\", \"all\", a 0x mask or a list of names"
        )),
    }
}

/// The names in `mask`, lower case, in bit order.
pub fn names(mask: u64) -> Vec<&'static str> {
    (0..NAMES.len())
        .filter(|i| mask & (1u64 << i) != 0)
        .map(|i| NAMES[i])
        .collect()
}

/// `mask` as `/proc/<pid>/status` prints it.
pub fn hex(mask: u64) -> String {
    let mut s = String::new();
    let _ = write!(s, "{mask:016x}");
    s
}

/// A process's capability sets, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub bounding: u64,
    pub ambient: u64,
}

impl Sets {
    pub fn parse(status: &str) -> Option<Sets> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        Some(Sets {
            effective: field("CapEff:")?,
            permitted: field("CapPrm:")?,
            inheritable: field("CapInh:")?,
            bounding: field("CapBnd:")?,
            ambient: field("CapAmb:").unwrap_or(0),
        })
    }

    pub fn of_self() -> Sets {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| Sets::parse(&s))
            .unwrap_or_default()
    }

    pub fn has(&self, cap: u32) -> bool {
        self.effective & bit(cap) != 0
    }
}

/// What a child gets, fixed before any `fork`: copied into every `pre_exec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForChild {
    /// The bounding set the child is cut to.
    pub bounding: u64,
    /// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
    pub no_new_privileges: bool,
}

/// The split, decided once at start from the configuration and what the agent holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The agent's sets when it started.
    pub held: Sets,
    /// The app's capabilities (bounding; and permitted + effective for a root app).
    pub app: u64,
    /// `Some`: the children are cut down before `exec`.
    pub child: Option<ForChild>,
    /// What the agent keeps for itself (`None`: it keeps what it holds).
    pub agent_keeps: Option<u64>,
    /// Why nothing is split, when something should have been.
    pub note: Option<String>,
}

impl Plan {
    /// `wanted`: `[app] capabilities`; `nnp`: `[app] no_new_privileges` when set.
    pub fn decide(held: Sets, wanted: u64, nnp: Option<bool>, last_cap: u32) -> Plan {
        let all = if last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (last_cap + 1)) - 1
        };
        let app = wanted & held.bounding & all;
        // What the agent *holds* decides, not its bounding set: a non-root agent holds nothing
        // (its bounding set is usually full) and its app could not have more than it anyway.
        let dropped = held.permitted & all & !app;
        let no_new_privileges = nnp.unwrap_or(dropped != 0);
        let mut plan = Plan {
            held,
            app,
            child: None,
            agent_keeps: None,
            note: None,
        };
        if dropped == 0 && !no_new_privileges {
            return plan;
        }
        if dropped != 0 && !held.has(SETPCAP) {
            // Without CAP_SETPCAP the bounding set cannot be cut: say so, start the app anyway.
            plan.note = Some(format!(
                "cannot drop {} for the app: the agent lacks setpcap",
                names(dropped).join(",")
            ));
            plan.child = no_new_privileges.then_some(ForChild {
                bounding: held.bounding,
                last_cap,
                no_new_privileges,
            });
            return plan;
        }
        plan.child = Some(ForChild {
            bounding: app,
            last_cap,
            no_new_privileges,
        });
        if dropped != 0 {
            plan.agent_keeps = Some(held.permitted & AGENT_USES);
        }
        plan
    }

    /// The plan for this process: its sets, this kernel's last capability.
    pub fn for_self(wanted: u64, nnp: Option<bool>) -> Plan {
        Plan::decide(Sets::of_self(), wanted, nnp, last_cap())
    }
}

/// What `--check` and `/status` show: the agent's sets now and what the app gets.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub agent_effective: String,
    pub agent_bounding: String,
    pub agent_names: Vec<&'static str>,
    pub app: String,
    pub app_names: Vec<&'static str>,
    pub no_new_privileges: bool,
    /// Whether the app gets less than the agent held at start.
    pub split: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Plan {
    pub fn report(&self, agent_now: Sets) -> Report {
        let app = self.child.map_or(self.held.bounding, |c| c.bounding);
        Report {
            agent_effective: hex(agent_now.effective),
            agent_bounding: hex(agent_now.bounding),
            agent_names: names(agent_now.effective),
            app: hex(app),
            app_names: names(app),
            no_new_privileges: self.child.is_some_and(|c| c.no_new_privileges),
            split: self.child.is_some_and(|c| c.bounding != self.held.bounding),
            note: self.note.clone(),
        }
    }
}

pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Sets {
        let all = (1u64 << 41) - 1;
        Sets {
            effective: all,
            permitted: all,
            inheritable: 0,
            bounding: all,
            ambient: 0,
        }
    }

    #[test]
    fn names_and_words() {
        assert_eq!(parse_word("default").unwrap(), DOCKER_DEFAULT);
        assert_eq!(
            names(DOCKER_DEFAULT).join(","),
            "chown,dac_override,fowner,fsetid,kill,setgid,setuid,setpcap,net_bind_service,\
             net_raw,sys_chroot,mknod,audit_write,setfcap"
        );
        let list = ["CAP_NET_RAW".to_string(), "sys_time".into()];
        assert_eq!(parse_names(&list).unwrap(), (1 << 13) | (1 << 25));
        assert!(parse_names(&["CAP_WHATEVER".into()])
            .unwrap_err()
            .contains("CAP_WHATEVER"));
        assert!(parse_word("most").is_err());
        assert_eq!(parse_word("0x3").unwrap(), 3);
        assert_eq!(hex(DOCKER_DEFAULT), "00000000a80425fb");
    }

    #[test]
    fn every_capability_splits_into_the_default_set_and_what_the_agent_uses() {
        let p = Plan::decide(full(), DOCKER_DEFAULT, None, 40);
        assert_eq!(p.app, DOCKER_DEFAULT);
        let c = p.child.unwrap();
        assert_eq!(c.bounding, DOCKER_DEFAULT);
        assert!(
            c.no_new_privileges,
            "on by default when something is dropped"
        );
        assert_eq!(p.agent_keeps, Some(AGENT_USES));
        assert!(names(AGENT_USES).contains(&"sys_admin"));
        assert!(!names(AGENT_USES).contains(&"sys_ptrace"));
        assert!(!names(AGENT_USES).contains(&"sys_module"));
    }

    #[test]
    fn with_the_default_set_already_nothing_changes() {
        let held = Sets {
            effective: DOCKER_DEFAULT,
            permitted: DOCKER_DEFAULT,
            inheritable: DOCKER_DEFAULT,
            bounding: DOCKER_DEFAULT,
            ambient: 0,
        };
        let p = Plan::decide(held, DOCKER_DEFAULT, None, 40);
        assert_eq!((p.child, p.agent_keeps), (None, None));
        // "all" asks for more than is held: the app gets what there is, nothing is dropped.
        let p = Plan::decide(full(), u64::MAX, None, 40);
        assert_eq!((p.child, p.agent_keeps), (None, None), "all = no split");
        // An explicit no_new_privileges applies even when nothing is dropped.
        let p = Plan::decide(held, DOCKER_DEFAULT, Some(true), 40);
        assert!(p.child.unwrap().no_new_privileges);
        // "none" from the default set: the app's set is cut, the agent keeps its own uses.
        let p = Plan::decide(held, 0, None, 40);
        assert_eq!(p.child.unwrap().bounding, 0);
        assert_eq!(p.agent_keeps, Some(DOCKER_DEFAULT & AGENT_USES));
    }

    #[test]
    fn a_non_root_agent_holds_nothing_and_splits_nothing() {
        let held = Sets {
            bounding: (1u64 << 41) - 1,
            ..Sets::default()
        };
        let p = Plan::decide(held, DOCKER_DEFAULT, None, 40);
        assert_eq!((p.child, p.agent_keeps, p.note), (None, None, None));
    }

    #[test]
    fn without_setpcap_the_app_still_starts_and_the_plan_says_why() {
        let mut held = full();
        held.effective &= !(1 << SETPCAP);
        held.permitted &= !(1 << SETPCAP);
        let p = Plan::decide(held, DOCKER_DEFAULT, Some(false), 40);
        assert!(p.child.is_none() && p.agent_keeps.is_none());
        assert!(p.note.unwrap().contains("setpcap"));
    }

    #[test]
    fn status_lines_parse() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                 CapEff:\t000001ffffffffff\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n";
        let sets = Sets::parse(s).unwrap();
        assert_eq!(sets.bounding, DOCKER_DEFAULT);
        assert!(sets.has(SYS_ADMIN));
    }
}
