//! Reading a file that someone else can write, at a cost the agent decides.
//!
//! A file the app (or the image) can write is input like a request body: `/etc/hosts` made
//! 400 MiB before the snapshot turned every clone's `/run` into a 500 (`timeout`, 0.91 s), and
//! 3,000 MiB into "out of memory". Every such read goes through here: opened without following
//! a link and without blocking on a FIFO, a regular file only, its size checked before a byte is
//! read (a sparse file costs nothing to refuse), then read through `take(limit + 1)` in case it
//! grew. Too large is an error of kind `FileTooLarge`; the caller reports it and leaves the file
//! alone.
//!
//! The files (SECURITY.md lists them): `/etc/hosts` (the hostname step), the RTC's
//! `since_epoch` (the clock step). Files the agent only writes (`/etc/machine-id`, its state
//! directory, the helper files) are not read; `/proc` and `/sys` files the kernel writes are
//! bounded by the kernel; the configuration file has its own limit (`config::file`).

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most of a system file the agent reads: `/etc/hosts` is a few hundred bytes on a
/// container image, and a few thousand lines on a machine that blocks ads with it.
pub const SYSTEM_FILE: u64 = 1 << 20;

/// The whole regular file at `path`, at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(too_large(limit));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// A small file (a sysfs attribute) into `buf`: at most its length, whatever the file says.
pub fn read_into<'a>(path: &Path, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
    let mut file = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&buf[..n])
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("larger than {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_before_a_byte_is_read() {
        let dir = std::env::temp_dir().join(format!("mva-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hosts");
        std::fs::write(&f, "127.0.0.1\tlocalhost\n").unwrap();
        assert_eq!(read(&f, 100).unwrap(), b"127.0.0.1\tlocalhost\n");
        // Sparse, 4 GiB: refused by its size, nothing allocated.
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        let e = read(&f, SYSTEM_FILE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        // A link is not followed; a directory is not a file.
        std::os::unix::fs::symlink(&f, dir.join("link")).unwrap();
        assert!(read(&dir.join("link"), SYSTEM_FILE).is_err());
        assert!(read(&dir, SYSTEM_FILE).is_err());
        let mut buf = [0u8; 4];
        std::fs::write(&f, "1234567").unwrap();
        assert_eq!(read_into(&f, &mut buf).unwrap(), b"1234");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
