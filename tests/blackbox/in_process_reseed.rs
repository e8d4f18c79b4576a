//! The in-process reseed (`clone::inproc`, `inproc/`), black-box: the real agent starts real
//! Python, Node.js and C programs with its helpers on by default; a new generation reaches each of
//! their processes (workers forked without exec too) and the hook waits for their
//! acknowledgements. What it does *to the generators* is judged in real clones, on the wire
//! (`tests/vm/runtime_vm.rs`); here: that it reaches every process, that it never stops one from
//! starting (no OpenSSL, static, musl), and that a process that does not answer fails the hook
//! as any unacknowledged notification does.

use mva_test_support::agent as common;
use mva_test_support::repo as support;
use mva_test_support::vm;

use std::time::Duration;

use common::*;
use support::have_tool;

/// A Python app that seeds the module-level `random` with 1 at start (so its draws are known)
/// and answers `GET /draw` with the next `random.random()`; `forks` workers forked without exec
/// (as `multiprocessing`'s fork start method does) that just wait.
fn python_app(dir: &TempDir, port: u16, forks: u32) -> Vec<String> {
    let script = dir.join("app.py");
    std::fs::write(
        &script,
        format!(
            r#"
import http.server, os, random, ssl, sys, time
random.seed(1)
for _ in range({forks}):
    if os.fork() == 0:
        while True:
            time.sleep(1000)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = repr(random.random()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#
        ),
    )
    .unwrap();
    vec!["/usr/bin/python3".into(), script.display().to_string()]
}

fn ready_on(port: u16, extra: &str) -> String {
    format!("[ready]\nhttp = \"http://127.0.0.1:{port}/draw\"\n{extra}")
}

/// Python's `random` after `random.seed(1)`: the first and second draws.
const SEEDED_FIRST: &str = "0.13436424411240122";
const SEEDED_SECOND: &str = "0.8474337369372327";

fn members(a: &Agent) -> Vec<serde_json::Value> {
    a.status()["inproc"]["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn draw(port: u16) -> String {
    http(port, "GET", "/draw", &[], b"").text()
}

#[test]
fn an_unmodified_python_app_and_its_forked_workers_are_reseeded_before_run_answers() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIP: no /usr/bin/python3");
        return;
    }
    let dir = TempDir::new("inproc-py");
    let (_held, port) = reserve_port();
    let a = Spec::default()
        .config(&ready_on(port, ""))
        .app(&python_app(&dir, port, 3))
        .start();
    assert_eq!(a.ready_settled().status, 200);
    // The readiness probe drew the first value: the seeded sequence is the snapshot's.
    eventually("the app and its three workers registered", || {
        members(&a).len() == 4
    });
    assert!(
        members(&a)
            .iter()
            .all(|m| m["kind"] == "python" && m["generation"].is_null()),
        "nothing is sent before the first generation: {:?}",
        members(&a)
    );
    let r = a.post("/run", br#"{"microvmId":"vm-1"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    // The Python helper's `ssl.RAND_add` is each process's first use of its OpenSSL (loaded with
    // `ssl`, after start): the native helper starts there too, and registers beside it.
    let m: Vec<_> = members(&a)
        .into_iter()
        .filter(|m| m["kind"] == "python")
        .collect();
    assert_eq!(m.len(), 4, "{m:?}");
    for p in &m {
        assert_eq!(
            p["generation"], 1,
            "every process acknowledged generation 1: {m:?}"
        );
        assert!(p["reseeded"].as_str().unwrap().contains("random"), "{m:?}");
    }
    let notify = &a.status()["last_routine"]["notify"];
    assert_eq!(
        notify["acknowledged"],
        serde_json::json!(["inproc"]),
        "{notify}"
    );
    let next = draw(port);
    assert_ne!(next, SEEDED_SECOND, "random was not reseeded by /run");
    assert_ne!(next, SEEDED_FIRST);
}

#[test]
fn switched_off_the_app_keeps_the_snapshots_generators() {
    // The test of the test: the same app with `reseed_in_process = false` draws the seeded
    // sequence after /run, and nothing takes part.
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIP: no /usr/bin/python3");
        return;
    }
    let dir = TempDir::new("inproc-off");
    let (_held, port) = reserve_port();
    let a = Spec::default()
        .config(&format!(
            "[app]\nreseed_in_process = false\n{}",
            ready_on(port, "")
        ))
        .app(&python_app(&dir, port, 0))
        .start();
    assert_eq!(a.ready_settled().status, 200);
    assert_eq!(a.post("/run", b"{}").status, 200);
    assert_eq!(draw(port), SEEDED_SECOND);
    assert!(members(&a).is_empty());
    let arranged = &a.status()["inproc"]["arranged"];
    assert_eq!(arranged["enabled"], false, "{arranged}");
}

