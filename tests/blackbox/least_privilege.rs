//! Least privilege, black-box: the agent as PID 1 with every capability the machine gives it
//! (as `additionalOsCapabilities: ["ALL"]` gives it on the platform), the app with Docker's
//! default set. The app tries what untrusted code would try against the agent and the machine
//! (`mva-fixture try-privileges`, tests/fixture/privileges.rs) and must be refused every time;
//! with the split switched off (`capabilities = "all"`) the same attempts succeed, which shows
//! the probe can see what it claims to refuse (the test of the test).

use mva_test_support::agent as common;

use std::collections::BTreeMap;

use common::*;

/// The agent must hold these for the test to mean anything (the machine's root has them).
const NEEDED: [u32; 4] = [19, 16, 25, 21]; // sys_ptrace, sys_module, sys_time, sys_admin

fn root_with_every_capability() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // SAFETY: geteuid takes nothing and cannot fail.
    let ok = unsafe { libc::geteuid() } == 0 && NEEDED.iter().all(|c| eff & (1 << c) != 0);
    if !ok {
        assert!(
            std::env::var_os("MICROVM_AGENT_REQUIRE_VM").is_none(),
            "the privilege tests need root with sys_ptrace, sys_module, sys_time, sys_admin"
        );
        eprintln!("SKIPPED: not root with every capability");
    }
    ok
}

/// Runs the probe as the app of an agent that is PID 1 of its own PID namespace (so PID 1 is
/// the agent), with `config`; returns the probe's lines and the agent's `/status`.
fn probe(config: &str, user: Option<&str>) -> (BTreeMap<String, String>, serde_json::Value) {
    let out = TempDir::new("privileges");
    let result = out.join("probe.txt");
    let fixture = match user {
        Some(_) => fixture_for_others(),
        None => fixture_str(),
    };
    let script = format!(
        "{fixture} try-privileges 1 > {r}.tmp; mv {r}.tmp {r}; exec sleep 600",
        r = result.display()
    );
    if user.is_some() {
        std::fs::set_permissions(
            out.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
    }
    let mut toml = config.to_string();
    if let Some(u) = user {
        toml = format!("[app]\nuser = \"{u}\"\n{}", toml.replace("[app]\n", ""));
    }
    // Unshared UTS and mount namespaces too: nothing the agent does may reach the test machine.
    let agent = Spec::default()
        .pid1()
        .wrapper(&["unshare", "--uts", "--mount"])
        .config(&toml)
        .app(&["/bin/sh", "-c", &script])
        .start();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !result.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe did not report; stderr:\n{}",
            agent.stderr.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&result).unwrap();
    let lines = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (lines, agent.status())
}

const ATTEMPTS: [&str; 5] = ["ptrace", "mem", "environ", "module", "clock"];

const SYS_MODULE: u64 = 1 << 16;

fn eff(p: &BTreeMap<String, String>) -> u64 {
    u64::from_str_radix(&p["CapEff"], 16).unwrap()
}

/// On a kernel without module support `finit_module` fails before the capability check: there
/// the capability itself decides (the VM clone test makes the real attempt on Debian's kernel).
fn allowed(p: &BTreeMap<String, String>, what: &str) -> bool {
    match (what, p[what].as_str()) {
        ("module", "unsupported") => eff(p) & SYS_MODULE != 0,
        (_, v) => v == "allowed",
    }
}

fn refused_everything(p: &BTreeMap<String, String>) {
    for what in ATTEMPTS {
        let refused = ["EPERM", "EACCES"].contains(&p[what].as_str())
            || (p[what] == "unsupported" && !allowed(p, what));
        assert!(refused, "the app could {what}: {p:?}");
    }
}

