//! At start: the helpers written read-only under `<state_dir>/inproc/`, the socket bound, and the
//! environment that makes the app's processes load them. Nothing here may stop the app from
//! starting: a part that cannot be arranged is left out with a WARN, and the rest goes on.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sys::elf::Program;
use crate::sys::state_files::{Handle, StateDir};

/// The helper library, built for this binary's own target by `build.rs`.
const PRELOAD: &[u8] = include_bytes!(env!("MICROVM_AGENT_PRELOAD"));
const SITECUSTOMIZE: &str = include_str!("../../../../inproc/python/sitecustomize.py");
const PY_HELPER: &str = include_str!("../../../../inproc/python/_microvm_reseed.py");
const NODE_HELPER: &str = include_str!("../../../../inproc/node/microvm-reseed.js");
/// The Java agent, built reproducibly from `inproc/java/src` and committed (`inproc/java/build.sh`;
/// CI rebuilds it and fails when it differs): building it here would make every build of the
/// agent need a JDK.
const JAVA_AGENT: &[u8] = include_bytes!("../../../../inproc/java/microvm-reseed.jar");
/// Where the Java agent is, under [`DIR`]: the native helper derives it from the socket's path
/// (`inproc/preload/src/java.rs`), so the two must agree.
pub const JAVA_AGENT_PATH: &str = "java/microvm-reseed.jar";

pub const DIR: &str = "inproc";
pub const SOCKET: &str = "inproc.sock";
pub const LIBRARY: &str = "libmicrovm-reseed.so";
/// The environment variable that names the socket to the helpers.
pub const SOCKET_ENV: &str = "MICROVM_AGENT_INPROC";
/// `sun_path`'s 108 bytes, with its NUL.
const MAX_SOCKET_PATH: usize = 107;

/// What was arranged for the app, per helper: `"on"` or why not.
#[derive(Clone, Debug, Serialize)]
pub struct Arranged {
    pub enabled: bool,
    pub socket: Option<PathBuf>,
    pub openssl: String,
    pub python: String,
    pub node: String,
    pub java: String,
}

impl Setup {
    pub fn off(why: &str) -> Setup {
        Setup {
            arranged: Arranged::off(why),
            env: vec![],
            listener: None,
            refresh: None,
        }
    }
}

impl Arranged {
    pub fn off(why: &str) -> Arranged {
        Arranged {
            enabled: false,
            socket: None,
            openssl: why.to_string(),
            python: why.to_string(),
            node: why.to_string(),
            java: why.to_string(),
        }
    }
}

/// The result: what to tell `/status`, the app's extra environment, and the listener.
pub struct Setup {
    pub arranged: Arranged,
    pub env: Vec<(&'static str, OsString)>,
    pub listener: Option<std::os::unix::net::UnixListener>,
    /// Before every start of the app: writes the helpers again if one is gone.
    pub refresh: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

/// With the helpers switched off: only the socket, for the app's client libraries (`clients/`),
/// which register their callbacks on it (`MICROVM_AGENT_INPROC` names it).
pub fn socket_only(state: &Handle, owner: Option<(u32, u32)>, why: &str) -> Setup {
    let mut setup = Setup::off(why);
    let Ok(dir) = state.get() else {
        return setup;
    };
    let socket = dir.path().join(SOCKET);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return setup;
    }
    match bind(&socket, owner) {
        Ok(l) => {
            setup.listener = Some(l);
            setup.env = vec![(SOCKET_ENV, socket.clone().into_os_string())];
            setup.arranged.socket = Some(socket);
        }
        Err(e) => tracing::warn!(error = %e, "cannot bind the socket for the app's libraries"),
    }
    setup
}

/// Writes the helpers and binds the socket; `owner` is the app's user (it must read the files
/// and connect). The environment extends the agent's own (`LD_PRELOAD`, `PYTHONPATH`,
/// `NODE_OPTIONS` keep what the image set).
pub fn arrange(state: &Handle, owner: Option<(u32, u32)>) -> Setup {
    let fail = |why: String| {
        tracing::warn!(reason = %why, "in-process reseed is off: the app's processes keep the snapshot's generators until they reseed themselves");
        Setup::off(&format!("off: {why}"))
    };
    let dir = match state.get() {
        Ok(d) => d,
        Err(e) => return fail(format!("no state directory: {e}")),
    };
    let base = dir.path().to_path_buf();
    let socket = base.join(SOCKET);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return fail(format!(
            "the state directory's path is too long for a socket ({} bytes, at most {})",
            socket.as_os_str().len(),
            MAX_SOCKET_PATH - SOCKET.len() - 1
        ));
    }
    let files = match write_files(&dir) {
        Ok(()) => base.join(DIR),
        Err(e) => return fail(format!("cannot write the helpers: {e}")),
    };
    let listener = match bind(&socket, owner) {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot bind {}: {e}", socket.display())),
    };
    let mut env = vec![(SOCKET_ENV, socket.clone().into_os_string())];