#[test]
fn a_node_app_gets_its_openssl_and_math_random_reseeded() {
    if !have_tool("node") {
        eprintln!("SKIP: no node");
        return;
    }
    let dir = TempDir::new("inproc-node");
    let (_held, port) = reserve_port();
    let script = dir.join("app.js");
    std::fs::write(
        &script,
        format!(
            "const c = require('crypto'); c.randomUUID(); c.randomInt(5); \
             require('http').createServer((q, s) => {{ const b = String(Math.random.toString().includes('[native code]')); \
             s.writeHead(200, {{'content-length': b.length}}); s.end(b); }}).listen({port}, '127.0.0.1');"
        ),
    )
    .unwrap();
    let a = Spec::default()
        .config(&ready_on(port, ""))
        .app(&["node", script.to_str().unwrap()])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    assert_eq!(
        draw(port),
        "false",
        "Math.random was not replaced before the app's code"
    );
    eventually("the node process registered twice (native, node)", || {
        members(&a).len() == 2
    });
    assert_eq!(a.post("/run", b"{}").status, 200);
    let m = members(&a);
    let native = m.iter().find(|p| p["kind"] == "native").expect("native");
    let node = m.iter().find(|p| p["kind"] == "node").expect("node");
    assert_eq!(native["pid"], node["pid"]);
    assert_eq!(native["reseeded"], "openssl=1", "{m:?}");
    assert_eq!(
        node["reseeded"], "math.random,randomUUID,randomInt",
        "{m:?}"
    );
}

#[test]
fn a_stopped_process_never_fails_a_hook_and_is_reseeded_once_it_runs_again() {
    // The helpers are the agent's, not the author's: a process that cannot answer (stopped
    // here; busy, starved or exiting elsewhere) is reported, never a failed hook, and its
    // reseed goes on after the answer. (The previous policy answered /run 500: the VM ended.)
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIP: no /usr/bin/python3");
        return;
    }
    let dir = TempDir::new("inproc-stop");
    let (_held, port) = reserve_port();
    let a = Spec::default()
        .config(&ready_on(port, ""))
        .app(&python_app(&dir, port, 0))
        .start();
    assert_eq!(a.ready_settled().status, 200);
    eventually("registered", || members(&a).len() == 1);
    let pid = a.app_pid().unwrap() as i32;
    // SAFETY: signals to the test's own app process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let r = a.post("/run", b"{}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "ok", "{}", r.text());
    let notify = &a.status()["last_routine"]["notify"];
    assert_eq!(notify["failed"], serde_json::json!([]), "{notify}");
    let late = notify["late"].to_string();
    assert!(
        late.contains(&format!("pid {pid} (python)")) && late.contains("(stopped)"),
        "{late}"
    );
    // Running again, it acknowledges the generation it was sent while stopped.
    eventually("the late reseed", || members(&a)[0]["generation"] == 1);
    assert_ne!(draw(port), SEEDED_SECOND, "random was not reseeded");
}

#[test]
fn the_images_own_environment_and_sitecustomize_are_kept() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIP: no /usr/bin/python3");
        return;
    }
    let dir = TempDir::new("inproc-env");
    let theirs = dir.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    let marker = dir.join("their-sitecustomize-ran");
    std::fs::write(
        theirs.join("sitecustomize.py"),
        format!(
            "open({:?}, 'w').write('yes')\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let (_held, port) = reserve_port();
    let script = dir.join("env.py");
    std::fs::write(
        &script,
        format!(
            r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "|".join(os.environ.get(k, "") for k in ("LD_PRELOAD", "PYTHONPATH", "NODE_OPTIONS")).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#
        ),
    )
    .unwrap();
    let a = Spec::default()
        .config(&ready_on(port, ""))
        .env("LD_PRELOAD", "")
        .env("PYTHONPATH", theirs.to_str().unwrap())
        .env("NODE_OPTIONS", "--max-old-space-size=64")
        .app(&["/usr/bin/python3", script.to_str().unwrap()])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    let env = draw(port);
    let parts: Vec<&str> = env.split('|').collect();
    let state = a.state("inproc");
    let ours = |p: &str| state.join(p).display().to_string();
    assert_eq!(parts[0], ours("libmicrovm-reseed.so"));
    assert_eq!(
        parts[1],
        format!("{}:{}", ours("python"), theirs.display()),
        "ours first, then the image's"
    );
    assert_eq!(
        parts[2],
        format!(
            "--max-old-space-size=64 --require {}",
            ours("node/microvm-reseed.js")
        )
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "yes",
        "the image's sitecustomize did not run"
    );
    // Read-only helpers.
    assert_eq!(mode(&state.join("libmicrovm-reseed.so")) & 0o777, 0o444);
}

#[test]
fn apps_without_openssl_static_and_musl_binaries_start_and_work() {
    // The helpers load into every dynamically linked process and must never stop one: a C
    // program without OpenSSL (glibc), one linked with musl (when musl-gcc is here), and a static
    // binary (never loads it). Each serves its readiness probe; the musl one has the library
    // mapped (it was loaded, not ignored).
    let dir = TempDir::new("inproc-libc");
    let src = dir.join("serve.c");
    std::fs::write(&src, SERVE_C).unwrap();
    let mut programs: Vec<(&str, std::path::PathBuf, bool)> = Vec::new();
    for (name, cc, args) in [
        ("glibc", "gcc", &[][..]),
        ("musl", "musl-gcc", &[][..]),
        ("static", "gcc", &["-static"][..]),
    ] {
        if !have_tool(cc) {
            eprintln!("SKIP {name}: no {cc} (tests/vm/prepare.sh installs musl-tools)");
            continue;
        }
        let out = dir.join(name);
        let ok = std::process::Command::new(cc)
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cc} failed");
        programs.push((name, out, name != "static"));
    }
    assert!(!programs.is_empty(), "no C compiler at all");
    for (name, program, dynamic) in programs {
        let (_held, port) = reserve_port();
        let a = Spec::default()
            .config(&ready_on(port, ""))
            .app(&[program.to_str().unwrap(), &port.to_string()])
            .start();
        assert_eq!(a.ready_settled().status, 200, "{name}: {}", a.stderr.text());
        let pid = a.app_pid().unwrap();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        assert_eq!(
            maps.contains("libmicrovm-reseed.so"),
            dynamic,
            "{name}: the helper mapped: {}",
            !dynamic
        );
        // No OpenSSL: the helper did nothing (no registration), and /run is not held up.
        assert_eq!(a.post("/run", b"{}").status, 200, "{name}");
        assert!(members(&a).is_empty(), "{name}: {:?}", members(&a));
        let others = a.status()["inproc"]["not_taking_part"].to_string();
        assert!(
            others.contains(&format!("\"pid\":{pid}")),
            "{name}: {others}"
        );
        // And what it is, with what of such a program stays as cloned.
        let program = if dynamic { "dynamic" } else { "static" };
        let listed = a.status()["inproc"]["not_taking_part"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["pid"] == pid).cloned())
            .unwrap_or_default();
        assert_eq!(listed["program"], program, "{name}: {others}");
        let advice = a.status()["inproc"]["stays_cloned"].to_string();
        assert!(
            advice.contains(&format!("\"program\":\"{program}\"")),
            "{name}: {advice}"
        );
        assert!(
            !a.stderr.text().contains("ld.so"),
            "{name}: the loader complained: {}",
            a.stderr.text()
        );
    }
}

