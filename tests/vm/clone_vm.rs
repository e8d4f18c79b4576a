//! The clone test: a real VM (QEMU), snapshotted once after `/ready`, restored as several
//! clones. The clones must disagree on everything that must be unique: the generation id, the
//! secrets, the agent's seed, the machine-id and the app's next user-space random value.
//!
//! Four modes: the agent as PID 1 with full root, and with exactly the platform's default
//! capability set (`0xa80425fb`: no CAP_SYS_ADMIN, so no kernel reseed ioctl), each with
//! `-device vmgenid` (the hypervisor tells the guest kernel) and without. In every mode the
//! app's `CapEff` and `CapBnd` must be the default set (with full root, the agent splits: the
//! same check on the agent's own sets must fail, which shows it can), and with full root each
//! clone has its own hostname and `boot_id` (without CAP_SYS_ADMIN they stay the build VM's).
//!
//! A fifth mode is the recommended configuration for untrusted code ("ALL" for the agent, the
//! default set for the app) on a settled snapshot without VMGenID: the kernel's CRNG is the same
//! in every clone until the agent's reseed, so the app's kernel-backed values differ only
//! because of it; the app tries to ptrace the agent, read its memory and environment, load a
//! module and set the clock, and is refused. It also holds the clock case: a clone restored 30 s
//! after the snapshot, whose wall clock resumes stale while its RTC follows the host (QEMU
//! `-rtc clock=host`), must report the offset and be stepped before the app is told (the
//! settled platform-capability mode restores one the same way: reported, not stepped).
//!
//! The capability modes and the fifth snapshot a *settled* VM: past the kernel's early-boot reseed schedule (uptime over 120 s) and
//! right after a draw from `getrandom`, so the clones' kernel CRNG is, deterministically, the
//! snapshot's. There the app is clone-safe only because it mixes the agent's seed in: its twin
//! generator that ignores the seed (`/peek-naive`) must fail the very check the real one passes,
//! which shows that the test can fail where it matters. A negative control (clones that get no
//! `/run`) shows the same user-space value in every clone.
//!
//! Needs `tests/vm/prepare.sh` (QEMU, a static busybox, a Debian kernel, static builds of the
//! agent and the fixture in `target/vm`). Without them the test says loudly that it was skipped;
//! with `MICROVM_AGENT_REQUIRE_VM=1` (as in CI) a missing prerequisite fails it.

use mva_test_support::machine_lock;
use mva_test_support::{say, vm};
use vm::{distinct, Arch, Cpio, Spec, Vm, PLATFORM_CAPS};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The guest's ports: the hook port and the fixture app's.
const HOOK: u16 = 9000;
const APP: u16 = 8080;

/// Fails (in CI) or skips loudly when the prerequisites for `arch` are not there.
fn prerequisites(arch: Arch) -> bool {
    let files = ["vmlinuz", "e1000.ko", "microvm-agent", "mva-fixture"];
    vm::prerequisites(&format!("{arch:?} clone test"), vm::missing(arch, &files))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /run
/bin/busybox insmod /lib/e1000.ko
/bin/busybox ip link set lo up
/bin/busybox ip link set eth0 up
/bin/busybox ip addr add 10.0.2.15/24 dev eth0
/bin/busybox ip route add default via 10.0.2.2
echo "init: network up; the agent becomes PID 1"
export FIXTURE_BIND=0.0.0.0 MICROVM_AGENT_LOG=info
exec __CAPS__ /bin/microvm-agent -c /etc/agent.toml --listen 0.0.0.0:9000 --state-dir /run/microvm-agent --log-format text -- /bin/mva-fixture clone-app 8080 /run/app.log
"#;

/// How one run of the test is set up.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// The agent runs with the platform's default capabilities (else full root).
    platform_caps: bool,
    /// The fifth mode: full root for the agent, settled, the privilege probe and the clock case.
    split: bool,
    vmgenid: bool,
    /// The aarch64 CPU model (`max` or `cortex-a72`); unused on x86_64.
    cpu: &'static str,
}

impl Mode {
    fn tag(self) -> String {
        format!(
            "{}{}, {}",
            if self.cpu.is_empty() {
                String::new()
            } else {
                format!("aarch64 {}, ", self.cpu)
            },
            if self.platform_caps {
                "platform capabilities"
            } else if self.split {
                "every capability for the agent, the default set for the app"
            } else {
                "full root"
            },
            if self.vmgenid {
                "vmgenid"
            } else {
                "no vmgenid"
            }
        )
    }

