// A clone-safe Node.js app for microvm-agent, on its client library (`microvm-agent-client`, clients/node).
//
// The trap: Math.random() is seeded once per V8 isolate, during the image build, and cannot be
// reseeded from JavaScript; crypto.randomUUID(), crypto.randomBytes() and getRandomValues() draw
// from OpenSSL's generator inside this process. Every clone would share them. The agent's
// in-process reseed (on by default: README, "Unmodified apps") now covers all of them, measured in
// real clones; the callback below is what an app still does for what only it can reach
// (generators and keys it keeps), and what works with `reseed_in_process = false`. In-process
// (the warm process the snapshot was made for stays): `agent.onNewGeneration` runs in every clone
// before the agent answers /run (and on every /resume); it replaces Math.random with a generator
// keyed by the agent's per-generation seed, and bytes that must differ per VM come from
// `agent.randomBytes()`: OpenSSL's bytes mixed with that seed, which differs per clone even when
// the kernel hands every clone the same bytes (the platform's default capabilities, no VMGenID:
// the agent's kernel_crng says "not-reseeded"). Code that captured Math.random before (`const r =
// Math.random` in a library) keeps the cloned generator: if you depend on such code, use
// `restart_on = ["run"]` instead, at the cost of a cold process per VM (start-up and readiness
// again inside /run's budget, and the snapshot's warm-up lost).
//
// GET /probe answers the next value of each common generator and what this template claims for
// it ("safe", "kernel": safe only where the kernel was reseeded, "none"); tests/vm/runtime_vm.rs
// measures them in real clones.
'use strict';
const http = require('http');
const crypto = require('crypto');
const agent = require('microvm-agent-client'); // clients/node: in node_modules (see the Dockerfile)

// HMAC-SHA256(agent seed, OpenSSL's bytes): different per clone if either is.
const randomBytesPerVm = agent.randomBytes;

// A Math.random replacement: 53-bit floats from HMAC-SHA256(key, counter).
function keyedRandom(key) {
  let counter = 0;
  let pool = [];
  return function random() {
    if (pool.length === 0) {
      const block = crypto.createHmac('sha256', key).update(String(counter++)).digest();
      pool = [0, 8, 16, 24].map((i) => Number(block.readBigUInt64BE(i) >> 11n) / 2 ** 53);
    }
    return pool.pop();
  };
}

// What a library does at import: keeps its own reference (the probe's trap).
const capturedRandom = Math.random;
const claims = {
  'Math.random()': 'safe',
  // Safe through the agent's in-process reseed (on by default): its `--require` helper replaces
  // Math.random before this file runs, and its preloaded library reseeds OpenSSL.
  'Math.random captured at start-up': 'safe',
  'crypto.randomUUID()': 'safe',
  'crypto.randomBytes()': 'safe',
  'crypto.getRandomValues()': 'safe',
  'randomBytesPerVm()': 'safe',
};

// Run the callback's code once before the snapshot (V8 compiles a function when it first runs):
// a clone's first event then does not pay for it inside /run's budget.
keyedRandom(randomBytesPerVm(32))();

const port = Number(process.env.PORT || 8080);
let generation = 0;
// A fingerprint of this process's generator: its first output.
const fingerprint = Math.random().toString(16).slice(2, 18);
console.log(JSON.stringify({ event: 'start', pid: process.pid, fingerprint }));

agent.onNewGeneration((gen) => {
  const before = Math.random === capturedRandom ? fingerprint : Math.random.fingerprint;
  generation = gen.number;
  const key = randomBytesPerVm(32);
  Math.random = keyedRandom(key);
  Math.random.fingerprint = key.toString('hex').slice(0, 16);
  const after = Math.random.fingerprint;
  console.log(JSON.stringify({ event: gen.reason, generation: gen.number, pid: process.pid, before, after }));
});
// Before the VM is frozen (onTerminate: before the app is stopped).
agent.onSuspend((gen) => {
  console.log(JSON.stringify({ event: 'suspend', generation: gen.number, pid: process.pid }));
});

function reply(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { ok: true });
  if (req.method === 'GET' && req.url === '/probe') {
    return reply(res, 200, {
      runtime: `Node.js ${process.version}`,
      generation,
      values: {
        'Math.random()': String(Math.random()),
        'Math.random captured at start-up': String(capturedRandom()),
        'crypto.randomUUID()': crypto.randomUUID(),
        'crypto.randomBytes()': crypto.randomBytes(16).toString('hex'),
        'crypto.getRandomValues()': Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('hex'),
        'randomBytesPerVm()': randomBytesPerVm(16).toString('hex'),
      },
      claims,
    });
  }
  if (req.method === 'GET' && req.url === '/whoami') {
    return reply(res, 200, {
      generation, pid: process.pid, fingerprint, random: Math.random(),
      uuid: crypto.randomUUID({ disableEntropyCache: true }),
      perVm: randomBytesPerVm(16).toString('hex'),
    });
  }
  return reply(res, 404, { error: 'not found' });
}).listen(port, '0.0.0.0');
