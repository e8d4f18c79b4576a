//! Per-generation secrets in `<state_dir>/secrets/<name>`.
//!
//! Each routine writes every configured secret anew: `bytes = N` draws N bytes from the agent's
//! freshly keyed generator, `exec = [...]` runs a command and takes its stdout as it is. Files are
//! 0600, owned by the app's user, and replaced by rename, so a reader always sees one whole value.
//! The agent keeps no copy: each value is zeroed in memory right after it is written, so a
//! `scrub_on_suspend` secret is gone from the VM's memory and disk when `/suspend` removes its
//! file. Values are never logged: errors name the secret, never its content.

use std::ffi::OsString;

use tokio::time::Instant;
use zeroize::Zeroize;

use crate::clone::generation::{Generation, Generations};
use crate::config::{Encoding, Secret, SecretSource};
use crate::supervise::launcher::Launcher;
use crate::sys::{offload, state_files};

/// The secrets' directory below the state directory: 0700, the app's user's.
pub const DIR: &str = "secrets";

/// A secret that could not be produced: which one, and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub reason: String,
}

/// Produces and stages a new value of every secret, committing none: the caller commits them
/// all (with the seed) once everything is staged, so that a secret that fails leaves every file
/// holding the previous generation's value. Stops at the first that fails.
pub async fn stage(
    secrets: &[Secret],
    generations: &Generations,
    generation: &Generation,
    launcher: &Launcher,
    state: &state_files::Handle,
    deadline: Instant,
) -> Result<Vec<state_files::Staged>, Failure> {
    let mut staged = Vec::with_capacity(secrets.len());
    if secrets.is_empty() {
        return Ok(staged);
    }
    let owner = launcher.owner();
    let state = state.clone();
    // Through the state directory's descriptor: a link planted as `secrets` is refused, and the
    // mode and owner are set on the directory that was opened, never on a path.
    let dir = offload::io(move || state.get()?.subdir(DIR, 0o700, owner))
        .await
        .map_err(|e| Failure {
            name: "(secrets directory)".into(),
            reason: format!("{DIR}: {e}"),
        })?;
    for secret in secrets {
        let fail = |reason: String| Failure {
            name: secret.name.clone(),
            reason,
        };
        let mut value = match &secret.source {
            SecretSource::Random { bytes, encoding } => {
                let mut raw = generations
                    .draw(*bytes)
                    .ok_or_else(|| fail("no generator yet".into()))?;
                let encoded = encode(&raw, *encoding);
                raw.zeroize();
                encoded
            }
            SecretSource::Exec { command } => {
                let argv: Vec<OsString> = command.iter().map(OsString::from).collect();
                let env = vec![
                    ("MICROVM_GENERATION", generation.generation.to_string()),
                    ("MICROVM_SECRET", secret.name.clone()),
                ];
                let limit = deadline.saturating_duration_since(Instant::now());
                let mut done = launcher
                    .helper(&argv, env, true, limit)
                    .await
                    .map_err(fail)?;
                if !done.exit.success() {
                    done.stdout.zeroize();
                    return Err(fail(format!("the command ended with {}", done.exit)));
                }
                exec_value(done.stdout).map_err(fail)?
            }
        };
        let (d, name) = (dir.clone(), secret.name.clone());
        let written = offload::io(move || {
            let staged = d.stage(&name, &value, 0o600, owner);
            value.zeroize();
            staged
        })
        .await;
        staged.push(written.map_err(|e| fail(format!("cannot write it: {e}")))?);
    }
    Ok(staged)
}

/// What `/suspend`'s scrub did: how many files it removed, and which it could not remove.
#[derive(Debug, Default)]
pub struct Scrubbed {
    pub removed: usize,
    pub failed: Vec<Failure>,
}

/// Removes the files of the secrets marked `scrub_on_suspend`. A file that is already gone counts
/// as scrubbed; any other error is a failure, reported by name (the secret stays on disk).
/// Runs on the I/O thread, in the state directory `root`.
pub fn scrub(secrets: &[Secret], root: &state_files::StateDir) -> Scrubbed {
    let mut out = Scrubbed::default();
    let marked: Vec<&Secret> = secrets.iter().filter(|s| s.scrub_on_suspend).collect();
    if marked.is_empty() {
        return out;
    }
    let dir = match root.subdir_existing(DIR) {
        Ok(Some(d)) => d,
        Ok(None) => return out, // never written: nothing on disk
        Err(e) => {
            out.failed.extend(marked.iter().map(|s| Failure {
                name: s.name.clone(),
                reason: format!("cannot open {DIR}: {e}"),
            }));
            return out;
        }
    };
    for s in marked {
        match dir.remove(&s.name) {
            Ok(true) => out.removed += 1,
            Ok(false) => {}
            Err(e) => out.failed.push(Failure {
                name: s.name.clone(),
                reason: format!("cannot remove it: {e}"),
            }),
        }
    }
    out
}

/// The largest value an `exec` secret may have (its command's whole stdout).
pub const MAX_VALUE: usize = crate::supervise::helper::CAPTURE_LIMIT;

/// An `exec` secret's value from its command's stdout: exactly those bytes (a trailing newline
/// included), or, over [`MAX_VALUE`], the reason and nothing: a cut value is never published.
pub fn exec_value(mut stdout: Vec<u8>) -> Result<Vec<u8>, String> {
    if stdout.len() > MAX_VALUE {
        stdout.zeroize();
        return Err(format!(
            "the command wrote more than {MAX_VALUE} bytes, the limit for a secret"
        ));
    }
    Ok(stdout)
}

/// The text of a `bytes` secret in its encoding.
pub fn encode(raw: &[u8], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Raw => raw.to_vec(),
        Encoding::Hex => raw
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect(),
        Encoding::Base64 => base64(raw),
    }
}

fn base64(raw: &[u8]) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(encode(&[0xde, 0xad, 0x01], Encoding::Hex), b"dead01");
        assert_eq!(encode(&[1, 2], Encoding::Raw), vec![1, 2]);
        for (raw, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
            (b"\xff\xfe\xfd\xfc", "//79/A=="),
        ] {
            assert_eq!(String::from_utf8(base64(raw)).unwrap(), b64);
        }
    }
}
