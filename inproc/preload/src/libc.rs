//! The C library, found at run time: one weak import (`dlsym`) and every other function looked
//! up through it, so that one binary loads into glibc and musl processes alike and a missing
//! function disables a feature instead of failing the process's start.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

pub type PthreadT = usize;
/// `sigset_t`: 1024 bits in glibc and musl.
pub type SigSet = [u64; 16];
pub const SIG_BLOCK: c_int = 0;
pub const SIG_SETMASK: c_int = 2;
/// `open` flags for a file we read and close at once (the same in glibc and musl).
pub const O_RDONLY_CLOEXEC: c_int = 0o2000000;
type Handler = Option<extern "C" fn()>;

/// The functions this library calls. Required ones are plain pointers; `None` means "not here".
pub struct Libc {
    pub dlsym: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void,
    pub dlopen: unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void,
    pub dlclose: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub dl_iterate_phdr: unsafe extern "C" fn(
        extern "C" fn(*mut DlPhdrInfo, usize, *mut c_void) -> c_int,
        *mut c_void,
    ) -> c_int,
    pub getenv: unsafe extern "C" fn(*const c_char) -> *const c_char,
    pub pthread_create: unsafe extern "C" fn(
        *mut PthreadT,
        *const c_void,
        extern "C" fn(*mut c_void) -> *mut c_void,
        *mut c_void,
    ) -> c_int,
    pub pthread_detach: unsafe extern "C" fn(PthreadT) -> c_int,
    pub pthread_sigmask: unsafe extern "C" fn(c_int, *const SigSet, *mut SigSet) -> c_int,
    pub socket: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int,
    pub connect: unsafe extern "C" fn(c_int, *const c_void, u32) -> c_int,
    /// `recv`/`send`, not `read`/`write`: on a descriptor that is no longer a socket they fail
    /// (`ENOTSOCK`) instead of reading or writing whatever the app put there.
    pub recv: unsafe extern "C" fn(c_int, *mut u8, usize, c_int) -> isize,
    pub send: unsafe extern "C" fn(c_int, *const u8, usize, c_int) -> isize,
    pub open: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int,
    pub read: unsafe extern "C" fn(c_int, *mut u8, usize) -> isize,
    pub close: unsafe extern "C" fn(c_int) -> c_int,
    /// For `fstat` by number: glibc before 2.33 exports no `fstat` function.
    pub syscall: unsafe extern "C" fn(isize, ...) -> isize,
    pub nanosleep: unsafe extern "C" fn(*const Timespec, *mut Timespec) -> c_int,
    pub getpid: unsafe extern "C" fn() -> c_int,
    #[cfg_attr(test, allow(dead_code))] // the panic handler's, which tests do not build
    pub abort: unsafe extern "C" fn() -> !,
    /// Registers a function to run at `exit` (glibc and musl both export it; `atexit` itself is
    /// a static stub in glibc).
    pub cxa_atexit:
        unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, *mut c_void) -> c_int,
    /// glibc's: a destructor of the calling thread, which `exit` runs before any `atexit`
    /// handler when that thread calls it. musl has none.
    pub cxa_thread_atexit:
        Option<unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, *mut c_void) -> c_int>,
    /// glibc < 2.25 and old musl have none: the agent's bytes and the pid still differ per clone.
    pub getrandom: Option<unsafe extern "C" fn(*mut u8, usize, u32) -> isize>,
    /// The calling thread's `errno` (glibc and musl): kept across a late start, which runs
    /// inside the app's call to `getentropy`.
    #[cfg_attr(test, allow(dead_code))]
    pub errno_location: Option<unsafe extern "C" fn() -> *mut c_int>,
    /// For the Java agent's `JDK_JAVA_OPTIONS` (`java`), in the constructor only: the program's
    /// name as `execve` was given it, without a system call.
    pub getauxval: Option<unsafe extern "C" fn(core::ffi::c_ulong) -> core::ffi::c_ulong>,
    pub readlink: Option<unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> isize>,
    pub setenv: Option<unsafe extern "C" fn(*const c_char, *const c_char, c_int) -> c_int>,
    pub unsetenv: Option<unsafe extern "C" fn(*const c_char) -> c_int>,
    /// How to register at-fork handlers, if the process's libc says.
    pub atfork: Atfork,
}

/// `struct timespec` on 64-bit Linux.
#[repr(C)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

/// The handlers run around every `fork`: before it in the forking thread, then after it in the
/// parent and in the child.
pub struct ForkHandlers {
    pub prepare: extern "C" fn(),
    pub parent: extern "C" fn(),
    pub child: extern "C" fn(),
}

pub enum Atfork {
    /// glibc's `__register_atfork` (its `pthread_atfork` is only in the static `libc_nonshared.a`).
    Glibc(unsafe extern "C" fn(Handler, Handler, Handler, *mut c_void) -> c_int),
    /// musl's (and POSIX's) `pthread_atfork`.
    Posix(unsafe extern "C" fn(Handler, Handler, Handler) -> c_int),
    None,
}

