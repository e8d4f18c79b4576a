//! The documentation, checked. The deploy guide's path from an empty directory to a running
//! MicroVM (`docs/deploy.md`, linked from the README), followed as a person would: every file of
//! its "Deploy to Lambda MicroVMs" section is written into an empty directory, the
//! Dockerfile's `COPY` sources must be there (and let in by `.dockerignore`), the local commands
//! run as written (`microvm-agent --check`, `microvm-sim`), and the platform commands name only
//! files that exist. Only ports and the state directory are changed, so runs do not collide.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mva_test_support::repo as support;
use support::{agent, reserve_port, root};

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
fn the_deploy_guide_takes_an_empty_directory_to_the_platform_commands() {
    let guide = std::fs::read_to_string(root().join("docs/deploy.md")).unwrap();
    let start = guide
        .find("# Deploy to Lambda MicroVMs")
        .expect("a Deploy section");
    let rest = &guide[start + 2..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let (files, scripts) = blocks(section);
    for f in [
        "Dockerfile",
        ".dockerignore",
        "microvm-agent.toml",
        "hooks.json",
        "app.py",
    ] {
        assert!(files.contains_key(f), "the deploy guide gives no {f}");
    }

    let dir = std::env::temp_dir().join(format!("mva-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ((_h1, app_port), (_h2, hook_port)) = (reserve_port(), reserve_port());
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
    // The deployment the guide recommends: the agent may reseed the kernel (it splits the
    // capabilities, so the app still gets the default set).
    assert!(
        create.contains("--additional-os-capabilities '[\"ALL\"]'"),
        "{create}"
    );
    let run = deploy
        .iter()
        .find(|c| c.contains("run-microvm"))
        .expect("run-microvm");
    assert!(run.contains("--run-hook-payload"), "{run}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Markdown files a reader follows: the README, `docs/`, and the other top-level guides.
fn guides() -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = [
        "README.md",
        "SECURITY.md",
        "BENCHMARKS.md",
        "tests/README.md",
    ]
    .iter()
    .map(|p| root().join(p))
    .collect();
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped, spaces
/// to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in the guides names a file of the repository (and, with `#`, a heading
/// of it): a guide moved or renamed breaks this test, not a reader's click.
#[test]
fn every_link_in_the_guides_points_inside_the_repository() {
    let mut broken = Vec::new();
    for guide in guides() {
        let text = std::fs::read_to_string(&guide).unwrap();
        let dir = guide.parent().unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                guide.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}", guide.display()));
                continue;
            }
            if !frag.is_empty() {
                let heads = std::fs::read_to_string(&path).unwrap_or_default();
                let found = heads
                    .lines()
                    .filter_map(|l| {
                        l.trim_start_matches('#')
                            .strip_prefix(' ')
                            .filter(|_| l.starts_with('#'))
                    })
                    .any(|h| anchor(h) == frag);
                if !found {
                    broken.push(format!("{}: {target} (no such heading)", guide.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The repository stands alone: no file refers to a document that is not in it (the design
/// notes this project started from lived outside it; what it relies on is now in `docs/`).
#[test]
fn no_file_refers_to_a_document_outside_the_repository() {
    let names = ["CONTRACT", "DESIGN", "BEHAVIOURS"].map(|n| format!("{n}.md"));
    let out = Command::new("git")
        .args([
            "grep",
            "--untracked",
            "-l",
            "-I",
            "-e",
            &names[0],
            "-e",
            &names[1],
            "-e",
            &names[2],
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    let offending: Vec<&str> = listed
        .lines()
        // This file names them to look for them.
        .filter(|f| *f != "tests/sim/documentation.rs")
        .collect();
    for n in &names {
        if root().join(n).exists() {
            return;
        }
    }
    assert!(
        offending.is_empty(),
        "refer to documents outside the repository: {offending:?}"
    );
}

/// The README stays a guide: short enough to read in five minutes, with the routine in its
/// first screen.
#[test]
fn the_readme_is_a_guide() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines (at most 300: the rest goes to docs/)"
    );
    let routine = readme
        .find("new-generation routine")
        .expect("the routine, named");
    assert!(
        readme[..routine].lines().count() <= 40,
        "the routine is not in the README's first screen"
    );
}

/// The supervision guide's table names real tests: every test it cites is a `fn` of
/// `tests/blackbox/supervise.rs`.
#[test]
fn the_supervision_guide_cites_tests_that_exist() {
    let guide = std::fs::read_to_string(root().join("docs/supervision.md")).unwrap();
    let tests = std::fs::read_to_string(root().join("tests/blackbox/supervise.rs")).unwrap();
    let table = &guide[guide
        .find("## What a supervisor must do")
        .expect("the table")..];
    let mut cited = 0;
    for row in table.lines().filter(|l| l.starts_with("| ")) {
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
        for name in last.split('`').skip(1).step_by(2) {
            if name.contains('_') && !name.contains(' ') {
                cited += 1;
                assert!(
                    tests.contains(&format!("fn {name}(")),
                    "docs/supervision.md cites {name}, which tests/blackbox/supervise.rs does not have"
                );
            }
        }
    }
    assert!(cited >= 30, "only {cited} tests cited");
}
