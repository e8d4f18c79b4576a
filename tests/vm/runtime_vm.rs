//! The runtime clone test: the five templates, with their real runtimes, each under its own
//! agent with the template's own `microvm-agent.toml` (only the ports changed), in one QEMU guest
//! that is snapshotted once and restored as three clones at the same time (a restore storm: all
//! three get `/run` at the same moment and must answer 200); each clone gets `/run`, then `/suspend`
//! and `/resume`; two more clones get no `/run` at all (the negative control). Every template
//! answers `GET /probe` with the next value of every generator its language's programs commonly
//! use and what the template claims for each: `safe` (different in every clone after `/run` and
//! after `/resume`, in every mode), `mixed` (safe, and also the kernel's bytes on every draw, so
//! that it differs without `/run` where the kernel was reseeded at restore), `kernel` (safe where
//! the kernel's generator was reseeded, i.e. wherever the agent's `kernel_crng` is not
//! `not-reseeded`), `none` (not clone-safe).
//! The test holds every template to its claims and prints the whole table, which is the
//! table in docs/clone-safety.md.
//!
//! x86_64, four modes, as the platform can run an image: full root or the platform's default
//! capabilities (no CAP_SYS_ADMIN), with and without VMGenID. aarch64 (the platform's
//! architecture), the same guest built for arm64 under `qemu-system-aarch64`, three modes
//! without VMGenID (QEMU's `virt` machine has none to offer a 6.1 kernel: no ACPI device without
//! firmware, no device-tree driver): the platform's capabilities on a CPU without FEAT_RNG (the
//! worst case) and with it, and full root. The capability modes
//! snapshot a settled guest (see `vm::settle`) right after a forced reseed of its kernel's CRNG,
//! so that every clone's kernel keeps the snapshot's CRNG state (one stream) for the kernel's
//! whole reseed interval (60 s of guest time): the worst case, in which only the agent's seed
//! differs per clone. Which bytes of that stream a draw gets still depends on what the other
//! processes drew before it (on aarch64's slower guest the order varies per clone, and its kernel
//! rows are mixed); `kernel` claims are not held in those modes. The two architectures take turns (one lock): each already keeps both cores busy.
//!
//! The test of the test: two broken copies of the Python template run beside the real ones, one
//! whose handler reseeds with a constant, one whose handler does nothing; both claim
//! `random.random()` safe, and the check must fail for both in every mode; and the unmodified
//! apps run a second time with the in-process reseed switched off, which must fail too.
//!
//! The guest: Debian's kernel, and a read-only squashfs root from Debian's packages (Python,
//! Node.js, Java 17; `tests/vm/prepare.sh` builds it) shared by every clone; the agent, the
//! templates (Go and Rust built static here) and a tmpfs are all that is per VM.

use mva_test_support::machine_lock;
use mva_test_support::repo as support;
use mva_test_support::{say, vm};
#[path = "runtime_vm/apps.rs"]
mod apps;
#[path = "runtime_vm/guest.rs"]
mod guest;
use apps::{root, App, APPS};
use guest::{runtime_dir, FIXTURE, RECORDER};
use vm::{distinct, Arch, Spec, Vm};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One architecture at a time: each run keeps both of CI's cores busy (TCG, one vCPU per VM).
static ONE_ARCH_AT_A_TIME: Mutex<()> = Mutex::new(());

fn prerequisites(arch: Arch) -> bool {
    let mut missing = vm::missing(
        arch,
        &["vmlinuz", "e1000.ko", "microvm-agent", "mva-fixture"],
    );
    let rt = runtime_dir(arch);
    for f in guest::modules(arch)
        .iter()
        .map(|m| format!("{m}.ko"))
        .chain(["rootfs.sqfs".to_string(), "versions.txt".to_string()])
    {
        if !rt.join(&f).exists() {
            missing.push(format!("{}/{f}", rt.display()));
        }
    }
    let mut tools = vec!["go", "javac", "cargo"];
    match arch {
        Arch::X86_64 => tools.push("gcc"),
        Arch::Aarch64 => {
            tools.push("aarch64-linux-gnu-gcc");
            if !apps::arm64_libs().join("libssl.so.3").exists() {
                missing.push(apps::arm64_libs().join("libssl.so.3").display().to_string());
            }
        }
    }
    for tool in tools {
        if !support::have_tool(tool) {
            missing.push(tool.to_string());
        }
    }
    let what = match arch {
        Arch::X86_64 => "runtime clone test",
        Arch::Aarch64 => "aarch64 runtime clone test",
    };
    vm::prerequisites(what, missing)
}