/// A C program without OpenSSL: answers every connection on argv[1] with 200 "ok".
const SERVE_C: &str = r#"
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8)) return 1;
    for (;;) {
        int c = accept(s, 0, 0);
        char buf[1024];
        if (read(c, buf, sizeof buf) > 0) {
            const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            write(c, r, strlen(r));
        }
        close(c);
    }
}
"#;

#[test]
fn the_aarch64_helper_reseeds_an_aarch64_openssl_process() {
    // The platform runs aarch64: the aarch64 agent (static, under qemu-aarch64-static) writes its
    // own aarch64 helper, and an aarch64 program linked with Debian's arm64 libssl (`openssl
    // s_server`, under qemu-aarch64-static) loads it, registers, and acknowledges /run having
    // reseeded its one OpenSSL. Prepared by tests/vm/prepare.sh.
    let arm = vm::Arch::Aarch64.dir();
    let (agent, userland) = (arm.join("microvm-agent"), arm.join("userland"));
    let openssl = userland.join("usr/bin/openssl");
    let mut missing: Vec<String> = [&agent, &openssl]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !have_tool("qemu-aarch64-static") {
        missing.push("qemu-aarch64-static".into());
    }
    if !vm::prerequisites("aarch64 in-process reseed test", missing) {
        return;
    }
    let dir = TempDir::new("inproc-arm");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ((_h1, hooks), (_h2, app)) = (reserve_port(), reserve_port());
    let mut child = std::process::Command::new("qemu-aarch64-static")
        .arg(&agent)
        .args(["--listen", &format!("127.0.0.1:{hooks}")])
        .arg("--state-dir")
        .arg(&state)
        .args(["--", "qemu-aarch64-static", "-L"])
        .arg(&userland)
        .arg(&openssl)
        .args(["s_server", "-nocert", "-cipher", "aNULL", "-quiet"])
        .args(["-accept", &format!("127.0.0.1:{app}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The emulated agent takes a moment to bind its port.
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", hooks)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = || -> serde_json::Value {
        let body = http(hooks, "GET", "/status", &[], b"").text();
        serde_json::from_str(&body).unwrap_or_default()
    };
    let registered = || -> Vec<serde_json::Value> {
        status()["inproc"]["processes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let mut waited = 0;
    while registered().is_empty() && waited < 600 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let run = http(hooks, "POST", "/run", &[], b"{}");
    let after = registered();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(run.status, 200, "{}", run.text());
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["kind"], "native");
    assert_eq!(after[0]["generation"], 1);
    assert_eq!(after[0]["reseeded"], "openssl=1");
}

#[test]
fn a_helper_file_removed_under_a_running_app_is_back_before_its_restart() {
    // `node --require <missing file>` exits at once: if something removes the helpers (an app
    // that cleans the state directory), the next start of the app must still work.
    if !have_tool("node") {
        eprintln!("SKIP: no node");
        return;
    }
    let dir = TempDir::new("inproc-gone");
    let (_held, port) = reserve_port();
    let script = dir.join("app.js");
    std::fs::write(
        &script,
        format!("require('http').createServer((q, s) => s.end('ok')).listen({port}, '127.0.0.1');"),
    )
    .unwrap();
    let a = Spec::default()
        .config(&format!(
            "[app]\nrestart = \"on-failure\"\n[ready]\nhttp = \"http://127.0.0.1:{port}/\"\n"
        ))
        .app(&["node", script.to_str().unwrap()])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    std::fs::remove_dir_all(a.state("inproc")).unwrap();
    let pid = a.app_pid().unwrap() as i32;
    // SAFETY: kill takes plain integers; no memory of ours is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually("the app restarted and serves again", || {
        a.app_pid().is_some_and(|p| p != i64::from(pid))
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(a.state("inproc/node/microvm-reseed.js").exists());
    assert_eq!(a.status()["app"]["restarts"], 1, "{}", a.status()["app"]);
}

#[test]
fn every_worker_of_a_node_cluster_is_reseeded() {
    // `cluster` starts its workers with child_process.fork: new node processes that inherit the
    // helpers' environment and register themselves, natively and at the runtime's level.
    if !have_tool("node") {
        eprintln!("SKIP: no node");
        return;
    }
    let dir = TempDir::new("inproc-cluster");
    let (_held, port) = reserve_port();
    let script = dir.join("cluster.js");
    std::fs::write(
        &script,
        format!(
            "const cluster = require('cluster');\n\
             if (cluster.isPrimary) {{ for (let i = 0; i < 2; i++) cluster.fork(); }}\n\
             else {{ require('http').createServer((q, s) => s.end('ok')).listen({port}, '127.0.0.1'); }}\n"
        ),
    )
    .unwrap();
    let a = Spec::default()
        // A worker that registered may still be running its module's top level when /run comes
        // (its helper answers from the event loop): on a loaded machine that took more than the
        // default 800 ms once. What this test guards is that every worker takes part.
        .config(&format!(
            "[ready]\nhttp = \"http://127.0.0.1:{port}/\"\n[hooks]\nrun_timeout = \"5s\"\nresume_timeout = \"5s\"\nsuspend_timeout = \"5s\"\nterminate_timeout = \"5s\"\n\
             [notify]\ntimeout = \"4s\"\n"
        ))
        .app(&["node", script.to_str().unwrap()])
        .start();
    assert_eq!(a.ready_settled().status, 200);
    eventually("the primary and two workers registered, each twice", || {
        members(&a).len() == 6
    });
    let run = a.post("/run", b"{}");
    assert_eq!(run.status, 200, "{}", run.text());
    let m = members(&a);
    let pids: std::collections::BTreeSet<i64> =
        m.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 3, "{m:?}");
    assert!(m.iter().all(|p| p["generation"] == 1), "{m:?}");
}

#[test]
fn check_says_whether_the_app_gets_the_helpers() {
    let dir = TempDir::new("inproc-check");
    let off = dir.join("off.toml");
    std::fs::write(&off, "[app]\nreseed_in_process = false\n").unwrap();
    let state = dir.join("state");
    let run = |extra: &[&str]| -> String {
        let out = agent_command()
            .arg("--check")
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on = run(&["--", "node", "app.js"]);
    assert!(
        on.contains("# in-process reseed of the app's processes: on: LD_PRELOAD (OpenSSL)"),
        "{on}"
    );
    assert!(on.contains("JDK_JAVA_OPTIONS (Java"), "{on}");
    assert!(on.contains("reseed_in_process = true"), "{on}");
    let switched = run(&["-c", off.to_str().unwrap(), "--", "node", "app.js"]);
    assert!(
        switched.contains("processes: off: [app] reseed_in_process = false"),
        "{switched}"
    );
    let sidecar = run(&[]);
    assert!(sidecar.contains("processes: off: no app"), "{sidecar}");
}

#[test]
fn a_process_slow_to_say_hello_still_takes_part() {
    // Node.js says hello when its event loop first turns, after the app's main module has
    // loaded: seconds, on a slow VM. Only when the slots run short is a silent connection cut
    // after 1 s (tests/chaos/helpers_at_scale.rs). (With a 1 s limit always, Node's helper and the Java library
    // never took part in the runtime guest.)
    use std::io::{Read, Write};
    let a = Spec::default().app(&["sleep", "1000"]).start();
    let mut s = std::os::unix::net::UnixStream::connect(a.state("inproc.sock")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    s.write_all(b"MVA1 hello native 424242\n").unwrap();
    eventually("the slow process registered", || {
        members(&a).iter().any(|m| m["pid"] == std::process::id())
    });
    // And it is told of the next generation.
    assert_eq!(a.post("/run", b"{}").status, 200);
    let mut line = [0u8; 32];
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.read_exact(&mut line).unwrap();
    assert!(
        line.starts_with(b"MVA1 generation 1 "),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
}

/// The `deadline` feature: a process that asks for it in its hello gets the milliseconds left
/// until the hook stops waiting as the last word of each line (its callbacks budget their time
/// by it); one that does not gets the lines as before (an older library must keep working).
#[test]
fn a_process_that_asks_gets_the_hooks_deadline_with_each_line() {
    use std::io::{BufRead, BufReader, Write};
    let a = Spec::default()
        .config("[notify]\ntimeout = \"800ms\"\n")
        .app(&["sleep", "1000"])
        .start();
    let sock = a.state("inproc.sock");
    eventually("inproc.sock", || sock.exists());
    let hello = |h: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(h.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    let asks = hello("MVA1 hello app 1 suspend deadline\n");
    let old = hello("MVA1 hello app 2 suspend\n");
    eventually("both registered", || members(&a).len() >= 2);
    // Each side answers what it is sent, and hands back the words of every line.
    let answer = |s: std::os::unix::net::UnixStream, lines: usize| {
        std::thread::spawn(move || {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut s = s;
            let mut got = Vec::new();
            for _ in 0..lines {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let words: Vec<String> = line.split_whitespace().map(String::from).collect();
                let n = if words[1] == "generation" {
                    &words[2]
                } else {
                    &words[3]
                };
                s.write_all(format!("MVA1 ack {n} callbacks=0\n").as_bytes())
                    .unwrap();
                got.push(words);
            }
            got
        })
    };
    let (asks, old) = (answer(asks, 2), answer(old, 2));
    assert_eq!(a.post("/run", b"{}").status, 200);
    assert_eq!(a.post("/suspend", b"{}").status, 200);
    let (asks, old) = (asks.join().unwrap(), old.join().unwrap());
    assert_eq!(old[0].len(), 4, "{:?}", old[0]);
    assert_eq!(old[1], ["MVA1", "event", "suspend", "1"]);
    for line in &asks {
        assert_eq!(line.len(), 5, "{line:?}");
        let ms: u64 = line.last().unwrap().parse().unwrap();
        assert!(ms <= 800, "more than [notify] timeout left: {line:?}");
    }
    assert_eq!(asks[0][1], "generation");
    assert_eq!(&asks[1][..4], ["MVA1", "event", "suspend", "1"]);
}

/// A Go program cannot take part (a static one never loads the helper; no Go program has
/// OpenSSL): `/status` and `--check` say it is Go, and what of it stays as cloned (the global
/// functions of `math/rand`) and what does not (`crypto/rand`, where the kernel was reseeded).
#[test]
fn a_go_program_is_named_with_what_of_it_stays_cloned() {
    if !have_tool("go") {
        eprintln!("SKIP: no Go 1.24+ (tests/vm/prepare.sh installs one)");
        return;
    }
    let dir = TempDir::new("inproc-go");
    let src = dir.join("main.go");
    std::fs::write(
        &src,
        "package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(time.Hour) }\n",
    )
    .unwrap();
    let program = dir.join("goapp");
    let out = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&program)
        .arg(&src)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "go build: {out:?}");
    let a = Spec::default().app(&[program.to_str().unwrap()]).start();
    let pid = a.app_pid().unwrap();
    let mut status = serde_json::Value::Null;
    eventually("the Go program listed", || {
        status = a.status()["inproc"].clone();
        status["not_taking_part"]
            .to_string()
            .contains(&format!("\"pid\":{pid}"))
    });
    assert!(
        status["not_taking_part"]
            .to_string()
            .contains("\"program\":\"go\""),
        "{status}"
    );
    let advice = status["stays_cloned"].to_string();
    assert!(
        advice.contains("\"program\":\"go\"") && advice.contains("math/rand"),
        "{advice}"
    );
    // Whether what it reads from the kernel is fresh: unknown before the first generation, said
    // after it.
    assert!(status["kernel_values_fresh"].is_null(), "{status}");
    assert_eq!(a.post("/run", b"{}").status, 200);
    assert!(
        a.status()["inproc"]["kernel_values_fresh"].is_boolean(),
        "{}",
        a.status()["inproc"]
    );
    let check = agent_command()
        .arg("--check")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--")
        .arg(&program)
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains(&format!("#   the app's program {}: Go:", program.display())),
        "{check}"
    );
}

/// The `holding` feature (the Node helper's): a process that drew nothing since its last reset
/// is not woken by a generation (`/status` says `idle`); one that says "holding" is told at the
/// next one, even when it says so just before the hook (the agent reads what is already in the
/// socket before it decides); a second "holding" before its reset is a line it was not asked for.
#[test]
fn a_helper_that_holds_nothing_is_left_asleep_and_one_that_holds_is_told() {
    use std::io::{BufRead, BufReader, Write};
    let a = Spec::default().app(&["sleep", "1000"]).start();
    let sock = a.state("inproc.sock");
    eventually("inproc.sock", || sock.exists());
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"MVA1 hello node 1 - holding\n").unwrap();
    eventually("registered", || members(&a).len() == 1);
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut line = String::new();
    let reseeded = |a: &Agent| members(a)[0]["reseeded"].as_str().unwrap_or("").to_string();
    assert_eq!(a.post("/run", b"{}").status, 200);
    assert!(
        r.read_line(&mut line).is_err(),
        "woken with nothing to reset: {line:?}"
    );
    assert_eq!(reseeded(&a), "idle");
    // "holding" written just before each hook: told every time.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for round in 0..20 {
        assert_eq!(a.post("/suspend", b"{}").status, 200);
        s.write_all(b"MVA1 holding\n").unwrap();
        let hook = std::thread::spawn({
            let a = a.port;
            move || common::http(a, "POST", "/resume", &[], b"{}").status
        });
        line.clear();
        r.read_line(&mut line).unwrap();
        let n = line.split(' ').nth(2).unwrap().to_string();
        assert!(
            line.starts_with("MVA1 generation "),
            "round {round}: {line:?}"
        );
        s.write_all(format!("MVA1 ack {n} math.random\n").as_bytes())
            .unwrap();
        assert_eq!(hook.join().unwrap(), 200, "round {round}");
    }
    assert_eq!(reseeded(&a), "math.random");
    // Nothing drawn since: asleep again.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(a.post("/suspend", b"{}").status, 200);
    assert_eq!(a.post("/resume", b"{}").status, 200);
    line.clear();
    assert!(r.read_line(&mut line).is_err(), "woken: {line:?}");
    // Twice "holding" without a reset between: disconnected.
    s.write_all(b"MVA1 holding\nMVA1 holding\n").unwrap();
    eventually("disconnected", || members(&a).is_empty());
}

/// A C program that loads OpenSSL only when it first needs it, as .NET's shim does: waits for
/// the file argv[1], then `dlopen`s `libcrypto.so.3` `RTLD_LOCAL`, draws 8 bytes, and sleeps.
const LATE_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    while (access(argv[1], F_OK) != 0) usleep(20000);
    void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!h) return 3;
    int (*rand_bytes)(unsigned char *, int) = (int (*)(unsigned char *, int))dlsym(h, "RAND_bytes");
    unsigned char b[8];
    if (!rand_bytes || rand_bytes(b, 8) != 1) return 4;
    for (;;) pause();
}
"#;

