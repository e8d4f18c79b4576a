'use strict';
// Clone-safety callbacks for a Node.js app behind microvm-agent (AWS Lambda MicroVMs).
//
// Every VM of an image is a clone of one snapshot: what the app holds in memory (keys, ids,
// values drawn before the snapshot) is the same in every clone. This library runs the app's code
// at the right moment, before the agent answers the platform's hook (the shape of SnapStart's
// register-after-restore), over the agent's Unix socket ($MICROVM_AGENT_INPROC, kind `app`;
// inproc/PROTOCOL.md in the agent's repository). No dependencies.

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const path = require('path');

const MAX_LINE = 256;
const callbacks = { generation: [], suspend: [], terminate: [] };
const state = { started: false, connected: false, processSeed: null, processNumber: 0 };

function register(event, callback) {
  if (typeof callback !== 'function') throw new TypeError('a callback must be a function');
  callbacks[event].push(callback);
  if (!state.started) {
    state.started = true;
    start();
  }
  return callback;
}

/** Runs `callback(generation)` on every new generation, before the hook answers. */
exports.onNewGeneration = (cb) => register('generation', cb);
/** Runs `callback(generation)` on /suspend, before the VM is frozen. */
exports.onSuspend = (cb) => register('suspend', cb);
/** Runs `callback(generation)` on /terminate, before the agent stops the app. */
exports.onTerminate = (cb) => register('terminate', cb);
exports.isActive = () => state.connected;

function read(name) {
  const dir = process.env.MICROVM_AGENT_STATE_DIR;
  if (!dir) return null;
  try {
    return fs.readFileSync(path.join(dir, name));
  } catch {
    return null;
  }
}

function generation(fields, processSeed) {
  return {
    number: Number(fields.generation || 0),
    id: fields.id || null,
    reason: fields.reason || null,
    microvmId: fields.microvm_id || null,
    kernelCrng: fields.kernel_crng || null,
    processSeed: processSeed || null,
    signal: null,
  };
}

// The generation file's format this library reads (inproc/PROTOCOL.md, "The state directory").
const FORMAT = 1;

// A generation file -> its generation, or null when it is not one this library can read: not a
// JSON object, another `format` (absent: 1, as agents before the field wrote), no generation
// number. Unknown fields are a later agent's and are ignored.
function parseGeneration(raw) {
  let fields;
  try {
    fields = JSON.parse(raw);
  } catch {
    return null;
  }
  if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) return null;
  if ((fields.format === undefined ? FORMAT : fields.format) !== FORMAT) return null;
  if (!Number.isSafeInteger(fields.generation) || fields.generation < 0) return null;
  return generation(fields);
}
exports._parseGeneration = parseGeneration;

exports.current = function current() {
  const raw = read('generation');
  return raw ? parseGeneration(raw) : null;
};
exports.generationId = () => (exports.current() || {}).id || null;
exports.kernelCrng = () => (exports.current() || {}).kernelCrng || null;
exports.seed = () => read('seed');
exports.secret = function secret(name) {
  if (!name || name.includes('/') || name === '.' || name === '..') {
    throw new TypeError(`not a secret's name: ${name}`);
  }
  return read(path.join('secrets', name));
};

// The protocol's one mixing rule (inproc/PROTOCOL.md, "Mixing"): SHA-256 of the seed (32 bytes),
// the pid (u32) and the generation (u64), little-endian, then the fresh bytes.
function mix(seed, pid, n, fresh) {
  const m = Buffer.alloc(44 + fresh.length);
  seed.copy(m, 0, 0, 32);
  m.writeUInt32LE(pid >>> 0, 32);
  m.writeBigUInt64LE(BigInt(n), 36);
  fresh.copy(m, 44);
  return crypto.createHash('sha256').update(m).digest();
}
exports._mix = mix;

/**
 * `n` bytes that differ in every clone even where the kernel's generator does not: blocks of the
 * protocol's mix of the agent's seed for this process (or the app's seed) with fresh
 * `crypto.randomBytes(32)` (OpenSSL's generator alone is the snapshot's in a process the agent
 * could not reach).
 */
exports.randomBytes = function randomBytes(n) {
  let seed = state.processSeed;
  let number = state.processNumber;
  if (!seed) {
    seed = exports.seed() || Buffer.alloc(32);
    number = (exports.current() || { number: 0 }).number;
  }
  const out = [];
  let have = 0;
  while (have < n) {
    const block = mix(seed, process.pid, number, crypto.randomBytes(32));
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, n);
};

function start() {
  const socketPath = process.env.MICROVM_AGENT_INPROC;
  if (!socketPath) {
    process.emitWarning('not behind microvm-agent (no MICROVM_AGENT_INPROC): callbacks will not run', {
      code: 'MICROVM_AGENT_OUTSIDE',
    });
    return;
  }
  connect(socketPath);
}

