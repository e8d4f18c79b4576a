//! The Java agent's way into a JVM, after the JVM has started, and its voice: this library is
//! also a JVM TI agent. `java.rs` names it in the `java` launcher's `JDK_JAVA_OPTIONS` as
//! `-agentpath:<this library>=<the Java agent's jar>`; the JVM, already holding it (preloaded),
//! calls `Agent_OnLoad`, which only asks for the event that the JVM has started (`VMInit`). From
//! that event a thread of ours, beside the app's `main`, attaches to the JVM as the daemon thread
//! `microvm-reseed`, puts the jar on the app's class path and loads it as the launcher loads an
//! executable jar's agent (`sun.instrument.InstrumentationImpl.loadAgent`, the
//! `Launcher-Agent-Class` route: the jar's `agentmain` keeps its `Instrumentation`). It then
//! asks the agent's `Start.ready()` (which prepares and warms) and, when it says yes, speaks the
//! protocol for the JVM as kind `java` on a connection of its own (`wire`, checked as ours before
//! each use like the OpenSSL one): each generation goes to `Start.generation`, and the words it
//! returns are the acknowledgement. The JVM has no socket and runs no NIO for us, and the Java
//! code a generation runs is the code the warm-up compiled (`inproc/java/README.md`).
//!
//! Why not `-javaagent`: on JDK 17 any `-javaagent` costs a JVM about 28 ms of start (measured:
//! 33 ms for a hello world, 61 ms with an empty agent), all of it the JVM's own: the option adds
//! `java.instrument` to the root modules, which turns off the archived module graph of its
//! class-data sharing. Loaded this way a JVM starts about 2 ms later than without it, and
//! `Launcher-Agent-Class` is the route the JDK itself uses at start, so no "agent loaded
//! dynamically" warning (JDK 21 and later) and no attach mechanism (a `-Xrs` or
//! `-XX:+DisableAttachMechanism` JVM is reached the same way).
//!
//! Harmless: `Agent_OnLoad` always answers success (an error would stop the JVM) and does
//! nothing without `MICROVM_AGENT_INPROC`; every JNI call's failure or exception ends the
//! attempt with the exception cleared; a JVM under a seccomp filter gets no thread.
//!
//! The JNI and JVM TI calls go through `jni.rs`.

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::jni::*;
use crate::libc::{self, Global, Libc};
use crate::wire;

static VM: AtomicPtr<*const *const c_void> = AtomicPtr::new(core::ptr::null_mut());
static TI: AtomicPtr<*const *const c_void> = AtomicPtr::new(core::ptr::null_mut());
/// The jar's path, from the agent's options (written in `Agent_OnLoad`, before our thread exists).
static JAR: Global<[u8; 4096]> = Global::new([0; 4096]);

/// Called by the JVM when `-agentpath` names this library, early in its creation, on the thread
/// that creates it. Always success: a JVM whose agent fails to load does not start.
///
/// # Safety
/// Called by the JVM with its `JavaVM` and the option string (or null).
#[cfg(not(test))]
#[no_mangle]
pub unsafe extern "C" fn Agent_OnLoad(vm: Iface, options: *const c_char, _: *mut c_void) -> i32 {
    // SAFETY: the JVM's arguments, as the function's contract says.
    unsafe { on_load(vm, options) };
    JNI_OK
}

/// # Safety
/// As `Agent_OnLoad`.
#[cfg_attr(test, allow(dead_code))]
unsafe fn on_load(vm: Iface, options: *const c_char) {
    // Once per JVM: a second `-agentpath` naming us (an image's `JAVA_TOOL_OPTIONS` copied from a
    // running JVM) would start a second thread sharing the first one's JVM TI environment.
    static ONCE: AtomicBool = AtomicBool::new(false);
    if ONCE.swap(true, Ordering::AcqRel) {
        return;
    }
    if libc::get().is_none() || !crate::arranged() || options.is_null() {
        return;
    }
    // SAFETY: before any thread of ours exists: nothing reads it meanwhile.
    let jar = unsafe { JAR.get_mut() };
    // SAFETY: the JVM's options string is NUL-terminated; the buffer is not empty.
    if unsafe { libc::copy_cstr(options, jar) }.is_none() {
        return;
    }
    let mut ti: Iface = core::ptr::null_mut();
    // SAFETY: the JVM's `JavaVM`; `GetEnv(vm, void**, jint)`.
    let got = unsafe {
        call!(vm, VM_GET_ENV, fn(*mut Iface, i32) -> i32)
            .map(|get_env| get_env(vm, &mut ti, JVMTI_VERSION_1_2))
    };
    if got != Some(JNI_OK) || ti.is_null() {
        return;
    }
    VM.store(vm, Ordering::Release);
    TI.store(ti, Ordering::Release);
    // `jvmtiEventCallbacks` begins with `VMInit`; a shorter struct is read as that many
    // callbacks, the rest none (JVM TI's rule for older agents).
    static CALLBACKS: [extern "C" fn(Iface, Iface, *mut c_void); 1] = [vm_init];
    // SAFETY: the JVM TI environment just obtained; `SetEventCallbacks(env, callbacks*, jint)`
    // and the variadic `SetEventNotificationMode(env, mode, event, thread, ...)`.
    unsafe {
        let set = call!(ti, TI_SET_EVENT_CALLBACKS, fn(*const c_void, i32) -> c_int);
        let size = core::mem::size_of_val(&CALLBACKS) as i32;
        if set.map(|f| f(ti, CALLBACKS.as_ptr().cast(), size)) != Some(0) {
            return;
        }
        if let Some(f) = function(ti, TI_SET_EVENT_NOTIFICATION_MODE) {
            let f = core::mem::transmute::<
                *const c_void,
                unsafe extern "C" fn(Iface, c_int, c_int, *mut c_void, ...) -> c_int,
            >(f);
            f(ti, JVMTI_ENABLE, JVMTI_EVENT_VM_INIT, core::ptr::null_mut());
        }
    }
}

