//! Finding every OpenSSL in the process and reseeding each once.

use core::ffi::{c_char, c_int, c_void};

use crate::libc::{DlPhdrInfo, Libc};

const RTLD_LAZY: c_int = 1;
/// The same value in glibc and musl.
const RTLD_NOLOAD: c_int = 4;
const GRND_NONBLOCK: u32 = 1;

type RandAdd = unsafe extern "C" fn(*const c_void, c_int, f64);
type InitCrypto = unsafe extern "C" fn(u64, *const c_void) -> c_int;
/// `OPENSSL_INIT_BASE_ONLY` (1.1.1 and 3.x): initialise nothing beyond the base; returns 0 once
/// `OPENSSL_cleanup` has begun, without raising an error.
const INIT_BASE_ONLY: u64 = 0x0004_0000;

/// The protocol's one mixing rule (`inproc/PROTOCOL.md`, "Mixing"): the agent's bytes for this
/// process, the pid (u32) and the generation (u64), little-endian, then fresh bytes. OpenSSL
/// hashes what `RAND_add` is given, so the material itself is what it gets.
pub fn material(seed: &[u8; 32], pid: u32, number: u64, fresh: &[u8; 32]) -> [u8; 76] {
    let mut m = [0u8; 76];
    m[..32].copy_from_slice(seed);
    m[32..36].copy_from_slice(&pid.to_le_bytes());
    m[36..44].copy_from_slice(&number.to_le_bytes());
    m[44..].copy_from_slice(fresh);
    m
}

/// Calls every distinct `RAND_add` this process can reach with `seed`, fresh kernel bytes, the
/// pid and the generation; returns how many copies of OpenSSL it found, and how many took them.
///
/// `RAND_add` (OpenSSL 1.1.1 and 3.x alike) reseeds the primary DRBG now: fresh entropy from its
/// source, and our bytes as additional input, so the result differs per clone even where the
/// kernel's generator was not reseeded. Each thread's DRBG reseeds from the primary on its next
/// draw (it watches the primary's reseed counter). `randomness = 0`: our bytes are additional
/// input, never a replacement for the source's.
pub fn reseed_all(c: &Libc, seed: &[u8; 32], pid: c_int, number: u64) -> (u32, u32) {
    let mut fresh = [0u8; 32];
    if let Some(getrandom) = c.getrandom {
        // SAFETY: writes at most 32 bytes into our buffer. A short or failed read leaves zeros:
        // the agent's bytes alone already differ per clone.
        unsafe { getrandom(fresh.as_mut_ptr(), 32, GRND_NONBLOCK) };
    }
    let mut input = material(seed, pid as u32, number, &fresh);

    let mut found = Found::default();
    // SAFETY: the global scope: a `libcrypto` the program links, or a Node.js's own OpenSSL.
    unsafe { found.add_from(c, core::ptr::null_mut()) };
    // Each loaded object's own scope (with its dependencies): a `libcrypto` loaded RTLD_LOCAL,
    // as Python's `_ssl` does. Names are copied out first: `dlopen` must not run inside
    // `dl_iterate_phdr`'s callback (both take the loader's lock).
    let mut names = Names::new();
    // SAFETY: the callback only reads the entries it is given and writes into `names`.
    unsafe { (c.dl_iterate_phdr)(collect, &mut names as *mut Names as *mut c_void) };
    for name in names.iter() {
        // SAFETY: a NUL-terminated name; RTLD_NOLOAD only finds an object already loaded, and
        // the reference it takes is dropped at once.
        unsafe {
            let handle = (c.dlopen)(name, RTLD_LAZY | RTLD_NOLOAD);
            if !handle.is_null() {
                found.add_from(c, handle);
                (c.dlclose)(handle);
            }
        }
    }
    let mut reseeded = 0;
    for &(f, init) in &found.fns[..found.len] {
        // A copy whose cleanup has begun (the process is exiting from a thread our exit handlers
        // do not see) is left alone: after it, `RAND_add` touches freed locks.
        let usable = init == 0 || {
            // SAFETY: `init` is that copy's `OPENSSL_init_crypto(uint64_t, const void *)`; with
            // BASE_ONLY it only answers whether the library is usable.
            let init = unsafe { core::mem::transmute::<usize, InitCrypto>(init) };
            // SAFETY: as above; no settings.
            unsafe { init(INIT_BASE_ONLY, core::ptr::null()) != 0 }
        };
        if !usable {
            continue;
        }
        // SAFETY: `f` is OpenSSL's `RAND_add(const void *, int, double)`; our buffer outlives it.
        unsafe {
            let f: RandAdd = core::mem::transmute(f);
            f(input.as_ptr() as *const c_void, input.len() as c_int, 0.0);
        }
        reseeded += 1;
    }
    // Nothing of the bytes stays on our stack after the call.
    for b in input.iter_mut() {
        // SAFETY: a valid byte of our own buffer; volatile so the wipe is not optimised away.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
    (found.len as u32, reseeded)
}

/// Distinct `RAND_add` addresses, each with its copy's `OPENSSL_init_crypto` (0: none).
#[derive(Default)]
struct Found {
    fns: [(usize, usize); 8],
    len: usize,
}

impl Found {
    /// Adds the copy `handle` (null: the global scope) leads to, if it is a new one.
    ///
    /// # Safety
    /// `handle` is null or a live handle from `dlopen`.
    unsafe fn add_from(&mut self, c: &Libc, handle: *mut c_void) {
        // SAFETY: `dlsym` on a valid handle (the caller's promise) and a NUL-terminated name.
        let a = unsafe { (c.dlsym)(handle, c"RAND_add".as_ptr()) } as usize;
        if a == 0 || self.fns[..self.len].iter().any(|f| f.0 == a) || self.len == self.fns.len() {
            return;
        }
        // SAFETY: as above.
        let init = unsafe { (c.dlsym)(handle, c"OPENSSL_init_crypto".as_ptr()) } as usize;
        self.fns[self.len] = (a, init);
        self.len += 1;
    }
}

/// The loaded objects' names, NUL-terminated, back to back.
struct Names {
    buf: [u8; 8192],
    len: usize,
}

impl Names {
    fn new() -> Self {
        Names {
            buf: [0; 8192],
            len: 0,
        }
    }

    fn iter(&self) -> impl Iterator<Item = *const c_char> + '_ {
        self.buf[..self.len]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.as_ptr() as *const c_char)
    }
}

