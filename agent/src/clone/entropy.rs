//! Fresh entropy for a clone: reseeding the kernel's CRNG and the agent's own generator.
//!
//! Every clone starts from the same memory, so both the kernel's generator (unless the platform's
//! VMGenID support reseeds it) and every user-space generator are the same in every clone. Step 1
//! of the new-generation routine mixes input that *differs per clone* into the kernel: the `/run`
//! body and VM id (different by construction, though not secret), the CPU's hardware generator
//! (RDSEED/RDRAND, aarch64 RNDR) and high-resolution clock readings (jitter), plus `getrandom`.
//!
//! - With `CAP_SYS_ADMIN`: `RNDADDENTROPY` (credited only for the hardware bytes) then
//!   `RNDRESEEDCRNG`, which makes the kernel's CRNG use the new input at once.
//! - Without it: the bytes are written to `/dev/urandom`. That mixes them into the input pool but
//!   does not reseed the CRNG at once; the record says `write`, never `ioctl`.
//!
//! Step 2 re-keys the agent's own ChaCha20 generator from `getrandom` *after* step 1. Nothing is
//! ever drawn from it before the first routine: a generator seeded at start-up would be seeded in
//! the build VM and shared by every clone.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use zeroize::Zeroize;

use crate::config::KernelReseed;

/// Which way the kernel reseed really went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reseeded {
    Ioctl,
    Write,
    Off,
    Failed,
}

impl Reseeded {
    pub fn as_str(self) -> &'static str {
        match self {
            Reseeded::Ioctl => "ioctl",
            Reseeded::Write => "write",
            Reseeded::Off => "off",
            Reseeded::Failed => "failed",
        }
    }
}

/// Input that differs per clone, and how many of its bits may honestly be credited as entropy.
pub struct Input {
    pub bytes: Vec<u8>,
    pub credit_bits: usize,
}

impl Drop for Input {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Gathers fresh input: `extra` (the `/run` body and VM id), the CPU's generator, several clocks
/// and `getrandom`.
pub fn gather(extra: &[&[u8]]) -> Input {
    let mut bytes = Vec::with_capacity(256);
    for e in extra {
        bytes.extend_from_slice(&(e.len() as u64).to_le_bytes());
        bytes.extend_from_slice(e);
    }
    let hw = hardware_random(&mut bytes);
    use nix::time::{clock_gettime, ClockId};
    for clock in [
        ClockId::CLOCK_MONOTONIC,
        ClockId::CLOCK_REALTIME,
        ClockId::CLOCK_BOOTTIME,
        ClockId::CLOCK_MONOTONIC_RAW,
        ClockId::CLOCK_PROCESS_CPUTIME_ID,
    ] {
        if let Ok(ts) = clock_gettime(clock) {
            bytes.extend_from_slice(&ts.tv_sec().to_le_bytes());
            bytes.extend_from_slice(&ts.tv_nsec().to_le_bytes());
        }
    }
    let mut os = [0u8; 32];
    match getrandom(&mut os) {
        Ok(()) => bytes.extend_from_slice(&os),
        // The other inputs still differ per clone; the generator step fails loudly on its own.
        Err(e) => tracing::error!(error = %e, "getrandom failed while gathering input"),
    }
    os.zeroize();
    // Only the hardware generator's output is credited: the body and id are unique but not secret,
    // clocks are guessable, and getrandom may still be the cloned state.
    Input {
        bytes,
        credit_bits: hw * 8,
    }
}

/// Which random instruction the CPU offers (what `gather` draws from): `rdseed`, `rdrand`,
/// `rndr` (aarch64 FEAT_RNG), or `none`.
pub fn hardware_random_source() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("rdseed") {
            return "rdseed";
        }
        if std::arch::is_x86_feature_detected!("rdrand") {
            return "rdrand";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("rand") {
            return "rndr";
        }
    }
    "none"
}

/// Appends up to 64 bytes from the CPU's random instructions; returns how many.
fn hardware_random(out: &mut Vec<u8>) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("rdseed") {
            return collect(out, || {
                let mut v = 0u64;
                // SAFETY: the CPU supports RDSEED (checked above).
                (unsafe { core::arch::x86_64::_rdseed64_step(&mut v) } == 1).then_some(v)
            });
        }
        if std::arch::is_x86_feature_detected!("rdrand") {
            return collect(out, || {
                let mut v = 0u64;
                // SAFETY: the CPU supports RDRAND (checked above).
                (unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1).then_some(v)
            });
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("rand") {
            return collect(out, || {
                let v: u64;
                let ok: u64;
                // SAFETY: FEAT_RNG is present (checked above); RNDR sets NZCV.Z on failure.
                unsafe {
                    core::arch::asm!("mrs {v}, s3_3_c2_c4_0", "cset {ok}, ne", v = out(reg) v, ok = out(reg) ok, options(nomem, nostack));
                }
                (ok == 1).then_some(v)
            });
        }
    }
    let _ = out;
    0
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn collect(out: &mut Vec<u8>, mut next: impl FnMut() -> Option<u64>) -> usize {
    let mut n = 0;
    for _ in 0..32 {
        if let Some(v) = next() {
            out.extend_from_slice(&v.to_le_bytes());
            n += 8;
            if n >= 64 {
                break;
            }
        }
    }
    n
}

/// The OS's randomness (`getrandom(2)`, through the `getrandom` crate). An error is returned,
/// never a buffer left zeroed: a generator keyed from zeros would be the same in every clone.
pub fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    getrandom::fill(buf).map_err(|e| {
        buf.zeroize();
        format!("getrandom: {e}")
    })
}

