'use strict';
// The Node.js client library: its parts alone, then against the real agent (a new generation and
// its acknowledgement, a callback that throws and one that never settles, suspend, terminate).

const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const net = require('net');
const http = require('http');
const { spawn, spawnSync } = require('child_process');

const agentLib = require('..');

const LIB = path.resolve(__dirname, '..');
const REPO = path.resolve(__dirname, '..', '..', '..');

test('the protocol lines', () => {
  const seed = 'ab'.repeat(32);
  assert.deepStrictEqual(agentLib._parse(`MVA1 generation 3 ${seed}`), {
    event: 'generation',
    number: 3,
    seed: Buffer.alloc(32, 0xab),
    budget: null,
  });
  assert.strictEqual(agentLib._parse(`MVA1 generation 3 ${seed} 850`).budget, 850);
  assert.deepStrictEqual(agentLib._parse('MVA1 event suspend 3'), { event: 'suspend', number: 3, seed: null, budget: null });
  assert.deepStrictEqual(agentLib._parse('MVA1 event terminate 3 0'), { event: 'terminate', number: 3, seed: null, budget: 0 });
  assert.strictEqual(agentLib._parse('MVA1 event suspend 3 -1'), null);
  assert.strictEqual(agentLib._parse('MVA1 event suspend 3 1 2'), null);
  assert.strictEqual(agentLib._parse('MVA1 event reboot 3'), null);
  assert.strictEqual(agentLib._parse(`MVA2 generation 3 ${seed}`), null);
  const line = agentLib._failLine(7, `Error: ${'é'.repeat(300)}\nmore`);
  assert.ok(Buffer.byteLength(line) <= 256 && line.endsWith('\n') && line.split('\n').length === 2);
  assert.ok(Buffer.byteLength(line) >= 254, 'cut at the last whole character, not before');
  // A huge message is cut once (it blocked the event loop for seconds when cut a character at a
  // time): this finishes at once or the runner's timeout fails it.
  const huge = agentLib._failLine(7, 'x'.repeat(16 << 20));
  assert.strictEqual(Buffer.byteLength(huge), 256);
});

// The protocol's conformance vectors (testdata/), shared by every helper and client library.
function vectors(name) {
  return fs
    .readFileSync(path.join(REPO, 'testdata', name), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.split('\t'));
}

test('reads the agent\'s lines as the vectors say', () => {
  const records = vectors('lines.tsv');
  assert.ok(records.length >= 20);
  for (const [hex, expect] of records) {
    const w = expect.split(' ');
    const budget = w[w.length - 1] === '-' ? null : Number(w[w.length - 1]);
    let want = null;
    if (w[0] === 'generation') want = { event: 'generation', number: Number(w[1]), seed: Buffer.from(w[2], 'hex'), budget };
    if (w[0] === 'event') want = { event: w[1], number: Number(w[2]), seed: null, budget };
    const line = Buffer.from(hex, 'hex').toString('latin1'); // as the library reads its socket
    assert.deepStrictEqual(agentLib._parse(line), want, line);
  }
});

test('mixes as the vectors say', () => {
  for (const [seed, pid, n, fresh, , mixed] of vectors('mix.tsv')) {
    const got = agentLib._mix(Buffer.from(seed, 'hex'), Number(pid), n, Buffer.from(fresh, 'hex'));
    assert.strictEqual(got.toString('hex'), mixed);
  }
});

test('reads generation files as the vectors say', () => {
  const records = vectors('generation.tsv');
  assert.ok(records.length >= 8);
  for (const [name, ...expect] of records) {
    const g = agentLib._parseGeneration(fs.readFileSync(path.join(REPO, 'testdata', 'generation', name)));
    if (expect[0] === 'reject') {
      assert.strictEqual(g, null, name);
      continue;
    }
    assert.notStrictEqual(g, null, name);
    assert.deepStrictEqual([String(g.number), g.id, g.reason, g.microvmId === null ? 'null' : g.microvmId, g.kernelCrng], expect, name);
  }
});

test('randomBytes gives what is asked and differs between calls', () => {
  const a = agentLib.randomBytes(70);
  assert.strictEqual(a.length, 70);
  assert.notDeepStrictEqual(a, agentLib.randomBytes(70));
});

test('outside a MicroVM it does nothing and says so once', () => {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MICROVM_AGENT')));
  const out = spawnSync(
    process.execPath,
    ['-e', `const a = require(${JSON.stringify(LIB)}); a.onNewGeneration(() => {}); a.onSuspend(() => {}); console.log(a.current(), a.seed(), a.isActive());`],
    { env, encoding: 'utf8' },
  );
  assert.strictEqual(out.status, 0, out.stderr);
  assert.strictEqual(out.stdout.trim(), 'null null false');
  assert.strictEqual(out.stderr.split('not behind microvm-agent').length - 1, 1, out.stderr);
});

// ---- against the real agent ----------------------------------------------------------------