#[derive(Clone, Copy, Debug)]
struct Mode {
    arch: Arch,
    platform_caps: bool,
    vmgenid: bool,
    /// aarch64: the CPU has FEAT_RNG (RNDR), as `-cpu max` has and `cortex-a72` has not.
    rndr: bool,
}

impl Mode {
    const fn x86(platform_caps: bool, vmgenid: bool) -> Mode {
        Mode {
            arch: Arch::X86_64,
            platform_caps,
            vmgenid,
            rndr: false,
        }
    }
    const fn arm(platform_caps: bool, rndr: bool) -> Mode {
        Mode {
            arch: Arch::Aarch64,
            platform_caps,
            vmgenid: false,
            rndr,
        }
    }
    const X86_64: [Mode; 4] = [
        Mode::x86(false, true),
        Mode::x86(false, false),
        Mode::x86(true, true),
        Mode::x86(true, false),
    ];
    /// No VMGenID on this machine: the platform's capabilities on a CPU without a hardware
    /// generator (the worst case: the kernel hands every clone the same bytes) and with one
    /// (FEAT_RNG, as recent Gravitons), and full root without one.
    const AARCH64: [Mode; 3] = [
        Mode::arm(true, false),
        Mode::arm(true, true),
        Mode::arm(false, false),
    ];
    fn tag(self) -> String {
        let arch = match (self.arch, self.rndr) {
            (Arch::X86_64, _) => "",
            (Arch::Aarch64, true) => "aarch64 with RNDR: ",
            (Arch::Aarch64, false) => "aarch64: ",
        };
        format!(
            "{arch}{}, {}",
            if self.platform_caps {
                "platform capabilities"
            } else {
                "full root"
            },
            if self.vmgenid {
                "VMGenID"
            } else {
                "no VMGenID"
            }
        )
    }
    /// For `MVA_RUNTIME_MODES` (e.g. `caps-nogenid,arm-rndr-caps-nogenid`) and file names.
    fn name(self) -> String {
        format!(
            "{}{}-{}",
            match (self.arch, self.rndr) {
                (Arch::X86_64, _) => "",
                (Arch::Aarch64, true) => "arm-rndr-",
                (Arch::Aarch64, false) => "arm-",
            },
            if self.platform_caps { "caps" } else { "root" },
            if self.vmgenid { "genid" } else { "nogenid" }
        )
    }
    /// QEMU's CPU model: FEAT_RNG with pointer authentication on QEMU's cheap algorithm
    /// (Debian's arm64 programs sign their return addresses: the architected one costs TCG
    /// dearly) and without SVE (the JVM's compiled code uses it when present, which TCG emulates
    /// slowly: measured, Java's first /run went from 465-560 ms to 225-318 ms of its 800 ms),
    /// or a CPU without FEAT_RNG. The test measures generators, not PAC or vectors.
    fn cpu(self) -> &'static str {
        match (self.arch, self.rndr) {
            (Arch::X86_64, _) => "",
            (Arch::Aarch64, true) => "max,pauth-impdef=on,sve=off",
            (Arch::Aarch64, false) => "cortex-a72",
        }
    }
    /// What the agent's generation record must say of the kernel's generator.
    fn kernel_crng(self) -> &'static str {
        match (self.platform_caps, self.vmgenid) {
            (false, _) => "reseeded",
            (true, true) => "platform",
            (true, false) => "not-reseeded",
        }
    }
}

struct Lab {
    arch: Arch,
    dir: PathBuf,
    accel: &'static str,
    initrd: [PathBuf; 2],
}