#[test]
fn processes_that_load_openssl_after_start_take_part_from_their_first_draw() {
    // .NET's shim (the C program), Ruby's, PHP's and Perl's extensions, `python -I` (no site,
    // so no Python helper): OpenSSL arrives with `dlopen`, `RTLD_LOCAL`, when first needed. Until then the
    // native helper costs nothing (no thread, no connection); on OpenSSL's first seeding it
    // starts, registers, and is told of the current generation like any other process.
    let lib = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join("libcrypto.so.3").exists());
    if !have_tool("gcc") || !lib {
        eprintln!("SKIP: needs gcc and libcrypto.so.3");
        return;
    }
    let dir = TempDir::new("inproc-late");
    let src = dir.join("late.c");
    std::fs::write(&src, LATE_C).unwrap();
    let late = dir.join("late");
    let ok = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&late)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap()
        .success();
    assert!(ok, "gcc failed");
    let go = dir.join("go");
    let python = format!(
        "import os, time\nwhile not os.path.exists({go:?}): time.sleep(0.02)\nimport ssl\nssl.RAND_bytes(8)\ntime.sleep(1000)\n",
        go = go.display().to_string()
    );
    // Ruby's `openssl` extension, where Ruby is installed (CI installs it).
    let ruby = have_tool("ruby");
    if !ruby {
        eprintln!("note: no ruby here: its case is left out");
    }
    let ruby_app = format!(
        "sleep 0.02 until File.exist?({go:?}); require %q(openssl); OpenSSL::Random.random_bytes(8); sleep",
        go = go.display().to_string()
    );
    let script = format!(
        "{late} {go} & python3 -I -c '{python}' & {ruby} & wait",
        late = late.display(),
        go = go.display(),
        ruby = if ruby {
            format!("ruby -e '{ruby_app}'")
        } else {
            "true".into()
        },
    );
    let expected = if ruby { 3 } else { 2 };
    let a = Spec::default().app(&["sh", "-c", &script]).start();
    let native = |a: &Agent| {
        members(a)
            .into_iter()
            .filter(|m| m["kind"] == "native")
            .collect::<Vec<_>>()
    };
    // Both processes run, neither has loaded OpenSSL: nothing registered. (A control for the
    // wait below: the helpers are loaded and would say hello within this time if they had
    // started at load.)
    std::thread::sleep(Duration::from_millis(1500));
    assert!(native(&a).is_empty(), "{:?}", members(&a));
    std::fs::write(&go, b"").unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while native(&a).len() < expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        native(&a).len(),
        expected,
        "{:?}\n{}",
        members(&a),
        a.stderr.text()
    );
    let run = a.post("/run", b"{}");
    assert_eq!(run.status, 200, "{}", run.text());
    for m in native(&a) {
        assert_eq!(m["generation"], 1, "{m}");
        assert_eq!(m["reseeded"], "openssl=1", "{m}");
    }
}

