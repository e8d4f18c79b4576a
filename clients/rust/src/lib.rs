//! Clone-safety callbacks for an app behind microvm-agent (AWS Lambda MicroVMs).
//!
//! Every VM of an image is a clone of one snapshot: what the app holds in memory (a `StdRng` it
//! keeps, ids and keys it made) is the same in every clone. This crate runs the app's callbacks
//! at the right moment, before the agent answers the platform's hook (the shape of SnapStart's
//! register-after-restore), over the agent's Unix socket (`$MICROVM_AGENT_INPROC`, kind `app`;
//! `inproc/PROTOCOL.md` in the agent's repository). Depends on `serde_json` (the generation file)
//! and `sha2` (the mixing rule) only.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

const MAX_LINE: usize = 256;

/// One generation as the agent published it (`<state_dir>/generation`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    pub number: u64,
    /// 32 hex digits: the per-VM identity.
    pub id: Option<String>,
    /// `run`, `resume`, `validate`, `restore-detected`, ...
    pub reason: Option<String>,
    pub microvm_id: Option<String>,
    /// `reseeded`, `platform` or `not-reseeded`.
    pub kernel_crng: Option<String>,
    /// The 32 bytes the agent sent this process for this generation (`None` for suspend and
    /// terminate).
    pub process_seed: Option<[u8; 32]>,
    /// When the agent stops waiting for this event's callbacks (`None` when it did not say: an
    /// older agent, or [`current`]).
    pub deadline: Option<std::time::Instant>,
}

/// What a callback may fail with: any error (`?` works on I/O and parse errors; a string converts
/// with `.into()`). Its `Display` text is the reason reported to the agent.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A callback; an `Err` (or a panic) is reported to the agent.
pub type Callback = Box<dyn Fn(&Generation) -> Result<(), Error> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Generation,
    Suspend,
    Terminate,
}

static CALLBACKS: Mutex<Vec<(Event, std::sync::Arc<Callback>)>> = Mutex::new(Vec::new());
/// The agent's bytes for this process and the generation they came with.
static PROCESS_SEED: Mutex<Option<([u8; 32], u64)>> = Mutex::new(None);
static CONNECTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static START: Once = Once::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on every new generation (each clone's `/run`, every `/resume`, a `/validate`, a
/// restore the agent detected), before the hook answers.
pub fn on_new_generation(f: impl Fn(&Generation) -> Result<(), Error> + Send + Sync + 'static) {
    register(Event::Generation, Box::new(f));
}

/// Runs `f` on `/suspend`, before the VM is frozen.
pub fn on_suspend(f: impl Fn(&Generation) -> Result<(), Error> + Send + Sync + 'static) {
    register(Event::Suspend, Box::new(f));
}

/// Runs `f` on `/terminate`, before the agent stops the app.
pub fn on_terminate(f: impl Fn(&Generation) -> Result<(), Error> + Send + Sync + 'static) {
    register(Event::Terminate, Box::new(f));
}

/// Whether this process is connected to an agent.
pub fn is_active() -> bool {
    CONNECTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn register(event: Event, f: Callback) {
    lock(&CALLBACKS).push((event, std::sync::Arc::new(f)));
    START.call_once(|| match std::env::var_os("MICROVM_AGENT_INPROC") {
        None => eprintln!(
            "microvm-agent-client: not behind microvm-agent (no MICROVM_AGENT_INPROC): callbacks will not run"
        ),
        Some(path) => {
            let _ = std::thread::Builder::new()
                .name("microvm-agent".into())
                .spawn(move || serve(PathBuf::from(path)));
        }
    });
}

fn read(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("MICROVM_AGENT_STATE_DIR")?;
    std::fs::read(PathBuf::from(dir).join(name)).ok()
}

/// The current generation (`None` before the first one, or outside a MicroVM).
pub fn current() -> Option<Generation> {
    parse_generation(&read("generation")?)
}

/// The generation file's format this crate reads (`inproc/PROTOCOL.md`, "The state directory").
const FORMAT: u64 = 1;

/// A generation file, or `None` when it is not one this crate can read: not a JSON object,
/// another `format` (absent: 1, as agents before the field wrote), no generation number.
/// Unknown fields are a later agent's and are ignored.
fn parse_generation(raw: &[u8]) -> Option<Generation> {
    let doc: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let fields = doc.as_object()?;
    let format = fields.get("format").map_or(Some(FORMAT), |f| f.as_u64());
    if format != Some(FORMAT) {
        return None;
    }
    let text = |key: &str| fields.get(key)?.as_str().map(str::to_string);
    Some(Generation {
        number: fields.get("generation")?.as_u64()?,
        id: text("id"),
        reason: text("reason"),
        microvm_id: text("microvm_id"),
        kernel_crng: text("kernel_crng"),
        process_seed: None,
        deadline: None,
    })
}

pub fn generation_id() -> Option<String> {
    current()?.id
}

pub fn kernel_crng() -> Option<String> {
    current()?.kernel_crng
}

/// The app's seed for this generation (32 bytes).
pub fn seed() -> Option<Vec<u8>> {
    read("seed")
}

/// The value of the agent's `[[secret]]` `name` for this generation.
pub fn secret(name: &str) -> Option<Vec<u8>> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    read(&format!("secrets/{name}"))
}

/// 32 bytes that differ in every clone even where the kernel's `getrandom` does not: the
/// protocol's mix of the agent's seed for this process (or the app's seed) with 32 bytes from
/// the OS. Seed what you keep from it (`StdRng::from_seed(seed_material())`).
pub fn seed_material() -> [u8; 32] {
    let mut fresh = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut fresh);
    }
    let held = *lock(&PROCESS_SEED);
    let (agent, number) = held.unwrap_or_else(|| {
        let mut app = [0u8; 32];
        if let Some(s) = seed() {
            let n = s.len().min(32);
            app[..n].copy_from_slice(&s[..n]);
        }
        (app, current().map_or(0, |g| g.number))
    });
    mix(&agent, std::process::id(), number, &fresh)
}