    fn name(self) -> String {
        format!(
            "{}-{}{}",
            if self.platform_caps {
                "caps"
            } else if self.split {
                "split"
            } else {
                "root"
            },
            if self.vmgenid { "genid" } else { "nogenid" },
            if self.cpu.is_empty() {
                String::new()
            } else {
                format!("-{}", self.cpu)
            }
        )
    }
}

const AGENT_TOML: &str = r#"
[ready]
tcp = "127.0.0.1:8080"
[notify]
http = "http://127.0.0.1:8080/__lifecycle"
[[secret]]
name = "session-key"
bytes = 32
"#;

fn initramfs(out: &Path, arch: Arch, platform_caps: bool, extra_toml: &str) {
    let dir = arch.dir();
    let caps = if platform_caps {
        format!("/bin/mva-fixture with-caps {PLATFORM_CAPS}")
    } else {
        String::new()
    };
    let init = INIT.replace("__CAPS__", &caps);
    let mut c = Cpio::new();
    c.file("init", 0o755, init.as_bytes());
    // The build VM's machine-id, cloned into every VM unless the agent rewrites it.
    c.file(
        "etc/machine-id",
        0o444,
        b"0123456789abcdef0123456789abcdef\n",
    );
    c.copy("bin/busybox", 0o755, &arch.busybox());
    c.copy("bin/microvm-agent", 0o755, &dir.join("microvm-agent"));
    c.copy("bin/mva-fixture", 0o755, &dir.join("mva-fixture"));
    c.copy("lib/e1000.ko", 0o644, &dir.join("e1000.ko"));
    c.file(
        "etc/agent.toml",
        0o644,
        format!("{AGENT_TOML}{extra_toml}").as_bytes(),
    );
    c.write(out);
}

struct Lab {
    dir: PathBuf,
    arch: Arch,
    accel: &'static str,
    /// The initramfs for full root, the platform's capabilities, and the fifth mode.
    initrd: [PathBuf; 3],
}

impl Lab {
    fn boot(&self, name: &str, mode: Mode, incoming: Option<&Path>) -> Vm {
        let spec = Spec {
            arch: self.arch,
            accel: self.accel,
            mem_mib: if self.arch == Arch::X86_64 { 192 } else { 256 },
            cpu: mode.cpu,
            initrd: self.initrd[if mode.split {
                2
            } else {
                usize::from(mode.platform_caps)
            }]
            .clone(),
            vmgenid: mode.vmgenid,
            disk: None,
            ports: vec![HOOK, APP],
            dir: self.dir.clone(),
        };
        spec.boot(name, incoming)
    }
}

/// The fixture's and the agent's answers in one guest.
trait Guest {
    fn hook(&self, method: &str, path: &str, body: &[u8]) -> (u16, String);
    fn app(&self, path: &str) -> String;
}

impl Guest for Vm {
    fn hook(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        self.request(HOOK, method, path, body)
    }
    fn app(&self, path: &str) -> String {
        self.get_ok(APP, path, Duration::from_secs(30))
    }
}

/// The values that must be unique per clone (and a few that say how the clone got there).
#[derive(Debug, Clone)]
struct Values {
    generation_id: String,
    kernel_reseed: String,
    kernel_crng: String,
    /// What fed the agent's per-clone input besides the body, the id and clocks.
    hardware_random: String,
    secret: String,
    seed: String,
    machine_id: String,
    /// The app's generator, reseeded with the agent's seed mixed in.
    user_space: String,
    /// Its twin that ignores the seed.
    naive: String,
    kernel: String,
    hostname: String,
    boot_id: String,
    /// The app's `CapEff CapBnd`, and the agent's (PID 1).
    app_caps: String,
    agent_caps: String,
    /// The generation's clock record.
    clock: serde_json::Value,
}

