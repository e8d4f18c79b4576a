'use strict';
// microvm-agent's in-process reseed for Node.js, loaded with `--require` (NODE_OPTIONS) before
// the app's own code.
//
// A clone of a snapshot is a copy of this process. OpenSSL's generators are reseeded by the
// agent's preloaded library; what Node keeps above OpenSSL is handled here:
// - `Math.random` (V8's xorshift128+, which JavaScript cannot reseed) is replaced, before the
//   app's code runs, by one that draws from `crypto.randomFillSync` through a pool that every
//   new generation empties;
// - the caches of `crypto.randomUUID` (128 UUIDs) and `crypto.randomInt` (6 KiB) are drawn
//   through, so what they hold afterwards comes from the reseeded OpenSSL.
// The process registers with the agent over $MICROVM_AGENT_INPROC (inproc/PROTOCOL.md) on an
// unreferenced socket (it never keeps the process alive), and acknowledges each generation.
// Nothing here may stop the app from starting: every failure leaves the process as it was.

(function microvmReseed() {
  const path = process.env.MICROVM_AGENT_INPROC;
  if (!path) return;
  let crypto;
  let net;
  try {
    crypto = require('crypto');
    net = require('net');
  } catch {
    return;
  }

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

  function reseed() {
    at = pool.length;
    const done = ['math.random'];
    try {
      for (let i = 0; i < 128; i++) crypto.randomUUID();
      done.push('randomUUID');
    } catch {}
    try {
      for (let i = 0; i < 1024; i++) crypto.randomInt(2);
      done.push('randomInt');
    } catch {}
    return done.join(',');
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
  sock.on('connect', () => sock.write(`MVA1 hello node ${process.pid}\n`));
  let buf = '';
  sock.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const number = parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (number !== null) sock.write(`MVA1 ack ${number} ${reseed()}\n`);
    }
    if (buf.length > 256) sock.destroy();
  });

  module.exports = { random, reseed, parse };
})();
