//! The clone test: a real VM (QEMU), snapshotted once after `/ready`, restored as several
//! clones. The clones must disagree on everything that must be unique: the generation id, the
//! secrets, the agent's seed, the machine-id and the app's next user-space random value.
//!
//! Four modes: the agent as PID 1 with full root, and with exactly the platform's default
//! capability set (`0xa80425fb`: no CAP_SYS_ADMIN, so no kernel reseed ioctl), each with
//! `-device vmgenid` (the hypervisor tells the guest kernel) and without. The capability modes
//! snapshot a *settled* VM: past the kernel's early-boot reseed schedule (uptime over 120 s) and
//! right after a draw from `getrandom`, so the clones' kernel CRNG is, deterministically, the
//! snapshot's. There the app is clone-safe only because it mixes the agent's seed in: its twin
//! generator that ignores the seed (`/peek-naive`) must fail the very check the real one passes,
//! which shows that the test can fail where it matters. A negative control (clones that get no
//! `/run`) shows the same user-space value in every clone.
//!
//! Needs `tests/vm/prepare.sh` (QEMU, a static busybox, a Debian kernel, static builds of the
//! agent and the fixture in `target/vm`). Without them the test says loudly that it was skipped;
//! with `MICROVM_AGENT_REQUIRE_VM=1` (as in CI) a missing prerequisite fails it.

mod common;
use common::free_port;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Straight to the stderr handle: `cargo test` captures `eprintln!` of passing tests, and CI's log
/// must show the values each clone was compared on.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn vm_dir() -> PathBuf {
    std::env::var_os("MICROVM_AGENT_VM_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("vm")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm"))
}

/// The guest's architecture: the platform's (aarch64, Graviton) or the development one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Where `tests/vm/prepare.sh` put this architecture's kernel, module and static binaries.
    fn dir(self) -> PathBuf {
        match self {
            Arch::X86_64 => vm_dir(),
            Arch::Aarch64 => vm_dir().join("aarch64"),
        }
    }

    fn busybox(self) -> PathBuf {
        match self {
            Arch::X86_64 => PathBuf::from("/bin/busybox"),
            Arch::Aarch64 => self.dir().join("busybox"),
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

/// What is missing for `arch`, if anything.
fn missing(arch: Arch) -> Vec<String> {
    let dir = arch.dir();
    let mut m: Vec<String> = ["vmlinuz", "e1000.ko", "microvm-agent", "mva-fixture"]
        .iter()
        .filter(|f| !dir.join(f).exists())
        .map(|f| format!("{}/{f}", dir.display()))
        .collect();
    if !std::fs::read(arch.busybox()).is_ok_and(|b| is_static(&b)) {
        m.push(format!("a static busybox at {}", arch.busybox().display()));
    }
    if Command::new(arch.qemu()).arg("--version").output().is_err() {
        m.push(arch.qemu().to_string());
    }
    m
}

/// Fails (in CI) or skips loudly when the prerequisites are not there.
fn prerequisites(arch: Arch) -> bool {
    let missing = missing(arch);
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MICROVM_AGENT_REQUIRE_VM").is_ok_and(|v| v == "1") {
        panic!("MICROVM_AGENT_REQUIRE_VM=1 but the {arch:?} clone test cannot run; missing: {missing:?} (run tests/vm/prepare.sh)");
    }
    say!("\n*** {arch:?} clone test SKIPPED: missing {missing:?}; run tests/vm/prepare.sh to enable it ***\n");
    false
}

/// An ELF64 file without a PT_INTERP program header needs no dynamic loader.
fn is_static(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        return false;
    }
    let (Some(phoff), Some(size), Some(num)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..num)
        .all(|i| elf.get(phoff + i * size..phoff + i * size + 4) != Some(&3u32.to_le_bytes()[..]))
}

// ------------------------------------------------------------------ initramfs (cpio newc)

struct Cpio(Vec<u8>, u32);

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.1 += 1;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.1, mode, 0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        self.pad();
        self.0.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, b"", (0, 0));
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"", (0, 0));
        self.0
    }
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

