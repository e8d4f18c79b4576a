//! The apps of the runtime clone test: the five templates, broken copies of the Python one (the
//! test of the test), and the unmodified apps of `tests/vm/runtime/`, each built for the guest's
//! architecture.

use crate::support::run;
use crate::vm::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One app in the guest: a template (or a broken copy of one) under its own agent.
pub struct App {
    pub name: &'static str,
    pub template: &'static str,
    /// The guest's command line for the app, after `--`.
    pub command: &'static str,
    /// For a broken copy: the text replaced in the template's app, and what replaces it.
    pub broken: Option<(&'static str, &'static str)>,
    /// `[app] reseed_in_process` (the agent's default is on).
    pub inproc: bool,
    /// It opens outbound TLS connections to the recorder on every probe (server name: its name).
    pub tls: bool,
}

const fn app(name: &'static str, template: &'static str, command: &'static str) -> App {
    App {
        name,
        template,
        command,
        broken: None,
        inproc: true,
        tls: false,
    }
}

pub const APPS: [App; 16] = [
    app("python", "python", "python3 /run/mva/python/app.py"),
    app("node", "node", "node /run/mva/node/app.js"),
    app("java", "java", "java -cp /run/mva/java App"),
    app("go", "go", "/run/mva/go/server"),
    app("rust", "rust", "/run/mva/rust/server"),
    App {
        broken: Some(("microvm_agent.reseed(random)", "random.seed(42)")),
        inproc: false,
        ..app(
            "python-constant",
            "python",
            "python3 /run/mva/python-constant/app.py",
        )
    },
    App {
        broken: Some(("microvm_agent.reseed(random)", "pass")),
        inproc: false,
        ..app(
            "python-no-handler",
            "python",
            "python3 /run/mva/python-no-handler/app.py",
        )
    },
    // Unmodified apps (tests/vm/runtime/): no handler, no seed; the agent's in-process reseed is
    // all they get, and what they send on the wire is read from the recorder.
    App {
        tls: true,
        ..app(
            "plain-python",
            "plain-python",
            "python3 /run/mva/plain-python/plain.py plain-python",
        )
    },
    App {
        tls: true,
        ..app(
            "plain-node",
            "plain-node",
            "node /run/mva/plain-node/plain.js plain-node",
        )
    },
    App {
        tls: true,
        ..app("plain-c", "plain-c", "/run/mva/plain-c/plain-c plain-c")
    },
    // Its OpenSSL is loaded after start (`require 'openssl'`): the native helper's late start.
    App {
        tls: true,
        ..app(
            "plain-ruby",
            "plain-ruby",
            "ruby /run/mva/plain-ruby/plain.rb plain-ruby",
        )
    },
    // Its generators are the JVM's: the Java agent, which the native helper adds to the launcher.
    App {
        tls: true,
        ..app(
            "plain-java",
            "plain-java",
            "java -cp /run/mva/plain-java Plain plain-java",
        )
    },
    // The same apps with the switch off: the test of the test for the in-process reseed.
    App {
        inproc: false,
        tls: true,
        ..app(
            "plain-python-off",
            "plain-python",
            "python3 /run/mva/plain-python-off/plain.py plain-python-off",
        )
    },
    App {
        inproc: false,
        tls: true,
        ..app(
            "plain-node-off",
            "plain-node",
            "node /run/mva/plain-node-off/plain.js plain-node-off",
        )
    },
    App {
        inproc: false,
        tls: true,
        ..app(
            "plain-ruby-off",
            "plain-ruby",
            "ruby /run/mva/plain-ruby-off/plain.rb plain-ruby-off",
        )
    },
    App {
        inproc: false,
        tls: true,
        ..app(
            "plain-java-off",
            "plain-java",
            "java -cp /run/mva/plain-java-off Plain plain-java-off",
        )
    },
];

