//! `libmicrovm-reseed.so`: the agent's helper inside the app's processes (`LD_PRELOAD`).
//!
//! A clone of a snapshot is a copy of every process in it, and OpenSSL keeps its generators in
//! the process: a primary DRBG and two per thread, which reseed on a new pid, after many draws or
//! after minutes, none of which a clone changes. So every clone sends the same TLS key shares
//! until something reseeds them *in the process*. This library does that: its constructor starts
//! one thread that registers with the agent (`$MICROVM_AGENT_INPROC`, a Unix socket) and sleeps
//! in `recv`; for every new generation the agent sends 32 fresh bytes for this process, and the
//! thread calls every `RAND_add` the process can reach with them (plus `getrandom`, the pid and
//! the generation), then acknowledges. OpenSSL's `RAND_add` reseeds the primary DRBG at once,
//! with the bytes as additional input; every thread's DRBG follows on its next draw.
//!
//! Where `RAND_add` is found: the global scope (`dlsym(RTLD_DEFAULT)`: a `libcrypto` the program
//! links, or a Node.js that exports its own OpenSSL), and every loaded object's own scope (a
//! `libcrypto` loaded `RTLD_LOCAL` by a Python extension); each distinct copy is called once.
//!
//! It runs in processes whose authors never asked for it, so it must be as harmless as its
//! absence (`inproc/PROTOCOL.md`, "What the helpers guarantee"):
//! - **descriptors** (`owned`): it only ever receives on, sends on or closes its own socket,
//!   checked by identity before each use; a number the app reused is left alone;
//! - **exit and fork** (`guard`): no reseed runs while the process exits or forks, and no reseed
//!   starts once it has begun to exit; a forked child closes the parent's connection (if it is
//!   still the parent's) without writing to it, and registers as itself;
//! - **sandboxes** (`seccomp`): a thread under a seccomp filter gets no helper (no thread, no
//!   socket): a filter that kills `socket` or `clone` never meets our calls;
//! - **start**: a process without OpenSSL in its global scope at start (a shell, `sleep`) does
//!   nothing at all until OpenSSL, loaded later, first seeds itself (`late`: then it starts as
//!   if it had been there); a static binary never loads it; a libc without a function it needs
//!   is a helper that does nothing, never a failed start.
//!
//! In a `java` launcher it also brings in the Java agent and speaks for it (`java.rs` adds this
//! library to the launcher's `JDK_JAVA_OPTIONS` as a JVM TI agent; `jvm.rs` is that agent).
//!
//! Built to load into any dynamically linked process, glibc's or musl's: `no_std`, no `DT_NEEDED`,
//! one weak import (`dlsym`) and everything else looked up through it (`libc`). The thread
//! allocates nothing and touches the process's state only in `RAND_add`.
//!
//! The protocol is `inproc/PROTOCOL.md`; the agent's side is `agent/src/clone/inproc/`.
//! `agent/build.rs` builds this crate as a `cdylib` for the agent's target and embeds it; the
//! workspace builds it as an rlib for clippy and the unit tests (with std).

#![cfg_attr(not(test), no_std)]

mod guard;
mod java;
mod jni;
mod jvm;
mod late;
mod libc;
mod openssl;
mod owned;
mod seccomp;
#[cfg(test)]
mod testdata;
mod wire;

use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

use guard::Guard;
use libc::{ForkHandlers, Libc};
use owned::Registered;

/// Our connection, as the process knows it: a forked child closes it if it is still ours.
static CONN: Registered = Registered::new();
/// Keeps our reseeds out of the process's exit and fork.
static GUARD: Guard = Guard::new();
/// How many copies of OpenSSL our exit handler was last registered after (see `reseed`).
static EXIT_HANDLER_COVERS: AtomicU32 = AtomicU32::new(0);
/// The agent's socket path, copied from the environment at load (the app may change its own).
static PATH: libc::Global<[u8; 108]> = libc::Global::new([0; 108]);

#[cfg_attr(test, allow(dead_code))]
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
    // SAFETY: `getenv`'s value is NUL-terminated; the buffer is not empty.
    let Some(n) = (unsafe { libc::copy_cstr(value, path) }) else {
        return;
    };
    // A `java` launcher: the Java agent goes into its JDK_JAVA_OPTIONS (or comes out of it).
    java::arrange(c, &path[..n]);
    // A process that has OpenSSL from the start takes part now: the program links it (curl,
    // `openssl`, Debian's Node.js) or carries it (Node.js's own build). Any other (a shell,
    // `sleep`, Ruby or Python before they load their OpenSSL) costs nothing: no thread, no
    // connection, no system call; it starts when OpenSSL first seeds itself, if ever (`late`).
    // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name.
    if unsafe { (c.dlsym)(core::ptr::null_mut(), c"RAND_add".as_ptr()) }.is_null() {
        late::prepare();
        late::ARMED.store(true, core::sync::atomic::Ordering::Release);
        return;
    }
    take_part(c, true);
}

