//! The runtime clone test: the five templates, with their real runtimes, each under its own
//! agent with the template's own `microvm-agent.toml` (only the ports changed), in one QEMU guest
//! that is snapshotted once and restored as three clones; each clone gets `/run`, then `/suspend`
//! and `/resume`; two more clones get no `/run` at all (the negative control). Every template
//! answers `GET /probe` with the next value of every generator its language's programs commonly
//! use and what the template claims for each: `safe` (different in every clone after `/run` and
//! after `/resume`, in every mode), `kernel` (safe where the kernel's generator was reseeded,
//! i.e. wherever the agent's `kernel_crng` is not `not-reseeded`), `none` (not clone-safe).
//! The test holds every template to its claims and prints the whole table, which is the
//! README's table.
//!
//! Four modes, as the platform can run an image: full root or the platform's default
//! capabilities (no CAP_SYS_ADMIN), with and without VMGenID. The capability modes snapshot a
//! settled guest (see `vm::settle`), so that its kernel hands every clone the same bytes.
//!
//! The test of the test: two broken copies of the Python template run beside the real ones, one
//! whose handler reseeds with a constant, one whose handler does nothing; both claim
//! `random.random()` safe, and the check must fail for both in every mode.
//!
//! The guest: Debian's kernel, and a read-only squashfs root from Debian's packages (Python,
//! Node.js, Java 17; `tests/vm/prepare.sh` builds it) shared by every clone; the agent, the
//! templates (Go and Rust built static here) and a tmpfs are all that is per VM.

#[path = "sim_support/mod.rs"]
mod support;
#[macro_use]
#[path = "vm/mod.rs"]
mod vm;
use support::run;
use vm::{distinct, Arch, Cpio, Spec, Vm, PLATFORM_CAPS};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The fixture app, outside any agent: the guest's uptime, and the kernel's bytes as a reference.
const FIXTURE: u16 = 8080;

/// One app in the guest: a template (or a broken copy of one) under its own agent.
struct App {
    name: &'static str,
    template: &'static str,
    /// The guest's command line for the app, after `--`.
    command: &'static str,
    /// For a broken copy: the text replaced in the template's app, and what replaces it.
    broken: Option<(&'static str, &'static str)>,
    /// `[app] reseed_in_process` (the agent's default is on).
    inproc: bool,
    /// It opens outbound TLS connections to the recorder on every probe (server name: its name).
    tls: bool,
}

const APPS: [App; 12] = [
    App {
        name: "python",
        template: "python",
        command: "python3 /run/mva/python/app.py",
        broken: None,
        inproc: true,
        tls: false,
    },
    App {
        name: "node",
        template: "node",
        command: "node /run/mva/node/app.js",
        broken: None,
        inproc: true,
        tls: false,
    },
    App {
        name: "java",
        template: "java",
        command: "java -cp /run/mva/java App",
        broken: None,
        inproc: true,
        tls: false,
    },
    App {
        name: "go",
        template: "go",
        command: "/run/mva/go/server",
        broken: None,
        inproc: true,
        tls: false,
    },
    App {
        name: "rust",
        template: "rust",
        command: "/run/mva/rust/server",
        broken: None,
        inproc: true,
        tls: false,
    },
    App {
        name: "python-constant",
        template: "python",
        command: "python3 /run/mva/python-constant/app.py",
        broken: Some(("microvm_agent.reseed(random)", "random.seed(42)")),
        inproc: false,
        tls: false,
    },
    App {
        name: "python-no-handler",
        template: "python",
        command: "python3 /run/mva/python-no-handler/app.py",
        broken: Some(("microvm_agent.reseed(random)", "pass")),
        inproc: false,
        tls: false,
    },
    // Unmodified apps (tests/runtime/): no handler, no seed; the agent's in-process reseed is
    // all they get, and what they send on the wire is read from the recorder.
    App {
        name: "plain-python",
        template: "plain-python",
        command: "python3 /run/mva/plain-python/plain.py plain-python",
        broken: None,
        inproc: true,
        tls: true,
    },
    App {
        name: "plain-node",
        template: "plain-node",
        command: "node /run/mva/plain-node/plain.js plain-node",
        broken: None,
        inproc: true,
        tls: true,
    },
    App {
        name: "plain-c",
        template: "plain-c",
        command: "/run/mva/plain-c/plain-c plain-c",
        broken: None,
        inproc: true,
        tls: true,
    },
    // The same apps with the switch off: the test of the test for the in-process reseed.
    App {
        name: "plain-python-off",
        template: "plain-python",
        command: "python3 /run/mva/plain-python-off/plain.py plain-python-off",
        broken: None,
        inproc: false,
        tls: true,
    },
    App {
        name: "plain-node-off",
        template: "plain-node",
        command: "node /run/mva/plain-node-off/plain.js plain-node-off",
        broken: None,
        inproc: false,
        tls: true,
    },
];

