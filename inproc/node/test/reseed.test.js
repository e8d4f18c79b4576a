'use strict';
// The Node.js helper against the protocol (inproc/PROTOCOL.md), in Node's own runner. The agent
// side here is a Unix socket the test drives; the real agent runs the same helper in
// tests/blackbox/in_process_reseed.rs, and in real clones in tests/vm/runtime_vm.rs.

const test = require('node:test');
const assert = require('node:assert');
const { spawnSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const helper = path.join(__dirname, '..', 'microvm-reseed.js');

function node(code, env) {
  return spawnSync(process.execPath, ['--require', helper, '-e', code], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 30000,
  });
}

test('without an agent the program starts as if nothing were there', () => {
  const r = node("console.log('ok')", { MICROVM_AGENT_INPROC: '' });
  assert.deepStrictEqual([r.status, r.stdout, r.stderr], [0, 'ok\n', '']);
  const missing = node("console.log('ok')", { MICROVM_AGENT_INPROC: '/nonexistent/socket' });
  assert.deepStrictEqual([missing.status, missing.stdout, missing.stderr], [0, 'ok\n', '']);
});

test('an unreachable agent never keeps the process alive or slows its exit', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mva-node-'));
  const sock = path.join(dir, 's');
  const server = net.createServer(() => {}).listen(sock);
  try {
    const r = node("console.log('done')", { MICROVM_AGENT_INPROC: sock });
    assert.strictEqual(r.status, 0);
    assert.strictEqual(r.stdout, 'done\n');
  } finally {
    server.close();
  }
});

test('Math.random is replaced before the app runs, and stays in [0, 1)', () => {
  const r = node(
    "const xs = Array.from({length: 20000}, Math.random);" +
      "console.log(JSON.stringify([Math.random.toString().includes('[native code]'), Math.min(...xs) >= 0, Math.max(...xs) < 1, new Set(xs).size]))",
    { MICROVM_AGENT_INPROC: '/nonexistent/socket' },
  );
  assert.strictEqual(r.status, 0, r.stderr);
  const [native, low, high, distinct] = JSON.parse(r.stdout);
  assert.strictEqual(native, false);
  assert.ok(low && high);
  assert.strictEqual(distinct, 20000);
});

// A fake agent on a Unix socket: every line its connections send goes to `lines`, and
// `reply(connection, lines)` runs after each.
async function fakeAgent(reply) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mva-node-'));
  const sock = path.join(dir, 's');
  const lines = [];
  const conns = [];
  const server = net.createServer((c) => {
    conns.push(c);
    c.setEncoding('latin1');
    let buf = '';
    c.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        reply(c, lines);
      }
    });
  });
  await new Promise((r) => server.listen(sock, r));
  return {
    sock,
    lines,
    close() {
      for (const c of conns) c.destroy();
      server.close();
    },
  };
}

// Runs `code` with the helper until it answered one generation: that answer.
async function generationFor(code) {
  const agent = await fakeAgent((c, lines) => {
    if (lines.length === 1) c.write(`MVA1 generation 3 ${'ab'.repeat(32)}\n`);
  });
  const child = spawn(process.execPath, ['--require', helper, '-e', `${code}; setTimeout(() => {}, 5000)`], {
    env: { ...process.env, MICROVM_AGENT_INPROC: agent.sock },
  });
  try {
    const acks = () => agent.lines.filter((l) => l.startsWith('MVA1 ack'));
    for (let i = 0; i < 200 && acks().length < 1; i++) await new Promise((r) => setTimeout(r, 25));
    assert.match(agent.lines[0], new RegExp(`^MVA1 hello node ${child.pid} - holding$`));
    return acks()[0];
  } finally {
    child.kill();
    agent.close();
  }
}

test('registers, empties its pool and the crypto caches it used, and acknowledges', async () => {
  const used = "const c = require('crypto'); c.randomUUID(); c.randomInt(10)";
  assert.strictEqual(await generationFor(used), 'MVA1 ack 3 math.random,randomUUID,randomInt');
  const web = 'globalThis.crypto.randomUUID()';
  assert.strictEqual(await generationFor(web), 'MVA1 ack 3 math.random,randomUUID');
  // Caches never filled hold nothing from before the generation: nothing to draw through.
  assert.strictEqual(await generationFor('0'), 'MVA1 ack 3 math.random');
});