function connect(socketPath) {
  const sock = net.createConnection(socketPath);
  sock.unref();
  let buf = '';
  // Lines are handled one after the other: a generation's callbacks finish before the next.
  let chain = Promise.resolve();
  // The socket's identity (device, inode), checked before every write: a descriptor number that
  // native code in the app closed and reused is never written to (we stop taking part instead).
  let identity = null;
  const ident = () => {
    try {
      const st = fs.fstatSync(sock._handle.fd);
      return `${st.dev}:${st.ino}`;
    } catch {
      return null;
    }
  };
  const send = (line) => {
    if (identity === null || ident() !== identity) {
      sock.removeAllListeners('data');
      sock.pause();
      state.connected = false;
      return;
    }
    sock.write(line);
  };
  sock.on('connect', () => {
    state.connected = true;
    identity = ident();
    // The events it wants beside generations, then the features it knows: "deadline" (each line
    // carries the milliseconds left; an agent that predates it ignores the word).
    send(`MVA1 hello app ${process.pid} suspend,terminate deadline\n`);
  });
  sock.on('data', (data) => {
    buf += data.toString('latin1');
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      chain = chain.then(() => handle(line)).then((answer) => {
        if (answer && !sock.destroyed) send(answer);
      });
    }
    if (buf.length > MAX_LINE) sock.destroy();
  });
  sock.on('error', (e) => {
    if (!state.connected) process.emitWarning(`cannot reach microvm-agent at ${socketPath}: ${e.message}`);
  });
  sock.on('close', () => {
    state.connected = false;
  });
}

/**
 * A line from the agent -> { event, number, seed, budget }, or null; `budget`: the milliseconds
 * left until the agent stops waiting (a last word the agent adds for the feature `deadline`),
 * or null.
 */
// The protocol's grammar (inproc/PROTOCOL.md), checked against testdata/lines.tsv: a number is
// `0` or up to 16 digits without a leading zero, at most 2^53 - 1; a deadline up to 9 digits.
const NUMBER = /^(0|[1-9][0-9]{0,15})$/;
const MS = /^(0|[1-9][0-9]{0,8})$/;
function number(word) {
  if (!NUMBER.test(word)) return null;
  const n = Number(word);
  return Number.isSafeInteger(n) ? n : null;
}
function parse(line) {
  const w = line.split(' ');
  let budget = null;
  if (w.length === 5) {
    if (!MS.test(w[4])) return null;
    budget = Number(w.pop());
  }
  if (w.length !== 4 || w[0] !== 'MVA1') return null;
  if (w[1] === 'generation' && number(w[2]) !== null && /^[0-9a-f]{64}$/.test(w[3])) {
    return { event: 'generation', number: number(w[2]), seed: Buffer.from(w[3], 'hex'), budget };
  }
  if (w[1] === 'event' && (w[2] === 'suspend' || w[2] === 'terminate') && number(w[3]) !== null) {
    return { event: w[2], number: number(w[3]), seed: null, budget };
  }
  return null;
}
exports._parse = parse;

async function handle(line) {
  const msg = parse(line);
  if (!msg) return null;
  if (msg.seed) {
    state.processSeed = msg.seed;
    state.processNumber = msg.number;
  }
  const current = exports.current();
  const gen = current ? { ...current, processSeed: msg.seed } : generation({ generation: msg.number }, msg.seed);
  // Aborts when the agent stops waiting: hand it to fetch() and the like.
  gen.signal = msg.budget === null ? null : AbortSignal.timeout(msg.budget);
  const list = callbacks[msg.event].slice();
  for (const cb of list) {
    try {
      await cb(gen);
    } catch (e) {
      console.error(`microvm-agent: a ${msg.event} callback failed:`, e);
      const reason = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      return failLine(msg.number, reason);
    }
  }
  return `MVA1 ack ${msg.number} callbacks=${list.length}\n`;
}

/** One protocol line, at most 256 bytes, whole UTF-8 characters: cut once, by bytes. */
function failLine(number, reason) {
  const head = `MVA1 fail ${number} `;
  const room = MAX_LINE - 1 - Buffer.byteLength(head);
  // Only the first `room` characters can fit: never encode more than that of a huge message.
  const body = Buffer.from(String(reason).slice(0, room).replace(/[\r\n]/g, ' '), 'utf8');
  let cut = Math.min(body.length, room);
  // Back to the start of a character (continuation bytes are 10xxxxxx).
  while (cut > 0 && cut < body.length && (body[cut] & 0xc0) === 0x80) cut--;
  return `${head}${body.subarray(0, cut).toString('utf8')}\n`;
}
exports._failLine = failLine;
