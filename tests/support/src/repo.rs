//! Where things are: the binaries cargo built for the tests, the repository, the tools the
//! templates need, and a template's build context as its author makes it.

use std::path::{Path, PathBuf};

/// A binary that `cargo test --workspace` built next to this test (`target/<profile>/<rel>`).
pub fn built(rel: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(rel);
    assert!(
        p.exists(),
        "{} missing: run the tests through cargo test --workspace",
        p.display()
    );
    p.display().to_string()
}

pub fn agent() -> String {
    built("microvm-agent")
}

pub fn fixture() -> String {
    built("examples/mva-fixture")
}

/// The repository's root (this crate is `tests/support`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub use crate::ports::reserve_port;

/// Whether `tool` runs here. For `go`: a Go new enough for the Go template's `go.mod` (1.24:
/// `math/rand/v2`, and the `rand.Seed` semantics its comments describe); Debian 12's 1.19 is not.
pub fn have_tool(tool: &str) -> bool {
    use std::process::Command;
    if tool == "go" {
        let out = Command::new("go").arg("version").output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let minor = text.ok().and_then(|t| {
            let v = t
                .split_whitespace()
                .nth(2)?
                .strip_prefix("go1.")?
                .to_string();
            v.split('.').next()?.parse::<u32>().ok()
        });
        return minor.is_some_and(|m| m >= 24);
    }
    Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("-version").output().is_ok()
}

/// Runs `cmd` to success, or fails the test with its output.
pub fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each template's client library: the name its build context (and Dockerfile) gives the copy,
/// and where it is in this repository. The image author copies it in, as the agent binary.
pub const LIBRARIES: [(&str, &str, &str); 5] = [
    (
        "python",
        "microvm_agent",
        "clients/python/src/microvm_agent",
    ),
    ("node", "node_modules/microvm-agent-client", "clients/node"),
    ("java", "dev", "clients/java/src/main/java/dev"),
    ("go", "microvm-agent-go", "clients/go"),
    ("rust", "microvm-agent-client", "clients/rust"),
];

/// A template's build context as its author makes it: the template's files in `into`, and its
/// client library copied next to them under the name its Dockerfile gives it.
pub fn build_context(template: &str, into: &Path) {
    use std::process::Command;
    std::fs::create_dir_all(into).unwrap();
    run(
        Command::new("cp")
            .arg("-r")
            .arg(root().join("templates").join(template).join("."))
            .arg(into),
        "copy the template",
    );
    for (_, name, from) in LIBRARIES.iter().filter(|l| l.0 == template) {
        let to = into.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        run(
            Command::new("cp").arg("-r").arg(root().join(from)).arg(&to),
            "copy the client library",
        );
    }
}

/// Compiles the Java template in `dir` with its client library's sources next to it, into
/// `out`, as its Dockerfile does (`javac -d /app App.java dev/microvm/agent/*.java`), for Java 17.
pub fn javac_template(dir: &Path, out: &str) {
    let library = std::fs::read_dir(dir.join("dev/microvm/agent")).unwrap();
    run(
        std::process::Command::new("javac")
            .args(["--release", "17", "-d", out])
            .arg(dir.join("App.java"))
            .args(library.map(|e| e.unwrap().path())),
        "javac",
    );
}