test('a job under a seccomp filter that kills socket() runs to completion', () => {
  // The filter is installed by a small Python wrapper (ctypes), which then execs Node with the
  // helper: the shape of a job sandbox. Without the helper's check, Node dies of SIGSYS.
  const wrapper = path.join(__dirname, '..', '..', 'python', 'tests', 'kill_socket.py');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mva-node-'));
  const sock = path.join(dir, 's');
  const server = net.createServer(() => {}).listen(sock);
  try {
    const r = spawnSync('python3', ['-S', wrapper, process.execPath, '--require', helper, '-e', "console.log('done')"], {
      env: { ...process.env, MICROVM_AGENT_INPROC: sock },
      encoding: 'utf8',
      timeout: 30000,
    });
    assert.deepStrictEqual([r.status, r.signal, r.stdout], [0, null, 'done\n'], r.stderr);
  } finally {
    server.close();
  }
});

test('the seccomp mode is read from the status', () => {
  process.env.MICROVM_AGENT_INPROC = '/nonexistent/socket';
  const { seccompMode } = require(helper);
  assert.strictEqual(seccompMode('Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n'), '2');
  assert.strictEqual(seccompMode('Name:\tx\nSeccomp:\t0\n'), '0');
  assert.strictEqual(seccompMode('Name:\tx\n'), null);
});

// The protocol's conformance vectors (testdata/), shared by every helper and client library.
function vectors(name) {
  const file = path.join(__dirname, '..', '..', '..', 'testdata', name);
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.split('\t'));
}

test('reads the agent\'s lines as the vectors say: a generation, with or without a deadline, and nothing else', () => {
  process.env.MICROVM_AGENT_INPROC = '/nonexistent/socket';
  const { parse } = require(helper);
  const records = vectors('lines.tsv');
  assert.ok(records.length >= 20);
  for (const [hex, expect] of records) {
    const line = Buffer.from(hex, 'hex').toString('latin1');
    const want = expect.startsWith('generation ') ? expect.split(' ')[1] : null;
    assert.strictEqual(parse(line), want, line);
  }
});

test('mixes as the vectors say', () => {
  process.env.MICROVM_AGENT_INPROC = '/nonexistent/socket';
  const { material, mix } = require(helper);
  for (const [seed, pid, n, fresh, m, mixed] of vectors('mix.tsv')) {
    const args = [Buffer.from(seed, 'hex'), Number(pid), n, Buffer.from(fresh, 'hex')];
    assert.strictEqual(material(...args).toString('hex'), m);
    assert.strictEqual(mix(...args).toString('hex'), mixed);
  }
});

test('Math.random after a generation is keyed with the agent\'s bytes, not OpenSSL\'s alone', () => {
  // OpenSSL made to give the same bytes in every run, as a cloned OpenSSL the native helper
  // could not reach would: then only the agent's bytes can tell two clones' draws apart.
  const draw = (seed) => {
    const code = `
      const c = require('crypto');
      c.randomFillSync = (b, off = 0, len = b.length - off) => b.fill(7, off, off + len);
      const h = require(${JSON.stringify(helper)});
      if (process.env.SEED) {
        const line = Buffer.from('MVA1 generation 3 ' + process.env.SEED, 'latin1');
        h.reseed(line, 16, 1);
      }
      console.log(Math.random());`;
    const r = node(code, { MICROVM_AGENT_INPROC: '/nonexistent/socket', SEED: seed });
    assert.strictEqual(r.status, 0, r.stderr);
    return r.stdout;
  };
  assert.strictEqual(draw(''), draw(''), 'the control: a cloned OpenSSL gives cloned draws');
  const [a, b] = [draw('ab'.repeat(32)), draw('cd'.repeat(32))];
  assert.notStrictEqual(a, b, 'two clones (two seeds) drew the same');
  assert.notStrictEqual(a, draw(''));
});