/// The protocol's one mixing rule (`inproc/PROTOCOL.md`, "Mixing"): SHA-256 of the seed (32
/// bytes), the pid (u32) and the generation (u64), little-endian, then the fresh bytes.
fn mix(seed: &[u8; 32], pid: u32, number: u64, fresh: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(seed);
    h.update(pid.to_le_bytes());
    h.update(number.to_le_bytes());
    h.update(fresh);
    h.finalize().into()
}

/// Replaces `rng` with one seeded from [`seed_material`] (a `StdRng`, a `ChaCha20Rng`: any
/// generator with a 32-byte seed).
#[cfg(feature = "rand_core")]
pub fn reseed<R: rand_core::SeedableRng<Seed = [u8; 32]>>(rng: &mut R) {
    *rng = R::from_seed(seed_material());
}

fn serve(path: PathBuf) {
    let Ok(mut stream) = UnixStream::connect(&path) else {
        eprintln!(
            "microvm-agent-client: cannot reach microvm-agent at {}",
            path.display()
        );
        return;
    };
    CONNECTED.store(true, std::sync::atomic::Ordering::Relaxed);
    // The events it wants beside generations, then the features it knows: "deadline" (each line
    // carries the milliseconds left; an agent that predates it ignores the word).
    let hello = format!(
        "MVA1 hello app {} suspend,terminate deadline\n",
        std::process::id()
    );
    if stream.write_all(hello.as_bytes()).is_ok() {
        if let Ok(reader) = stream.try_clone() {
            let mut reader = BufReader::with_capacity(MAX_LINE + 1, reader);
            while let Some(line) = next_line(&mut reader) {
                if let Some(answer) = handle(&line) {
                    if stream.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        }
    }
    CONNECTED.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The next line, without its newline, read a bounded amount at a time: at most `MAX_LINE` bytes
/// and the newline are ever taken from the socket for one line, so a peer that never ends its
/// line costs 257 bytes, not all the memory it cares to send. `None`: the end, an error, a line
/// over the limit or one that is not UTF-8 (the agent never sends one; the connection ends).
fn next_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .ok()?;
    if n == 0 || line.pop() != Some(b'\n') {
        return None;
    }
    String::from_utf8(line).ok()
}

/// One line from the agent.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    event: Event,
    number: u64,
    /// A generation's bytes for this process.
    seed: Option<[u8; 32]>,
    /// The milliseconds left until the agent stops waiting (the feature `deadline`).
    budget: Option<u64>,
}

/// The protocol's largest generation number, 2^53 - 1 (every runtime holds it exactly).
const MAX_NUMBER: u64 = (1 << 53) - 1;

/// `0` or 1 to `most` ASCII digits without a leading zero.
fn decimal(word: &str, most: usize) -> Option<u64> {
    let ok = !word.is_empty()
        && word.len() <= most
        && word.bytes().all(|b| b.is_ascii_digit())
        && !(word.starts_with('0') && word.len() > 1);
    ok.then(|| word.parse().ok()).flatten()
}

/// A line from the agent: `MVA1 generation <n> <64 hex> [<ms>]` or `MVA1 event <name> <n> [<ms>]`
/// (the grammar of `inproc/PROTOCOL.md`, checked against `testdata/lines.tsv`).
fn parse(line: &str) -> Option<Line> {
    let mut w: Vec<&str> = line.split(' ').collect();
    let budget = if w.len() == 5 {
        Some(decimal(w.pop()?, 9)?)
    } else {
        None
    };
    let (event, number, seed) = parse_base(&w)?;
    Some(Line {
        event,
        number,
        seed,
        budget,
    })
}

fn parse_base(w: &[&str]) -> Option<(Event, u64, Option<[u8; 32]>)> {
    if w.len() != 4 || w[0] != "MVA1" {
        return None;
    }
    match w[1] {
        "generation" => {
            let number = decimal(w[2], 16).filter(|&n| n <= MAX_NUMBER)?;
            let hex = w[3].as_bytes();
            if hex.len() != 64 || !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            let mut seed = [0u8; 32];
            for (i, b) in seed.iter_mut().enumerate() {
                *b = u8::from_str_radix(&w[3][2 * i..2 * i + 2], 16).ok()?;
            }
            Some((Event::Generation, number, Some(seed)))
        }
        "event" => {
            let e = match w[2] {
                "suspend" => Event::Suspend,
                "terminate" => Event::Terminate,
                _ => return None,
            };
            Some((e, decimal(w[3], 16).filter(|&n| n <= MAX_NUMBER)?, None))
        }
        _ => None,
    }
}

fn handle(line: &str) -> Option<String> {
    let Line {
        event,
        number,
        seed: process_seed,
        budget,
    } = parse(line)?;
    if let Some(seed) = process_seed {
        *lock(&PROCESS_SEED) = Some((seed, number));
    }
    let mut gen = current().unwrap_or(Generation {
        number,
        ..Generation::default()
    });
    gen.process_seed = process_seed;
    gen.deadline =
        budget.map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
    let list: Vec<std::sync::Arc<Callback>> = lock(&CALLBACKS)
        .iter()
        .filter(|(e, _)| *e == event)
        .map(|(_, f)| f.clone())
        .collect();
    for f in &list {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&gen)))
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(format!("panic: {what}").into())
            });
        if let Err(reason) = result {
            let reason = reason.to_string();
            eprintln!("microvm-agent-client: a callback failed: {reason}");
            return Some(fail_line(number, &reason));
        }
    }
    Some(format!("MVA1 ack {number} callbacks={}\n", list.len()))
}