/// A Java app, compiled here: a `SHA1PRNG` seeded with 1 at start and drawn once, and a twin
/// drawn twice, so the app knows what its generator's next draw is if nothing reseeded it;
/// `GET /draw` answers `cloned` when that draw is what the twin drew, else `reseeded`.
fn java_app(dir: &TempDir, port: u16) -> String {
    std::fs::write(
        dir.join("App.java"),
        format!(
            r#"
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.security.SecureRandom;
import java.util.Arrays;
public class App {{
  public static void main(String[] a) throws Exception {{
    SecureRandom mine = SecureRandom.getInstance("SHA1PRNG");
    SecureRandom twin = SecureRandom.getInstance("SHA1PRNG");
    mine.setSeed(1L);
    twin.setSeed(1L);
    byte[] x = new byte[16], next = new byte[16];
    mine.nextBytes(x);
    twin.nextBytes(next);
    twin.nextBytes(next);
    HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", {port}), 0);
    s.createContext("/draw", e -> {{
      byte[] got = new byte[16];
      mine.nextBytes(got);
      byte[] b = (Arrays.equals(got, next) ? "cloned" : "reseeded").getBytes();
      e.sendResponseHeaders(200, b.length);
      e.getResponseBody().write(b);
      e.close();
    }});
    s.createContext("/ready", e -> {{
      e.sendResponseHeaders(200, -1);
      e.close();
    }});
    s.start();
  }}
}}
"#
        ),
    )
    .unwrap();
    support::run(
        std::process::Command::new("javac")
            .args(["--release", "17", "-d"])
            .arg(dir.path())
            .arg(dir.join("App.java")),
        "javac",
    );
    dir.path().display().to_string()
}