/// The platform's default capability set (measured; CONTRACT.md).
const PLATFORM_CAPS: &str = "0xa80425fb";

/// How one run of the test is set up.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// The agent runs with the platform's default capabilities (else full root).
    platform_caps: bool,
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
            if self.platform_caps { "caps" } else { "root" },
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

fn initramfs(out: &Path, arch: Arch, platform_caps: bool) {
    let dir = arch.dir();
    let caps = if platform_caps {
        format!("/bin/mva-fixture with-caps {PLATFORM_CAPS}")
    } else {
        String::new()
    };
    let init = INIT.replace("__CAPS__", &caps);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut c = Cpio(Vec::new(), 0);
    for d in ["bin", "dev", "etc", "lib", "proc", "run", "sys", "tmp"] {
        c.dir(d);
    }
    c.entry("dev/console", 0o020600, b"", (5, 1));
    c.file("init", 0o755, init.as_bytes());
    // The build VM's machine-id, cloned into every VM unless the agent rewrites it.
    c.file(
        "etc/machine-id",
        0o444,
        b"0123456789abcdef0123456789abcdef\n",
    );
    c.file(
        "bin/busybox",
        0o755,
        &std::fs::read(arch.busybox()).unwrap(),
    );
    c.file("bin/microvm-agent", 0o755, &read("microvm-agent"));
    c.file("bin/mva-fixture", 0o755, &read("mva-fixture"));
    c.file("lib/e1000.ko", 0o644, &read("e1000.ko"));
    c.file("etc/agent.toml", 0o644, AGENT_TOML.as_bytes());
    std::fs::write(out, c.finish()).unwrap();
}

// ------------------------------------------------------------------ QEMU

struct Vm {
    child: Child,
    qmp: Option<BufReader<UnixStream>>,
    hook_port: u16,
    app_port: u16,
    console: PathBuf,
    name: String,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Lab {
    dir: PathBuf,
    arch: Arch,
    accel: &'static str,
    /// The initramfs for full root and the one for the platform's capabilities.
    initrd: [PathBuf; 2],
}

impl Lab {
    fn boot(&self, name: &str, mode: Mode, incoming: Option<&Path>) -> Vm {
        let vmgenid = mode.vmgenid;
        let (hook_port, app_port) = (free_port(), free_port());
        let console = self.dir.join(format!("{name}.console"));
        let qmp = self.dir.join(format!("{name}.qmp"));
        let mut cmd = Command::new(self.arch.qemu());
        match self.arch {
            Arch::X86_64 => cmd.args(["-machine", "pc", "-accel", self.accel, "-m", "192"]),
            // The platform's architecture; `-cpu max` has FEAT_RNG (RNDR), cortex-a72 has not.
            Arch::Aarch64 => cmd.args([
                "-machine", "virt", "-accel", "tcg", "-m", "256", "-cpu", mode.cpu,
            ]),
        };
        cmd.args(["-smp", "1", "-display", "none", "-no-reboot", "-nodefaults"])
            .arg("-kernel")
            .arg(self.arch.dir().join("vmlinuz"))
            .arg("-initrd")
            .arg(&self.initrd[usize::from(mode.platform_caps)])
            .args(["-append", &format!("console={} panic=-1 quiet", self.arch.console())])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-netdev", &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{hook_port}-:9000,hostfwd=tcp:127.0.0.1:{app_port}-:8080")])
            .args(["-device", "e1000,netdev=n0"]);
        if vmgenid {
            cmd.args(["-device", "vmgenid,guid=auto"]);
        }
        if let Some(snap) = incoming {
            cmd.args(["-incoming", &format!("exec:cat {}", snap.display())]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu starts");
        let mut vm = Vm {
            child,
            qmp: None,
            hook_port,
            app_port,
            console,
            name: name.to_string(),
        };
        vm.qmp = Some(qmp_connect(&qmp));
        vm
    }
}