/// In a process whose OpenSSL was loaded after start, on its first seeding (`late`): inside the
/// app's call to `getentropy`, on whichever thread made it, with `errno` kept as that call left it.
#[cfg_attr(test, allow(dead_code))] // `late::getentropy` is not built into the unit tests
fn start_late() {
    let Some(c) = libc::get() else { return };
    // SAFETY: the calling thread's errno location, valid for the thread's life.
    let saved = c.errno_location.map(|f| unsafe { *f() });
    if !GUARD.leaving() {
        // SAFETY: `syscall(SYS_gettid)` has no preconditions.
        let tid = unsafe { (c.syscall)(SYS_GETTID) };
        // SAFETY: `getpid` has no preconditions.
        let main_thread = tid == unsafe { (c.getpid)() } as isize;
        take_part(c, main_thread);
    }
    if let (Some(f), Some(e)) = (c.errno_location, saved) {
        // SAFETY: as above.
        unsafe { *f() = e };
    }
}

#[cfg(target_arch = "x86_64")]
#[cfg_attr(test, allow(dead_code))]
const SYS_GETTID: isize = 186;
#[cfg(target_arch = "aarch64")]
#[cfg_attr(test, allow(dead_code))]
const SYS_GETTID: isize = 178;

/// Checks the sandbox, registers the fork handlers and starts the thread. `main_thread`: whether
/// the calling thread is the process's first (its exit is `exit`'s; another thread's destructor
/// would run when that thread ends, and stop our reseeds for good).
fn take_part(c: &Libc, main_thread: bool) {
    // Before any call a sandbox might forbid, our own `clone` of a thread included.
    if seccomp::filtered(c) {
        return;
    }
    let handlers = ForkHandlers {
        prepare: before_fork,
        parent: after_fork_in_parent,
        child: after_fork_in_child,
    };
    // SAFETY: the handlers are plain functions of this library, which is never unloaded
    // (preloaded objects stay for the process's life).
    if !unsafe { c.atfork.register(&handlers) } {
        // Without fork handlers a child could inherit a reseed in progress: stay out.
        return;
    }
    if main_thread {
        watch_this_threads_exit(c);
    }
    spawn(c, serve);
}

/// glibc runs the exiting thread's destructors before any `atexit` handler, so this one runs
/// before OpenSSL's cleanup whenever this thread (the main thread, or the forking one in a
/// child) calls `exit` or returns from `main`. musl has no such list; there the `atexit`
/// handler registered after our first reseed (see `reseed`) and OpenSSL's own "stopped" state
/// (`openssl`) stand in.
fn watch_this_threads_exit(c: &Libc) {
    if let Some(register) = c.cxa_thread_atexit {
        // SAFETY: a function of this library (never unloaded) and no argument; the DSO symbol is
        // any address inside this library.
        unsafe {
            register(
                on_exit,
                core::ptr::null_mut(),
                &GUARD as *const Guard as *mut c_void,
            )
        };
    }
}

extern "C" fn on_exit(_: *mut c_void) {
    if let Some(c) = libc::get() {
        GUARD.exit(&|| pause(c));
    }
}

extern "C" fn before_fork() {
    if let Some(c) = libc::get() {
        GUARD.fork_prepare(&|| pause(c));
    }
}

extern "C" fn after_fork_in_parent() {
    GUARD.fork_parent();
}

/// In a child of `fork`: the parent's connection is the parent's (closed here, if the number is
/// still that socket, without a byte written to it); this process registers itself.
extern "C" fn after_fork_in_child() {
    GUARD.fork_child();
    let Some(c) = libc::get() else { return };
    if let Some((fd, id)) = CONN.take() {
        owned::close_if_ours(c, fd, id);
    }
    if GUARD.leaving() || seccomp::filtered(c) {
        return;
    }
    watch_this_threads_exit(c);
    spawn(c, serve);
}

/// A tenth of a millisecond, for the app's bounded waits and our own.
fn pause(c: &Libc) {
    let t = libc::Timespec {
        sec: 0,
        nsec: 100_000,
    };
    // SAFETY: a valid timespec; no remainder wanted.
    unsafe { (c.nanosleep)(&t, core::ptr::null_mut()) };
}