fn collect(vm: &Vm) -> Values {
    let g: serde_json::Value = serde_json::from_str(&vm.hook("GET", "/generation", b"").1).unwrap();
    let field = |k: &str| g[k].as_str().unwrap_or_default().to_string();
    Values {
        generation_id: field("id"),
        kernel_reseed: field("kernel_reseed"),
        kernel_crng: field("kernel_crng"),
        hardware_random: field("hardware_random"),
        secret: vm.app("/secret"),
        seed: vm.app("/seed"),
        machine_id: vm.app("/machine-id"),
        user_space: vm.app("/peek"),
        naive: vm.app("/peek-naive"),
        kernel: vm.app("/getrandom"),
        hostname: vm.app("/hostname"),
        boot_id: vm.app("/boot-id"),
        app_caps: vm.app("/caps"),
        agent_caps: vm.app("/caps-of-1"),
        clock: g["clock"].clone(),
    }
}

/// Docker's default set, effective and bounding, as the fixture prints `/proc/<pid>/status`.
const DEFAULT_SET: &str = "00000000a80425fb 00000000a80425fb";

/// The host's wall clock in ms.
fn host_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits out the rest of 30 s since the snapshot: the clock case's clone.
const CLOCK_WAIT: Duration = Duration::from_secs(30);

/// The check every unique value must pass: present in every clone, pairwise different.
fn all_distinct(what: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        assert!(!v.is_empty(), "{what}: clone {i} has no value");
    }
    assert!(distinct(values), "{what}: some clones agree: {values:?}");
}

fn pick(values: &[Values], f: impl Fn(&Values) -> &String) -> Vec<String> {
    values.iter().map(|v| f(v).clone()).collect()
}

/// Boots the build VM of `mode` (its snapshot is taken later).
fn origin(lab: &Lab, mode: Mode) -> (Vm, Instant) {
    (
        lab.boot(&format!("origin-{}", mode.name()), mode, None),
        Instant::now(),
    )
}

