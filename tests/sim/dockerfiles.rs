//! The Dockerfiles, tested by what they run (there is no Docker engine here): every `COPY` source
//! exists in the documented build context and survives its `.dockerignore`, no BuildKit-only
//! syntax is used, the final image's entrypoint is the agent, and each build stage's commands
//! (cargo with the Dockerfile's target, go with its GOOS/GOARCH) run on this x86_64 host and
//! produce a static aarch64 binary (checked with readelf). Stages that install packages from the
//! base image's repositories (`dnf`) cannot run here and are not run. A stage's
//! `rustup target add` or `rustup component add` is not run either: it would install into the one
//! toolchain every test shares while another test compiles with it (they raced on a fresh
//! machine). The target or component is checked instead; `tests/vm/prepare.sh` (and so
//! `.ci/run`) installs it before the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use mva_test_support::repo as support;

/// One instruction, continuation lines joined.
#[derive(Debug)]
struct Instr {
    op: String,
    args: String,
}

fn parse(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, args) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push(Instr {
            op: op.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        cur.clear();
    }
    out
}

/// The `COPY` sources of the build context (not `--from` a stage), and the destination.
fn context_copies(instrs: &[Instr]) -> Vec<(Vec<String>, String)> {
    instrs
        .iter()
        .filter(|i| i.op == "COPY" && !i.args.starts_with("--from"))
        .map(|i| {
            let mut words: Vec<String> = i.args.split_whitespace().map(String::from).collect();
            let dest = words.pop().unwrap();
            (words, dest)
        })
        .collect()
}

fn check_common(name: &str, text: &str, instrs: &[Instr]) {
    for bad in ["--chmod", "--chown=", "--mount", "<<", "# syntax="] {
        assert!(!text.contains(bad), "{name}: BuildKit-only syntax {bad:?}");
    }
    let last_from = instrs.iter().rposition(|i| i.op == "FROM").unwrap();
    let final_stage = &instrs[last_from..];
    assert!(
        final_stage[0]
            .args
            .starts_with("public.ecr.aws/lambda/microvms:al2023"),
        "{name}: the image is built on the platform's base image"
    );
    let entry = final_stage
        .iter()
        .find(|i| i.op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert!(
        entry
            .args
            .starts_with("[\"microvm-agent\", \"-c\", \"/etc/microvm-agent.toml\", \"--\"]"),
        "{name}: {}",
        entry.args
    );
    assert!(
        final_stage.iter().any(|i| i.op == "CMD"),
        "{name}: the app is the CMD"
    );
    assert!(
        final_stage
            .iter()
            .any(|i| i.op == "RUN" && i.args.contains("chmod 0755 /usr/local/bin/microvm-agent"))
            || name == "Dockerfile.example",
        "{name}: the agent is made executable without COPY --chmod"
    );
}

/// The patterns a `.dockerignore` of the form `*` + `!name` lines lets in.
fn let_in(ignore: &str) -> Vec<String> {
    ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|p| p.trim_end_matches('/').to_string())
        .collect()
}

/// Runs `cmd` (a Dockerfile RUN line) with `sh -c` in `dir`, with the image paths mapped.
fn run_stage_command(cmd: &str, dir: &Path, out: &Path) {
    let cmd = cmd.replace(" /server", &format!(" {}", out.display()));
    let status = docker_env(Command::new("sh").arg("-c").arg(&cmd))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "`{cmd}` failed in {}", dir.display());
}