#[test]
fn an_app_under_an_agent_with_every_capability_cannot_touch_the_agent_or_the_machine() {
    if !root_with_every_capability() {
        return;
    }
    let (p, status) = probe("", None);
    eprintln!("probe: {p:?}\ncapabilities: {}", status["capabilities"]);
    refused_everything(&p);
    assert_eq!(
        p["CapEff"], "00000000a80425fb",
        "Docker's default set: {p:?}"
    );
    assert_eq!(p["CapBnd"], "00000000a80425fb", "{p:?}");
    assert_eq!(p["NoNewPrivs"], "1", "{p:?}");
    let caps = &status["capabilities"];
    assert_eq!(caps["app"], "00000000a80425fb");
    assert_eq!(caps["split"], true);
    assert_eq!(caps["no_new_privileges"], true);
    // The agent keeps what it uses, effective: never ptrace or module loading.
    let agent: Vec<&str> = caps["agent_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for used in ["sys_admin", "sys_time", "setuid", "setpcap", "kill"] {
        assert!(agent.contains(&used), "{agent:?}");
    }
    for unused in ["sys_ptrace", "sys_module", "net_admin", "bpf"] {
        assert!(!agent.contains(&unused), "{agent:?}");
    }
}

/// The test of the test: with the split off, the very same probe is allowed everything, so the
/// refusals above are the split's doing and not something the probe cannot do.
#[test]
fn with_the_split_switched_off_the_same_probe_gets_everything() {
    if !root_with_every_capability() {
        return;
    }
    let (p, status) = probe("[app]\ncapabilities = \"all\"\n", None);
    eprintln!("probe: {p:?}");
    for what in ATTEMPTS {
        assert!(allowed(&p, what), "{what}: {p:?}");
    }
    assert_ne!(p["CapEff"], "00000000a80425fb");
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(status["capabilities"]["split"], false);
}

/// An app that runs as another user: nothing effective, a bounding set no set-uid program can
/// exceed, and still refused everything.
#[test]
fn an_app_run_as_another_user_gets_no_capability_and_a_cut_bounding_set() {
    if !root_with_every_capability() {
        return;
    }
    let (p, _) = probe("", Some("nobody"));
    eprintln!("probe: {p:?}");
    refused_everything(&p);
    assert_eq!(p["CapEff"], "0000000000000000");
    assert_eq!(p["CapBnd"], "00000000a80425fb");
    assert_eq!(p["NoNewPrivs"], "1");
}

/// A list of names gives exactly those, and an unknown name stops the agent before anything
/// starts (64, naming the key).
#[test]
fn a_list_of_names_is_what_the_app_gets_and_an_unknown_one_exits_64() {
    if !root_with_every_capability() {
        return;
    }
    let (p, _) = probe(
        "[app]\ncapabilities = [\"NET_BIND_SERVICE\", \"cap_sys_time\"]\nno_new_privileges = false\n",
        None,
    );
    assert_eq!(p["CapEff"], "0000000002000400", "{p:?}");
    assert_eq!(p["clock"], "allowed", "sys_time was asked for: {p:?}");
    assert_eq!(p["NoNewPrivs"], "0");
    let mut bad = Spec::default()
        .no_wait()
        .config("[app]\ncapabilities = [\"CAP_FLY\"]\n")
        .app(&["/bin/true"])
        .start();
    assert_eq!(bad.exit_code(), 64);
    assert!(
        bad.stderr.text().contains("app.capabilities"),
        "{}",
        bad.stderr.text()
    );
}

/// `--check` says what the agent holds, what the app would get and what the agent would keep.
#[test]
fn check_shows_both_sets() {
    if !root_with_every_capability() {
        return;
    }
    let out = agent_command()
        .args([
            "--state-dir",
            "/tmp/mva-privileges-check",
            "--check",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("#   the app and every helper get: 00000000a80425fb (chown,dac_override"),
        "{text}"
    );
    assert!(text.contains(", no_new_privileges"), "{text}");
    assert!(
        text.contains("#   the agent keeps only: ") && text.contains("sys_admin,sys_time)"),
        "{text}"
    );
}