fn qmp_connect(path: &Path) -> BufReader<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("QMP socket {}: {e}", path.display()),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut r = BufReader::new(stream);
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(greeting.contains("QMP"), "{greeting}");
    qmp(&mut r, r#"{"execute":"qmp_capabilities"}"#);
    r
}

/// Sends one command and returns its `return` value (events in between are skipped).
fn qmp(r: &mut BufReader<UnixStream>, command: &str) -> serde_json::Value {
    r.get_mut()
        .write_all(format!("{command}\n").as_bytes())
        .unwrap();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("QMP answer");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(ret) = v.get("return") {
            return ret.clone();
        }
        assert!(v.get("error").is_none(), "QMP {command}: {line}");
    }
}

impl Vm {
    fn qmp(&mut self, command: &str) -> serde_json::Value {
        qmp(self.qmp.as_mut().expect("qmp"), command)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// One HTTP request through the host forward; `None` while nothing answers in the guest.
    fn try_http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(req.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    fn hook(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = Self::try_http(self.hook_port, method, path, body) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no answer on {path}; console:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn app(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, body)) = Self::try_http(self.app_port, "GET", path, b"") {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the app does not answer {path}; console:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((200, _)) = Self::try_http(self.hook_port, "GET", "/ready", b"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /ready never said 200; console:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the VM and writes its memory and device state to `snap`.
    fn snapshot(&mut self, snap: &Path) {
        self.qmp(r#"{"execute":"stop"}"#);
        self.qmp(&format!(
            r#"{{"execute":"migrate","arguments":{{"uri":"exec:cat > {}"}}}}"#,
            snap.display()
        ));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.qmp(r#"{"execute":"query-migrate"}"#)["status"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match status.as_str() {
                "completed" => return,
                "failed" | "cancelled" => panic!("snapshot failed: {status}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "snapshot did not complete");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After `-incoming`: waits for the state to load, then lets the clone run.
    fn resume_clone(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.qmp(r#"{"execute":"query-status"}"#)["status"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if status != "inmigrate" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the clone never finished loading"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.qmp(r#"{"execute":"cont"}"#);
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
    }
}

/// The check every unique value must pass: present in every clone, pairwise different.
fn all_distinct(what: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        assert!(!v.is_empty(), "{what}: clone {i} has no value");
    }
    assert!(distinct(values), "{what}: some clones agree: {values:?}");
}

fn distinct(values: &[String]) -> bool {
    (0..values.len()).all(|i| (i + 1..values.len()).all(|j| values[i] != values[j]))
}

fn pick(values: &[Values], f: impl Fn(&Values) -> &String) -> Vec<String> {
    values.iter().map(|v| f(v).clone()).collect()
}

fn kvm_works(lab_dir: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let console = lab_dir.join("kvm-probe.console");
    let mut child = match Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc",
            "-accel",
            "kvm",
            "-m",
            "128",
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
        ])
        .arg("-kernel")
        .arg(vm_dir().join("vmlinuz"))
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut booted = false;
    while Instant::now() < deadline && !booted {
        booted = std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("Linux version");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    booted
}

/// Boots the build VM of `mode` (its snapshot is taken later).
fn origin(lab: &Lab, mode: Mode) -> (Vm, Instant) {
    (
        lab.boot(&format!("origin-{}", mode.name()), mode, None),
        Instant::now(),
    )
}

/// Waits until the guest is past the kernel's early-boot reseed schedule (every uptime/2 s for
/// the first 120 s), then draws from `getrandom` in the guest, which reseeds a stale CRNG then
/// and there: the snapshot taken right after holds a CRNG that the clones keep until the next
/// scheduled reseed, a minute away in guest time.
fn settle(vm: &Vm, tag: &str) {
    loop {
        let up: f64 = vm.app("/uptime").parse().unwrap_or(0.0);
        if up >= 125.0 {
            say!("[{tag}] settled: guest uptime {up:.0} s");
            break;
        }
        std::thread::sleep(Duration::from_secs_f64((125.0 - up).clamp(0.2, 5.0)));
    }
    vm.app("/getrandom");
}

/// Snapshots `origin`, restores three clones, `/run`s each and checks what must be unique; then
/// suspends and resumes one; then (without VMGenID) the negative control.
fn check_clones(lab: &Lab, mode: Mode, mut origin: Vm, booted: Instant) {
    let tag = mode.tag();
    origin.wait_ready(Duration::from_secs(180));
    say!("[{tag}] booted and ready in {:?}", booted.elapsed());
    // The settled snapshot is what makes the kernel's sameness deterministic for the test of the
    // test below (x86_64); the aarch64 run relies on the negative control instead.
    let settled = mode.platform_caps && lab.arch == Arch::X86_64;
    if settled {
        settle(&origin, &tag);
    }
    let snap = lab.dir.join(format!("snap-{}", mode.name()));
    let t = Instant::now();
    origin.snapshot(&snap);
    drop(origin);
    say!(
        "[{tag}] snapshot: {} MB in {:?}",
        std::fs::metadata(&snap).unwrap().len() >> 20,
        t.elapsed()
    );

    let mut clones = Vec::new();
    let mut values = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let mut vm = lab.boot(&format!("clone{i}-{}", mode.name()), mode, Some(&snap));
        vm.resume_clone();
        let body = format!(r#"{{"microvmId":"microvm-clone{i}","runHookPayload":"tenant-{i}"}}"#);
        let (status, answer) = vm.hook("POST", "/run", body.as_bytes());
        assert_eq!(status, 200, "{answer}\n{}", vm.console());
        let v = collect(&vm);
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
    assert_ne!(after.generation_id, before.generation_id);
    assert_ne!(after.secret, before.secret);
    assert_ne!(after.seed, before.seed);
    assert_ne!(after.user_space, before.user_space);
    assert_eq!(
        after.machine_id, before.machine_id,
        "a resume is the same VM"
    );
    drop(clones);

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

/// A lab for `arch`: a scratch directory and the two initramfs (full root, platform caps).
fn lab(arch: Arch) -> Lab {
    let dir = std::env::temp_dir().join(format!("mva-clone-vm-{arch:?}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = [
        dir.join("initramfs-root.cpio"),
        dir.join("initramfs-caps.cpio"),
    ];
    initramfs(&initrd[0], arch, false);
    initramfs(&initrd[1], arch, true);
    let accel = if arch == Arch::X86_64 && kvm_works(&dir) {
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

#[test]
fn clones_of_one_snapshot_disagree_on_everything_that_must_be_unique() {
    if !prerequisites(Arch::X86_64) {
        return;
    }
    let lab = lab(Arch::X86_64);
    let t = Instant::now();
    let mode = |platform_caps, vmgenid| Mode {
        platform_caps,
        vmgenid,
        cpu: "",
    };
    // The capability modes' build VMs boot first and settle (two idle minutes) while the
    // full-root modes run.
    let settling: Vec<(Mode, (Vm, Instant))> = [true, false]
        .into_iter()
        .map(|vmgenid| (mode(true, vmgenid), origin(&lab, mode(true, vmgenid))))
        .collect();
    for vmgenid in [true, false] {
        let (vm, booted) = origin(&lab, mode(false, vmgenid));
        check_clones(&lab, mode(false, vmgenid), vm, booted);
    }
    for (m, (vm, booted)) in settling {
        check_clones(&lab, m, vm, booted);
    }
    say!("clone test: four modes in {:?}", t.elapsed());
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
    let lab = lab(Arch::Aarch64);
    let t = Instant::now();
    for cpu in ["max", "cortex-a72"] {
        // Two build VMs at once (one core each): the restore-heavy part runs one after the other.
        let origins: Vec<(Mode, (Vm, Instant))> = [true, false]
            .into_iter()
            .map(|platform_caps| {
                let m = Mode {
                    platform_caps,
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