    let jar = files.join(JAVA_AGENT_PATH);
    let library = files.join(LIBRARY);
    let openssl = if noexec(&base) {
        tracing::warn!(dir = %base.display(), "in-process reseed: the state directory is on a noexec mount; OpenSSL is not reseeded in the app's processes (Python's ssl still is, by its helper)");
        "off: the state directory is on a noexec mount".to_string()
    } else if splits_in_ld_preload(&library) {
        tracing::warn!(path = %library.display(), "in-process reseed: the state directory's path cannot go into LD_PRELOAD (a space or a colon); OpenSSL is not reseeded in the app's processes");
        "off: the state directory's path cannot go into LD_PRELOAD".to_string()
    } else {
        env.push((
            "LD_PRELOAD",
            join_env("LD_PRELOAD", library.into_os_string(), ":", false),
        ));
        "on".to_string()
    };
    env.push((
        "PYTHONPATH",
        join_env(
            "PYTHONPATH",
            files.join("python").into_os_string(),
            ":",
            true,
        ),
    ));
    let js = files.join("node").join("microvm-reseed.js");
    let node = match js.to_str() {
        Some(p) if !p.contains(['"', '\\', ' ']) => {
            env.push((
                "NODE_OPTIONS",
                join_env("NODE_OPTIONS", format!("--require {p}").into(), " ", false),
            ));
            "on".to_string()
        }
        _ => {
            tracing::warn!(path = %js.display(), "in-process reseed: Node's helper path cannot go into NODE_OPTIONS (spaces, quotes); Node's own generators are not reseeded");
            "off: the state directory's path cannot go into NODE_OPTIONS".to_string()
        }
    };
    // The native helper adds the Java agent to each `java` launcher's `JDK_JAVA_OPTIONS` (only a
    // runtime with `java.instrument` can load it: in the image's environment it would stop a
    // jlink'd one from starting), so Java goes where the native helper goes.
    let java = if openssl != "on" {
        "off: the native helper, which adds it to each JVM, is off".to_string()
    } else if base.as_os_str().as_encoded_bytes().iter().any(|&b| {
        // What the native helper refuses (inproc/preload/src/java.rs, `one_word`): the launcher
        // splits the variable at white space and reads quotes, the JVM splits `-agentpath` at `=`.
        b.is_ascii_whitespace() || matches!(b, b'"' | b'\\' | b'\'' | b'=')
    }) {
        tracing::warn!(path = %jar.display(), "in-process reseed: the Java agent's path cannot go into JDK_JAVA_OPTIONS (white space, quotes, '='); Java's own generators are not reseeded");
        "off: the state directory's path cannot go into JDK_JAVA_OPTIONS".to_string()
    } else {
        "on".to_string()
    };
    Setup {
        arranged: Arranged {
            enabled: true,
            socket: Some(socket),
            openssl,
            python: "on".to_string(),
            node,
            java,
        },
        env,
        listener: Some(listener),
        refresh: Some(std::sync::Arc::new(refresh(state.clone()))),
    }
}

/// A check that the helpers are all there, run before each start of the app: the environment
/// names them, and `node --require` of a missing file exits at once. One `fstatat` per file on
/// the state directory's tmpfs, beside the `fork` + `exec` of the start itself.
fn refresh(state: Handle) -> impl Fn() + Send + Sync {
    move || {
        let Ok(dir) = state.get() else { return };
        let all_there = [
            format!("{DIR}/{LIBRARY}"),
            format!("{DIR}/python/sitecustomize.py"),
            format!("{DIR}/python/_microvm_reseed.py"),
            format!("{DIR}/node/microvm-reseed.js"),
            format!("{DIR}/{JAVA_AGENT_PATH}"),
        ]
        .iter()
        .all(|f| dir.exists(f));
        if !all_there {
            match write_files(&dir) {
                Ok(()) => {
                    tracing::warn!("in-process reseed: a helper file was gone; written again")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "in-process reseed: a helper file is gone and cannot be written again")
                }
            }
        }
    }
}

