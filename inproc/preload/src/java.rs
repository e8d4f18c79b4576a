//! Java: the Java agent (`inproc/java`) goes into a JVM through the launcher's `JDK_JAVA_OPTIONS`,
//! and this library is what puts it there, in the `java` launcher's own process, before its
//! `main` reads the variable. What it puts there is this library itself, as a JVM TI agent that
//! loads the Java agent once the JVM has started (`-agentpath:<this library>=<jar>`; `jvm.rs`
//! says how, and why not `-javaagent`).
//!
//! Why here and not in the app's environment: the Java agent needs the runtime's
//! `java.instrument` module, and a runtime made without it (`jlink --add-modules java.base`, a
//! common slim image) has no `lib/libinstrument.so`; a JVM given an agent library that is gone
//! refuses to start. Only a process that knows which runtime it is can tell. So, in a process
//! whose program is a `java` launcher (`/proc/self/exe` named `java`), the constructor adds the
//! option when that runtime has `lib/libinstrument.so` and the library and the jar are there,
//! and takes it out when not (a `java` started by a Java process inherits its parent's value).
//! Only the `java` launcher reads `JDK_JAVA_OPTIONS` (Java 9 and later; a JVM embedded in
//! another program reads `JAVA_TOOL_OPTIONS`, which we leave alone), and the launcher says so on
//! its standard error ("NOTE: Picked up JDK_JAVA_OPTIONS: ..."): a line per start.
//!
//! The paths come from the socket's: `<state_dir>/inproc.sock`,
//! `<state_dir>/inproc/libmicrovm-reseed.so` and `<state_dir>/inproc/java/microvm-reseed.jar`
//! (`agent/src/clone/inproc/setup.rs`).

use core::ffi::c_char;

use crate::libc::{Libc, O_RDONLY_CLOEXEC};

const VAR: &core::ffi::CStr = c"JDK_JAVA_OPTIONS";
const FLAG: &[u8] = b"-agentpath:";
const LIBRARY: &[u8] = b"inproc/libmicrovm-reseed.so";
const JAR: &[u8] = b"inproc/java/microvm-reseed.jar";
const INSTRUMENT: &[u8] = b"/lib/libinstrument.so";

/// A path or a variable's value, NUL-terminated, built on the stack.
struct Buf {
    bytes: [u8; 4096],
    len: usize,
}

impl Buf {
    fn new() -> Self {
        Buf {
            bytes: [0; 4096],
            len: 0,
        }
    }
    /// Appends; false when it does not fit (with its NUL).
    fn push(&mut self, s: &[u8]) -> bool {
        if self.len + s.len() >= self.bytes.len() {
            return false;
        }
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
        self.bytes[self.len] = 0;
        true
    }
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    fn c(&self) -> *const c_char {
        self.bytes.as_ptr().cast()
    }
}

/// In the constructor (single-threaded: `setenv` is safe), with the socket's path.
pub fn arrange(c: &Libc, socket: &[u8]) {
    let (Some(getauxval), Some(readlink), Some(setenv), Some(unsetenv)) =
        (c.getauxval, c.readlink, c.setenv, c.unsetenv)
    else {
        return;
    };
    // Every other program stops here, at no cost: the name `execve` was given (`AT_EXECFN`, in
    // the process's own memory) is not `java`. Only a `java` then reads links and opens files,
    // which its launcher does itself anyway (it finds its runtime from `/proc/self/exe`), so a
    // sandbox that allows the launcher allows these.
    // SAFETY: `getauxval` has no preconditions; `AT_EXECFN` is a pointer to the NUL-terminated
    // name in the process's initial stack, or 0.
    let name = unsafe { getauxval(AT_EXECFN) } as *const c_char;
    if name.is_null() {
        return;
    }
    // SAFETY: NUL-terminated (above), and never freed.
    let name = unsafe { core::ffi::CStr::from_ptr(name) }.to_bytes();
    if !is_java(name) {
        return;
    }
    let mut exe = Buf::new();
    // SAFETY: a NUL-terminated path and a buffer of the length given (one short, for the NUL).
    let n = unsafe {
        readlink(
            c"/proc/self/exe".as_ptr(),
            exe.bytes.as_mut_ptr().cast(),
            exe.bytes.len() - 1,
        )
    };
    if n <= 0 || n as usize >= exe.bytes.len() - 1 {
        return;
    }
    exe.len = n as usize;
    let Some(home) = exe.as_slice().strip_suffix(b"/bin/java") else {
        return; // not a `java` launcher: it does not read the variable
    };
    // Loaded by a JVM already running (an inherited option in a process without our
    // preload): the launcher has read the variable, and the JVM's threads may be reading the
    // environment.
    // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name.
    if !unsafe { (c.dlsym)(core::ptr::null_mut(), c"JNI_CreateJavaVM".as_ptr()) }.is_null() {
        return;
    }
    let Some(slash) = socket.iter().rposition(|&b| b == b'/') else {
        return;
    };
    let base = &socket[..=slash];
    let (mut lib, mut jar, mut token) = (Buf::new(), Buf::new(), Buf::new());
    let eligible = lib.push(base)
        && lib.push(LIBRARY)
        && jar.push(base)
        && jar.push(JAR)
        && token.push(FLAG)
        && token.push(lib.as_slice())
        && token.push(b"=")
        && token.push(jar.as_slice())
        && one_word(base)
        && readable(c, &lib)
        && readable(c, &jar)
        && {
            let mut instrument = Buf::new();
            instrument.push(home) && instrument.push(INSTRUMENT) && readable(c, &instrument)
        };
    // SAFETY: `getenv` returns null or a NUL-terminated string, read before any change.
    let current = unsafe { (c.getenv)(VAR.as_ptr()) };
    let current: &[u8] = if current.is_null() {
        &[]
    } else {
        // SAFETY: NUL-terminated (above); not changed while we read it.
        unsafe { core::ffi::CStr::from_ptr(current) }.to_bytes()
    };
    let mut value = Buf::new();
    if token.len == 0 {
        return;
    }
    match (eligible, find(current, token.as_slice())) {
        (true, Some(_)) | (false, None) => {}
        (true, None) => {
            if !(value.push(current) && (current.is_empty() || value.push(b" ")))
                || !value.push(token.as_slice())
            {
                return; // too long to add to: leave it as it is
            }
            // SAFETY: both NUL-terminated; the constructor is single-threaded.
            unsafe { setenv(VAR.as_ptr(), value.c(), 1) };
        }
        (false, Some(at)) => {
            let before = trim_end(&current[..at]);
            let after = &current[at + token.len..];
            if !(value.push(before) && value.push(after)) {
                return;
            }
            if value.as_slice().iter().all(|&b| b == b' ') {
                // SAFETY: a NUL-terminated name; single-threaded.
                unsafe { unsetenv(VAR.as_ptr()) };
            } else {
                // SAFETY: as above.
                unsafe { setenv(VAR.as_ptr(), value.c(), 1) };
            }
        }
    }
}