impl Atfork {
    /// Registers the handlers; false when this libc offers no way to.
    ///
    /// # Safety
    /// The handlers must stay valid for the process's life.
    pub unsafe fn register(&self, h: &ForkHandlers) -> bool {
        let (p, a, c) = (Some(h.prepare), Some(h.parent), Some(h.child));
        // SAFETY: `f` is this libc's own registration function, resolved by name with its
        // documented signature; the handlers outlive the process (the caller's promise).
        unsafe {
            match self {
                Atfork::Glibc(f) => f(p, a, c, core::ptr::null_mut()) == 0,
                Atfork::Posix(f) => f(p, a, c) == 0,
                Atfork::None => false,
            }
        }
    }
}

/// The leading fields of `struct dl_phdr_info`, the same in glibc and musl.
#[repr(C)]
pub struct DlPhdrInfo {
    pub addr: usize,
    pub name: *const c_char,
    pub phdr: *const c_void,
    pub phnum: u16,
    /// How many objects were ever loaded (glibc and musl alike, when the callback's `size`
    /// covers it: `ADDS_END`).
    pub adds: u64,
}

/// The end of `DlPhdrInfo::adds`: the callback's `size` must reach it for the field to be there.
pub const ADDS_END: usize = 40;

/// A value written once in the constructor (single-threaded), read by our threads after.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: written only before any thread of ours exists (the constructor); read-only after.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }
    /// # Safety
    /// Only while no other thread can read it (the constructor).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: no other thread reads it meanwhile (the caller's promise).
        unsafe { &mut *self.0.get() }
    }
    /// # Safety
    /// Only after the last write (the constructor has returned or is the caller).
    pub unsafe fn get(&self) -> &T {
        // SAFETY: nothing writes it any more (the caller's promise).
        unsafe { &*self.0.get() }
    }
}

static LIBC: Global<Option<Libc>> = Global::new(None);
static READY: AtomicBool = AtomicBool::new(false);

/// The resolved functions, once the constructor has found them all.
pub fn get() -> Option<&'static Libc> {
    if !READY.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: READY is set after the one write.
    unsafe { LIBC.get().as_ref() }
}

// The weak import: null when the process has no `dlsym` in its global scope (glibc before 2.34
// keeps it in libdl, which a program may not load).
core::arch::global_asm!(".weak dlsym");

// The precompiled `core` refers to `rust_eh_personality` (its unwind tables do) though nothing
// unwinds here (panic = abort). Defined here, hidden: a strong import would kill every process
// that has none ("symbol lookup error": we measured it), and an exported one would interpose
// on a Rust program's own.
#[cfg(all(not(test), target_arch = "x86_64"))]
core::arch::global_asm!(
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality, @function",
    "rust_eh_personality:",
    "ud2"
);
#[cfg(all(not(test), target_arch = "aarch64"))]
core::arch::global_asm!(
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality, %function",
    "rust_eh_personality:",
    "brk #1"
);
extern "C" {
    fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
}

/// `dlsym`'s address through the GOT: zero when the weak import did not resolve. (Taking the
/// address of a Rust `fn` would let the compiler assume it is not null.)
fn dlsym_address() -> usize {
    let a: usize;
    // SAFETY: reads one GOT entry of this library, which the dynamic linker has filled.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("mov {0}, qword ptr [rip + {1}@GOTPCREL]", out(reg) a, sym dlsym,
            options(nostack, readonly, preserves_flags));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("adrp {0}, :got:{1}", "ldr {0}, [{0}, :got_lo12:{1}]", out(reg) a,
            sym dlsym, options(nostack, readonly, preserves_flags));
    }
    a
}

const RTLD_DEFAULT: *mut c_void = core::ptr::null_mut();
/// The same value in glibc and musl.
const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;

/// The next definition of `name` after this library's own (the C library's, for a function we
/// define too), or null; usable before and without the constructor's lookup.
pub fn next(name: &core::ffi::CStr) -> *mut c_void {
    let addr = dlsym_address();
    if addr == 0 {
        return core::ptr::null_mut();
    }
    // SAFETY: a non-zero GOT entry for `dlsym` is `dlsym`, whose C signature this is.
    let dlsym_fn: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void =
        unsafe { core::mem::transmute(addr) };
    // SAFETY: `dlsym` with RTLD_NEXT and a NUL-terminated name.
    unsafe { dlsym_fn(RTLD_NEXT, name.as_ptr()) }
}

/// Copies the C string at `src` into `dst` (left NUL-terminated); its length, or `None` when it
/// is empty or does not fit, and then `dst` is left empty: a path cut short would name another
/// file (the first byte is what `arranged` asks).
///
/// # Safety
/// `src` is a NUL-terminated string; `dst` is not empty.
pub unsafe fn copy_cstr(src: *const c_char, dst: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    // SAFETY: the caller's promise: we stop at the NUL or one byte short of `dst`.
    while n < dst.len() - 1 && unsafe { *src.add(n) } != 0 {
        // SAFETY: as above: `n` is before the NUL.
        dst[n] = unsafe { *src.add(n) } as u8;
        n += 1;
    }
    dst[n] = 0;
    // SAFETY: as above; `n` is at most at the NUL.
    if n == 0 || unsafe { *src.add(n) } != 0 {
        dst[0] = 0;
        return None;
    }
    Some(n)
}

