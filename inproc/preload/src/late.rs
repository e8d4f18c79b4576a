//! OpenSSL loaded after start: Ruby's `openssl` extension, PHP's, .NET's shim, `python -I`, any
//! program that `dlopen`s `libcrypto` (`RTLD_LOCAL` or not) when it first needs it.
//!
//! The constructor cannot know whether such a process will ever load OpenSSL, and a thread and a
//! connection in every shell and `sleep` an app starts would cost them all. What tells us, at
//! the right moment and at no cost to anyone else: OpenSSL (1.1.1 and 3.x, built with GCC for
//! ELF, as every distribution's is) seeds its primary generator, on first use, through a *weak*
//! reference to `getentropy`, which the dynamic linker binds to the first definition in the
//! global scope: ours, since this library is preloaded. So we define `getentropy`: it calls the
//! C library's own (found with `RTLD_NEXT`; without `dlsym`, the `getrandom` system call), and
//! the first call in a process the constructor left armed, once a `libcrypto` is loaded, starts
//! the helper there, as the constructor does for a process with OpenSSL at start. The thread
//! then finds that copy of OpenSSL in its loaded object's scope (`openssl`) and registers; a
//! process that registers after a generation was made is told of it at once.
//!
//! Measured (Debian 12, OpenSSL 3.0): a program that `dlopen`s `libcrypto.so.3` `RTLD_LOCAL`
//! and calls `RAND_bytes`, `python3 -I` with `ssl`, and Ruby with `openssl` each call
//! `getentropy` on their first draw (`tests/blackbox/in_process_reseed.rs` starts all three
//! under the agent). Others call it too (Ruby's own generators on every draw, OpenSSL or not;
//! glibc's `arc4random`, Rust, Go and Python use `getrandom`): they get the C library's answer,
//! and, while the process is armed, one `dl_iterate_phdr` that stops at its first entry when no
//! object was loaded since the last look (measured: 200,000 Ruby `SecureRandom.hex` calls take
//! the same time with and without the library).

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::libc::{DlPhdrInfo, Libc, ADDS_END};

/// Set by the constructor in a process that may take part but had no OpenSSL at start; the
/// first `getentropy` that finds a `libcrypto` loaded clears it and starts the helper.
pub static ARMED: AtomicBool = AtomicBool::new(false);

/// The C library's `getentropy`: 0 not looked up yet, 1 none.
static NEXT: AtomicUsize = AtomicUsize::new(0);

type GetEntropy = unsafe extern "C" fn(*mut c_void, usize) -> c_int;

/// `getentropy(3)`, the C library's, and our late start on the first call in an armed process.
///
/// # Safety
/// As the C function's: `buf` is writable for `len` bytes.
#[cfg(not(test))]
#[no_mangle]
pub unsafe extern "C" fn getentropy(buf: *mut c_void, len: usize) -> c_int {
    // SAFETY: the caller's promise, passed on.
    let r = unsafe { next(buf, len) };
    if ARMED.load(Ordering::Relaxed) {
        if let Some(c) = crate::libc::get() {
            if openssl_loaded(c) && ARMED.swap(false, Ordering::AcqRel) {
                crate::start_late();
            }
        }
    }
    r
}

/// `dlpi_adds` when we last looked: the objects are walked only when one was loaded since.
static SEEN_ADDS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Whether a `libcrypto` is loaded now. Some runtimes draw through `getentropy` themselves
/// (measured: Ruby, on every `SecureRandom` and `Random.new`, OpenSSL loaded or not), so a
/// call that finds no new object loaded since the last look costs one `dl_iterate_phdr` that
/// stops at its first entry; only a new object makes us read the names. No `dlopen` here: the
/// call may come from inside the loader (a constructor), where musl's would wait for itself.
#[cfg_attr(test, allow(dead_code))]
fn openssl_loaded(c: &Libc) -> bool {
    let mut walk = Walk {
        first: true,
        found: false,
    };
    // SAFETY: the callback only reads the entries it is given and writes into `walk`.
    unsafe { (c.dl_iterate_phdr)(look, &mut walk as *mut Walk as *mut c_void) };
    walk.found
}

struct Walk {
    first: bool,
    found: bool,
}

