'use strict';
// microvm-agent's in-process reseed for Node.js, loaded with `--require` (NODE_OPTIONS) before
// the app's own code.
//
// A clone of a snapshot is a copy of this process. OpenSSL's generators are reseeded by the
// agent's preloaded library; what Node keeps above OpenSSL is handled here:
// - `Math.random` (V8's xorshift128+, which JavaScript cannot reseed) is replaced, before the
//   app's code runs, by one that draws from `crypto.randomFillSync` through a pool that every
//   new generation empties;
// - the caches of `crypto.randomUUID` (128 UUIDs) and `crypto.randomInt` (6 KiB), which are
//   internal to Node, are drawn through, so what they hold afterwards comes from the reseeded
//   OpenSSL; only when the process used them since the last generation (a cache never filled
//   holds nothing cloned), which most processes never do.
// The process registers with the agent over $MICROVM_AGENT_INPROC (inproc/PROTOCOL.md) on an
// unreferenced socket (it never keeps the process alive), and acknowledges each generation.
// Nothing here may stop the app from starting or touch what is the app's: every failure leaves
// the process as it was; under a seccomp filter it does not start; before every write it checks
// that the socket's descriptor is still that socket.

(function microvmReseed() {
  const path = process.env.MICROVM_AGENT_INPROC;
  if (!path) return;
  let crypto;
  let net;
  let fs;
  try {
    crypto = require('crypto');
    net = require('net');
    fs = require('fs');
  } catch {
    return;
  }

  // "Seccomp: 0" (or no such line) in this thread's status, else stay out: a filter that kills
  // socket() would kill the app for our sake. No /proc: cannot tell, stay out.
  function seccompMode(status) {
    const m = /^Seccomp:\s*(\S)/m.exec(status);
    return m ? m[1] : null;
  }
  let status = null;
  for (const name of ['/proc/thread-self/status', '/proc/self/status']) {
    try {
      status = fs.readFileSync(name, 'latin1');
      break;
    } catch {}
  }
  if (status === null) return;
  const mode = seccompMode(status);
  if (mode !== null && mode !== '0') return;

  // Whether this process holds anything a generation must reset (bytes in the pool, a cache
  // used), and the agent knows it: a process that drew nothing since the last generation has
  // nothing to reset, and the agent leaves it asleep (the hello's feature `holding`). The line
  // is written before the draw, so that a draw made before the process's OpenSSL was reseeded
  // is in the agent's socket before that reseed's acknowledgement (the agent then tells us).
  let holding = false;
  const HOLDING = Buffer.from('MVA1 holding\n', 'latin1');
  function hold() {
    if (holding) return;
    holding = true;
    if (identity !== null) send(HOLDING.length, HOLDING);
  }
  const pool = Buffer.allocUnsafeSlow(4096);
  let at = pool.length;
  // The pool is OpenSSL's bytes (reseeded by the native helper) XOR a ChaCha20 stream keyed,
  // from the first generation on, with the protocol's mix of the agent's bytes for this process
  // (inproc/PROTOCOL.md, "Mixing"): unique per clone even where the native helper could not
  // run (a `noexec` state directory leaves it out). The key is made at the first refill after a
  // generation, in the app's time, not the hook's; `pending` holds the material until then.
  const pending = Buffer.alloc(76);
  let fresh = false;
  let stream = null;
  function refill() {
    crypto.randomFillSync(pool);
    if (fresh) {
      fresh = false;
      try {
        crypto.randomFillSync(pending, 44, 32);
        const key = crypto.createHash('sha256').update(pending).digest();
        stream = crypto.createCipheriv('chacha20', key, Buffer.alloc(16));
        key.fill(0);
      } catch {
        // An OpenSSL without ChaCha20 (a FIPS provider refuses it): OpenSSL's bytes alone, as
        // before the first generation. Math.random must never throw for our sake.
        stream = null;
      }
      pending.fill(0);
    }
    if (stream !== null) stream.update(pool).copy(pool);
  }
  // 53 random bits, as V8's own: [0, 1).
  function random() {
    if (at > pool.length - 8) {
      hold();
      refill();
      at = 0;
    }
    const hi = pool.readUInt32LE(at) >>> 5;
    const lo = pool.readUInt32LE(at + 4) >>> 6;
    at += 8;
    return (hi * 67108864 + lo) / 9007199254740992;
  }
  try {
    Object.defineProperty(Math, 'random', {
      value: random,
      writable: true,
      configurable: true,
      enumerable: false,
    });
  } catch {
    // A frozen Math (e.g. SES lockdown) keeps V8's.
  }

  // Whether the app used the cached generators since the last generation: only then does
  // their cache hold anything drawn before it.
  const used = { uuid: false, int: false };
  function watch(owner, name, flag) {
    const orig = owner && owner[name];
    if (typeof orig !== 'function') return;
    try {
      Object.defineProperty(owner, name, {
        value: function (...args) {
          used[flag] = true;
          hold();
          return orig.apply(this, args);
        },
        writable: true,
        configurable: true,
        enumerable: true,
      });
    } catch {}
  }
  watch(crypto, 'randomUUID', 'uuid');
  watch(crypto, 'randomInt', 'int');
  try {
    // Web Crypto's randomUUID shares the same cache.
    if (crypto.webcrypto) watch(Object.getPrototypeOf(crypto.webcrypto), 'randomUUID', 'uuid');
  } catch {}
  const uuid = crypto.randomUUID;
  const int = crypto.randomInt;

  // The protocol's one mixing rule: material = seed || pid (u32) || n (u64), little-endian ||
  // fresh bytes; mix = SHA-256(material). `n` as digits (the line's), a number or a BigInt.
  // The pid and `n` after the seed in `into` (the one layout, for the tests' `material` and the
  // generation's `pending` alike).
  function head(into, pid, n) {
    into.writeUInt32LE(pid >>> 0, 32);
    into.writeBigUInt64LE(BigInt(n), 36);
  }
  function material(seed, pid, n, freshBytes) {
    const m = Buffer.alloc(44 + freshBytes.length);
    seed.copy(m, 0, 0, 32);
    head(m, pid, n);
    freshBytes.copy(m, 44);
    return m;
  }
  function mix(seed, pid, n, freshBytes) {
    return crypto.createHash('sha256').update(material(seed, pid, n, freshBytes)).digest();
  }

  // A generation: its seed is `hex` of `line[from, from + 64)`, its number `digits`. The pool's
  // next refill keys a new stream; nothing is hashed here, on the hook's time.
  function reseed(buf, digitsAt, digits) {
    if (buf !== undefined) {
      pending.write(buf.latin1Slice(digitsAt + digits + 1, digitsAt + digits + 65), 0, 32, 'hex');
      head(pending, process.pid, buf.latin1Slice(digitsAt, digitsAt + digits));
      fresh = true;
    }
    at = pool.length;
    // The common case (no cache used) allocates nothing.
    if (!used.uuid && !used.int) {
      holding = false;
      return 'math.random';
    }
    let done = 'math.random';
    if (used.uuid) {
      try {
        for (let i = 0; i < 128; i++) uuid.call(crypto);
        done += ',randomUUID';
      } catch {}
    }
    if (used.int) {
      try {
        for (let i = 0; i < 1024; i++) int.call(crypto, 2);
        done += ',randomInt';
      } catch {}
    }
    used.uuid = false;
    used.int = false;
    // Last: drawing through the caches above goes through the app's view of them, which says
    // "holding" on its own.
    holding = false;
    return done;
  }

  // A generation allocates as little as the helper can: a line is read into one long-lived
  // buffer (`onread`), parsed there, and answered from another with one write(2). What it
  // allocates V8 must collect, and a scavenge stops the event loop (0.2-1 ms; the first ones
  // after start-up also grow the young generation by a megabyte for good): garbage made here is
  // latency of the hook and memory of the snapshot. Measured per generation: ~0.5 KB, most of it
  // Node's own for a read callback and a write (the strings, stream events and stream writes
  // this replaced made ~2.3 KB).
  const GENERATION = Buffer.from('MVA1 generation ', 'latin1');
  const ACK = Buffer.from('MVA1 ack ', 'latin1');
  const line = Buffer.allocUnsafeSlow(258);
  const out = Buffer.allocUnsafeSlow(320);
  let have = 0;

  // The generation number's digits in `buf[0, len)` (a version 1 generation line: its number,
  // 64 lowercase hex digits, perhaps a deadline, which this helper never asks for), as their
  // count, or 0 when the line is anything else (the grammar of inproc/PROTOCOL.md, checked
  // against testdata/lines.tsv). Buffer builtins and one regular expression, no loop over the
  // bytes: the function runs a few times in a VM's life, and a loop run per byte would get V8 to
  // compile it optimised in the background (measured: more CPU than the whole generation, in
  // every process).
  const LINE = /^MVA1 generation (0|[1-9][0-9]{0,15}) [0-9a-f]{64}( (0|[1-9][0-9]{0,8}))?$/;
  const MAX_NUMBER = '9007199254740991';
  function parseLine(buf, len) {
    const g = GENERATION.length;
    if (len < g + 66 || len > g + 91 || buf.compare(GENERATION, 0, g, 0, g) !== 0) return 0;
    const text = buf.latin1Slice(0, len);
    const m = LINE.exec(text);
    if (m === null) return 0;
    const n = m[1];
    if (n.length === MAX_NUMBER.length && n > MAX_NUMBER) return 0;
    return n.length;
  }
  // The same rule on a string (the tests' view): the number, or null.
  function parse(text) {
    const b = Buffer.from(text, 'latin1');
    const digits = parseLine(b, b.length);
    return digits ? text.slice(GENERATION.length, GENERATION.length + digits) : null;
  }

  let sock;
  let fd = -1;
  let stopped = false;
  function onread(n, buf) {
    if (stopped) return false;
    // Line by line through what was read (several lines when the process was busy for more
    // than one generation); a line's start may have come with an earlier read. Bytes of `buf`
    // past `n` are an older read's.
    let from = 0;
    while (from < n) {
      const nl = buf.indexOf(0x0a, from);
      const end = nl === -1 || nl >= n ? n : nl;
      if (have + end - from > line.length) return stop(); // no agent line is this long
      have += buf.copy(line, have, from, end);
      if (end === n) break;
      from = end + 1;
      const digits = parseLine(line, have);
      have = 0;
      if (digits === 0) continue;
      let len = ACK.copy(out, 0);
      len += line.copy(out, len, GENERATION.length, GENERATION.length + digits);
      len += out.write(' ', len, 'latin1');
      len += out.write(reseed(line, GENERATION.length, digits), len, 'latin1');
      len += out.write('\n', len, 'latin1');
      if (!send(len)) return false;
    }
    return true;
  }
  try {
    sock = net.createConnection({ path, onread: { buffer: Buffer.allocUnsafeSlow(512), callback: onread } });
  } catch {
    return;
  }
  sock.unref();
  sock.on('error', () => {});
  // The socket's identity, checked before every write: a descriptor number the app closed and
  // reused is never written to (and never closed by us: we only stop). `/proc/self/fd/N` names
  // a socket by its inode (`socket:[1234]`), unique while it is open: reading the link costs a
  // short string where fstat costs a Stats object.
  let identity = null;
  let link = '';
  function ident() {
    try {
      const l = fs.readlinkSync(link);
      return l.startsWith('socket:') ? l : null;
    } catch {
      return null;
    }
  }
  // One write(2) of `from[0, len)` (`out` unless said): the socket is the helper's alone and its
  // lines are short, so the kernel takes a line whole or not at all; a line it cannot take now
  // ends the helper's part (the agent reports the process late) rather than queueing behind the
  // app.
  function send(len, from = out) {
    if (identity === null || ident() !== identity) return stop();
    try {
      if (fs.writeSync(fd, from, 0, len) === len) return true;
    } catch {}
    return stop();
  }
  function stop() {
    stopped = true;
    return false;
  }
  sock.on('connect', () => {
    fd = sock._handle ? sock._handle.fd : -1;
    if (fd < 0) return;
    link = `/proc/self/fd/${fd}`;
    identity = ident();
    if (!send(out.write(`MVA1 hello node ${process.pid} - holding\n`, 0, 'latin1'))) return;
    // What it drew before it could say so (the app's start-up code runs before this).
    if (holding) send(HOLDING.length, HOLDING);
  });

  module.exports = { random, reseed, parse, parseLine, seccompMode, used, material, mix };
})();