#[test]
fn an_unmodified_java_app_gets_its_generators_reseeded_by_the_java_agent() {
    if !have_tool("javac") {
        eprintln!("SKIP: no javac");
        return;
    }
    let dir = TempDir::new("inproc-java");
    let (_held, port) = reserve_port();
    let classes = java_app(&dir, port);
    for on in [true, false] {
        let a = Spec::default()
            .config(&format!(
                "[ready]\nhttp = \"http://127.0.0.1:{port}/ready\"\n[app]\nreseed_in_process = {on}\n"
            ))
            .app(&["java", "-cp", &classes, "App"])
            .start();
        assert_eq!(a.ready_settled().status, 200);
        if on {
            eventually("the JVM registered", || {
                members(&a).iter().any(|m| m["kind"] == "java")
            });
        }
        assert_eq!(a.post("/run", b"{}").status, 200);
        if on {
            let m = members(&a);
            let java = m.iter().find(|p| p["kind"] == "java").expect("java");
            assert_eq!(
                java["reseeded"], "nativeprng,securerandom,math.random,random,threadlocalrandom",
                "{m:?}"
            );
            assert_eq!(a.status()["inproc"]["arranged"]["java"], "on");
        }
        // The SecureRandom the app made and drew from before the generation.
        assert_eq!(
            draw(port),
            if on { "reseeded" } else { "cloned" },
            "on: {on}"
        );
        // The JVM says nothing of the agent but the launcher's note: no warning (an agent jar
        // on the boot class path after start turns class sharing off, with a warning on every
        // JVM's standard error; an agent loaded through the attach route warns on JDK 21).
        let said: Vec<String> = a
            .stderr
            .text()
            .lines()
            .filter(|l| {
                !l.trim().is_empty()
                    && !l.contains("microvm_agent")
                    && !l.starts_with("NOTE: Picked up")
            })
            .map(str::to_string)
            .collect();
        assert!(said.is_empty(), "on: {on}: {said:?}");
    }
}