impl App {
    /// A copy that must fail the check (the test of the test): a broken handler, or an
    /// unmodified app with the in-process reseed switched off.
    fn control(&self) -> bool {
        self.broken.is_some() || (!self.inproc && self.template.starts_with("plain-"))
    }
    fn index(&self) -> u16 {
        APPS.iter().position(|a| a.name == self.name).unwrap() as u16
    }
    fn app_port(&self) -> u16 {
        8081 + self.index()
    }
    fn hook_port(&self) -> u16 {
        9001 + self.index()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn runtime_dir() -> PathBuf {
    vm::vm_dir().join("runtime")
}

/// In dependency order.
const MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "squashfs",
];

fn prerequisites() -> bool {
    let mut missing = vm::missing(
        Arch::X86_64,
        &["vmlinuz", "e1000.ko", "microvm-agent", "mva-fixture"],
    );
    let rt = runtime_dir();
    for f in MODULES
        .iter()
        .map(|m| format!("{m}.ko"))
        .chain(["rootfs.sqfs".to_string(), "versions.txt".to_string()])
    {
        if !rt.join(&f).exists() {
            missing.push(format!("{}/{f}", rt.display()));
        }
    }
    for tool in ["go", "javac", "cargo", "gcc"] {
        if !support::have_tool(tool) {
            missing.push(tool.to_string());
        }
    }
    vm::prerequisites("runtime clone test", missing)
}

/// Builds every app into `out/<name>/`: the template's files, its configuration with its ports,
/// and Java's classes, Go's and Rust's static x86_64 binaries.
fn build_apps(out: &Path) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(root().join("target"), PathBuf::from)
        .join("template-rust");
    for app in &APPS {
        let src = root().join("templates").join(app.template);
        let dir = out.join(app.name);
        std::fs::create_dir_all(&dir).unwrap();
        let toml = if app.template.starts_with("plain-") {
            PLAIN_TOML.to_string()
        } else {
            std::fs::read_to_string(src.join("microvm-agent.toml")).unwrap()
        };
        let mut toml = toml.replace("8080", &app.app_port().to_string());
        if !app.inproc {
            assert!(toml.contains("[app]\n"), "{}: no [app] section", app.name);
            toml = toml.replace("[app]\n", "[app]\nreseed_in_process = false\n");
        }
        std::fs::write(dir.join("microvm-agent.toml"), toml).unwrap();
        let d = dir.display().to_string();
        let plain = root().join("tests/runtime");
        match app.template {
            "plain-python" => {
                std::fs::copy(plain.join("plain.py"), dir.join("plain.py")).unwrap();
            }
            "plain-node" => {
                std::fs::copy(plain.join("plain.js"), dir.join("plain.js")).unwrap();
            }
            // Built with the host's compiler against the host's libssl.so.3: the guest is the
            // same Debian release, so the same library is there.
            "plain-c" => run(
                Command::new("gcc")
                    .args(["-O2", "-o", &format!("{d}/plain-c")])
                    .arg(plain.join("plain.c"))
                    .args(["-l:libssl.so.3", "-l:libcrypto.so.3"]),
                "gcc (plain.c)",
            ),
            "python" => {
                let text = std::fs::read_to_string(src.join("app.py")).unwrap();
                let text = match app.broken {
                    Some((from, to)) => {
                        assert!(text.contains(from), "the broken copy no longer applies");
                        text.replace(from, to)
                    }
                    None => text,
                };
                std::fs::write(dir.join("app.py"), text).unwrap();
                // Its client library, next to it as the Dockerfile has it.
                let lib = root().join("clients/python/src/microvm_agent/__init__.py");
                std::fs::create_dir_all(dir.join("microvm_agent")).unwrap();
                std::fs::copy(lib, dir.join("microvm_agent/__init__.py")).unwrap();
            }
            "node" => {
                std::fs::copy(src.join("app.js"), dir.join("app.js")).unwrap();
                // Its client library, in node_modules as the Dockerfile has it.
                let lib = dir.join("node_modules/microvm-agent");
                std::fs::create_dir_all(&lib).unwrap();
                for f in ["index.js", "package.json"] {
                    std::fs::copy(root().join("clients/node").join(f), lib.join(f)).unwrap();
                }
            }
            "java" => run(
                Command::new("javac")
                    .args(["--release", "17", "-d", &d])
                    .arg(src.join("App.java")),
                "javac",
            ),
            "go" => run(
                Command::new("go")
                    .args(["build", "-trimpath", "-o", &format!("{d}/server"), "."])
                    .current_dir(&src)
                    .env("CGO_ENABLED", "0")
                    .env("GOOS", "linux")
                    .env("GOARCH", "amd64")
                    .env("GOFLAGS", "-mod=mod"),
                "go build",
            ),
            "rust" => {
                run(
                    Command::new("cargo")
                        .args([
                            "build",
                            "-q",
                            "--release",
                            "--locked",
                            "--target",
                            "x86_64-unknown-linux-musl",
                            "--manifest-path",
                        ])
                        .arg(src.join("Cargo.toml"))
                        .env("CARGO_TARGET_DIR", &target),
                    "cargo build (template)",
                );
                std::fs::copy(
                    target.join("x86_64-unknown-linux-musl/release/microvm-app"),
                    dir.join("server"),
                )
                .unwrap();
            }
            other => panic!("no template {other}"),
        }
    }
}