/// `struct rand_pool_info` with room for our input.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 512],
}

nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
    RandPoolInfo
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Step 1: feeds `input` to the kernel the way `mode` allows and reports what really happened.
pub fn reseed_kernel(mode: KernelReseed, input: &Input) -> (Reseeded, Option<String>) {
    if mode == KernelReseed::Off {
        return (Reseeded::Off, None);
    }
    let file = match OpenOptions::new().write(true).open("/dev/urandom") {
        Ok(f) => f,
        Err(e) => {
            return (
                Reseeded::Failed,
                Some(format!("cannot open /dev/urandom: {e}")),
            )
        }
    };
    let mut ioctl_error = None;
    if matches!(mode, KernelReseed::Auto | KernelReseed::Ioctl) {
        let mut info = RandPoolInfo {
            entropy_count: 0,
            buf_size: 0,
            buf: [0; 512],
        };
        let len = input.bytes.len().min(info.buf.len());
        info.buf[..len].copy_from_slice(&input.bytes[..len]);
        info.buf_size = len as libc::c_int;
        info.entropy_count = input.credit_bits.min(len * 8) as libc::c_int;
        // SAFETY: `info` is a valid rand_pool_info whose buf_size matches its buffer.
        let added = unsafe { rnd_add_entropy(file.as_raw_fd(), &info) };
        info.buf.zeroize();
        // SAFETY: RNDRESEEDCRNG takes no argument.
        match added.and_then(|_| unsafe { rnd_reseed_crng(file.as_raw_fd()) }) {
            Ok(_) => return (Reseeded::Ioctl, None),
            Err(e) if mode == KernelReseed::Ioctl => {
                return (
                    Reseeded::Failed,
                    Some(format!("RNDADDENTROPY/RNDRESEEDCRNG: {e}")),
                )
            }
            Err(e) => ioctl_error = Some(e),
        }
    }
    match (&file).write_all(&input.bytes) {
        Ok(()) => (
            Reseeded::Write,
            ioctl_error.map(|e| format!("ioctl refused ({e}); wrote to /dev/urandom instead")),
        ),
        Err(e) => (
            Reseeded::Failed,
            Some(format!("cannot write /dev/urandom: {e}")),
        ),
    }
}

/// Step 2: the agent's generator, keyed from `getrandom` after the kernel step.
///
/// The per-clone `input` is absorbed as well, not only through the kernel: when the kernel step
/// could not run (no `CAP_SYS_ADMIN` and `/dev/urandom` not writable) and the hypervisor has no
/// VMGenID, `getrandom` may still return the cloned state, and secrets drawn from a generator keyed
/// by it alone would be the same in every clone. Each 32-byte block of input re-keys the
/// generator with its own output XOR the block (ChaCha20 as the mixing function).
pub fn fresh_generator(input: &Input) -> Result<ChaCha20Rng, String> {
    let mut seed = [0u8; 32];
    getrandom(&mut seed)?;
    let rng = keyed(seed, &input.bytes);
    seed.zeroize();
    Ok(rng)
}

/// A generator keyed by `seed`, then by every 32-byte block of `input`.
fn keyed(mut seed: [u8; 32], input: &[u8]) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::from_seed(seed);
    for block in input.chunks(32) {
        rng.fill_bytes(&mut seed);
        for (s, b) in seed.iter_mut().zip(block) {
            *s ^= b;
        }
        rng = ChaCha20Rng::from_seed(seed);
    }
    seed.zeroize();
    rng
}

/// Draws `n` bytes from the agent's generator.
pub fn draw(rng: &mut ChaCha20Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_input_differs_each_time_and_carries_the_extra_bytes() {
        let a = gather(&[b"vm-1", b"payload"]);
        let b = gather(&[b"vm-1", b"payload"]);
        assert_ne!(
            a.bytes, b.bytes,
            "clocks and getrandom make every gather different"
        );
        assert!(a.bytes.windows(7).any(|w| w == b"payload"));
        assert!(a.credit_bits <= 64 * 8);
    }

    #[test]
    fn per_clone_input_alone_separates_generators() {
        // Two clones whose getrandom returned the same bytes still diverge through their input.
        let same = [7u8; 32];
        let a = draw(&mut keyed(same, b"microvm-aaaa"), 16);
        let b = draw(&mut keyed(same, b"microvm-bbbb"), 16);
        assert_ne!(a, b);
        assert_eq!(
            a,
            draw(&mut keyed(same, b"microvm-aaaa"), 16),
            "a function of seed and input"
        );
        let long: Vec<u8> = (0..200).collect();
        let mut tail_changed = long.clone();
        tail_changed[199] ^= 1;
        assert_ne!(
            draw(&mut keyed(same, &long), 16),
            draw(&mut keyed(same, &tail_changed), 16),
            "every block counts"
        );
    }

    #[test]
    fn off_touches_nothing() {
        assert_eq!(
            reseed_kernel(KernelReseed::Off, &gather(&[])).0,
            Reseeded::Off
        );
    }

    #[test]
    fn generators_are_independent() {
        let input = gather(&[b"same"]);
        let (mut a, mut b) = (
            fresh_generator(&input).unwrap(),
            fresh_generator(&input).unwrap(),
        );
        assert_ne!(draw(&mut a, 32), draw(&mut b, 32));
    }
}