#[cfg_attr(test, allow(dead_code))]
extern "C" fn look(info: *mut DlPhdrInfo, size: usize, data: *mut c_void) -> c_int {
    // SAFETY: `data` is our `Walk`; `info` is the loader's entry for this call, `size` bytes
    // long, its name NUL-terminated (or null).
    unsafe {
        let walk = &mut *(data as *mut Walk);
        if walk.first {
            walk.first = false;
            if size >= ADDS_END {
                let adds = (*info).adds;
                if SEEN_ADDS.swap(adds, Ordering::AcqRel) == adds {
                    return 1; // nothing loaded since the last look
                }
            }
        }
        let name = (*info).name;
        if !name.is_null() && named_libcrypto(core::ffi::CStr::from_ptr(name).to_bytes()) {
            walk.found = true;
            return 1;
        }
        0
    }
}

/// `libcrypto` in an object's file name (the system's `libcrypto.so.3`, a wheel's
/// `libcrypto-<hash>.so.1.1`); the helper's thread then finds what it can reseed in it.
fn named_libcrypto(path: &[u8]) -> bool {
    let file = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    file.starts_with(b"libcrypto")
}

/// Looks the C library's `getentropy` up now (the constructor calls it), so that the app's first
/// call, wherever it comes from, makes no `dlsym` call of ours.
pub fn prepare() {
    if NEXT.load(Ordering::Acquire) == 0 {
        let p = crate::libc::next(c"getentropy");
        NEXT.store(if p.is_null() { 1 } else { p as usize }, Ordering::Release);
    }
}

/// The C library's `getentropy`, or the system call where it cannot be found.
///
/// # Safety
/// `buf` is writable for `len` bytes.
#[cfg_attr(test, allow(dead_code))]
unsafe fn next(buf: *mut c_void, len: usize) -> c_int {
    prepare();
    let f = NEXT.load(Ordering::Acquire);
    if f > 1 {
        // SAFETY: the C library's `getentropy`, whose signature this is; the caller's buffer.
        return unsafe { core::mem::transmute::<usize, GetEntropy>(f)(buf, len) };
    }
    // SAFETY: the caller's buffer.
    unsafe { by_system_call(buf.cast(), len) }
}

/// Fills `buf` from the kernel (`getrandom`, flags 0), as `getentropy` does: 0, or -1 when the
/// kernel refuses (without `errno`, which we cannot reach without the C library; OpenSSL then
/// uses its other sources).
///
/// # Safety
/// `buf` is writable for `len` bytes.
#[cfg_attr(test, allow(dead_code))]
unsafe fn by_system_call(buf: *mut u8, len: usize) -> c_int {
    const EINTR: isize = -4;
    let mut done = 0;
    while done < len {
        // SAFETY: the unfilled tail of the caller's buffer.
        let r = unsafe { getrandom(buf.add(done), len - done) };
        if r == EINTR {
            continue;
        }
        if r <= 0 {
            return -1;
        }
        done += r as usize;
    }
    0
}

/// The raw `getrandom` system call: bytes written, or `-errno`.
///
/// # Safety
/// `buf` is writable for `len` bytes.
#[cfg_attr(test, allow(dead_code))]
unsafe fn getrandom(buf: *mut u8, len: usize) -> isize {
    let r: isize;
    // SAFETY: getrandom(2) writes at most `len` bytes to `buf` (the caller's promise) and
    // touches nothing else; the registers the kernel clobbers are declared.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") 318isize => r, in("rdi") buf, in("rsi") len,
            in("rdx") 0, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("svc 0", in("x8") 278isize, inlateout("x0") buf => r, in("x1") len,
            in("x2") 0, options(nostack));
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_libcrypto_is_known_by_its_file_name() {
        for yes in [
            &b"/usr/lib/x86_64-linux-gnu/libcrypto.so.3"[..],
            b"/opt/venv/lib/python3.11/site-packages/psycopg2_binary.libs/libcrypto-a1b2c3.so.3",
            b"libcrypto.so.1.1",
        ] {
            assert!(super::named_libcrypto(yes));
        }
        for no in [
            &b"/usr/lib/x86_64-linux-gnu/libssl.so.3"[..],
            b"/usr/lib/libcrypto/other.so",
            b"",
            b"/usr/lib/ruby/3.1.0/x86_64-linux-gnu/openssl.so",
        ] {
            assert!(!super::named_libcrypto(no));
        }
    }

    #[test]
    fn the_system_call_fills_the_buffer() {
        let mut a = [0u8; 300];
        // SAFETY: our own buffer, of its length.
        assert_eq!(unsafe { super::by_system_call(a.as_mut_ptr(), a.len()) }, 0);
        assert!(a.iter().any(|&b| b != 0));
        let mut b = [0u8; 16];
        // SAFETY: as above.
        assert_eq!(unsafe { super::next(b.as_mut_ptr().cast(), b.len()) }, 0);
        assert!(b.iter().any(|&x| x != 0));
    }
}
