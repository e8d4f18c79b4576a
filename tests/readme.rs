//! The README's path from an empty directory to a running MicroVM, followed as a person would:
//! every file of its "Deploy to Lambda MicroVMs" section is written into an empty directory, the
//! Dockerfile's `COPY` sources must be there (and let in by `.dockerignore`), the local commands
//! run as written (`microvm-agent --check`, `microvm-sim`), and the platform commands name only
//! files that exist. Only ports and the state directory are changed, so runs do not collide.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

#[path = "sim_support/mod.rs"]
mod support;
use support::{agent, free_port, root};

const SIM: &str = env!("CARGO_BIN_EXE_microvm-sim");

/// The section's fenced blocks: `file=NAME` blocks by name, and the `sh <tag>` blocks by tag.
fn blocks(section: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut files, mut scripts) = (BTreeMap::new(), BTreeMap::new());
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let body = body.join("\n") + "\n";
        let words: Vec<&str> = info.split_whitespace().collect();
        if let Some(name) = words.iter().find_map(|w| w.strip_prefix("file=")) {
            files.insert(name.to_string(), body);
        } else if words.first() == Some(&"sh") && words.len() == 2 {
            scripts.insert(words[1].to_string(), body);
        }
    }
    (files, scripts)
}

/// Shell commands with their continuation lines joined.
fn commands(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in script.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

#[test]
fn the_readme_takes_an_empty_directory_to_the_platform_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("## Deploy to Lambda MicroVMs")
        .expect("a Deploy section");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let (files, scripts) = blocks(section);
    for f in [
        "Dockerfile",
        ".dockerignore",
        "microvm-agent.toml",
        "hooks.json",
        "app.py",
    ] {
        assert!(files.contains_key(f), "the README gives no {f}");
    }

    let dir = std::env::temp_dir().join(format!("mva-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (app_port, hook_port) = (free_port(), free_port());
    let state = dir.join("state").display().to_string();
    for (name, text) in &files {
        let text = text
            .replace("8080", &app_port.to_string())
            .replace("\"port\": 9000", &format!("\"port\": {hook_port}"));
        std::fs::write(dir.join(name), text).unwrap();
    }
    // The agent binary the reader copies in (here the host's build, for the local run).
    std::fs::copy(agent(), dir.join("microvm-agent")).unwrap();

    // The Dockerfile copies only what is there, and .dockerignore lets it in.
    let allowed: Vec<&str> = files[".dockerignore"]
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .collect();
    for line in files["Dockerfile"]
        .lines()
        .filter(|l| l.starts_with("COPY "))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(dir.join(src).exists(), "COPY {src}: not in the directory");
            assert!(
                allowed.contains(src),
                "COPY {src}: excluded by .dockerignore"
            );
        }
    }
    assert!(
        !files["Dockerfile"].contains("--chmod"),
        "no BuildKit-only syntax"
    );

    // The local commands, as written, with the binaries on PATH.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(agent(), bin.join("microvm-agent")).unwrap();
    std::os::unix::fs::symlink(SIM, bin.join("microvm-sim")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let local = commands(scripts.get("local").expect("a `sh local` block"));
    assert!(
        local.iter().any(|c| c.starts_with("microvm-sim ")),
        "{local:?}"
    );
    for cmd in &local {
        let cmd = cmd.replace("/tmp/my-image-state", &state);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(&dir)
            .env("PATH", &path)
            .env("PORT", app_port.to_string())
            .env("MICROVM_AGENT_LISTEN", format!("127.0.0.1:{hook_port}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{cmd}` failed:\n{text}");
        if cmd.starts_with("microvm-sim") {
            assert!(text.contains("OK: no contract violation"), "{text}");
            for event in ["validate", "run", "resume"] {
                assert!(
                    text.contains(&format!("\"told\": \"{event}\"")),
                    "app not told of {event}:\n{text}"
                );
            }
        }
    }

    // The platform commands: the files they name exist; the zip has the Dockerfile at its root.
    let deploy = commands(scripts.get("deploy").expect("a `sh deploy` block"));
    let zip = deploy
        .iter()
        .find(|c| c.starts_with("zip "))
        .expect("a zip command");
    for name in zip.split_whitespace().skip(3) {
        assert!(
            dir.join(name).exists() || name == "microvm-agent",
            "zip {name}: no such file"
        );
    }
    assert!(zip.split_whitespace().any(|w| w == "Dockerfile"));
    let create = deploy
        .iter()
        .find(|c| c.contains("create-microvm-image"))
        .expect("create-microvm-image");
    assert!(
        create.contains("--hooks file://hooks.json") && Path::new(&dir.join("hooks.json")).exists()
    );
    assert!(create.contains("--base-image-arn arn:aws:lambda:<region>:aws:microvm-image:al2023-1"));
    let run = deploy
        .iter()
        .find(|c| c.contains("run-microvm"))
        .expect("run-microvm");
    assert!(run.contains("--run-hook-payload"), "{run}");
    let _ = std::fs::remove_dir_all(&dir);
}