/// The JVM has started (on the thread that started it, before the app's `main`): one thread of
/// ours, and back at once.
extern "C" fn vm_init(_: Iface, _: Iface, _: *mut c_void) {
    let Some(c) = libc::get() else { return };
    if crate::seccomp::filtered(c) {
        return;
    }
    crate::spawn(c, load);
}

#[repr(C)]
struct AttachArgs {
    version: i32,
    name: *const c_char,
    group: *mut c_void,
}

/// Our thread: attach, load the Java agent, have it prepare, then speak for it to the agent
/// until the agent goes; detach, end.
extern "C" fn load(_: *mut c_void) -> *mut c_void {
    let Some(c) = libc::get() else {
        return core::ptr::null_mut();
    };
    let (vm, ti) = (VM.load(Ordering::Acquire), TI.load(Ordering::Acquire));
    let mut env: Iface = core::ptr::null_mut();
    let args = AttachArgs {
        version: JNI_VERSION_1_2,
        name: c"microvm-reseed".as_ptr(),
        group: core::ptr::null_mut(),
    };
    // SAFETY: the JVM's `JavaVM` (kept from `Agent_OnLoad`, valid for the process's life);
    // `AttachCurrentThreadAsDaemon(vm, void**, void*)`. A daemon: the JVM's exit never waits
    // for us, and fails our later calls (we stop at the first failure).
    let attached = unsafe {
        call!(
            vm,
            VM_ATTACH_CURRENT_THREAD_AS_DAEMON,
            fn(*mut Iface, *const AttachArgs) -> i32
        )
        .map(|f| f(vm, &mut env, &args))
    };
    if attached != Some(JNI_OK) || env.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: written before this thread was started, never after.
    let jar = unsafe { JAR.get() };
    // SAFETY: `env` is this thread's, attached above; `ti` the environment from `Agent_OnLoad`.
    unsafe {
        let started = start_agent(env, ti, jar.as_ptr().cast()).is_some();
        // Our environment asked for nothing but one event, long past: given back.
        if let Some(dispose) = call!(ti, TI_DISPOSE_ENVIRONMENT, fn() -> c_int) {
            dispose(ti);
        }
        if started {
            converse(c, env);
        }
        if let Some(detach) = call!(vm, VM_DETACH_CURRENT_THREAD, fn() -> i32) {
            detach(vm);
        }
    }
    core::ptr::null_mut()
}

/// The Java agent's entry points (`inproc/java`, `Start`).
const START: &core::ffi::CStr = c"dev/microvm/reseed/Start";

/// `Start.ready()`; then, when it says the JVM takes part, the agent's protocol as kind `java`:
/// each generation handed to `Start.generation` and answered with the words it returns. The
/// connection is checked as ours before every use, as the OpenSSL helper's (`wire`, `owned`).
///
/// # Safety
/// `env` attached to this thread.
unsafe fn converse(c: &Libc, env: Iface) -> Option<()> {
    // SAFETY: the caller's promise; each function's signature from jni.h.
    unsafe {
        let (cls, [ready, generation]) = static_methods(
            env,
            START,
            [(c"ready", c"()Z"), (c"generation", c"(J[B[B)[B")],
        )?;
        let yes = call!(
            env,
            JNI_CALL_STATIC_BOOLEAN_METHOD_A,
            fn(*mut c_void, *mut c_void, *const u64) -> u8
        )?(env, cls, ready, core::ptr::null());
        if cleared(env) || yes == 0 {
            return None;
        }
        let path = crate::PATH.get();
        let (fd, owned_id) = wire::connect(c, path)?;
        let pid = (c.getpid)();
        let mut conn = wire::Conn::new(c, fd, owned_id);
        let mut end = conn.hello(b"java", pid);
        while end.is_ok() {
            end = match conn.next_generation() {
                Ok(mut gen) => {
                    let mut words = [0u8; 160];
                    let n = reseed(c, env, cls, generation, &gen, &mut words);
                    wipe(&mut gen.seed);
                    conn.ack_words(gen.number, &words[..n])
                }
                Err(e) => Err(e),
            };
        }
        // Our own descriptor only, and only while it is still our socket.
        if end != Err(wire::Gone::Taken) {
            crate::owned::close_if_ours(c, fd, owned_id);
        }
        Some(())
    }
}