/// The unmodified apps' configuration: what an author writes who has read nothing about clones.
const PLAIN_TOML: &str = "[app]\nrestart = \"on-failure\"\n\n[ready]\nhttp = \"http://127.0.0.1:8080/healthz\"\n\n[hooks]\nready_timeout = \"60s\"\n";

/// The guest's TLS ClientHello recorder (`mva-fixture tls-recorder 8443 8444`): TLS on 8443 (the
/// unmodified apps connect there), its findings over HTTP on this port.
const RECORDER: u16 = 8444;

/// The initramfs: loads the modules, mounts the shared read-only root, copies the agent and the
/// apps onto a tmpfs in it, and switches to it; `start.sh` then starts every app under its agent.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in __MODULES__ e1000; do $B insmod /lib/$m.ko; done
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add 10.0.2.15/24 dev eth0
$B ip route add default via 10.0.2.2
while [ ! -b /dev/vda ]; do $B sleep 0.1; done
$B mkdir -p /newroot
$B mount -t squashfs -o ro /dev/vda /newroot
$B mount -t tmpfs -o mode=0755 tmpfs /newroot/run
$B mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
$B cp -a /mva /newroot/run/mva
$B cp /bin/busybox /newroot/run/mva/busybox
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
echo "init: root mounted read-only; starting the apps"
exec $B switch_root /newroot /run/mva/busybox sh /run/mva/start.sh
"#;

fn start_script(platform_caps: bool) -> String {
    let caps = if platform_caps {
        format!("/run/mva/mva-fixture with-caps {PLATFORM_CAPS} ")
    } else {
        String::new()
    };
    let mut s = String::from(
        "B=/run/mva/busybox\nexport PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp MICROVM_AGENT_LOG=warn\n\
         FIXTURE_BIND=0.0.0.0 /run/mva/mva-fixture clone-app 8080 /run/fixture.log &\n\
         FIXTURE_BIND=0.0.0.0 /run/mva/mva-fixture tls-recorder 8443 8444 &\n",
    );
    for app in &APPS {
        s.push_str(&format!(
            "PORT={port} {caps}/run/mva/microvm-agent -c /run/mva/{name}/microvm-agent.toml \
             --listen 0.0.0.0:{hook} --state-dir /run/state/{name} --log-format text -- {cmd} \
             2>&1 | $B sed 's/^/[{name}] /' > /dev/console &\n",
            port = app.app_port(),
            name = app.name,
            hook = app.hook_port(),
            cmd = app.command,
        ));
    }
    // PID 1: reap whatever is orphaned.
    s.push_str("while true; do wait; $B sleep 1; done\n");
    s
}

