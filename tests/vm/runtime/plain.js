'use strict';
// An unmodified Node.js app, as an image author writes one: no lifecycle handler, no seed, no
// agent library. It warms up before the snapshot (one outbound TLS connection and a few draws),
// then serves plain HTTP. GET /probe opens an outbound TLS connection to the guest's ClientHello
// recorder (server name: argv[2]) and answers the next value of each generator a Node program
// commonly uses. The runtime clone test reads what went on the wire from the recorder.

const crypto = require('crypto');
const http = require('http');
const tls = require('tls');

const NAME = process.argv[2];

function hello(done) {
  const s = tls.connect({ host: '127.0.0.1', port: 8443, servername: NAME, rejectUnauthorized: false });
  let called = false;
  const finish = () => {
    if (!called) {
      called = true;
      done();
    }
  };
  s.on('error', finish);
  s.on('close', finish);
  s.setTimeout(10000, () => s.destroy());
}

// A generator's next eight draws: the test compares each clone's value with the others'.
const draws = (draw) => Array.from({ length: 8 }, draw);

function values() {
  return {
    'crypto.randomBytes': draws(() => crypto.randomBytes(16).toString('hex')),
    'crypto.randomUUID()': draws(() => crypto.randomUUID()),
    'crypto.getRandomValues': draws(() => Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('hex')),
    'crypto.randomInt': draws(() => String(crypto.randomInt(2 ** 40))),
    'Math.random()': draws(() => String(Math.random())),
  };
}

const claims = Object.fromEntries(Object.keys(values()).map((k) => [k, 'safe']));

hello(() => {
  values();
  http
    .createServer((req, res) => {
      const answer = (body) => {
        const text = JSON.stringify(body);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      };
      if (req.url === '/probe') {
        hello(() => answer({ runtime: `unmodified Node.js ${process.version}`, values: values(), claims }));
      } else {
        answer({ ok: true });
      }
    })
    .listen(Number(process.env.PORT), '0.0.0.0');
});