test('Math.random never throws when the stream cannot be keyed (a FIPS OpenSSL refuses ChaCha20)', () => {
  const code = `
    const c = require('crypto');
    c.createCipheriv = () => { throw new Error('unsupported in FIPS mode'); };
    const h = require(${JSON.stringify(helper)});
    h.reseed(Buffer.from('MVA1 generation 3 ' + 'ab'.repeat(32), 'latin1'), 16, 1);
    const v = [Math.random(), Math.random()];
    console.log(v.every((x) => x >= 0 && x < 1) && v[0] !== v[1]);`;
  const r = node(code, { MICROVM_AGENT_INPROC: '/nonexistent/socket' });
  assert.deepStrictEqual([r.status, r.stdout], [0, 'true\n'], r.stderr);
});

test('lines that come together or in pieces are each answered, and a line too long ends its part', async () => {
  const seed = 'ab'.repeat(32);
  const agent = await fakeAgent((c, lines) => {
    if (lines.length !== 1) return;
    // A process busy for three generations reads them in one go; then one line in two pieces;
    // then garbage (ignored) and a line longer than any of the agent's.
    c.write(`MVA1 generation 4 ${seed}\nMVA1 generation 5 ${seed}\nMVA1 generation 6 ${seed}\n`);
    c.write(`MVA1 generation 7 ${seed.slice(0, 10)}`);
    setTimeout(() => c.write(`${seed.slice(10)}\nnot a line\n`), 50);
    setTimeout(() => c.write(`MVA1 generation 8 ${'ab'.repeat(200)}\nMVA1 generation 9 ${seed}\n`), 100);
  });
  const child = spawn(process.execPath, ['--require', helper, '-e', 'setTimeout(() => {}, 5000)'], {
    env: { ...process.env, MICROVM_AGENT_INPROC: agent.sock },
  });
  try {
    for (let i = 0; i < 200 && agent.lines.length < 5; i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 200));
    assert.deepStrictEqual(agent.lines.slice(1), [4, 5, 6, 7].map((n) => `MVA1 ack ${n} math.random`));
  } finally {
    child.kill();
    agent.close();
  }
});

test('says "holding" once before its first draw after each reset, and never when it drew nothing', async () => {
  const seed = 'ab'.repeat(32);
  let told = 0;
  const agent = await fakeAgent((c, lines) => {
    // Each "holding" gets a generation (as the agent does at its next hook), up to three.
    if (lines[lines.length - 1] === 'MVA1 holding' && told < 3) c.write(`MVA1 generation ${++told} ${seed}\n`);
  });
  // Draws at start (before it could connect), then a draw after each acknowledgement but the
  // last; many draws in a row say it once.
  const code =
    'Math.random(); Math.random();' +
    "let n = 0; process.on('exit', () => {});" +
    "const t = setInterval(() => { if (++n <= 2) { for (let i = 0; i < 1000; i++) Math.random(); } }, 150);" +
    'setTimeout(() => clearInterval(t), 3000)';
  const child = spawn(process.execPath, ['--require', helper, '-e', code], {
    env: { ...process.env, MICROVM_AGENT_INPROC: agent.sock },
  });
  try {
    for (let i = 0; i < 200 && told < 3; i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 400));
    assert.deepStrictEqual(agent.lines, [
      `MVA1 hello node ${child.pid} - holding`,
      'MVA1 holding',
      'MVA1 ack 1 math.random',
      'MVA1 holding',
      'MVA1 ack 2 math.random',
      'MVA1 holding',
      'MVA1 ack 3 math.random',
    ]);
  } finally {
    child.kill();
    agent.close();
  }
});

test('a process that never draws never says "holding"', async () => {
  const agent = await fakeAgent(() => {});
  const child = spawn(process.execPath, ['--require', helper, '-e', 'setTimeout(() => {}, 5000)'], {
    env: { ...process.env, MICROVM_AGENT_INPROC: agent.sock },
  });
  try {
    for (let i = 0; i < 200 && agent.lines.length < 1; i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 300));
    assert.deepStrictEqual(agent.lines, [`MVA1 hello node ${child.pid} - holding`]);
  } finally {
    child.kill();
    agent.close();
  }
});
