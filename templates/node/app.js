// A clone-safe Node.js app for microvm-agent.
//
// The trap: Math.random() is seeded once per V8 isolate, during the image build, and cannot be
// reseeded from JavaScript; crypto.randomUUID() caches entropy; crypto.randomBytes() draws from
// OpenSSL's in-process generator. Every clone would share them. The fix here: the agent restarts
// this process on /run (`restart_on = ["run"]` in microvm-agent.toml), so every VM gets a fresh
// isolate; for later events (resume) use crypto with the entropy cache disabled.
'use strict';
const http = require('http');
const crypto = require('crypto');

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
    });
  }
  if (req.method === 'POST' && req.url === '/__lifecycle') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const event = JSON.parse(body || '{}');
      if (['run', 'resume', 'validate'].includes(event.event)) generation = event.generation;
      console.log(JSON.stringify({ event: event.event, generation: event.generation, pid: process.pid }));
      reply(res, 200, { acknowledged: true });
    });
    return undefined;
  }
  return reply(res, 404, { error: 'not found' });
}).listen(port, '0.0.0.0');