/// One protocol line of at most 256 bytes, cut at a character boundary.
fn fail_line(number: u64, reason: &str) -> String {
    let head = format!("MVA1 fail {number} ");
    let mut body = reason.replace('\n', " ");
    while head.len() + body.len() + 1 > MAX_LINE {
        body.pop();
    }
    format!("{head}{body}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_lines() {
        let line = format!("MVA1 generation 3 {}", "ab".repeat(32));
        let ok = |event, seed, budget| {
            Some(Line {
                event,
                number: 3,
                seed,
                budget,
            })
        };
        assert_eq!(parse(&line), ok(Event::Generation, Some([0xab; 32]), None));
        assert_eq!(
            parse(&format!("{line} 850")),
            ok(Event::Generation, Some([0xab; 32]), Some(850))
        );
        assert_eq!(
            parse("MVA1 event suspend 3"),
            ok(Event::Suspend, None, None)
        );
        assert_eq!(
            parse("MVA1 event terminate 3 0"),
            ok(Event::Terminate, None, Some(0))
        );
        assert!(parse("MVA1 event suspend 3 -1").is_none());
        assert!(parse("MVA1 event suspend 3 +1").is_none());
        assert!(parse("MVA1 event suspend 3 1 2").is_none());
        assert!(parse("MVA1 event reboot 3").is_none());
        assert!(parse(&format!("MVA2 generation 3 {}", "ab".repeat(32))).is_none());
        let fail = fail_line(7, &format!("boom {}\nmore", "é".repeat(300)));
        assert!(fail.len() <= 256 && fail.ends_with('\n') && fail.matches('\n').count() == 1);
    }

    /// A reader of endless bytes that counts what was taken from it.
    struct Endless(usize);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(b'x');
            self.0 += buf.len();
            Ok(buf.len())
        }
    }

    /// A line that never ends costs at most one line's worth of bytes. (The loop before it,
    /// `BufReader::lines()`, checked the length after reading the whole line: against it this
    /// test never returns.)
    #[test]
    fn a_line_is_read_at_most_256_bytes_at_a_time() {
        let mut endless = Endless(0);
        let mut r = BufReader::with_capacity(MAX_LINE + 1, &mut endless);
        assert_eq!(next_line(&mut r), None);
        drop(r);
        assert!(endless.0 <= MAX_LINE + 1, "{} bytes taken", endless.0);

        let mut two = BufReader::new(&b"MVA1 event suspend 3\nMVA1 ev"[..]);
        assert_eq!(next_line(&mut two).as_deref(), Some("MVA1 event suspend 3"));
        assert_eq!(next_line(&mut two), None, "a line cut short is not a line");
        let at_limit = format!("{}\n", "y".repeat(MAX_LINE));
        let mut r = BufReader::new(at_limit.as_bytes());
        assert_eq!(next_line(&mut r).map(|l| l.len()), Some(MAX_LINE));
        let over = format!("{}\n", "y".repeat(MAX_LINE + 1));
        assert_eq!(next_line(&mut BufReader::new(over.as_bytes())), None);
    }

    /// A callback fails with any error, `?` included, and its text is the reason the agent
    /// gets; a panic is a failure too.
    #[test]
    fn a_callback_fails_with_any_error() {
        on_suspend(|_| {
            let n: u32 = "not a number".parse()?;
            let _ = n;
            Ok(())
        });
        let line = handle("MVA1 event suspend 9").unwrap();
        assert_eq!(line, "MVA1 fail 9 invalid digit found in string\n");
        lock(&CALLBACKS).clear();
        on_terminate(|_| panic!("boom"));
        assert_eq!(
            handle("MVA1 event terminate 9").unwrap(),
            "MVA1 fail 9 panic: boom\n"
        );
        lock(&CALLBACKS).clear();
    }

    /// One of the protocol's conformance files (`testdata/` at the repository's root).
    fn vectors(name: &str) -> Vec<Vec<String>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
        let text = std::fs::read_to_string(format!("{path}{name}")).unwrap();
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn reads_the_agents_lines_as_the_vectors_say() {
        let records = vectors("lines.tsv");
        assert!(records.len() >= 20);
        for r in records {
            // As the crate reads its socket: lines that are not UTF-8 are dropped before parse.
            let Ok(line) = String::from_utf8(unhex(&r[0])) else {
                assert_eq!(r[1], "ignore");
                continue;
            };
            let got = parse(&line).map_or("ignore".to_string(), |l| {
                let ms = l.budget.map_or("-".to_string(), |b| b.to_string());
                match l.event {
                    Event::Generation => {
                        format!("generation {} {} {ms}", l.number, hex(&l.seed.unwrap()))
                    }
                    Event::Suspend => format!("event suspend {} {ms}", l.number),
                    Event::Terminate => format!("event terminate {} {ms}", l.number),
                }
            });
            assert_eq!(got, r[1], "{line:?}");
        }
    }

    #[test]
    fn mixes_as_the_vectors_say() {
        for r in vectors("mix.tsv") {
            let seed: [u8; 32] = unhex(&r[0]).try_into().unwrap();
            let got = mix(
                &seed,
                r[1].parse().unwrap(),
                r[2].parse().unwrap(),
                &unhex(&r[3]),
            );
            assert_eq!(hex(&got), r[5]);
        }
    }

    #[test]
    fn reads_generation_files_as_the_vectors_say() {
        let records = vectors("generation.tsv");
        assert!(records.len() >= 8);
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/generation/");
        for r in records {
            let g = parse_generation(&std::fs::read(format!("{dir}{}", r[0])).unwrap());
            if r[1] == "reject" {
                assert_eq!(g, None, "{}", r[0]);
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("{}", r[0]));
            let got = [
                r[0].clone(),
                g.number.to_string(),
                g.id.unwrap_or_default(),
                g.reason.unwrap_or_default(),
                g.microvm_id.unwrap_or_else(|| "null".into()),
                g.kernel_crng.unwrap_or_default(),
            ];
            assert_eq!(got.to_vec(), r);
        }
    }

    #[cfg(feature = "rand_core")]
    #[test]
    fn reseed_replaces_a_kept_generator() {
        use rand_core::{Rng, SeedableRng};
        let mut a = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
        let mut b = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
        reseed(&mut a);
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn seed_material_differs_every_time() {
        assert_ne!(seed_material(), seed_material());
    }
}