function agentBinary(t) {
  const bin = process.env.MICROVM_AGENT_BIN || path.join(REPO, 'target', 'debug', 'microvm-agent');
  if (!fs.existsSync(bin)) {
    if (process.env.MICROVM_AGENT_REQUIRE_VM) throw new Error(`the agent is not built: ${bin}`);
    t.skip(`the agent is not built (cargo build): ${bin}`);
    return null;
  }
  return bin;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const APP = (out, mode) => `
const fs = require('fs');
const agent = require(${JSON.stringify(LIB)});
const out = ${JSON.stringify(out)};
const write = (name, text) => fs.appendFileSync(out + '/' + name, text + '\\n');
let key = agent.randomBytes(16).toString('hex');
write('keys', key);
agent.onNewGeneration(async (gen) => {
  await new Promise((r) => setTimeout(r, 20));
  key = agent.randomBytes(16).toString('hex');
  write('keys', key);
  write('order', 'first');
});
agent.onNewGeneration((gen) => {
  write('order', 'second');
  write('generations', gen.number + ' ' + gen.id + ' ' + (gen.processSeed !== null));
  if (gen.signal) write('signals', String(gen.signal.aborted));
  if (${JSON.stringify(mode)} === 'throw' && gen.reason === 'run') throw new Error("the app's callback broke");
  if (${JSON.stringify(mode)} === 'hang' && gen.reason === 'run') return new Promise(() => {});
});
agent.onSuspend((gen) => write('events', 'suspend ' + gen.number));
agent.onTerminate((gen) => write('events', 'terminate ' + gen.number));
write('started', 'yes');
setInterval(() => {}, 1000);
`;

function request(port, method, p) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: p }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body || 'null') }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function waitFor(what, why, limitMs = 20000) {
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline) {
    try {
      const v = await what();
      if (v) return v;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`waited for ${why}`);
}

async function startAgent(t, mode = 'ok', config = '') {
  const bin = agentBinary(t);
  if (!bin) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mva-node-lib-'));
  const out = path.join(dir, 'out');
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(dir, 'app.js'), APP(out, mode));
  fs.writeFileSync(path.join(dir, 'agent.toml'), `[hooks]\nrun_timeout = "2s"\n${config}`);
  const port = await freePort();
  const env = { ...process.env, MICROVM_AGENT_LOG: 'warn' };
  delete env.MICROVM_AGENT_INPROC;
  const proc = spawn(
    bin,
    ['--listen', `127.0.0.1:${port}`, '--state-dir', path.join(dir, 'state'), '--log-format', 'text',
      '-c', path.join(dir, 'agent.toml'), '--', process.execPath, path.join(dir, 'app.js')],
    { env, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const a = {
    proc,
    hook: (p) => request(port, 'POST', p),
    status: async () => (await request(port, 'GET', '/status')).body,
    read: (name) => {
      try {
        return fs.readFileSync(path.join(out, name), 'utf8').split('\n').filter(Boolean);
      } catch {
        return [];
      }
    },
    stop: () => {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  t.after(a.stop);
  await waitFor(() => a.read('started').length, 'the app to start');
  await waitFor(async () => (await a.status()).inproc.processes.some((p) => p.kind === 'app'), 'the library to register');
  return a;
}

test('a new generation runs the callbacks in order before the hook answers', async (t) => {
  const a = await startAgent(t);
  if (!a) return;
  assert.deepStrictEqual(a.read('generations'), [], 'nothing at start (the build VM)');
  const run = await a.hook('/run');
  assert.strictEqual(run.status, 200, JSON.stringify(run.body));
  assert.deepStrictEqual(a.read('order'), ['first', 'second'], 'the async callback was awaited');
  const gen = (await a.status()).generation;
  assert.deepStrictEqual(a.read('generations'), [`${gen.generation} ${gen.id} true`]);
  // The agent's deadline came with the line, as a signal not yet aborted.
  assert.deepStrictEqual(a.read('signals'), ['false']);
  const keys = a.read('keys');
  assert.strictEqual(keys.length, 2);
  assert.notStrictEqual(keys[0], keys[1]);
  const member = (await a.status()).inproc.processes.find((p) => p.kind === 'app');
  assert.strictEqual(member.reseeded, 'callbacks=2');
  assert.strictEqual((await a.hook('/suspend')).status, 200);
  assert.deepStrictEqual(a.read('events'), [`suspend ${gen.generation}`]);
  assert.strictEqual((await a.hook('/resume')).status, 200);
  assert.strictEqual(a.read('generations').length, 2);
  assert.strictEqual((await a.hook('/terminate')).status, 200);
  await waitFor(() => a.read('events').includes(`terminate ${gen.generation + 1}`), 'the terminate callback');
});

test('a callback that throws fails /run and only reports on /resume', async (t) => {
  const a = await startAgent(t, 'throw');
  if (!a) return;
  const run = await a.hook('/run');
  assert.strictEqual(run.status, 500);
  assert.match(JSON.stringify(run.body), /Error: the app's callback broke/);
  assert.strictEqual((await a.hook('/resume')).status, 200);
});

test('a callback that never settles fails /run inside its budget', async (t) => {
  const a = await startAgent(t, 'hang');
  if (!a) return;
  const t0 = Date.now();
  const run = await a.hook('/run');
  assert.strictEqual(run.status, 500);
  assert.match(JSON.stringify(run.body), /did not acknowledge/);
  assert.ok(Date.now() - t0 < 2000, 'answered inside run_timeout (2 s)');
});

test('the package is found by its name through its exports, with its types', () => {
  const pkg = require('../package.json');
  assert.strictEqual(pkg.name, 'microvm-agent-client');
  assert.strictEqual(pkg.exports['.'].types, './index.d.ts');
  // Resolve the package by name as an app would, from a node_modules beside it.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mva-client-'));
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(path.resolve(__dirname, '..'), path.join(dir, 'node_modules', pkg.name));
  const r = spawnSync(process.execPath, ['-e', `const a = require('${pkg.name}'); console.log(typeof a.onNewGeneration, typeof a.kernelCrng)`], { cwd: dir, encoding: 'utf8' });
  assert.strictEqual(r.stdout.trim(), 'function function', r.stderr);
  // A deep import is not part of the API: "exports" keeps it out.
  const deep = spawnSync(process.execPath, ['-e', `require('${pkg.name}/index.js')`], { cwd: dir, encoding: 'utf8' });
  assert.notStrictEqual(deep.status, 0);
  const types = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');
  assert.match(types, /export type KernelCrng = 'reseeded' \| 'platform' \| 'not-reseeded';/);
});