/// What `--check` says of the in-process reseed (TOML comments): whether the app will get the
/// helpers, and what will not take part.
pub fn report(config: &crate::config::Config) -> String {
    let state = &config.state_dir;
    let what = match &config.app {
        None => "off: no app (a sidecar: the app's own start sets the environment)".to_string(),
        Some(app) if !app.reseed_in_process => "off: [app] reseed_in_process = false".to_string(),
        Some(_) => {
            let socket = state.join(SOCKET);
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                format!("off: {} is too long for a socket", socket.display())
            } else if noexec(state) {
                format!(
                    "on, without OpenSSL: {} is on a noexec mount (Python's and Node's helpers only)",
                    state.display()
                )
            } else if splits_in_ld_preload(&state.join(DIR).join(LIBRARY)) {
                format!(
                    "on, without OpenSSL and Java: {} has a space or a colon, which LD_PRELOAD cannot hold (Python's and Node's helpers only)",
                    state.display()
                )
            } else {
                format!(
                    "on: LD_PRELOAD (OpenSSL), PYTHONPATH (Python), NODE_OPTIONS (Node.js), JDK_JAVA_OPTIONS (Java: the native helper adds it in each `java` launcher whose runtime has java.instrument) from {}",
                    state.join(DIR).display()
                )
            }
        }
    };
    let mut out = format!(
        "# in-process reseed of the app's processes: {what}\n\
         #   not taking part: static binaries, programs that never load OpenSSL (one that loads\n\
         #   it later takes part from its first draw), setuid programs; /status lists them under\n\
         #   inproc\n"
    );
    // The app's own program, when it is one the helpers cannot reach: said before the image ships.
    let program = config
        .app
        .as_ref()
        .and_then(|app| app.command.first())
        .and_then(|argv0| crate::sys::elf::locate(Path::new(argv0)))
        .and_then(|path| {
            Some((
                crate::sys::elf::classify(&std::fs::File::open(&path).ok()?)?,
                path,
            ))
        });
    match program {
        Some((kind @ (Program::Go | Program::Static), path)) => {
            let advice = super::census::advice(kind);
            out.push_str(&format!(
                "#   the app's program {}: {advice}\n",
                path.display()
            ));
        }
        // A JVM: whether the Java agent can go in is whether its runtime has java.instrument
        // (what the native helper checks in the launcher: inproc/preload/src/java.rs).
        Some((Program::Dynamic, path)) if path.file_name().is_some_and(|n| n == "java") => {
            let real = std::fs::canonicalize(&path).unwrap_or(path);
            let instrument = real
                .parent()
                .and_then(Path::parent)
                .map(|home| home.join("lib/libinstrument.so"));
            let line = if instrument.as_ref().is_some_and(|l| l.exists()) {
                "Java: the Java agent goes into it (the runtime has java.instrument)".to_string()
            } else {
                super::census::advice(Program::Java).to_string()
            };
            out.push_str(&format!(
                "#   the app's program {}: {line}\n",
                real.display()
            ));
        }
        _ => {}
    }
    out
}

fn write_files(dir: &StateDir) -> std::io::Result<()> {
    let inproc = dir.subdir(DIR, 0o755, None)?;
    inproc.write(LIBRARY, PRELOAD, 0o444, None)?;
    let python = inproc.subdir("python", 0o755, None)?;
    python.write("sitecustomize.py", SITECUSTOMIZE.as_bytes(), 0o444, None)?;
    python.write("_microvm_reseed.py", PY_HELPER.as_bytes(), 0o444, None)?;
    let node = inproc.subdir("node", 0o755, None)?;
    node.write("microvm-reseed.js", NODE_HELPER.as_bytes(), 0o444, None)?;
    let java = inproc.subdir("java", 0o755, None)?;
    java.write("microvm-reseed.jar", JAVA_AGENT, 0o444, None)?;
    Ok(())
}

/// Binds the socket, replacing a stale one, connectable only by the app's user.
fn bind(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `ours` joined with the agent's own value of `var` (`first`: ours before it).
fn join_env(var: &str, ours: OsString, sep: &str, first: bool) -> OsString {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        None => ours,
        Some(theirs) => {
            let (a, b) = if first {
                (ours, theirs)
            } else {
                (theirs, ours)
            };
            let mut v = a;
            v.push(sep);
            v.push(b);
            v
        }
    }
}

/// Whether the dynamic loader would split this path in `LD_PRELOAD` (at spaces and colons):
/// every process of the app would then print a loader error and load nothing.
fn splits_in_ld_preload(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(|&b| b == b' ' || b == b':')
}

fn noexec(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_library_is_a_shared_object_for_this_architecture() {
        assert_eq!(&PRELOAD[..4], b"\x7fELF");
        // e_type ET_DYN, e_machine of the target.
        assert_eq!(u16::from_le_bytes([PRELOAD[16], PRELOAD[17]]), 3);
        let machine = u16::from_le_bytes([PRELOAD[18], PRELOAD[19]]);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(machine, 62);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(machine, 183);
    }
}
