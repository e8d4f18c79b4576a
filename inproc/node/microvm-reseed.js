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

  const pool = Buffer.allocUnsafeSlow(4096);
  let at = pool.length;
  // 53 random bits, as V8's own: [0, 1).
  function random() {
    if (at > pool.length - 8) {
      crypto.randomFillSync(pool);
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

  function reseed() {
    at = pool.length;
    // The common case (no cache used) allocates nothing.
    if (!used.uuid && !used.int) return 'math.random';
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
    return done;
  }

  function parse(line) {
    const m = /^MVA1 generation (\d{1,19}) ([0-9a-f]{64})$/.exec(line);
    return m ? m[1] : null;
  }

  let sock;
  try {
    sock = net.createConnection(path);
  } catch {
    return;
  }
  sock.unref();
  sock.on('error', () => {});
  sock.setEncoding('latin1');
  // The socket's identity, checked before every write: a descriptor number the app closed and
  // reused is never written to (and never closed by us: we only stop). `/proc/self/fd/N` names
  // a socket by its inode (`socket:[1234]`), unique while it is open: reading the link costs a
  // short string where fstat costs a Stats object (measured: ~1.3 KB of V8's young generation
  // per generation, a third of what a generation allocated here).
  let identity = null;
  function ident() {
    try {
      const link = fs.readlinkSync(`/proc/self/fd/${sock._handle.fd}`);
      return link.startsWith('socket:') ? link : null;
    } catch {
      return null;
    }
  }
  function send(line) {
    if (identity === null || ident() !== identity) {
      stop();
      return;
    }
    sock.write(line);
  }
  function stop() {
    sock.removeAllListeners('data');
    sock.on('error', () => {});
    sock.pause();
  }
  sock.on('connect', () => {
    identity = ident();
    send(`MVA1 hello node ${process.pid}\n`);
  });
  let buf = '';
  sock.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const number = parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (number !== null) send(`MVA1 ack ${number} ${reseed()}\n`);
    }
    if (buf.length > 256) sock.destroy();
  });

  module.exports = { random, reseed, parse, seccompMode, used };
})();