/// Snapshots `origin`, restores three clones, `/run`s each and checks what must be unique; then
/// suspends and resumes one; then (without VMGenID) the negative control.
fn check_clones(lab: &Lab, mode: Mode, origin: Vm, booted: Instant) {
    let tag = mode.tag();
    origin.get_ok(HOOK, "/ready", Duration::from_secs(180));
    say!("[{tag}] booted and ready in {:?}", booted.elapsed());
    // The settled snapshot is what makes the kernel's sameness deterministic for the test of the
    // test below (x86_64); the aarch64 run relies on the negative control instead.
    let settled = (mode.platform_caps || mode.split) && lab.arch == Arch::X86_64;
    if settled {
        vm::settle(
            || origin.app("/uptime").parse().unwrap_or(0.0),
            || drop(origin.app("/getrandom")),
            &tag,
        );
    }
    let (origin_host, origin_boot) = (origin.app("/hostname"), origin.app("/boot-id"));
    // As an app's long-poll does: the agent compares its clock with the RTC (the baseline a
    // clone's stale clock is measured against).
    assert_eq!(origin.hook("GET", "/generation", b"").0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while origin
        .hook("GET", "/status", b"")
        .1
        .contains("\"clock_offset_ms\":null")
    {
        assert!(
            Instant::now() < deadline,
            "[{tag}] the agent never compared its clock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each of those requests started a comparison of its own; one still in flight at the
    // snapshot would finish in every clone, find the clock stale and (rightly) make a
    // generation before the test's /run, which the clock case must not find. A second of quiet
    // lets them end.
    std::thread::sleep(Duration::from_secs(1));
    let snap = lab.dir.join(format!("snap-{}", mode.name()));
    let snap_start = host_ms();
    origin.snapshot_and_end(&snap, &tag);
    let (snap_end, snapped) = (host_ms(), Instant::now());
    // The clock case: the last clone restored 30 s or more after the snapshot.
    let clock_case = settled && !mode.vmgenid;

    let mut clones = Vec::new();
    let mut values = Vec::new();
    for i in 0..3 {
        if clock_case && i == 2 {
            std::thread::sleep(CLOCK_WAIT.saturating_sub(snapped.elapsed()));
        }
        let t = Instant::now();
        let mut vm = lab.boot(&format!("clone{i}-{}", mode.name()), mode, Some(&snap));
        let resume_start = host_ms();
        vm.resume_clone();
        let resume_end = host_ms();
        // How far behind the host the clone's clock really is, asked of its app before /run.
        let (skew, rtt) = if clock_case && i == 2 {
            let before = host_ms();
            let guest: i64 = vm.app("/time-ms").parse().unwrap();
            let after = host_ms();
            ((before + after) / 2 - guest, after - before)
        } else {
            (0, 0)
        };
        let body = format!(r#"{{"microvmId":"microvm-clone{i}","runHookPayload":"tenant-{i}"}}"#);
        let run_sent = host_ms();
        let (status, answer) = vm.hook("POST", "/run", body.as_bytes());
        let run_answered = host_ms();
        assert_eq!(status, 200, "{answer}\n{}", vm.console());
        let v = collect(&vm);
        check_privileges(&tag, mode, &v, &vm);
        if clock_case && i == 2 {
            let told_at: i64 = vm.app("/told-at").parse().unwrap_or(0);
            check_clock(
                &tag,
                mode,
                &v.clock,
                (resume_start - snap_end, resume_end - snap_start),
                (skew, rtt),
                told_at,
                (run_sent, run_answered),
            );
        }
        say!(
            "[{tag}] clone {i} (restored + /run in {:?}): {v:?}",
            t.elapsed()
        );
        let (reseed, crng) = match (mode.platform_caps, mode.vmgenid) {
            (false, _) => ("ioctl", "reseeded"),
            (true, true) => ("write", "platform"),
            (true, false) => ("write", "not-reseeded"),
        };
        assert_eq!(v.kernel_reseed, reseed, "[{tag}] {v:?}");
        assert_eq!(v.kernel_crng, crng, "[{tag}] {v:?}");
        match lab.arch {
            Arch::X86_64 => assert!(
                ["rdseed", "rdrand", "none"].contains(&v.hardware_random.as_str()),
                "[{tag}] the generation says what fed the input: {v:?}"
            ),
            // FEAT_RNG: `-cpu max` has RNDR, cortex-a72 has not; the record must say which.
            Arch::Aarch64 => assert_eq!(
                v.hardware_random,
                if mode.cpu == "max" { "rndr" } else { "none" },
                "[{tag}] {v:?}"
            ),
        }
        assert_ne!(
            v.machine_id, "0123456789abcdef0123456789abcdef",
            "[{tag}] machine-id rewritten"
        );
        values.push(v);
        clones.push(vm);
    }
    all_distinct("generation id", &pick(&values, |v| &v.generation_id));
    all_distinct("secret", &pick(&values, |v| &v.secret));
    all_distinct("seed", &pick(&values, |v| &v.seed));
    all_distinct("machine-id", &pick(&values, |v| &v.machine_id));
    if mode.platform_caps {
        // No CAP_SYS_ADMIN: the build VM's, as reported (and the check below could fail).
        for v in &values {
            assert_eq!(
                (&v.hostname, &v.boot_id),
                (&origin_host, &origin_boot),
                "[{tag}]"
            );
        }
    } else {
        let hosts = pick(&values, |v| &v.hostname);
        let boots = pick(&values, |v| &v.boot_id);
        all_distinct("hostname", &hosts);
        all_distinct("boot_id", &boots);
        assert!(
            !hosts.contains(&origin_host) && !boots.contains(&origin_boot),
            "[{tag}]"
        );
    }
    all_distinct(
        "the app's user-space value",
        &pick(&values, |v| &v.user_space),
    );
    let kernel = pick(&values, |v| &v.kernel);
    let naive = pick(&values, |v| &v.naive);
    if mode.platform_caps {
        // What the platform leaves to us: printed, not asserted.
        say!(
            "[{tag}] the clones' kernel getrandom after /run: {}; an app that ignores the seed: {}",
            if distinct(&kernel) {
                "distinct"
            } else {
                "NOT distinct (the same bytes in every clone)"
            },
            if distinct(&naive) {
                "distinct"
            } else {
                "NOT distinct"
            },
        );
        if settled && !mode.vmgenid {
            // The test of the test: the check that the real app passes fails for its twin that
            // ignores the agent's seed, because the kernel handed every clone the same bytes.
            assert!(
                !distinct(&naive),
                "[{tag}] the app that ignores the seed passed too: this mode could not catch a \
                 template that forgets the seed ({naive:?})"
            );
        }
    } else {
        all_distinct("the kernel's getrandom", &kernel);
    }

    // Suspend and resume one clone: a new generation, new secrets, a new seed.
    let before = values[0].clone();
    assert_eq!(clones[0].hook("POST", "/suspend", b"").0, 200);
    assert_eq!(clones[0].hook("POST", "/resume", b"").0, 200);
    let after = collect(&clones[0]);
    say!("[{tag}] clone 0 after suspend + resume: {after:?}");
    assert_eq!(
        (&after.hostname, &after.boot_id),
        (&before.hostname, &before.boot_id),
        "[{tag}] a resume is the same VM"
    );
    assert_ne!(after.generation_id, before.generation_id);
    assert_ne!(after.secret, before.secret);
    assert_ne!(after.seed, before.seed);
    assert_ne!(after.user_space, before.user_space);
    assert_eq!(
        after.machine_id, before.machine_id,
        "a resume is the same VM"
    );
    drop(clones);

    if mode.split && clock_case {
        unannounced(lab, mode, &snap, &tag);
    }

    if !mode.vmgenid && (lab.arch == Arch::X86_64 || mode.platform_caps) {
        // Negative control: clones that receive no /run keep the snapshot's user-space state.
        let mut seen = Vec::new();
        for i in 0..2 {
            let mut vm = lab.boot(&format!("control{i}-{}", mode.name()), mode, Some(&snap));
            vm.resume_clone();
            let v = (vm.app("/peek"), vm.app("/getrandom"));
            say!(
                "[{tag}] control clone {i} (no /run): user-space {}, kernel {}",
                v.0,
                v.1
            );
            seen.push(v);
        }
        assert_eq!(seen[0].0, seen[1].0, "without /run the clones must share the user-space value (else this test could not fail)");
        if seen[0].1 == seen[1].1 {
            say!("[{tag}] negative control: without /run the clones' kernel getrandom is identical too");
        } else {
            say!("[{tag}] negative control: the kernel reseeded itself after the restore (its values differ even without /run)");
        }
    }
    let _ = std::fs::remove_file(&snap);
}

/// The app's capabilities are the default set in every mode; with full root the agent holds
/// more (so the same check on its own sets fails: the test of the test). In the fifth mode the
/// app tries what untrusted code would, on Debian's kernel (modules and all), and is refused.
fn check_privileges(tag: &str, mode: Mode, v: &Values, vm: &Vm) {
    assert_eq!(
        v.app_caps, DEFAULT_SET,
        "[{tag}] the app's CapEff CapBnd: {v:?}"
    );
    if !mode.platform_caps {
        assert_ne!(
            v.agent_caps, DEFAULT_SET,
            "[{tag}] the agent holds more than the app (else this check proves nothing)"
        );
    }
    if mode.split {
        let probe = vm.app("/try-privileges");
        say!("[{tag}] the app tries: {}", probe.replace('\n', " "));
        for attempt in ["ptrace", "mem", "environ", "module", "clock"] {
            let line = probe
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{attempt}=")))
                .unwrap_or("missing");
            assert!(
                line == "EPERM" || line == "EACCES",
                "[{tag}] the app could {attempt}: {probe}"
            );
        }
    }
}

/// A clone whose hooks never come: when its app asks `/generation` again (a long-poll coming
/// back), the agent finds its clock a second or more staler than before the snapshot, takes that
/// for a restore, and makes a generation (stepping the clock) without any hook.
fn unannounced(lab: &Lab, mode: Mode, snap: &Path, tag: &str) {
    let mut vm = lab.boot(&format!("unannounced-{}", mode.name()), mode, Some(snap));
    vm.resume_clone();
    assert_eq!(vm.hook("GET", "/generation", b"").0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let g = loop {
        let g: serde_json::Value =
            serde_json::from_str(&vm.hook("GET", "/generation", b"").1).unwrap();
        if g["reason"] == "restore-detected" || Instant::now() > deadline {
            break g;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    say!("[{tag}] a clone without hooks, after its app asked /generation: {g}");
    assert_eq!(
        g["reason"],
        "restore-detected",
        "[{tag}] {g}\n{}",
        vm.console()
    );
    assert_eq!(g["clock"]["action"], "stepped", "[{tag}] {g}");
    let skew = vm.app("/time-ms").parse::<i64>().unwrap() - host_ms();
    assert!(
        skew.abs() < 1500,
        "[{tag}] the clone's clock is {skew} ms off the host's"
    );
}

/// The clock case: the clone's wall clock resumed stale by about `gap` ms (the VM was stopped
/// between snapshot and restore, bracketed by the host's clock) and `skew` ms behind the host's
/// as its app read it before `/run` (in `rtt` ms); the RTC follows the host. The agent must
/// report that offset (within 2 s of the real skew, and half the read's round trip: the RTC
/// counts whole seconds and QEMU's lags a little after a restore) and, with CAP_SYS_TIME, step the
/// clock before the app is told: the app's clock when told as close to the host's as the RTC's
/// reading allows (the same bound).
#[allow(clippy::too_many_arguments)]
fn check_clock(
    tag: &str,
    mode: Mode,
    clock: &serde_json::Value,
    gap: (i64, i64),
    (skew, rtt): (i64, i64),
    told_at: i64,
    run: (i64, i64),
) {
    say!("[{tag}] clock case: stopped {gap:?} ms, {skew} ms behind the host before /run (read in {rtt} ms); the generation says {clock}; the app was told at {told_at}, /run took {run:?}");
    assert_eq!(clock["source"], "rtc", "[{tag}] {clock}");
    let offset = clock["offset_ms"].as_i64().unwrap();
    assert!(
        gap.0 >= CLOCK_WAIT.as_millis() as i64 - 1000 && skew >= gap.0 - 1000,
        "[{tag}] the clone was restored too soon, or its clock was not stale: {gap:?}, {skew}"
    );
    // The errors add up: the RTC counts whole seconds (the agent takes the midpoint: +-0.5 s),
    // QEMU's CMOS clock read right after a restore was measured up to 1.24 s behind what the
    // app's own clock read said (ten CI runs: -1.24 s to +0.63 s), and the skew itself was read
    // through QEMU's port forwarding (+- half that round trip).
    let tolerance = 2000 + rtt / 2;
    assert!(
        (offset - skew).abs() < tolerance,
        "[{tag}] offset {offset} ms reported, the clock was {skew} ms behind (read in {rtt} ms; \
         stopped {gap:?} ms)"
    );
    if mode.platform_caps {
        assert_eq!(
            clock["action"], "not-stepped:no-cap-sys-time",
            "[{tag}] {clock}"
        );
        assert!(
            told_at < run.1 - gap.0 + 1000,
            "[{tag}] not stepped: the app's clock is still the snapshot's"
        );
    } else {
        assert_eq!(clock["action"], "stepped", "[{tag}] {clock}");
        // Stepped by the RTC's reading, the clock is as right as that reading: the same error
        // bound as the offset above (a 1 s bound here failed once in CI, the step 1.09 s short:
        // the offset reported 29,899 ms of a 30,989 ms lag). Not stepped, the app would read the
        // snapshot's time, 30 s behind: far outside it.
        assert!(
            told_at >= run.0 - tolerance && told_at <= run.1 + tolerance,
            "[{tag}] the app was told at {told_at}, the host's clock said {run:?} (tolerance \
             {tolerance} ms)"
        );
    }
}

/// A lab for `arch`: a scratch directory and the two initramfs (full root, platform caps).
fn lab(arch: Arch) -> Lab {
    let dir = std::env::temp_dir().join(format!("mva-clone-vm-{arch:?}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = [
        dir.join("initramfs-root.cpio"),
        dir.join("initramfs-caps.cpio"),
        dir.join("initramfs-split.cpio"),
    ];
    initramfs(&initrd[0], arch, false, "");
    initramfs(&initrd[1], arch, true, "");
    // MVA_CLONE_SPLIT_OFF=1: the fifth mode with the split switched off, run by hand to show
    // that its checks fail then (the app keeps CAP_SYS_ADMIN).
    let split_off = std::env::var_os("MVA_CLONE_SPLIT_OFF").is_some();
    initramfs(
        &initrd[2],
        arch,
        false,
        if split_off {
            "[app]\ncapabilities = \"all\"\n"
        } else {
            ""
        },
    );
    let accel = if arch == Arch::X86_64 && vm::kvm_works(&dir) {
        "kvm"
    } else {
        "tcg"
    };
    say!("clone test ({arch:?}): QEMU with {accel}");
    Lab {
        dir,
        arch,
        accel,
        initrd,
    }
}

/// The shipped build (`scripts/build-static.sh`: std built from its source without the backtrace
/// symbolizer, identical code folded on aarch64) still unwinds: a panic is caught, on both
/// architectures (aarch64 under qemu-aarch64-static). A build whose unwinding were broken would
/// abort here, as the agent would on a hook's panic instead of answering 500.
#[test]
fn the_shipped_build_catches_a_panic() {
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let fixture = arch.dir().join("mva-fixture");
        let mut missing = vm::missing(arch, &["mva-fixture"]);
        let runner = (arch == Arch::Aarch64).then_some("qemu-aarch64-static");
        if runner.is_some_and(|r| !mva_test_support::repo::have_tool(r)) {
            missing.push("qemu-aarch64-static".into());
        }
        if !vm::prerequisites(&format!("{arch:?} unwind check"), missing) {
            continue;
        }
        let mut cmd = match runner {
            Some(r) => {
                let mut c = Command::new(r);
                c.arg(&fixture);
                c
            }
            None => Command::new(&fixture),
        };
        let out = cmd.arg("unwind").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.trim() == "caught=true",
            "{arch:?}: {:?}\n{stdout}{stderr}",
            out.status
        );
        assert!(stderr.contains("index out of bounds"), "{arch:?}: {stderr}");
    }
}

#[test]
fn clones_of_one_snapshot_disagree_on_everything_that_must_be_unique() {
    if !prerequisites(Arch::X86_64) {
        return;
    }
    machine_lock::heavy_tier();
    let lab = lab(Arch::X86_64);
    let t = Instant::now();
    let mode = |platform_caps, vmgenid| Mode {
        platform_caps,
        split: false,
        vmgenid,
        cpu: "",
    };
    let fifth = Mode {
        platform_caps: false,
        split: true,
        vmgenid: false,
        cpu: "",
    };
    // The capability modes' build VMs boot first and settle (two idle minutes) while the
    // full-root modes run.
    // MVA_CLONE_MODES=split-nogenid,... runs only those (by hand: e.g. the fifth mode with
    // MVA_CLONE_SPLIT_OFF=1, the test of the test, which must fail).
    let wanted = |m: &Mode| {
        std::env::var("MVA_CLONE_MODES").map_or(true, |list| list.split(',').any(|n| n == m.name()))
    };
    let settling: Vec<(Mode, (Vm, Instant))> = [mode(true, true), mode(true, false), fifth]
        .into_iter()
        .filter(wanted)
        .map(|m| (m, origin(&lab, m)))
        .collect();
    for vmgenid in [true, false]
        .into_iter()
        .filter(|g| wanted(&mode(false, *g)))
    {
        let (vm, booted) = origin(&lab, mode(false, vmgenid));
        check_clones(&lab, mode(false, vmgenid), vm, booted);
    }
    for (m, (vm, booted)) in settling {
        check_clones(&lab, m, vm, booted);
    }
    say!("clone test: five modes in {:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// The platform's own architecture: aarch64 under `qemu-system-aarch64 -machine virt` (TCG),
/// Debian's arm64 6.1 kernel (the platform's guest is 6.1 aarch64), no VMGenID (none exists for
/// this machine, and a 6.1 kernel has no device-tree driver), with and without FEAT_RNG, each
/// with the platform's capabilities and with full root.
#[test]
fn aarch64_clones_of_one_snapshot_disagree_on_everything_that_must_be_unique() {
    if !prerequisites(Arch::Aarch64) {
        return;
    }
    machine_lock::heavy_tier();
    let lab = lab(Arch::Aarch64);
    let t = Instant::now();
    for cpu in ["max", "cortex-a72"] {
        // Two build VMs at once (one core each): the restore-heavy part runs one after the other.
        let origins: Vec<(Mode, (Vm, Instant))> = [true, false]
            .into_iter()
            .map(|platform_caps| {
                let m = Mode {
                    platform_caps,
                    split: false,
                    vmgenid: false,
                    cpu,
                };
                (m, origin(&lab, m))
            })
            .collect();
        for (m, (vm, booted)) in origins {
            check_clones(&lab, m, vm, booted);
        }
    }
    say!("aarch64 clone test: four modes in {:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&lab.dir);
}