impl App {
    /// A copy that must fail the check (the test of the test): a broken handler, or an
    /// unmodified app with the in-process reseed switched off.
    pub fn control(&self) -> bool {
        self.broken.is_some() || (!self.inproc && self.template.starts_with("plain-"))
    }
    fn index(&self) -> u16 {
        APPS.iter().position(|a| a.name == self.name).unwrap() as u16
    }
    pub fn app_port(&self) -> u16 {
        8081 + self.index()
    }
    pub fn hook_port(&self) -> u16 {
        9001 + self.index()
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The unmodified apps' configuration: what an author writes who has read nothing about clones.
const PLAIN_TOML: &str = "[app]\nrestart = \"on-failure\"\n\n[ready]\nhttp = \"http://127.0.0.1:8080/healthz\"\n\n[hooks]\nready_timeout = \"60s\"\n";

/// The Go architecture and Rust target of the guest's static binaries.
fn targets(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::X86_64 => ("amd64", "x86_64-unknown-linux-musl"),
        Arch::Aarch64 => ("arm64", "aarch64-unknown-linux-musl"),
    }
}

/// The arm64 libssl and libc `prepare.sh` extracted (the unmodified C app links against them).
pub fn arm64_libs() -> PathBuf {
    Arch::Aarch64
        .dir()
        .join("userland/usr/lib/aarch64-linux-gnu")
}

/// Builds every app into `out/<name>/`: the template's files, its configuration with its ports,
/// Java's classes, and Go's, Rust's and C's binaries for `arch`.
pub fn build(out: &Path, arch: Arch) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(root().join("target"), PathBuf::from)
        .join("template-rust");
    let (goarch, rust_target) = targets(arch);
    for app in &APPS {
        let dir = out.join(app.name);
        // A template's directory is its build context as its author makes it (its client library
        // copied in where its Dockerfile expects it), built in place.
        let toml = if app.template.starts_with("plain-") {
            std::fs::create_dir_all(&dir).unwrap();
            PLAIN_TOML.to_string()
        } else {
            crate::support::build_context(app.template, &dir);
            std::fs::read_to_string(dir.join("microvm-agent.toml")).unwrap()
        };
        let mut toml = toml.replace("8080", &app.app_port().to_string());
        if !app.inproc {
            assert!(toml.contains("[app]\n"), "{}: no [app] section", app.name);
            toml = toml.replace("[app]\n", "[app]\nreseed_in_process = false\n");
        }
        std::fs::write(dir.join("microvm-agent.toml"), toml).unwrap();
        let d = dir.display().to_string();
        let plain = root().join("tests/vm/runtime");
        match app.template {
            "plain-python" => {
                std::fs::copy(plain.join("plain.py"), dir.join("plain.py")).unwrap();
            }
            "plain-node" => {
                std::fs::copy(plain.join("plain.js"), dir.join("plain.js")).unwrap();
            }
            "plain-ruby" => {
                std::fs::copy(plain.join("plain.rb"), dir.join("plain.rb")).unwrap();
            }
            // Compiled here (the guest has a JRE).
            "plain-java" => run(
                Command::new("javac")
                    .args(["--release", "17", "-d", &d])
                    .arg(plain.join("Plain.java")),
                "javac (Plain.java)",
            ),
            // Against libssl.so.3 alone (plain.c declares what it calls): on x86_64 the host's
            // (the guest is the same Debian release), on aarch64 the arm64 one prepare.sh
            // extracted, with Debian's cross compiler.
            "plain-c" => {
                let mut gcc = match arch {
                    Arch::X86_64 => Command::new("gcc"),
                    Arch::Aarch64 => {
                        let libs = arm64_libs();
                        let mut c = Command::new("aarch64-linux-gnu-gcc");
                        c.arg(format!("-L{}", libs.display()))
                            .arg(format!("-Wl,-rpath-link,{}", libs.display()));
                        c
                    }
                };
                run(
                    gcc.args(["-O2", "-o", &format!("{d}/plain-c")])
                        .arg(plain.join("plain.c"))
                        .args(["-l:libssl.so.3", "-l:libcrypto.so.3"]),
                    "gcc (plain.c)",
                )
            }
            // Python and Node.js run from their context; a broken copy's app replaces the
            // template's.
            "python" => {
                if let Some((from, to)) = app.broken {
                    let text = std::fs::read_to_string(dir.join("app.py")).unwrap();
                    assert!(text.contains(from), "the broken copy no longer applies");
                    std::fs::write(dir.join("app.py"), text.replace(from, to)).unwrap();
                }
            }
            "node" => {}
            // With its client library's source, as the Dockerfile compiles them.
            "java" => crate::support::javac_template(&dir, &d),
            "go" => run(
                Command::new("go")
                    .args(["build", "-trimpath", "-o", &format!("{d}/server"), "."])
                    .current_dir(&dir)
                    .env("CGO_ENABLED", "0")
                    .env("GOOS", "linux")
                    .env("GOARCH", goarch)
                    .env("GOFLAGS", "-mod=mod"),
                "go build",
            ),
            "rust" => {
                run(
                    Command::new("cargo")
                        .args(["build", "-q", "--release", "--locked", "--target"])
                        .arg(rust_target)
                        .arg("--manifest-path")
                        .arg(dir.join("Cargo.toml"))
                        .env("CARGO_TARGET_DIR", &target)
                        // As the workspace's .cargo/config.toml says, wherever cargo is run from.
                        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld"),
                    "cargo build (template)",
                );
                std::fs::copy(
                    target.join(rust_target).join("release/microvm-app"),
                    dir.join("server"),
                )
                .unwrap();
            }
            other => panic!("no template {other}"),
        }
    }
}