/// What a Docker build gives a `RUN`: the build image's environment (its tools on `PATH`, where
/// they keep their caches), never the caller's. With the caller's, `CARGO_TARGET_DIR` (a common
/// way to share one target directory) moved the Rust template's build elsewhere and its
/// `cp target/...` found no binary: `cargo test --workspace` failed every time (#32). The
/// variables kept are those the official `rust:` and `golang:` images set (`PATH`, `CARGO_HOME`,
/// `RUSTUP_HOME`, `GOPATH`) and those that only say where this machine keeps the same things.
fn docker_env(c: &mut Command) -> &mut Command {
    const KEPT: [&str; 8] = [
        "PATH",
        "HOME",
        "TMPDIR",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "GOPATH",
        "GOCACHE",
        "GOMODCACHE",
    ];
    c.env_clear();
    for k in KEPT {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c
}

fn assert_static_aarch64(bin: &Path) {
    let headers = Command::new("readelf")
        .args(["-lhW"])
        .arg(bin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&headers.stdout);
    assert!(
        text.contains("AArch64"),
        "{}: not aarch64:\n{text}",
        bin.display()
    );
    assert!(
        !text.contains("INTERP") && !text.contains("DYNAMIC"),
        "{}: not static:\n{text}",
        bin.display()
    );
}

fn tools_or_skip(tools: &[&str]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| !support::have_tool(t))
        .map(|t| t.to_string())
        .collect();
    present_or_skip(missing)
}

/// Fails under `MICROVM_AGENT_REQUIRE_TEMPLATES=1` (CI), skips loudly otherwise.
fn present_or_skip(missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MICROVM_AGENT_REQUIRE_TEMPLATES").is_ok_and(|v| v == "1") {
        panic!("missing {missing:?} (tests/vm/prepare.sh installs them)");
    }
    eprintln!("\n*** SKIPPED: missing {missing:?} (tests/vm/prepare.sh installs them) ***\n");
    false
}

