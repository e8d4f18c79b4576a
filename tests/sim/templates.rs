//! Every template in `templates/` runs with its real runtime under `microvm-sim`, with the
//! template's own `microvm-agent.toml` and `hooks.json` (only the ports changed), and must show
//! that its app was told of each new generation, acknowledged it, and that its random generator's
//! state really changed across the notification. A template that is not tested does not ship.
//!
//! A missing runtime skips that template loudly; `MICROVM_AGENT_REQUIRE_TEMPLATES=1` (CI) fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mva_test_support::repo as support;
use support::{agent, have_tool as have, reserve_port, root, run};

const SIM: &str = env!("CARGO_BIN_EXE_microvm-sim");

/// The template's build context as its author makes it (its files and its client library copied
/// in, as its Dockerfile expects) in a fresh directory, its ports replaced, built; returns the
/// directory and the app's command.
fn prepare(lang: &str, app_port: u16, hook_port: u16) -> (PathBuf, Vec<String>) {
    prepare_with(lang, app_port, hook_port, None)
}

/// `prepare`, with the Python app replaced by `app` (a broken copy, for the test of the test).
fn prepare_with(
    lang: &str,
    app_port: u16,
    hook_port: u16,
    app: Option<&std::path::Path>,
) -> (PathBuf, Vec<String>) {
    // One directory per run: tests of one template run in parallel.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nth = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("mva-template-{lang}-{}-{nth}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    support::build_context(lang, &dir);
    for name in ["microvm-agent.toml", "hooks.json"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        std::fs::write(
            dir.join(name),
            text.replace("8080", &app_port.to_string())
                .replace("\"port\": 9000", &format!("\"port\": {hook_port}")),
        )
        .unwrap();
    }
    if let Some(app) = app {
        std::fs::copy(app, dir.join("app.py")).unwrap();
    }
    let d = dir.display().to_string();
    let command = match lang {
        // Next to its library, as in the image (`/app/app.py`, `/app/microvm_agent`,
        // `/app/node_modules/microvm-agent-client`).
        "python" | "passthrough" => vec!["python3".into(), format!("{d}/app.py")],
        "node" => vec!["node".into(), format!("{d}/app.js")],
        "java" => {
            // With its client library's source, as the Dockerfile compiles them.
            support::javac_template(&dir, &d);
            vec!["java".into(), "-cp".into(), d.clone(), "App".into()]
        }
        "go" => {
            run(
                Command::new("go")
                    .args(["build", "-o", &format!("{d}/server"), "."])
                    .current_dir(&dir)
                    .env("GOFLAGS", "-mod=mod"),
                "go build",
            );
            vec![format!("{d}/server")]
        }
        "rust" => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or(root().join("target"), PathBuf::from)
                .join("template-rust");
            run(
                Command::new("cargo")
                    .args(["build", "-q", "--release", "--locked", "--manifest-path"])
                    .arg(dir.join("Cargo.toml"))
                    .env("CARGO_TARGET_DIR", &target),
                "cargo build (template)",
            );
            vec![target.join("release/microvm-app").display().to_string()]
        }
        other => panic!("no such template {other}"),
    };
    (dir, command)
}

/// microvm-sim's arguments for a prepared template: its hooks.json, `extra` simulator options,
/// then the agent with the template's configuration, then the app's `command`.
fn sim_args(
    dir: &std::path::Path,
    hook_port: u16,
    extra: &[&str],
    command: Vec<String>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--hooks".into(),
        dir.join("hooks.json").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--suspend-for".into(),
        "200ms".into(),
        "--".into(),
        agent(),
        "-c".into(),
        dir.join("microvm-agent.toml").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{hook_port}"),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--".into(),
    ]);
    args.extend(command);
    args
}

/// The app's JSON lines from the simulator's output.
fn events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

/// Whether the runtimes are there (a missing one fails under MICROVM_AGENT_REQUIRE_TEMPLATES).
fn runtimes(lang: &str, runtime: &[&str]) -> bool {
    if let Some(missing) = runtime.iter().find(|r| !have(r)) {
        if std::env::var("MICROVM_AGENT_REQUIRE_TEMPLATES").is_ok_and(|v| v == "1") {
            panic!("the {lang} template needs {missing}, which is not installed");
        }
        eprintln!("\n*** {lang} template SKIPPED: {missing} is not installed ***\n");
        return false;
    }
    true
}

/// Runs the template twice, as two VMs of one image: each must pass on its own, and the app's
/// generator after `/run` must differ between them (a handler that reseeds with something the
/// same in every VM, a constant or the generation number, passes each run and fails this).
fn template(lang: &str, runtime: &[&str]) {
    if !runtimes(lang, runtime) {
        return;
    }
    let one = template_run(lang, None);
    let two = template_run(lang, None);
    assert_ne!(
        one, two,
        "{lang}: two VMs drew the same values after /run: the handler's seed is not per-VM"
    );
}

/// One run under microvm-sim; returns the fingerprint of the app's generator after `/run`.
fn template_run(lang: &str, app: Option<&std::path::Path>) -> String {
    let ((_h1, app_port), (_h2, hook_port)) = (reserve_port(), reserve_port());
    let (dir, command) = prepare_with(lang, app_port, hook_port, app);
    let args = sim_args(
        &dir,
        hook_port,
        &["--app-url", &format!("http://127.0.0.1:{app_port}/healthz")],
        command,
    );
    let t = Instant::now();
    let mut child = Command::new(SIM)
        .args(&args)
        .env("PORT", app_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{lang}: the simulator hung"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{lang} under microvm-sim:\n{text}"
    );
    let ev = events(&text);
    {
        for event in ["validate", "run", "resume"] {
            let e = ev
                .iter()
                .find(|e| e["event"] == event)
                .unwrap_or_else(|| panic!("{lang}: never told of {event}:\n{text}"));
            assert_ne!(
                e["before"], e["after"],
                "{lang}: the generator did not change on {event}: {e}"
            );
        }
        assert!(
            ev.iter().any(|e| e["event"] == "suspend"),
            "{lang}: told of the suspend:\n{text}"
        );
    }
    let after_run = ev
        .iter()
        .find(|e| e["event"] == "run")
        .map(|e| e["after"].to_string())
        .unwrap_or_default();
    finish(lang, t, &ev, &dir);
    after_run
}

