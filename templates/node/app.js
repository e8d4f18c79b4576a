// A clone-safe Node.js app for microvm-agent.
//
// The trap: Math.random() is seeded once per V8 isolate, during the image build, and cannot be
// reseeded from JavaScript; crypto.randomUUID() caches entropy; crypto.randomBytes() draws from
// OpenSSL's in-process generator. Every clone would share them. The fix here: the agent restarts
// this process on /run (`restart_on = ["run"]` in microvm-agent.toml), so every VM gets a fresh
// isolate. Bytes that must differ per VM come from randomBytesPerVm() below: the kernel's bytes
// mixed with the agent's per-generation seed (<state_dir>/seed, and "seed" in every event), which
// differs per clone even when the kernel hands every clone the same bytes (the platform's
// default capabilities, no VMGenID: the agent's kernel_crng says "not-reseeded").
'use strict';
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const stateDir = process.env.MICROVM_AGENT_STATE_DIR || '/run/microvm-agent';
// The current generation's seed: read at start (after a restart_on restart it is already new),
// replaced by each event's.
let agentSeed = Buffer.alloc(0);
try { agentSeed = fs.readFileSync(path.join(stateDir, 'seed')); } catch (_) { /* build VM: none yet */ }

// HMAC-SHA256(agent seed, kernel bytes): different per clone if either is.
function randomBytesPerVm(n) {
  const out = [];
  for (let have = 0; have < n; have += 32) {
    out.push(crypto.createHmac('sha256', agentSeed).update(crypto.randomBytes(32)).digest());
  }
  return Buffer.concat(out).subarray(0, n);
}

const port = Number(process.env.PORT || 8080);
let generation = 0;
// A fingerprint of this process's generator: its first output.
const fingerprint = Math.random().toString(16).slice(2, 18);
console.log(JSON.stringify({ event: 'start', pid: process.pid, fingerprint }));

function reply(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { ok: true });
  if (req.method === 'GET' && req.url === '/whoami') {
    return reply(res, 200, {
      generation, pid: process.pid, fingerprint, random: Math.random(),
      uuid: crypto.randomUUID({ disableEntropyCache: true }),
      perVm: randomBytesPerVm(16).toString('hex'),
    });
  }
  if (req.method === 'POST' && req.url === '/__lifecycle') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const event = JSON.parse(body || '{}');
      if (['run', 'resume', 'validate'].includes(event.event)) {
        generation = event.generation;
        if (/^[0-9a-f]{64}$/.test(event.seed || '')) agentSeed = Buffer.from(event.seed, 'hex');
      }
      console.log(JSON.stringify({ event: event.event, generation: event.generation, pid: process.pid }));
      reply(res, 200, { acknowledged: true });
    });
    return undefined;
  }
  return reply(res, 404, { error: 'not found' });
}).listen(port, '0.0.0.0');