extern "C" fn collect(info: *mut DlPhdrInfo, _size: usize, data: *mut c_void) -> c_int {
    // SAFETY: `data` is our `Names`; `info` is the loader's entry for this call, its name
    // NUL-terminated (or null).
    unsafe {
        let names = &mut *(data as *mut Names);
        let name = (*info).name;
        if name.is_null() {
            return 0;
        }
        let mut n = 0;
        while *name.add(n) != 0 {
            n += 1;
        }
        // The program itself has an empty name (the global scope covered it); the rest must fit
        // with their NUL, or the walk stops here.
        if n == 0 {
            return 0;
        }
        if names.len + n + 1 > names.buf.len() {
            return 1;
        }
        core::ptr::copy_nonoverlapping(name as *const u8, names.buf.as_mut_ptr().add(names.len), n);
        names.len += n + 1;
        0
    }
}

#[cfg(test)]
mod tests {
    use crate::testdata::{unhex, vectors};

    /// The mixing rule's vectors (`testdata/mix.tsv`), those with 32 fresh bytes (what this
    /// helper draws).
    #[test]
    fn material_is_laid_out_as_the_vectors_say() {
        let mut checked = 0;
        for f in vectors("mix.tsv") {
            let (seed, fresh) = (unhex(&f[0]), unhex(&f[3]));
            if fresh.len() != 32 {
                continue;
            }
            let m = super::material(
                &seed.try_into().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                &fresh.try_into().unwrap(),
            );
            assert_eq!(m.to_vec(), unhex(&f[4]), "{f:?}");
            checked += 1;
        }
        assert!(checked >= 1);
    }
}
