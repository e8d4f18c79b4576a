//! What kind of program a file is, from its ELF headers: for saying why a process of the app
//! cannot take part in the in-process reseed, and what of it stays as cloned.
//!
//! - **Go** (a `.go.buildinfo` section, which every Go binary since 1.13 has, stripped or not):
//!   `crypto/rand` and `crypto/tls` draw from the kernel on every call, and `math/rand`'s global
//!   functions from the runtime's generator, seeded once at start with no way to reseed it from
//!   outside. A static Go binary ignores `LD_PRELOAD`; a cgo one loads the native helper but has
//!   no OpenSSL in it.
//! - **static** (no `PT_INTERP`): no loader, so no helper ever loads into it.
//! - **dynamic**: the helper loads; it takes part when OpenSSL is in it at start.
//!
//! Only 64-bit little-endian ELF (the agent's targets, x86_64 and aarch64); anything else is
//! `None`. Every read is bounded: the file is the app's, and may be anything.
//!
//! `locate` finds a program the way `execvp` would, for the app's command and for processes
//! whose executable the agent may not open (see `clone::inproc::census`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What a program file is (`/status` says it in lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    Go,
    Static,
    Dynamic,
    /// A dynamic program that is a JVM (its process is named `java`): not an ELF property, but
    /// what is cloned in it is the JVM's, not OpenSSL's (`clone::inproc::census`).
    Java,
}

const PT_INTERP: u32 = 3;
/// More program headers or sections than any real program has: not read.
const MAX_HEADERS: usize = 1024;
const MAX_NAMES: usize = 64 * 1024;

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `len` bytes at `offset`, or `None` if the file is shorter or the size is past `max`.
fn read(file: &File, offset: u64, len: usize, max: usize) -> Option<Vec<u8>> {
    if len > max {
        return None;
    }
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

/// What `file` is (see the module's documentation).
pub fn classify(file: &File) -> Option<Program> {
    let head = read(file, 0, 64, 64)?;
    if head[..4] != *b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&head, 0x20)?,
        u16_at(&head, 0x36)?,
        u16_at(&head, 0x38)?,
    );
    let (shoff, shentsize, shnum) = (
        u64_at(&head, 0x28)?,
        u16_at(&head, 0x3a)?,
        u16_at(&head, 0x3c)?,
    );
    let shstrndx = u16_at(&head, 0x3e)?;
    if phentsize < 4 || shentsize < 0x28 || phnum > MAX_HEADERS || shnum > MAX_HEADERS {
        return None;
    }
    let phs = read(file, phoff, phentsize * phnum, MAX_HEADERS * 64)?;
    let dynamic = phs
        .chunks_exact(phentsize)
        .any(|ph| u32_at(ph, 0) == Some(PT_INTERP));
    if is_go(file, shoff, shentsize, shnum, shstrndx).unwrap_or(false) {
        return Some(Program::Go);
    }
    Some(if dynamic {
        Program::Dynamic
    } else {
        Program::Static
    })
}

/// Whether a section is named `.go.buildinfo`.
fn is_go(file: &File, shoff: u64, shentsize: usize, shnum: usize, shstrndx: usize) -> Option<bool> {
    if shnum == 0 || shstrndx >= shnum {
        return Some(false);
    }
    let shs = read(file, shoff, shentsize * shnum, MAX_HEADERS * 64)?;
    let names = shs.chunks_exact(shentsize).nth(shstrndx)?;
    let (at, size) = (u64_at(names, 0x18)?, u64_at(names, 0x20)?);
    let names = read(file, at, usize::try_from(size).ok()?, MAX_NAMES)?;
    Some(shs.chunks_exact(shentsize).any(|sh| {
        u32_at(sh, 0)
            .and_then(|n| names.get(n as usize..))
            .is_some_and(|name| name.starts_with(b".go.buildinfo\0"))
    }))
}

/// Where the agent would find `argv0`: as it is when it has a slash, else along `$PATH`.
pub fn locate(argv0: &Path) -> Option<PathBuf> {
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(argv0.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(argv0))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_agents_own_binary_and_garbage_apart() {
        // The test binary: dynamic on glibc, static on musl; never Go.
        let me = File::open(std::env::current_exe().unwrap()).unwrap();
        let kind = classify(&me).unwrap();
        assert_ne!(kind, Program::Go);
        let sh = File::open("/bin/sh").unwrap();
        assert_eq!(classify(&sh), Some(Program::Dynamic));
        let dir = std::env::temp_dir().join(format!("mva-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // An ELF header whose counts claim more than the file holds, and a text file.
        let mut lying = b"\x7fELF\x02\x01\x01".to_vec();
        lying.resize(64, 0xff);
        for (name, bytes) in [("lying", lying), ("text", b"#!/bin/sh\n".to_vec())] {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(classify(&File::open(&p).unwrap()), None, "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