/// Whether a path stays one word in `JDK_JAVA_OPTIONS`, which the launcher splits at white space
/// and reads quotes and backslashes in, and stays the library's path in `-agentpath`, which the
/// JVM splits at its first `=`: a state directory with a space in its path would hand the JVM a
/// library that is not there, and a JVM refuses to start without its agent library (the agent
/// says "off" in `/status` for the same paths).
fn one_word(path: &[u8]) -> bool {
    !path
        .iter()
        .any(|&b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'\\' | b'='))
}

/// `getauxval`'s key for the executed file's name.
const AT_EXECFN: core::ffi::c_ulong = 31;

/// Whether a path's last part is `java`.
fn is_java(path: &[u8]) -> bool {
    path.rsplit(|&b| b == b'/').next() == Some(b"java")
}

/// Where `token` is in `value` as a whole word.
fn find(value: &[u8], token: &[u8]) -> Option<usize> {
    (0..=value.len().checked_sub(token.len())?).find(|&i| {
        value[i..].starts_with(token)
            && (i == 0 || value[i - 1] == b' ')
            && value.get(i + token.len()).is_none_or(|&b| b == b' ')
    })
}

fn trim_end(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && s[end - 1] == b' ' {
        end -= 1;
    }
    &s[..end]
}

fn readable(c: &Libc, path: &Buf) -> bool {
    // SAFETY: a NUL-terminated path; the descriptor, if any, is ours and closed at once.
    let fd = unsafe { (c.open)(path.c(), O_RDONLY_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: closing the descriptor we just opened.
    unsafe { (c.close)(fd) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_only_as_a_whole_word() {
        let t = b"-agentpath:/s/inproc/libmicrovm-reseed.so=/s/inproc/java/microvm-reseed.jar";
        assert_eq!(find(t, t), Some(0));
        let mut v = b"-Xmx1g ".to_vec();
        v.extend_from_slice(t);
        assert_eq!(find(&v, t), Some(7));
        v.extend_from_slice(b"x");
        assert_eq!(find(&v, t), None, "a longer path is another jar");
        assert_eq!(find(b"", t), None);
        assert_eq!(trim_end(b"-Xmx1g  "), b"-Xmx1g");
    }

    #[test]
    fn a_jar_path_that_the_launcher_would_split_is_never_given() {
        assert!(one_word(b"/run/mva/"));
        assert!(!one_word(b"/my state/"));
        assert!(!one_word(b"/a=b/"), "the JVM would split -agentpath there");
        assert!(!one_word(b"/s\"q/inproc/java/microvm-reseed.jar"));
        assert!(!one_word(b"/s'q/x.jar"));
        assert!(!one_word(b"/s\\q/x.jar"));
        assert!(!one_word(b"/s\tq/x.jar"));
    }

    #[test]
    fn only_a_program_named_java_is_looked_at() {
        assert!(is_java(b"/usr/bin/java"));
        assert!(is_java(b"java"));
        assert!(!is_java(b"/usr/bin/javac"));
        assert!(!is_java(b"/bin/sh"));
        assert!(!is_java(b"/opt/java/bin/node"));
    }
}