fn initramfs(out: &Path, apps: &Path, platform_caps: bool) {
    let vmd = vm::vm_dir();
    let mut c = Cpio::new();
    c.file(
        "init",
        0o755,
        INIT.replace("__MODULES__", &MODULES.join(" ")).as_bytes(),
    );
    c.copy("bin/busybox", 0o755, &Arch::X86_64.busybox());
    for m in MODULES {
        c.copy(
            &format!("lib/{m}.ko"),
            0o644,
            &runtime_dir().join(format!("{m}.ko")),
        );
    }
    c.copy("lib/e1000.ko", 0o644, &vmd.join("e1000.ko"));
    c.dir("mva");
    c.copy("mva/microvm-agent", 0o755, &vmd.join("microvm-agent"));
    c.copy("mva/mva-fixture", 0o755, &vmd.join("mva-fixture"));
    c.file(
        "mva/start.sh",
        0o755,
        start_script(platform_caps).as_bytes(),
    );
    add_tree(&mut c, apps, "mva");
    c.write(out);
}

fn add_tree(c: &mut Cpio, from: &Path, at: &str) {
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = format!("{at}/{}", p.file_name().unwrap().to_string_lossy());
        if p.is_dir() {
            c.dir(&name);
            add_tree(c, &p, &name);
        } else {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            c.copy(&name, mode, &p);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Mode {
    platform_caps: bool,
    vmgenid: bool,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode {
            platform_caps: false,
            vmgenid: true,
        },
        Mode {
            platform_caps: false,
            vmgenid: false,
        },
        Mode {
            platform_caps: true,
            vmgenid: true,
        },
        Mode {
            platform_caps: true,
            vmgenid: false,
        },
    ];
    fn tag(self) -> String {
        format!(
            "{}, {}",
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
    fn name(self) -> String {
        format!(
            "{}-{}",
            if self.platform_caps { "caps" } else { "root" },
            if self.vmgenid { "genid" } else { "nogenid" }
        )
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
            arch: Arch::X86_64,
            accel: self.accel,
            mem_mib: 1024,
            cpu: "",
            initrd: self.initrd[usize::from(mode.platform_caps)].clone(),
            vmgenid: mode.vmgenid,
            disk: Some(runtime_dir().join("rootfs.sqfs")),
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
            p.claims.insert(row.to_string(), "safe".to_string());
        }
    }
    p
}

fn probe_app(vm: &Vm, app: &App) -> Probe {
    let body = vm.get_ok(app.app_port(), "/probe", Duration::from_secs(60));
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{}: /probe is not JSON ({e}): {body}", app.name));
    let map = |k: &str| -> BTreeMap<String, String> {
        v[k].as_object()
            .unwrap_or_else(|| panic!("{}: /probe has no {k}: {body}", app.name))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
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

fn measure_mode(lab: &Lab, mode: Mode, origin: Vm, booted: Instant) -> Measured {
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
            || drop(origin.get_ok(FIXTURE, "/getrandom", Duration::from_secs(30))),
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

    let mut clones: Vec<Vm> = (0..3)
        .map(|i| {
            let mut vm = spec.boot(&format!("clone{i}-{}", mode.name()), Some(&snap));
            vm.resume_clone();
            vm
        })
        .collect();
    let mut after_run = Vec::new();
    for (i, vm) in clones.iter_mut().enumerate() {
        let t = Instant::now();
        let body = format!(r#"{{"microvmId":"microvm-clone{i}","runHookPayload":"tenant-{i}"}}"#);
        let took: Vec<String> = APPS
            .iter()
            .map(|app| format!("{} {} ms", app.name, hook(vm, app, "/run", body.as_bytes())))
            .collect();
        let g: serde_json::Value =
            serde_json::from_str(&vm.request(APPS[0].hook_port(), "GET", "/generation", b"").1)
                .unwrap();
        assert_eq!(
            g["kernel_crng"],
            mode.kernel_crng(),
            "[{tag}] clone {i}: {g}"
        );
        after_run.push(sample(vm));
        say!(
            "[{tag}] clone {i}: restored and /run by every agent in {:?} ({})",
            t.elapsed(),
            took.join(", ")
        );
    }
    let mut after_resume = Vec::new();
    for vm in &clones {
        for app in &APPS {
            hook(vm, app, "/suspend", b"");
            hook(vm, app, "/resume", b"");
        }
        after_resume.push(sample(vm));
    }
    drop(clones);
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
                "safe" => true,
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

#[test]
fn every_template_generator_it_claims_safe_differs_in_every_clone() {
    if !prerequisites() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mva-runtime-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("apps")).unwrap();
    build_apps(&dir.join("apps"));
    let initrd = [
        dir.join("initramfs-root.cpio"),
        dir.join("initramfs-caps.cpio"),
    ];
    initramfs(&initrd[0], &dir.join("apps"), false);
    initramfs(&initrd[1], &dir.join("apps"), true);
    let accel = if vm::kvm_works(&dir) { "kvm" } else { "tcg" };
    say!(
        "runtime clone test: QEMU with {accel}; guest runtimes: {}",
        std::fs::read_to_string(runtime_dir().join("versions.txt"))
            .unwrap_or_default()
            .replace('\n', "; ")
    );
    let lab = Lab { dir, accel, initrd };
    let t = Instant::now();
    // For working on one mode locally: MVA_RUNTIME_MODES=root-genid,caps-nogenid (CI runs all).
    let only = std::env::var("MVA_RUNTIME_MODES").ok();
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == m.name()))
        })
        .collect();

    // The capability modes' build VMs boot first and settle while the full-root modes run.
    let boot = |m: Mode| {
        (
            lab.spec(m).boot(&format!("origin-{}", m.name()), None),
            Instant::now(),
        )
    };
    let settling: Vec<(Mode, (Vm, Instant))> = modes
        .iter()
        .copied()
        .filter(|m| m.platform_caps)
        .map(|m| (m, boot(m)))
        .collect();
    let mut all = Vec::new();
    for m in modes.iter().copied().filter(|m| !m.platform_caps) {
        let (vm, booted) = boot(m);
        all.push((m, measure_mode(&lab, m, vm, booted)));
    }
    for (m, (vm, booted)) in settling {
        all.push((m, measure_mode(&lab, m, vm, booted)));
    }
    let table = table(&all);
    say!("runtime clone test: four modes in {:?}; each cell: without /run, after /run, after /resume (= the same in every clone, ≠ different in each)\n{table}", t.elapsed());
    let _ = std::fs::write(runtime_dir().join("table.md"), &table);

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
    check_readme(&all);
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// The README's table lists the generators measured here, with the templates' claims.
fn check_readme(all: &[(Mode, Measured)]) {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let measured = table(all);
    for row in measured.lines().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (generator, claim) = (cells[2], cells[3]);
        // A row is its runtime (the words without a version in them) and its generator.
        let runtime = |cell: &str| -> Vec<String> {
            cell.split_whitespace()
                .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                .map(String::from)
                .collect()
        };
        let found = readme.lines().find(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            c.len() > 3 && c[2] == generator && runtime(c[1]) == runtime(cells[1])
        });
        let Some(line) = found else {
            panic!("README.md's table has no row for {generator} ({}); the measured table:\n{measured}", cells[1]);
        };
        assert!(
            line.split('|').map(str::trim).nth(3) == Some(claim),
            "README.md's row for {generator} does not state the claim {claim}: {line}"
        );
        if line.trim() != row.trim() {
            say!("note: README.md's row differs from this run's measurement:\n  README: {line}\n  here:   {row}");
        }
    }
}