/// Looks every function up. Returns `None` (and this library does nothing) when a required one
/// is missing.
///
/// # Safety
/// Call once, from the constructor, before any thread of ours exists.
// Each function's type is its field's: the annotation would only repeat it.
#[allow(clippy::missing_transmute_annotations)]
pub unsafe fn resolve() -> Option<&'static Libc> {
    let addr = dlsym_address();
    if addr == 0 {
        return None;
    }
    // SAFETY: a non-zero GOT entry for `dlsym` is `dlsym`, whose C signature this is.
    let dlsym_fn: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void =
        unsafe { core::mem::transmute(addr) };
    let find = |name: &core::ffi::CStr| -> *mut c_void {
        // SAFETY: `dlsym` with the global scope and a NUL-terminated name.
        unsafe { dlsym_fn(RTLD_DEFAULT, name.as_ptr()) }
    };
    macro_rules! need {
        ($name:literal) => {{
            let p = find($name);
            if p.is_null() {
                return None;
            }
            // SAFETY: the libc's own function of that name, typed as the field it fills (each
            // field's type is that function's C signature).
            unsafe { core::mem::transmute(p) }
        }};
    }
    macro_rules! maybe {
        ($name:literal) => {{
            let p = find($name);
            if p.is_null() {
                None
            } else {
                // SAFETY: as in `need!`.
                Some(unsafe { core::mem::transmute(p) })
            }
        }};
    }
    let atfork = match (maybe!(c"__register_atfork"), maybe!(c"pthread_atfork")) {
        (Some(f), _) => Atfork::Glibc(f),
        (None, Some(f)) => Atfork::Posix(f),
        (None, None) => Atfork::None,
    };
    let libc = Libc {
        dlsym: dlsym_fn,
        dlopen: need!(c"dlopen"),
        dlclose: need!(c"dlclose"),
        dl_iterate_phdr: need!(c"dl_iterate_phdr"),
        getenv: need!(c"getenv"),
        pthread_create: need!(c"pthread_create"),
        pthread_detach: need!(c"pthread_detach"),
        pthread_sigmask: need!(c"pthread_sigmask"),
        socket: need!(c"socket"),
        connect: need!(c"connect"),
        recv: need!(c"recv"),
        send: need!(c"send"),
        open: need!(c"open"),
        read: need!(c"read"),
        close: need!(c"close"),
        syscall: need!(c"syscall"),
        nanosleep: need!(c"nanosleep"),
        getpid: need!(c"getpid"),
        abort: need!(c"abort"),
        cxa_atexit: need!(c"__cxa_atexit"),
        cxa_thread_atexit: maybe!(c"__cxa_thread_atexit_impl"),
        getrandom: maybe!(c"getrandom"),
        errno_location: maybe!(c"__errno_location"),
        getauxval: maybe!(c"getauxval"),
        readlink: maybe!(c"readlink"),
        setenv: maybe!(c"setenv"),
        unsetenv: maybe!(c"unsetenv"),
        atfork,
    };
    // SAFETY: the one write, before any thread of ours exists (the caller's promise).
    unsafe { *LIBC.get_mut() = Some(libc) };
    READY.store(true, Ordering::Release);
    // SAFETY: after the one write.
    unsafe { LIBC.get().as_ref() }
}

/// The resolved functions in a unit test (resolved once for the whole test binary).
#[cfg(test)]
pub fn for_tests() -> &'static Libc {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: `Once` makes this the only call, before any reader.
    ONCE.call_once(|| {
        // SAFETY: `Once` makes this the only call, before any reader.
        unsafe { resolve() };
    });
    get().expect("the test binary's libc has every function")
}

#[cfg(test)]
mod tests {
    use super::copy_cstr;

    #[test]
    fn a_c_string_is_copied_whole_or_not_at_all() {
        let mut buf = [0xffu8; 8];
        // SAFETY: NUL-terminated literals; a non-empty buffer.
        unsafe {
            assert_eq!(copy_cstr(c"/run/s".as_ptr(), &mut buf), Some(6));
            assert_eq!(&buf[..7], b"/run/s\0");
            // Seven bytes and the NUL fill it exactly.
            assert_eq!(copy_cstr(c"/run/ab".as_ptr(), &mut buf), Some(7));
            assert_eq!(&buf, b"/run/ab\0");
            // One more would be cut short: nothing is left, so no caller takes it for a path.
            assert_eq!(copy_cstr(c"/run/abc".as_ptr(), &mut buf), None);
            assert_eq!(buf[0], 0);
            assert_eq!(copy_cstr(c"".as_ptr(), &mut buf), None);
            assert_eq!(buf[0], 0);
        }
    }
}