impl Lab {
    fn spec(&self, mode: Mode) -> Spec {
        let mut ports = vec![FIXTURE, RECORDER];
        for app in &APPS {
            ports.extend([app.app_port(), app.hook_port()]);
        }
        Spec {
            arch: self.arch,
            accel: self.accel,
            mem_mib: 1024,
            cpu: mode.cpu(),
            initrd: self.initrd[usize::from(mode.platform_caps)].clone(),
            vmgenid: mode.vmgenid,
            disk: Some(runtime_dir(self.arch).join("rootfs.sqfs")),
            ports,
            dir: self.dir.clone(),
        }
    }
}

/// One app's probe: generator -> value, and generator -> claim.
#[derive(Debug, Clone, Default)]
struct Probe {
    runtime: String,
    values: BTreeMap<String, String>,
    claims: BTreeMap<String, String>,
}

fn probe(vm: &Vm, app: &App) -> Probe {
    let mut p = probe_app(vm, app);
    if app.tls {
        // What the probe's TLS connection sent, as the recorder saw it.
        let body = vm.get_ok(
            RECORDER,
            &format!("/hello?sni={}", app.name),
            Duration::from_secs(30),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for (field, row) in [
            ("random", "TLS ClientHello: random"),
            ("session_id", "TLS ClientHello: session id"),
            ("key_shares", "TLS ClientHello: key share"),
        ] {
            let value = v[field].as_str().unwrap_or_default().to_string();
            assert!(
                !value.is_empty(),
                "{}: the recorder has no {field}: {body}",
                app.name
            );
            p.values.insert(row.to_string(), value);
            // `safe` unless the app says otherwise (Java's are `mixed`: see `violations`).
            p.claims
                .entry(row.to_string())
                .or_insert_with(|| "safe".to_string());
        }
    }
    p
}

fn probe_app(vm: &Vm, app: &App) -> Probe {
    let body = vm.get_ok(app.app_port(), "/probe", Duration::from_secs(60));
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{}: /probe is not JSON ({e}): {body}", app.name));
    // A value is a string, or a list of a generator's next draws (`vm::distinct` reads them).
    let map = |k: &str| -> BTreeMap<String, String> {
        v[k].as_object()
            .unwrap_or_else(|| panic!("{}: /probe has no {k}: {body}", app.name))
            .iter()
            .map(|(k, v)| {
                let text = match v.as_array() {
                    Some(draws) => draws
                        .iter()
                        .map(|d| d.as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(vm::DRAWS),
                    None => v.as_str().unwrap_or_default().to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    };
    Probe {
        runtime: v["runtime"].as_str().unwrap_or_default().to_string(),
        values: map("values"),
        claims: map("claims"),
    }
}

/// Every app's probe in one clone, plus the kernel's bytes (the fixture, outside any agent).
type Sample = (BTreeMap<&'static str, Probe>, String);

fn sample(vm: &Vm) -> Sample {
    let probes = APPS.iter().map(|a| (a.name, probe(vm, a))).collect();
    (
        probes,
        vm.get_ok(FIXTURE, "/getrandom", Duration::from_secs(30)),
    )
}

/// A hook that must answer 200; how long it took (ms).
fn hook(vm: &Vm, app: &App, path: &str, body: &[u8]) -> u128 {
    let t = Instant::now();
    let (status, answer) = vm.request(app.hook_port(), "POST", path, body);
    assert_eq!(
        status,
        200,
        "{} {path}: {answer}\n{}",
        app.name,
        vm.console()
    );
    t.elapsed().as_millis()
}

/// A scoped thread's result, its panic (an assertion in a hook) passed on as it was.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// One generator's measurement in one mode: identical in the clones without /run, distinct
/// after /run, distinct after /resume.
#[derive(Debug, Clone, Copy)]
struct Cell {
    control_same: bool,
    run_distinct: bool,
    resume_distinct: bool,
}

impl Cell {
    fn text(self) -> String {
        let m = |distinct: bool| if distinct { "≠" } else { "=" };
        format!(
            "{} {} {}",
            m(!self.control_same),
            m(self.run_distinct),
            m(self.resume_distinct)
        )
    }
}

/// (app, generator) -> (runtime, claim, cell)
type Measured = BTreeMap<(&'static str, String), (String, String, Cell)>;

/// `others(true)` pauses the VMs of the modes still to come for the restore storm (and
/// `others(false)` lets them go on), so that the storm's clones share the machine only with each
/// other, as on the platform, where each VM has CPUs of its own.
fn measure_mode(
    lab: &Lab,
    mode: Mode,
    origin: Vm,
    booted: Instant,
    others: &mut dyn FnMut(bool),
) -> Measured {
    let tag = mode.tag();
    for app in &APPS {
        origin.get_ok(app.hook_port(), "/ready", Duration::from_secs(300));
    }
    say!("[{tag}] every app ready in {:?}", booted.elapsed());
    if mode.platform_caps {
        vm::settle(
            || {
                origin
                    .get_ok(FIXTURE, "/uptime", Duration::from_secs(30))
                    .parse()
                    .unwrap_or(0.0)
            },
            // Not a draw that may or may not find the CRNG stale (a reseed a few seconds
            // before would leave the clones as few seconds of the same bytes, fewer than an
            // emulated aarch64 takes to sample them): a reseed forced right now, by the fixture,
            // which runs as root outside any agent.
            || {
                let (status, body) = origin.request(FIXTURE, "POST", "/reseed-kernel", b"");
                assert_eq!(status, 200, "[{tag}] the fixture's RNDRESEEDCRNG: {body}");
            },
            &tag,
        );
    }
    let snap = lab.dir.join(format!("snap-{}", mode.name()));
    origin.snapshot_and_end(&snap, &tag);
    let spec = lab.spec(mode);

    // The negative control: two clones that get no /run.
    let mut control = Vec::new();
    for i in 0..2 {
        let mut vm = spec.boot(&format!("control{i}-{}", mode.name()), Some(&snap));
        vm.resume_clone();
        control.push(sample(&vm));
    }

    // A restore storm, as the platform makes one: the three clones load at the same time,
    // continue at the same time, and get /run at the same moment (a restored VM is slow at
    // first; three on two cores are slower still). Within a clone its agents are asked one
    // after another: on the platform each is a VM of its own; here they share one for economy.
    others(true);
    let mut clones: Vec<Vm> = (0..3)
        .map(|i| spec.boot(&format!("clone{i}-{}", mode.name()), Some(&snap)))
        .collect();
    let restored = Instant::now();
    std::thread::scope(|s| {
        for vm in clones.iter_mut() {
            s.spawn(move || vm.resume_clone());
        }
    });
    let took: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = clones
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                s.spawn(move || {
                    let body = format!(
                        r#"{{"microvmId":"microvm-clone{i}","runHookPayload":"tenant-{i}"}}"#
                    );
                    APPS.iter()
                        .map(|app| {
                            format!("{} {} ms", app.name, hook(vm, app, "/run", body.as_bytes()))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
            })
            .collect();
        runs.into_iter().map(join).collect()
    });
    let mut after_run = Vec::new();
    for (i, vm) in clones.iter().enumerate() {
        let g: serde_json::Value =
            serde_json::from_str(&vm.request(APPS[0].hook_port(), "GET", "/generation", b"").1)
                .unwrap();
        assert_eq!(
            g["kernel_crng"],
            mode.kernel_crng(),
            "[{tag}] clone {i}: {g}"
        );
        if mode.arch == Arch::Aarch64 {
            assert_eq!(
                g["hardware_random"],
                if mode.rndr { "rndr" } else { "none" },
                "[{tag}] clone {i}: {g}"
            );
        }
        after_run.push(sample(vm));
        say!(
            "[{tag}] clone {i}: restored with two others, /run by every agent in {:?} ({})",
            restored.elapsed(),
            took[i]
        );
        // What each agent's in-process channel saw at /run (acknowledged, late, failed): the
        // first thing to read when a claim fails.
        for app in &APPS {
            let st: serde_json::Value =
                serde_json::from_str(&vm.request(app.hook_port(), "GET", "/status", b"").1)
                    .unwrap_or_default();
            let members: Vec<String> = st["inproc"]["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}:{}:{}", p["kind"], p["told"], p["generation"]))
                .collect();
            say!(
                "[{tag}] clone {i} {}: generation {} notify {} members [{}]",
                app.name,
                st["generation"]["generation"],
                st["last_routine"]["notify"],
                members.join(" ")
            );
        }
    }
    // /suspend and /resume: every clone at once, each clone's agents one after another.
    std::thread::scope(|s| {
        let all: Vec<_> = clones
            .iter()
            .map(|vm| {
                s.spawn(move || {
                    for app in &APPS {
                        hook(vm, app, "/suspend", b"");
                        hook(vm, app, "/resume", b"");
                    }
                })
            })
            .collect();
        all.into_iter().for_each(join);
    });
    let after_resume: Vec<Sample> = clones.iter().map(sample).collect();
    drop(clones);
    others(false);
    let _ = std::fs::remove_file(&snap);

    let mut out = Measured::new();
    let column = |samples: &[Sample], app: &str, generator: &str| -> Vec<String> {
        samples
            .iter()
            .map(|s| s.0[app].values.get(generator).cloned().unwrap_or_default())
            .collect()
    };
    for app in &APPS {
        let first = &after_run[0].0[app.name];
        for (generator, claim) in &first.claims {
            let run = column(&after_run, app.name, generator);
            let resume = column(&after_resume, app.name, generator);
            for (what, values) in [("after /run", &run), ("after /resume", &resume)] {
                assert!(
                    values.iter().all(|v| !v.is_empty()),
                    "[{tag}] {}: {generator} has no value {what}: {values:?}",
                    app.name
                );
            }
            let cell = Cell {
                control_same: !distinct(&column(&control, app.name, generator)),
                run_distinct: distinct(&run),
                resume_distinct: distinct(&resume),
            };
            out.insert(
                (app.name, generator.clone()),
                (first.runtime.clone(), claim.clone(), cell),
            );
        }
    }
    let kernel = |s: &[Sample]| s.iter().map(|s| s.1.clone()).collect::<Vec<_>>();
    out.insert(
        ("kernel", "getrandom() (no agent asked)".to_string()),
        (
            "Linux 6.1".to_string(),
            "-".to_string(),
            Cell {
                control_same: !distinct(&kernel(&control)),
                run_distinct: distinct(&kernel(&after_run)),
                resume_distinct: distinct(&kernel(&after_resume)),
            },
        ),
    );
    out
}

/// What each template's claims demand of one mode's measurement; the failures, in words.
fn violations(mode: Mode, measured: &Measured, app: &str) -> Vec<String> {
    let kernel_reseeded = mode.kernel_crng() != "not-reseeded";
    measured
        .iter()
        .filter(|((a, _), _)| *a == app)
        .filter_map(|((a, generator), (_, claim, cell))| {
            let must = match claim.as_str() {
                "safe" | "mixed" => true,
                "kernel" => kernel_reseeded,
                _ => false,
            };
            (must && !(cell.run_distinct && cell.resume_distinct)).then(|| {
                format!(
                    "[{}] {a}: {generator} is claimed {claim} but is {}",
                    mode.tag(),
                    cell.text()
                )
            })
        })
        .collect()
}

/// The table (markdown): one row per generator, one column per mode.
fn table(all: &[(Mode, Measured)]) -> String {
    let mut t = String::from("| runtime | generator | template's claim |");
    for (m, _) in all {
        t.push_str(&format!(" {} |", m.tag()));
    }
    t.push_str("\n|---|---|---|");
    for _ in all {
        t.push_str("---|");
    }
    t.push('\n');
    for ((app, generator), (runtime, claim, _)) in &all[0].1 {
        if APPS.iter().any(|a| a.name == *app && a.control()) {
            continue;
        }
        t.push_str(&format!("| {runtime} | `{generator}` | {claim} |"));
        for (_, measured) in all {
            t.push_str(&format!(
                " {} |",
                measured[&(*app, generator.clone())].2.text()
            ));
        }
        t.push('\n');
    }
    t
}

fn pause_all<'a>(vms: impl Iterator<Item = &'a mut Vm>, pause: bool) {
    for vm in vms {
        if pause {
            vm.pause();
        } else {
            vm.unpause();
        }
    }
}

#[test]
fn every_template_generator_it_claims_safe_differs_in_every_clone() {
    run_arch(Arch::X86_64, &Mode::X86_64);
}

#[test]
fn aarch64_every_template_generator_it_claims_safe_differs_in_every_clone() {
    run_arch(Arch::Aarch64, &Mode::AARCH64);
}

fn run_arch(arch: Arch, all_modes: &[Mode]) {
    if !prerequisites(arch) {
        return;
    }
    machine_lock::heavy_tier();
    // For working on one mode locally: MVA_RUNTIME_MODES=root-genid,arm-caps-nogenid (CI runs all).
    let only = std::env::var("MVA_RUNTIME_MODES").ok();
    let modes: Vec<Mode> = all_modes
        .iter()
        .copied()
        .filter(|m| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == m.name()))
        })
        .collect();
    if modes.is_empty() {
        say!("runtime clone test ({arch:?}): no mode selected by MVA_RUNTIME_MODES");
        return;
    }
    let _turn = ONE_ARCH_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = std::env::temp_dir().join(format!("mva-runtime-vm-{arch:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("apps")).unwrap();
    apps::build(&dir.join("apps"), arch);
    let initrd = [
        dir.join("initramfs-root.cpio"),
        dir.join("initramfs-caps.cpio"),
    ];
    guest::initramfs(&initrd[0], &dir.join("apps"), false, arch);
    guest::initramfs(&initrd[1], &dir.join("apps"), true, arch);
    let accel = if arch == Arch::X86_64 && vm::kvm_works(&dir) {
        "kvm"
    } else {
        "tcg"
    };
    say!(
        "runtime clone test ({arch:?}): QEMU with {accel}; guest runtimes: {}",
        std::fs::read_to_string(runtime_dir(arch).join("versions.txt"))
            .unwrap_or_default()
            .replace('\n', "; ")
    );
    let lab = Lab {
        arch,
        dir,
        accel,
        initrd,
    };
    let t = Instant::now();

    // The capability modes' build VMs boot first and settle while the full-root modes run.
    let boot = |m: Mode| {
        (
            lab.spec(m).boot(&format!("origin-{}", m.name()), None),
            Instant::now(),
        )
    };
    let mut settling: Vec<(Mode, (Vm, Instant))> = modes
        .iter()
        .copied()
        .filter(|m| m.platform_caps)
        .map(|m| (m, boot(m)))
        .collect();
    // Each mode's restore storm has the machine to itself: the VMs still settling are paused
    // for it. They used to run beside it (booting sixteen apps each), and on a slower day the
    // storm's first /run ran past its budget on both architectures, with this build and the one
    // before it alike: load of the test's own making, which the platform does not add.
    let mut all = Vec::new();
    for m in modes.iter().copied().filter(|m| !m.platform_caps) {
        let (vm, booted) = boot(m);
        let mut others = |pause: bool| pause_all(settling.iter_mut().map(|(_, (vm, _))| vm), pause);
        all.push((m, measure_mode(&lab, m, vm, booted, &mut others)));
    }
    while !settling.is_empty() {
        let (m, (vm, booted)) = settling.remove(0);
        let mut others = |pause: bool| pause_all(settling.iter_mut().map(|(_, (vm, _))| vm), pause);
        all.push((m, measure_mode(&lab, m, vm, booted, &mut others)));
    }
    let table = table(&all);
    say!("runtime clone test ({arch:?}): {} modes in {:?}; each cell: without /run, after /run, after /resume (= the same in every clone, ≠ different in each)\n{table}", all.len(), t.elapsed());
    let _ = std::fs::write(runtime_dir(arch).join("table.md"), &table);

    let mut failures = Vec::new();
    for (m, measured) in &all {
        for app in APPS.iter().filter(|a| !a.control()) {
            failures.extend(violations(*m, measured, app.name));
        }
        // The test of the test: each broken copy must fail the same check in every mode.
        for app in APPS.iter().filter(|a| a.control()) {
            assert!(
                !violations(*m, measured, app.name).is_empty(),
                "[{}] {}: a broken handler passed the check, which therefore cannot fail",
                m.tag(),
                app.name
            );
        }
        // Without /run a generator a template claims safe is normally the snapshot's; one that
        // differs anyway mixes something of its own per clone (a clock, a thread), which the
        // after-/run columns cannot tell apart from the handler's work: said, not failed.
        // The unmodified apps are the in-process reseed's proof: their values must be the
        // snapshot's in clones that got no /run (else the probe measures something per clone of
        // its own, and the after-/run columns prove nothing about the reseed).
        // A `mixed` generator (in-process state the agent reseeds, XOR the kernel's bytes on
        // every draw: Java's NativePRNG) differs without /run wherever the kernel's bytes do:
        // reseeded at restore (VMGenID), or one cloned stream that each clone's processes read in
        // another order (aarch64's guest, measured), which no judge can tell from a reseed. Its
        // proof is the copy with the switch off, where the kernel's bytes stay the snapshot's
        // through /run and /resume (the kernel's row `= = =`): there the off copy's value must
        // stay cloned after /run, and the claim holds the copy with the switch on to `≠`.
        let kernel_cloned_throughout = measured
            .get(&("kernel", "getrandom() (no agent asked)".to_string()))
            .is_some_and(|(_, _, c)| c.control_same && !c.run_distinct && !c.resume_distinct);
        for ((app, generator), (_, claim, cell)) in measured {
            let unmodified = APPS
                .iter()
                .any(|a| a.name == *app && a.template.starts_with("plain-") && !a.control());
            if unmodified && claim == "safe" && !cell.control_same {
                failures.push(format!(
                    "[{}] {app}: {generator} differs in clones that got no /run: not cloned state",
                    m.tag()
                ));
            }
            let switched_off = APPS
                .iter()
                .any(|a| a.name == *app && a.template.starts_with("plain-") && a.control());
            if switched_off && claim == "mixed" && kernel_cloned_throughout && cell.run_distinct {
                failures.push(format!(
                    "[{}] {app}: {generator} differs after /run with the switch off where the kernel's bytes are the snapshot's: the copy with it on proves nothing",
                    m.tag()
                ));
            }
        }
        for ((app, generator), (_, claim, cell)) in measured {
            if claim == "safe" && !cell.control_same {
                say!(
                    "[{}] note: {app}: {generator} differs even in clones that got no /run",
                    m.tag()
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "claims not met:\n{}",
        failures.join("\n")
    );
    check_guide(&all);
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// The clone-safety guide's table (`docs/clone-safety.md`) lists the generators measured here,
/// with the templates' claims, and has a column for every mode measured (x86_64's and aarch64's
/// side by side).
fn check_guide(all: &[(Mode, Measured)]) {
    let readme = std::fs::read_to_string(root().join("docs/clone-safety.md")).unwrap();
    let cells = |line: &str| -> Vec<String> {
        let c: Vec<String> = line.split('|').map(|c| c.trim().to_string()).collect();
        // Without the empty cells before the first bar and after the last.
        c[1..c.len().saturating_sub(1).max(1)].to_vec()
    };
    let header = readme
        .lines()
        .find(|l| l.starts_with("| runtime | generator | template's claim |"))
        .expect("docs/clone-safety.md has the runtime clone test's table");
    let columns = cells(header);
    let measured = table(all);
    for (m, _) in all {
        assert!(
            columns.contains(&m.tag()),
            "docs/clone-safety.md's table has no column for {}: {header}",
            m.tag()
        );
    }
    for row in measured.lines().skip(2) {
        let here = cells(row);
        let (generator, claim) = (&here[1], &here[2]);
        // A row is its runtime (the words without a version in them) and its generator.
        let runtime = |cell: &str| -> Vec<String> {
            cell.split_whitespace()
                .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                .map(String::from)
                .collect()
        };
        let found = readme.lines().map(cells).find(|c| {
            c.len() == columns.len() && &c[1] == generator && runtime(&c[0]) == runtime(&here[0])
        });
        let Some(theirs) = found else {
            panic!("docs/clone-safety.md's table has no row for {generator} ({}); the measured table:\n{measured}", here[0]);
        };
        assert_eq!(
            &theirs[2], claim,
            "docs/clone-safety.md's row for {generator} does not state the claim {claim}"
        );
        for (i, (m, _)) in all.iter().enumerate() {
            let at = columns.iter().position(|c| *c == m.tag()).unwrap();
            if theirs[at] != here[3 + i] {
                say!(
                    "note: docs/clone-safety.md's {generator} ({}) in [{}] is {}, this run measured {}",
                    here[0],
                    m.tag(),
                    theirs[at],
                    here[3 + i]
                );
            }
        }
    }
}