fn finish(lang: &str, t: Instant, ev: &[serde_json::Value], dir: &std::path::Path) {
    eprintln!(
        "{lang}: passed under microvm-sim in {:?} ({} events)",
        t.elapsed(),
        ev.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_template_whose_handler_is_removed_fails_the_template_test() {
    // The test of the test: the Python template with its handler's reseed removed. The
    // generator does not change on the events, which one run must catch.
    if !runtimes("python", &["python3"]) {
        return;
    }
    let text = std::fs::read_to_string(root().join("templates/python/app.py")).unwrap();
    let broken = text.replace("microvm_agent.reseed(random)", "pass");
    assert_ne!(broken, text, "the fixture no longer matches the template");
    let path = std::env::temp_dir().join(format!("mva-no-handler-{}.py", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let caught = std::panic::catch_unwind(|| template_run("python", Some(&path)));
    let _ = std::fs::remove_file(&path);
    let message = caught.expect_err("a template without a handler passed the template test");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("the generator did not change"),
        "it failed for another reason: {message}"
    );
}

#[test]
fn a_template_that_reseeds_with_something_the_same_in_every_vm_fails_the_template_test() {
    // The test of the test: the Python template broken the way a careful reader found it could
    // be, `random.seed(event["generation"])`. Each run passes on its own (the generator does
    // change on every event); two runs, like two VMs of one image, agree, which the template
    // test must catch.
    if !runtimes("python", &["python3"]) {
        return;
    }
    let text = std::fs::read_to_string(root().join("templates/python/app.py")).unwrap();
    let broken = text.replace("microvm_agent.reseed(random)", "random.seed(gen.number)");
    assert_ne!(broken, text, "the fixture no longer matches the template");
    let path = std::env::temp_dir().join(format!("mva-broken-template-{}.py", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let one = template_run("python", Some(&path));
    let two = template_run("python", Some(&path));
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        one, two,
        "the broken template must draw the same values in both runs, or the template test could not catch it"
    );
}

/// Runs microvm-sim over a template with `env` for the app; returns its exit code and output.
fn sim_template(lang: &str, env: &[(&str, &str)], payload: &str) -> (i32, String) {
    let ((_h1, app_port), (_h2, hook_port)) = (reserve_port(), reserve_port());
    let (dir, command) = prepare(lang, app_port, hook_port);
    let args = sim_args(&dir, hook_port, &["--payload", payload], command);
    let mut cmd = Command::new(SIM);
    cmd.args(&args).env("PORT", app_port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn passthrough_template_gets_every_hook_on_its_own_handlers() {
    if !have("python3") {
        assert!(
            std::env::var("MICROVM_AGENT_REQUIRE_TEMPLATES").is_err(),
            "python3 missing"
        );
        return;
    }
    let payload = r#"{"tenant":"t-9","nonce":"8f1c"}"#;
    let (code, text) = sim_template("passthrough", &[], payload);
    assert_eq!(code, 0, "{text}");
    let seen: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("hook").is_some() && v.get("path").is_some())
        .collect();
    let hooks: Vec<&str> = seen.iter().map(|v| v["hook"].as_str().unwrap()).collect();
    assert_eq!(
        hooks,
        ["validate", "run", "suspend", "resume", "terminate"],
        "every hook, in order, on the app's own handlers:\n{text}"
    );
    let run = &seen[1];
    assert_eq!(run["payload"], payload, "the /run body exactly as received");
    assert!(run["microvmId"].as_str().unwrap().starts_with("microvm-"));
    assert!(
        run["path"]
            .as_str()
            .unwrap()
            .starts_with("/aws/lambda-microvms/runtime/v1/"),
        "on the path it came on: {run}"
    );

    // The app refuses /run: with the default fail_on, /run fails, as the app asked.
    let (code, text) = sim_template("passthrough", &[("RUN_STATUS", "500")], payload);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("TERMINATED: /run answered 500"), "{text}");
    assert!(text.contains("app-refused"), "{text}");
}

#[test]
fn python_template() {
    template("python", &["python3"]);
}

#[test]
fn node_template() {
    template("node", &["node"]);
}

#[test]
fn java_template() {
    template("java", &["java", "javac"]);
}

#[test]
fn go_template() {
    template("go", &["go"]);
}

#[test]
fn rust_template() {
    template("rust", &["cargo"]);
}

#[test]
fn every_template_configuration_passes_check() {
    for lang in ["python", "node", "java", "go", "rust", "passthrough"] {
        let path = root()
            .join("templates")
            .join(lang)
            .join("microvm-agent.toml");
        let out = Command::new(agent())
            .arg("--check")
            .arg("-c")
            .arg(&path)
            .env_remove("MICROVM_AGENT_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{lang}: microvm-agent --check failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for file in ["Dockerfile", "hooks.json"] {
            assert!(
                root().join("templates").join(lang).join(file).exists(),
                "{lang}: no {file}"
            );
        }
    }
}