/// The Rust targets and components of `rustup target add` and `rustup component add` lines in
/// `runs`, checked rather than installed.
fn rustup_parts_or_skip<'a>(runs: impl Iterator<Item = &'a str>) -> bool {
    let installed = |what: &str| {
        Command::new("rustup")
            .args([what, "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let (targets, components) = (installed("target"), installed("component"));
    let mut missing = Vec::new();
    for run in runs {
        if let Some(list) = run.strip_prefix("rustup target add ") {
            for t in list.split_whitespace() {
                if !targets.lines().any(|l| l == t) {
                    missing.push(format!("the {t} Rust target"));
                }
            }
        } else if let Some(list) = run.strip_prefix("rustup component add ") {
            // Listed with the host's triple: `rust-src` is `rust-src`, `clippy` is
            // `clippy-x86_64-unknown-linux-gnu`.
            for c in list.split_whitespace() {
                if !components
                    .lines()
                    .any(|l| l == c || l.starts_with(&format!("{c}-")))
                {
                    missing.push(format!("the {c} Rust component"));
                }
            }
        }
    }
    present_or_skip(missing)
}

fn template(name: &str) -> PathBuf {
    support::root().join("templates").join(name)
}

/// Checks a template's Dockerfile against its directory (the build context), and runs its build
/// stage when it has one.
fn check_template(name: &str) {
    let dir = template(name);
    let text = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let instrs = parse(&text);
    check_common(&format!("templates/{name}/Dockerfile"), &text, &instrs);
    assert!(
        text.contains("dist/microvm-agent-aarch64"),
        "{name}: the Dockerfile says where the agent binary comes from"
    );
    let ignore = std::fs::read_to_string(dir.join(".dockerignore"))
        .unwrap_or_else(|_| panic!("{name}: no .dockerignore"));
    let allowed = let_in(&ignore);
    for (sources, _) in context_copies(&instrs) {
        for src in sources {
            let src = src.trim_end_matches('/').trim_start_matches("./");
            assert!(
                allowed.iter().any(|a| a == src),
                "{name}: {src} is excluded by .dockerignore"
            );
            if src == "microvm-agent" {
                continue; // the documented prebuilt binary, copied in by the image author
            }
            // A client library, copied in from this repository as the Dockerfile says.
            let library = support::LIBRARIES
                .iter()
                .find(|l| l.0 == name && l.1 == src)
                .map(|l| l.2);
            if let Some(from) = library {
                assert!(
                    text.contains(from) && support::root().join(from).is_dir(),
                    "{name}: where the client library comes from"
                );
                continue;
            }
            assert!(
                dir.join(src).exists(),
                "{name}: COPY {src}: not in the context"
            );
        }
    }
    // The build stage, if any, run on this host.
    let Some(build_end) = instrs.iter().skip(1).position(|i| i.op == "FROM") else {
        return;
    };
    let stage = &instrs[..=build_end];
    let base = &stage[0].args;
    let tools: &[&str] = if base.starts_with("rust:") {
        &["cargo"]
    } else if base.starts_with("golang:") {
        &["go"]
    } else {
        panic!("{name}: unknown build stage {base}")
    };
    if !tools_or_skip(tools) || !rustup_parts_or_skip(stage.iter().map(|i| i.args.as_str())) {
        return;
    }
    let work = std::env::temp_dir().join(format!("mva-docker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    // The context as the author makes it (the client library copied in), then what the build
    // stage copies of it.
    let context = work.join("context");
    support::build_context(name, &context);
    for (sources, _) in context_copies(stage) {
        for src in sources {
            let status = Command::new("cp")
                .arg("-r")
                .arg(context.join(&src))
                .arg(&work)
                .status()
                .unwrap();
            assert!(status.success(), "copy {src}");
        }
    }
    let out = work.join("server");
    for run in stage
        .iter()
        .filter(|i| i.op == "RUN" && !i.args.starts_with("rustup "))
    {
        run_stage_command(&run.args, &work, &out);
    }
    assert_static_aarch64(&out);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn the_rust_template_builds_a_static_aarch64_binary_from_its_own_context() {
    check_template("rust");
}

/// The same, run as `cargo test` is run by someone who shares one target directory: this test
/// binary again, in a child with `CARGO_TARGET_DIR` set (and the other variables cargo gives a
/// test). Against 1dd49b7 the child fails: "cp: cannot stat 'target/aarch64-unknown-linux-musl/
/// release/microvm-app'".
#[test]
fn the_rust_template_builds_with_the_callers_cargo_target_dir_set() {
    if std::env::var_os("MVA_CHILD").is_some() {
        return;
    }
    let elsewhere = std::env::temp_dir().join(format!("mva-target-{}", std::process::id()));
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_rust_template_builds_a_static_aarch64_binary_from_its_own_context",
            "--nocapture",
        ])
        .env("CARGO_TARGET_DIR", &elsewhere)
        .env("MVA_CHILD", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&elsewhere);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
fn the_go_template_cross_compiles_for_arm64() {
    check_template("go");
}

#[test]
fn the_python_node_and_java_templates_copy_only_what_they_have() {
    for name in ["python", "node", "java", "passthrough"] {
        check_template(name);
    }
    let node = std::fs::read_to_string(template("node").join("Dockerfile")).unwrap();
    assert!(
        node.contains("nodejs22") && node.contains("node-22"),
        "a current, pinned AL2023 Node"
    );
}

#[test]
fn dockerfile_example_builds_the_agent_from_the_documented_context() {
    let root = support::root();
    for file in ["Dockerfile.example", "Dockerfile.prebuilt.example"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        check_common(file, &text, &parse(&text));
    }
    let text = std::fs::read_to_string(root.join("Dockerfile.example")).unwrap();
    let instrs = parse(&text);
    // The context it documents: microvm-agent/ (this repository), microvm-agent.toml, app/.
    for (sources, _) in context_copies(&instrs) {
        for src in sources {
            assert!(
                text.contains(&format!("#   {}", src.trim_end_matches('/')))
                    || text.contains(&format!("#   {src}")),
                "Dockerfile.example: {src} is not in the documented context"
            );
        }
    }
    assert!(root.join("Cargo.lock").exists() && root.join(".cargo/config.toml").exists());
    if !tools_or_skip(&["cargo", "readelf"])
        || !rustup_parts_or_skip(instrs.iter().map(|i| i.args.as_str()))
    {
        return;
    }
    // Its build stage, run in this repository (what `COPY microvm-agent/ .` puts in /src).
    let run = instrs
        .iter()
        .find(|i| i.op == "RUN" && i.args.starts_with("scripts/build-static.sh aarch64"))
        .expect("the agent's build");
    let status = docker_env(Command::new("sh").arg("-c").arg(&run.args))
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success(), "{}", run.args);
    // Where a Docker build puts it: the context's own target/ (COPY --from=build reads it there).
    assert_static_aarch64(
        &root.join("target/shipped/aarch64-unknown-linux-musl/release/microvm-agent"),
    );
}
