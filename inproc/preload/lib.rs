//! `libmicrovm-reseed.so`: the agent's helper inside the app's processes (`LD_PRELOAD`).
//!
//! A clone of a snapshot is a copy of every process in it, and OpenSSL keeps its generators in
//! the process: a primary DRBG and two per thread, which reseed on a new pid, after many draws or
//! after minutes, none of which a clone changes. So every clone sends the same TLS key shares
//! until something reseeds them *in the process*. This library does that: its constructor starts
//! one thread that registers with the agent (`$MICROVM_AGENT_INPROC`, a Unix socket) and sleeps
//! in `read`; for every new generation the agent sends 32 fresh bytes for this process, and the
//! thread calls every `RAND_add` the process can reach with them (plus `getrandom`, the pid and
//! the generation), then acknowledges. OpenSSL's `RAND_add` reseeds the primary DRBG at once,
//! with the bytes as additional input; every thread's DRBG follows on its next draw.
//!
//! Where `RAND_add` is found: the global scope (`dlsym(RTLD_DEFAULT)`: a `libcrypto` the program
//! links, or a Node.js that exports its own OpenSSL), and every loaded object's own scope (a
//! `libcrypto` loaded `RTLD_LOCAL` by a Python extension); each distinct copy is called once.
//!
//! Built to load into any dynamically linked process, glibc's or musl's: `no_std`, no `DT_NEEDED`,
//! one weak import (`dlsym`) and everything else looked up through it, so a libc without a symbol
//! is a skipped feature, never a failed start. A static binary never loads it (the kernel runs
//! it without `ld.so`), and a process without OpenSSL in its global scope at start (a shell,
//! `sleep`) does nothing at all. The thread allocates nothing and touches the process's state only in
//! `RAND_add`; a `fork` without `exec` registers the child anew (an at-fork handler).
//!
//! The protocol is `inproc/PROTOCOL.md`; the agent's side is `agent/src/clone/inproc/`.

#![no_std]

mod libc;
mod openssl;
mod wire;

use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, Ordering};

use libc::Libc;

/// The socket this process holds (-1: none). Closed in a forked child, which registers anew.
static FD: AtomicI32 = AtomicI32::new(-1);
/// The agent's socket path, copied from the environment at load (the app may change its own).
static PATH: libc::Global<[u8; 108]> = libc::Global::new([0; 108]);

extern "C" fn start() {
    // SAFETY: constructors run once, before `main` and before any thread of ours exists.
    let Some(c) = (unsafe { libc::resolve() }) else {
        return;
    };
    // SAFETY: `getenv` returns null or a NUL-terminated string; we copy it out at once.
    let value = unsafe { (c.getenv)(c"MICROVM_AGENT_INPROC".as_ptr()) };
    if value.is_null() {
        return;
    }
    // SAFETY: still single-threaded (see above); the path is written once, here.
    let path = unsafe { PATH.get_mut() };
    let mut n = 0;
    // SAFETY: `value` is NUL-terminated; we stop at the NUL or one byte short of the buffer.
    while n < path.len() - 1 && unsafe { *value.add(n) } != 0 {
        path[n] = unsafe { *value.add(n) } as u8;
        n += 1;
    }
    if n == 0 || n == path.len() - 1 {
        return;
    }
    // Only a process that has OpenSSL from the start takes part: the program links it (curl,
    // `openssl`, Debian's Node.js) or carries it (Node.js's own build). A shell, `sleep` or any
    // other of the many short-lived processes an app starts costs nothing: no thread, no
    // connection. (Python loads its OpenSSL later, with `ssl`; its own helper reseeds it.)
    // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name.
    if unsafe { (c.dlsym)(core::ptr::null_mut(), c"RAND_add".as_ptr()) }.is_null() {
        return;
    }
    // SAFETY: the handler is a plain function of this library, which is never unloaded
    // (preloaded objects stay for the process's life).
    unsafe { c.atfork.child(after_fork_in_child) };
    spawn(c);
}

/// In a child of `fork`: the parent's connection is the parent's; this process registers itself.
extern "C" fn after_fork_in_child() {
    let Some(c) = libc::get() else { return };
    let fd = FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the descriptor is ours (inherited from the parent's registration).
        unsafe { (c.close)(fd) };
    }
    spawn(c);
}

/// Starts the thread with every signal blocked: the app's signals are the app's threads' (a
/// process-directed signal goes to any thread that does not block it), and our calls never see
/// `EINTR`.
fn spawn(c: &Libc) {
    let all: libc::SigSet = [!0; 16];
    let mut old: libc::SigSet = [0; 16];
    let mut thread: libc::PthreadT = 0;
    // SAFETY: valid sets and out-pointers; default attributes; a thread function that takes no
    // argument; the thread is detached at once, so nothing waits for it; the caller's mask is
    // restored before we return.
    unsafe {
        if (c.pthread_sigmask)(libc::SIG_BLOCK, &all, &mut old) != 0 {
            return;
        }
        if (c.pthread_create)(&mut thread, core::ptr::null(), serve, core::ptr::null_mut()) == 0 {
            (c.pthread_detach)(thread);
        }
        (c.pthread_sigmask)(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    }
}

/// The thread: register, then reseed and acknowledge each generation until the agent goes.
extern "C" fn serve(_: *mut c_void) -> *mut c_void {
    let Some(c) = libc::get() else {
        return core::ptr::null_mut();
    };
    // SAFETY: written once before any thread started.
    let path = unsafe { PATH.get() };
    let Some(fd) = wire::connect(c, path) else {
        return core::ptr::null_mut();
    };
    FD.store(fd, Ordering::SeqCst);
    // SAFETY: `getpid` has no preconditions.
    let pid = unsafe { (c.getpid)() };
    let mut conn = wire::Conn::new(c, fd);
    if conn.hello(pid).is_ok() {
        while let Ok(Some(gen)) = conn.next_generation() {
            let copies = openssl::reseed_all(c, &gen.seed, pid, gen.number);
            if conn.ack(gen.number, copies).is_err() {
                break;
            }
        }
    }
    // Only our own descriptor: a forked child may already have replaced it (and closed ours).
    if FD
        .compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        // SAFETY: the descriptor is ours and still registered as ours.
        unsafe { (c.close)(fd) };
    }
    core::ptr::null_mut()
}

// The constructor: `.init_array` entries run at load, in glibc and musl alike.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = start;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Nothing here can panic (no indexing out of bounds, no unwrap); should it, the thread must
    // not unwind into C. `abort` is the one safe way out.
    if let Some(c) = libc::get() {
        // SAFETY: `abort` has no preconditions.
        unsafe { (c.abort)() }
    }
    loop {}
}
