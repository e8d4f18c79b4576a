//! JNI and JVM TI from `no_std` Rust, for `jvm.rs`: the interfaces are tables of functions read
//! by slot (`jni.h`, `jvmti.h`: their order is part of the JNI and JVM TI specifications, never
//! reordered since Java 1.2 and 5), each typed at its call (`call!`).

use core::ffi::{c_char, c_int, c_void};

/// A JNI `JNIEnv*`, a `JavaVM*` or a `jvmtiEnv*`: a pointer to a pointer to a table of functions.
pub type Iface = *mut *const *const c_void;

pub const JNI_OK: i32 = 0;
pub const JNI_VERSION_1_2: i32 = 0x0001_0002;
pub const JVMTI_VERSION_1_2: i32 = 0x3001_0200;
pub const JVMTI_ENABLE: c_int = 1;
pub const JVMTI_EVENT_VM_INIT: c_int = 50;

/// Slots of `JNIInvokeInterface_` (a `JavaVM`).
pub const VM_DETACH_CURRENT_THREAD: usize = 5;
pub const VM_GET_ENV: usize = 6;
pub const VM_ATTACH_CURRENT_THREAD_AS_DAEMON: usize = 7;
/// Slots of `JNINativeInterface_` (a `JNIEnv`).
pub const JNI_FIND_CLASS: usize = 6;
pub const JNI_EXCEPTION_CLEAR: usize = 17;
pub const JNI_PUSH_LOCAL_FRAME: usize = 19;
pub const JNI_POP_LOCAL_FRAME: usize = 20;
pub const JNI_GET_STATIC_METHOD_ID: usize = 113;
pub const JNI_CALL_STATIC_OBJECT_METHOD_A: usize = 116;
pub const JNI_CALL_STATIC_BOOLEAN_METHOD_A: usize = 119;
pub const JNI_CALL_STATIC_VOID_METHOD_A: usize = 143;
pub const JNI_NEW_STRING_UTF: usize = 167;
pub const JNI_GET_ARRAY_LENGTH: usize = 171;
pub const JNI_NEW_BYTE_ARRAY: usize = 176;
pub const JNI_GET_BYTE_ARRAY_REGION: usize = 200;
pub const JNI_SET_BYTE_ARRAY_REGION: usize = 208;
pub const JNI_EXCEPTION_CHECK: usize = 228;
/// Slots of `jvmtiInterface_1_` (a `jvmtiEnv`): the function's number in the specification, less 1.
pub const TI_SET_EVENT_NOTIFICATION_MODE: usize = 1;
pub const TI_SET_EVENT_CALLBACKS: usize = 121;
pub const TI_DISPOSE_ENVIRONMENT: usize = 126;
pub const TI_ADD_TO_SYSTEM_CLASS_LOADER_SEARCH: usize = 150;

/// The function in `slot` of an interface's table, or None.
///
/// # Safety
/// `iface` is a live JNI or JVM TI interface whose table has more than `slot` entries.
pub unsafe fn function(iface: Iface, slot: usize) -> Option<*const c_void> {
    if iface.is_null() {
        return None;
    }
    // SAFETY: the caller's promise: a table of at least `slot + 1` pointers.
    let f = unsafe { *(*iface).add(slot) };
    (!f.is_null()).then_some(f)
}

/// Types a slot's function: `call!(iface, SLOT, fn(args) -> ret)`.
macro_rules! call {
    ($iface:expr, $slot:expr, fn($($t:ty),*) -> $r:ty) => {
        // SAFETY (of each use): the slot's function has this C signature (jni.h, jvmti.h).
        $crate::jni::function($iface, $slot).map(|f| {
            core::mem::transmute::<
                *const core::ffi::c_void,
                unsafe extern "C" fn($crate::jni::Iface, $($t),*) -> $r,
            >(f)
        })
    };
}
pub(crate) use call;

/// Whether an exception was pending; cleared if so.
///
/// # Safety
/// `env` attached to this thread.
pub unsafe fn cleared(env: Iface) -> bool {
    // SAFETY: the caller's promise; the signatures from jni.h.
    unsafe {
        let Some(check) = call!(env, JNI_EXCEPTION_CHECK, fn() -> u8) else {
            return false;
        };
        let thrown = check(env) != 0;
        if thrown {
            if let Some(clear) = call!(env, JNI_EXCEPTION_CLEAR, fn() -> ()) {
                clear(env);
            }
        }
        thrown
    }
}

/// The class named `class` and its static methods named in `methods` (name, signature), or None
/// (the exception the lookup threw, cleared) when any is missing.
///
/// # Safety
/// `env` attached to this thread; the class and its method IDs are valid while it is loaded.
pub unsafe fn static_methods<const N: usize>(
    env: Iface,
    class: &core::ffi::CStr,
    methods: [(&core::ffi::CStr, &core::ffi::CStr); N],
) -> Option<(*mut c_void, [*mut c_void; N])> {
    // SAFETY: the caller's promise; each function's signature from jni.h.
    unsafe {
        let find = call!(env, JNI_FIND_CLASS, fn(*const c_char) -> *mut c_void)?;
        let id = call!(
            env,
            JNI_GET_STATIC_METHOD_ID,
            fn(*mut c_void, *const c_char, *const c_char) -> *mut c_void
        )?;
        let cls = find(env, class.as_ptr());
        let mut ids = [core::ptr::null_mut(); N];
        if !cls.is_null() {
            for (slot, (name, signature)) in ids.iter_mut().zip(methods) {
                *slot = id(env, cls, name.as_ptr(), signature.as_ptr());
                if slot.is_null() {
                    break;
                }
            }
        }
        if cls.is_null() || ids.iter().any(|m| m.is_null()) {
            cleared(env);
            return None;
        }
        Some((cls, ids))
    }
}

/// `class.method(string)`, a static method of one `String` argument; None (the exception, if
/// any, cleared) when anything fails.
///
/// # Safety
/// `env` attached to this thread; `arg` NUL-terminated (modified UTF-8: a path the JVM takes as
/// given).
pub unsafe fn call_static(
    env: Iface,
    class: &core::ffi::CStr,
    method: &core::ffi::CStr,
    signature: &core::ffi::CStr,
    arg: *const c_char,
    returns_object: bool,
) -> Option<()> {
    // SAFETY: the caller's promises; each function's signature from jni.h.
    unsafe {
        let string = call!(env, JNI_NEW_STRING_UTF, fn(*const c_char) -> *mut c_void)?;
        let (cls, [mid]) = static_methods(env, class, [(method, signature)])?;
        let value = string(env, arg);
        if !value.is_null() {
            // A `jvalue` is a union of 8 bytes; an object reference is its pointer.
            let args = [value];
            if returns_object {
                call!(
                    env,
                    JNI_CALL_STATIC_OBJECT_METHOD_A,
                    fn(*mut c_void, *mut c_void, *const *mut c_void) -> *mut c_void
                )?(env, cls, mid, args.as_ptr());
            } else {
                call!(
                    env,
                    JNI_CALL_STATIC_VOID_METHOD_A,
                    fn(*mut c_void, *mut c_void, *const *mut c_void) -> ()
                )?(env, cls, mid, args.as_ptr());
            }
        }
        let thrown = cleared(env);
        (!value.is_null() && !thrown).then_some(())
    }
}