#[test]
fn a_jvm_that_names_the_native_helper_twice_takes_part_once() {
    if !have_tool("javac") {
        eprintln!("SKIP: no javac");
        return;
    }
    // An image whose JAVA_TOOL_OPTIONS was copied from a running JVM's command line: the JVM
    // loads the helper as an agent twice (once from there, once from JDK_JAVA_OPTIONS).
    let dir = TempDir::new("inproc-java-twice");
    let (_held, port) = reserve_port();
    let classes = java_app(&dir, port);
    let twice = format!(
        "d=${{MICROVM_AGENT_INPROC%/*}}/inproc; \
         JAVA_TOOL_OPTIONS=\"-agentpath:$d/libmicrovm-reseed.so=$d/java/microvm-reseed.jar\" \
         exec java -cp {classes} App"
    );
    let a = Spec::default()
        .config(&format!(
            "[ready]\nhttp = \"http://127.0.0.1:{port}/ready\"\n"
        ))
        .app(&["/bin/sh", "-c", &twice])
        .start();
    assert_eq!(a.ready_settled().status, 200, "{}", a.stderr.text());
    eventually("the JVM registered", || {
        members(&a).iter().any(|m| m["kind"] == "java")
    });
    assert_eq!(a.post("/run", b"{}").status, 200);
    assert_eq!(draw(port), "reseeded");
    let m = members(&a);
    assert_eq!(
        m.iter().filter(|p| p["kind"] == "java").count(),
        1,
        "one Java helper per JVM: {m:?}"
    );
}