/// `Start.generation(n, seed, fresh)` in a local frame of its own (this thread never returns to
/// Java, so its references are freed here); the words it returned, in `out`, or 0 bytes.
///
/// # Safety
/// `env` attached to this thread; `cls` and `method` the class and its `generation`.
unsafe fn reseed(
    c: &Libc,
    env: Iface,
    cls: *mut c_void,
    method: *mut c_void,
    gen: &wire::Generation,
    out: &mut [u8; 160],
) -> usize {
    let mut fresh = [0u8; 32];
    if let Some(getrandom) = c.getrandom {
        // SAFETY: a buffer of 32 bytes; GRND_NONBLOCK: never waits (zeros if it cannot).
        unsafe { getrandom(fresh.as_mut_ptr(), 32, 1) };
    }
    // SAFETY: the caller's promises; each function's signature from jni.h.
    let n = unsafe {
        (|| {
            let push = call!(env, JNI_PUSH_LOCAL_FRAME, fn(i32) -> i32)?;
            let pop = call!(env, JNI_POP_LOCAL_FRAME, fn(*mut c_void) -> *mut c_void)?;
            let new = call!(env, JNI_NEW_BYTE_ARRAY, fn(i32) -> *mut c_void)?;
            let set = call!(
                env,
                JNI_SET_BYTE_ARRAY_REGION,
                fn(*mut c_void, i32, i32, *const u8) -> ()
            )?;
            let get = call!(
                env,
                JNI_GET_BYTE_ARRAY_REGION,
                fn(*mut c_void, i32, i32, *mut u8) -> ()
            )?;
            let length = call!(env, JNI_GET_ARRAY_LENGTH, fn(*mut c_void) -> i32)?;
            let invoke = call!(
                env,
                JNI_CALL_STATIC_OBJECT_METHOD_A,
                fn(*mut c_void, *mut c_void, *const u64) -> *mut c_void
            )?;
            if push(env, 8) != 0 {
                cleared(env);
                return None;
            }
            let mut got = 0;
            let (seed, more) = (new(env, 32), new(env, 32));
            if !seed.is_null() && !more.is_null() {
                set(env, seed, 0, 32, gen.seed.as_ptr());
                set(env, more, 0, 32, fresh.as_ptr());
                // Three `jvalue`s (8 bytes each): a `jlong`, then two references.
                let args = [gen.number, seed as u64, more as u64];
                let words = invoke(env, cls, method, args.as_ptr());
                if !cleared(env) && !words.is_null() {
                    let len = length(env, words);
                    if (1..=out.len() as i32).contains(&len) {
                        get(env, words, 0, len, out.as_mut_ptr());
                        got = len as usize;
                    }
                }
            }
            cleared(env);
            pop(env, core::ptr::null_mut());
            Some(got)
        })()
    };
    wipe(&mut fresh);
    n.unwrap_or(0)
}

/// Zeroes bytes that held a seed (volatile: the compiler may not drop it).
fn wipe(bytes: &mut [u8; 32]) {
    for b in bytes.iter_mut() {
        // SAFETY: a valid, aligned `u8` of a live array.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
}

/// The jar on the app's class path, `java.instrument` in the JVM's modules (an app started with
/// `--module` resolves only what it requires), then the jar's `Launcher-Agent-Class`.
///
/// # Safety
/// `env` attached to this thread; `ti` a live JVM TI environment; `jar` NUL-terminated.
unsafe fn start_agent(env: Iface, ti: Iface, jar: *const c_char) -> Option<()> {
    // SAFETY: the caller's promises; each function's signature from jni.h/jvmti.h.
    unsafe {
        let added = call!(
            ti,
            TI_ADD_TO_SYSTEM_CLASS_LOADER_SEARCH,
            fn(*const c_char) -> c_int
        )?(ti, jar);
        if added != 0 {
            return None;
        }
        call_static(
            env,
            c"jdk/internal/module/Modules",
            c"loadModule",
            c"(Ljava/lang/String;)Ljava/lang/Module;",
            c"java.instrument".as_ptr(),
            true,
        )?;
        call_static(
            env,
            c"sun/instrument/InstrumentationImpl",
            c"loadAgent",
            c"(Ljava/lang/String;)V",
            jar,
            false,
        )
    }
}