/// Whether the constructor found the agent's socket in the environment (the helpers are on).
fn arranged() -> bool {
    // SAFETY: written once, in the constructor, which has returned by the time anything asks.
    let path = unsafe { PATH.get() };
    path[0] != 0
}

/// Starts a thread of ours with every signal blocked: the app's signals are the app's threads'
/// (a process-directed signal goes to any thread that does not block it), and our calls never
/// see `EINTR`.
fn spawn(c: &Libc, run: extern "C" fn(*mut c_void) -> *mut c_void) {
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
        if (c.pthread_create)(&mut thread, core::ptr::null(), run, core::ptr::null_mut()) == 0 {
            (c.pthread_detach)(thread);
        }
        (c.pthread_sigmask)(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    }
}

/// The thread: register, then reseed and acknowledge each generation until the agent goes, the
/// process begins to exit, or the descriptor stops being ours.
extern "C" fn serve(_: *mut c_void) -> *mut c_void {
    let Some(c) = libc::get() else {
        return core::ptr::null_mut();
    };
    // SAFETY: written once before any thread started.
    let path = unsafe { PATH.get() };
    let Some((fd, id)) = wire::connect(c, path) else {
        return core::ptr::null_mut();
    };
    CONN.set(fd, id);
    // SAFETY: `getpid` has no preconditions.
    let pid = unsafe { (c.getpid)() };
    let mut conn = wire::Conn::new(c, fd, id);
    let mut end = conn.hello(b"native", pid);
    let mut entered_openssl = false;
    while end.is_ok() {
        end = match conn.next_generation() {
            Ok(gen) => match reseed(c, &gen, pid) {
                Some(copies) => {
                    entered_openssl = true;
                    conn.ack(gen.number, copies)
                }
                None => Err(wire::Gone::Closed), // the process is exiting
            },
            Err(e) => Err(e),
        };
    }
    // Our own descriptor only, and only while it is still our socket: a forked child may have
    // replaced the record, and the app may have closed the number and reused it.
    if CONN.clear(fd) && end != Err(wire::Gone::Taken) {
        owned::close_if_ours(c, fd, id);
    }
    if entered_openssl {
        stay(c);
    }
    core::ptr::null_mut()
}

/// Where a thread that has called into OpenSSL ends: never returning. A returning thread runs
/// its thread-specific destructors, and OpenSSL registers one that frees the thread's own
/// generators: when the process is exiting (the usual reason we stop), that ran beside the main
/// thread's `OPENSSL_cleanup` and crashed the process on its way out (measured: SIGSEGV, thread
/// in `__nptl_deallocate_tsd` -> libcrypto, main thread in `OPENSSL_cleanup` -> `OBJ_NAME_cleanup`;
/// about one `openssl rand` in 10,000 on a loaded machine). A thread that never returns has
/// nothing to race: `exit` ends it with the process, no destructor run. Should the process live
/// on (the agent gone, our descriptor taken), the cost is one thread asleep, all signals blocked.
fn stay(c: &Libc) -> ! {
    let t = libc::Timespec {
        sec: 1 << 40,
        nsec: 0,
    };
    loop {
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { (c.nanosleep)(&t, core::ptr::null_mut()) };
    }
}

/// One reseed under the guard; `None` once the process has begun to exit.
fn reseed(c: &Libc, gen: &wire::Generation, pid: core::ffi::c_int) -> Option<u32> {
    GUARD.reseed(&|| pause(c), || {
        let (found, reseeded) = openssl::reseed_all(c, &gen.seed, pid, gen.number);
        // OpenSSL registers its cleanup with `atexit` when it first initialises, which may have
        // been inside the `RAND_add` just made (or when a new copy was loaded). `atexit`
        // handlers run last-registered-first, so ours, registered after, runs before any
        // OpenSSL cleanup registered so far, from whichever thread calls `exit`. At most once
        // per copy found: the list stays short.
        if found > EXIT_HANDLER_COVERS.load(Ordering::Relaxed) {
            // SAFETY: a function of this library (never unloaded), no argument, no DSO.
            let ok =
                unsafe { (c.cxa_atexit)(on_exit, core::ptr::null_mut(), core::ptr::null_mut()) };
            if ok == 0 {
                EXIT_HANDLER_COVERS.store(found, Ordering::Relaxed);
            }
        }
        reseeded
    })
}

// The constructor: `.init_array` entries run at load, in glibc and musl alike.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = start;

#[cfg(not(test))]
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