#[test]
fn a_java_runtime_without_java_instrument_starts_as_it_would_without_the_agent() {
    if !have_tool("jlink") || !have_tool("javac") {
        eprintln!("SKIP: no jlink");
        return;
    }
    // A slim runtime, as images make them: no java.instrument (no lib/libinstrument.so), so the
    // Java agent cannot go in, and naming it anyway would stop the JVM from starting.
    let dir = TempDir::new("inproc-jlink");
    let (_held, port) = reserve_port();
    let classes = java_app(&dir, port);
    let rt = dir.join("rt");
    support::run(
        std::process::Command::new("jlink")
            .args([
                "--add-modules",
                "java.base,jdk.httpserver",
                "--no-header-files",
            ])
            .args(["--no-man-pages", "--output"])
            .arg(&rt),
        "jlink",
    );
    let java = rt.join("bin/java").display().to_string();
    // Once as the app, once with the agent's flag inherited (as from a Java parent process):
    // the native helper takes it out for this runtime.
    let inherited = format!(
        "d=${{MICROVM_AGENT_INPROC%/*}}/inproc; \
         JDK_JAVA_OPTIONS=\"-Xss1m -agentpath:$d/libmicrovm-reseed.so=$d/java/microvm-reseed.jar\" \
         exec {java} -cp {classes} App"
    );
    for argv in [
        vec![java.as_str(), "-cp", &classes, "App"],
        vec!["/bin/sh", "-c", &inherited],
    ] {
        let a = Spec::default()
            .config(&format!(
                "[ready]\nhttp = \"http://127.0.0.1:{port}/ready\"\n"
            ))
            .app(&argv)
            .start();
        assert_eq!(
            a.ready_settled().status,
            200,
            "{argv:?}: {}",
            a.stderr.text()
        );
        assert_eq!(a.post("/run", b"{}").status, 200);
        assert_eq!(draw(port), "cloned", "no Java agent in this runtime");
        assert!(
            !members(&a).iter().any(|m| m["kind"] == "java"),
            "{:?}",
            members(&a)
        );
        // /status names it a JVM, with what of it stays cloned and what to do.
        let mut status = serde_json::Value::Null;
        eventually("the JVM listed as not taking part", || {
            status = a.status()["inproc"].clone();
            status["not_taking_part"]
                .to_string()
                .contains("\"program\":\"java\"")
        });
        let advice = status["stays_cloned"].to_string();
        assert!(advice.contains("java.instrument"), "{advice}");
    }
    // --check says it before the image ships, for this runtime and for a full one.
    let check = |java: &str| -> String {
        let out = agent_command()
            .arg("--check")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--", java, "-cp", &classes, "App"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let slim = check(&java);
    assert!(slim.contains("JVM: the Java agent is not in it"), "{slim}");
    let full = check("java");
    assert!(full.contains("Java: the Java agent goes into it"), "{full}");
}

#[test]
fn a_process_that_is_not_java_pays_no_system_call_for_the_java_agent() {
    if !have_tool("strace") {
        eprintln!("SKIP: no strace");
        return;
    }
    // The helper's environment, as the agent gives the app (its files written at start).
    let a = Spec::default().app(&["sleep", "1000"]).start();
    let socket = a.state("inproc.sock");
    let library = a.state("inproc/libmicrovm-reseed.so");
    let traced = |argv: &[&str]| -> String {
        let out = std::process::Command::new("strace")
            .args(["-f", "-e", "trace=readlink,readlinkat", "--"])
            .args(argv)
            .env("MICROVM_AGENT_INPROC", &socket)
            .env("LD_PRELOAD", &library)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A shell and a JVM's sibling tools: not `java`, nothing read.
    for argv in [&["/bin/true"][..], &["/bin/sh", "-c", "exit 0"][..]] {
        let trace = traced(argv);
        assert!(
            !trace.contains("/proc/self/exe"),
            "{argv:?} read its executable's link for the Java agent:\n{trace}"
        );
    }
    // The test of the test: a `java` launcher is looked at (its launcher reads the link too, so
    // the helper's own read is told apart by its buffer size).
    if have_tool("java") {
        let trace = traced(&["java", "-version"]);
        assert!(
            trace.contains("\"/proc/self/exe\"") && trace.contains(", 4095)"),
            "{trace}"
        );
    }
}

#[test]
fn a_state_directory_path_the_launcher_or_the_loader_would_split_is_left_out() {
    if !have_tool("javac") {
        eprintln!("SKIP: no javac");
        return;
    }
    // `JDK_JAVA_OPTIONS` is split at white space and reads quotes, and the JVM splits
    // `-agentpath:/a=b/...` at its `=`: either would name an agent library that is not there,
    // and a JVM refuses to start without it. The loader splits `LD_PRELOAD` at spaces and
    // colons: every process would print an error.
    let dir = TempDir::new("inproc-java-path");
    let (_held, port) = reserve_port();
    let classes = java_app(&dir, port);
    for (name, openssl_on) in [("it's", true), ("a=b", true), ("my state", false)] {
        let a = Spec::default()
            .arg("--state-dir")
            .arg(dir.join(name).to_str().unwrap())
            .config(&format!(
                "[ready]\nhttp = \"http://127.0.0.1:{port}/ready\"\n"
            ))
            .app(&["java", "-cp", &classes, "App"])
            .start();
        assert_eq!(a.ready_settled().status, 200, "{name}: {}", a.stderr.text());
        let arranged = a.status()["inproc"]["arranged"].clone();
        assert!(
            arranged["java"]
                .as_str()
                .is_some_and(|s| s.starts_with("off")),
            "{name}: {arranged}"
        );
        assert_eq!(
            arranged["openssl"] == "on",
            openssl_on,
            "{name}: {arranged}"
        );
        assert_eq!(a.post("/run", b"{}").status, 200);
        assert_eq!(
            draw(port),
            "cloned",
            "{name}: no Java agent with this state directory"
        );
        assert!(
            !a.stderr.text().contains("cannot be preloaded"),
            "{name}: {}",
            a.stderr.text()
        );
    }
    // --check says it before the image ships.
    let out = agent_command()
        .arg("--check")
        .arg("--state-dir")
        .arg(dir.join("my state"))
        .args(["--", "java", "-cp", &classes, "App"])
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(check.contains("on, without OpenSSL and Java"), "{check}");
}
