'use strict';
// Framing, errors and connection handling against a scripted server (no
// daemon needed): `node --test test/unit.test.js`. The tests against a real
// daemon and mount are in Tests/SecretfsNodeClientTests (they run the
// scripts in test/daemon/).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const wire = require('../lib/wire');
const { SecretfsError } = require('../lib/errors');
const { Client } = require('..');

function frame(type, body = Buffer.alloc(0)) {
  const b = new wire.Builder(type, body.length);
  b.bytes(body);
  return b.finish();
}

function errorFrame(code, message) {
  return new wire.Builder(wire.Type.ERROR, 2 + wire.textSize(message)).u16(code).text(message).finish();
}

function namesReply(names) {
  const b = new wire.Builder(wire.Type.NAMES_REPLY, 4 + names.reduce((n, s) => n + wire.textSize(s), 0)).u32(names.length);
  for (const n of names) b.text(n);
  return b.finish();
}

test('frames split at every byte come out whole and in order', () => {
  const a = frame(wire.Type.REDACTED, Buffer.from('first\n'));
  const b = frame(wire.Type.ENDED);
  const c = namesReply(['A', 'B_2']);
  const stream = Buffer.concat([a, b, c]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const s = new wire.FrameSplitter();
    const got = [...s.push(stream.subarray(0, cut)), ...s.push(stream.subarray(cut))];
    assert.deepEqual(got.map((f) => f.toString('hex')), [a, b, c].map((f) => f.toString('hex')), `cut at ${cut}`);
    assert.equal(s.partial, false);
  }
});

test('a length under 2 or over the reply limit is refused', () => {
  for (const length of [0, 1, wire.MAX_REPLY_FRAME + 1]) {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(length >>> 0);
    assert.throws(() => new wire.FrameSplitter().push(head), wire.ParseError, `length ${length}`);
  }
});

test('PROBLEMS parses every problem with its location, and its error lists them', () => {
  const problems = [
    { kind: 'missingSecret', context: 'blocks[0] "a" config.x', line: 4, column: 16, message: 'secret NOPE does not exist in the project', secretName: 'NOPE' },
    { kind: 'notStatic', context: '', line: 1, column: 1, message: 'secrets[key] cannot be resolved statically', secretName: null },
  ];
  let size = 4;
  for (const p of problems) size += wire.textSize(p.kind) + wire.textSize(p.context) + 8 + wire.textSize(p.message) + 1 + (p.secretName ? wire.textSize(p.secretName) : 0);
  const b = new wire.Builder(wire.Type.PROBLEMS, size).u32(problems.length);
  for (const p of problems) {
    b.text(p.kind).text(p.context).u32(p.line).u32(p.column).text(p.message);
    if (p.secretName) b.u8(1).text(p.secretName); else b.u8(0);
  }
  const parsed = wire.parseProblems(b.finish());
  assert.deepEqual(parsed, problems);
  const e = SecretfsError.fromProblems(parsed, '/x.sock');
  assert.equal(e.code, 100);
  assert.equal(e.codeName, 'problems');
  assert.match(e.message, /blocks\[0\] "a" config\.x 4:16: secret NOPE does not exist/);
  assert.match(e.message, /\n1:1: secrets\[key\]/);
  // A byte left over is malformed.
  assert.throws(() => wire.parseProblems(Buffer.concat([b.finish(), Buffer.from([0])])), wire.ParseError);
});

test("server codes keep the daemon's number and name; unknown ones are malformed replies", () => {
  const e = SecretfsError.fromServer(20, 'project demo: project not mounted', '/x.sock');
  assert.equal(e.code, 20);
  assert.equal(e.codeName, 'not-mounted');
  assert.match(e.hint, /mount the project/);
  assert.equal(SecretfsError.fromServer(7, 'uid 5 is not allowed\u0007', '/x.sock').message,
    'resolver daemon: uid 5 is not allowed\\u{7} (not-allowed)');
  assert.equal(SecretfsError.fromServer(99, 'x', '/x.sock').codeName, 'malformed-reply');
  assert.equal(SecretfsError.fromServer(101, 'x', '/x.sock').codeName, 'malformed-reply');
  const denied = SecretfsError.fromConnect({ code: 'EACCES' }, '/x.sock');
  assert.deepEqual([denied.code, denied.codeName, denied.errno], [103, 'permission-denied', 'EACCES']);
});

/** A scripted daemon: `onFrame(conn, frame, index)` per request; counts connections. */
async function fakeDaemon(t, onFrame, { mode = 0o700 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'secretfs-node-unit-'));
  fs.chmodSync(dir, mode);
  const socketPath = path.join(dir, 'd.sock');
  const stats = { connections: 0, requests: [] };
  const server = net.createServer((c) => {
    stats.connections++;
    const id = stats.connections;
    const splitter = new wire.FrameSplitter(wire.MAX_REQUEST_FRAME);
    let index = 0;
    c.on('data', (d) => { for (const f of splitter.push(d)) { stats.requests.push([id, f[5]]); onFrame(c, f, index++, id); } });
    c.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(socketPath, resolve));
  t.after(() => { server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  return { socketPath, stats, dir };
}

test('pipelined requests are answered in order', async (t) => {
  const d = await fakeDaemon(t, (c, f, i) => c.write(namesReply([`N${i}`])));
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  const got = await Promise.all([client.names('demo'), client.names('demo'), client.names('demo')]);
  assert.deepEqual(got, [['N0'], ['N1'], ['N2']]);
  assert.equal(d.stats.connections, 1);
});

test('a request that crosses the idle timeout is sent again, once, on a new connection', async (t) => {
  // Connection 1 answers its first request, then says `timeout` and closes,
  // as the daemon does when the second request arrives just too late.
  const d = await fakeDaemon(t, (c, f, i, id) => {
    if (id === 1 && i === 1) { c.end(errorFrame(9, 'no complete request within 300.0 s')); return; }
    c.write(namesReply([`C${id}`]));
  });
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  assert.deepEqual(await client.names('demo'), ['C1']);
  assert.deepEqual(await client.names('demo'), ['C2']);
  assert.equal(d.stats.connections, 2);
});

test('a fresh connection that fails is not retried; an ERROR keeps its code', async (t) => {
  const d = await fakeDaemon(t, (c) => c.write(errorFrame(23, "'x' is not a valid project name")));
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  await assert.rejects(client.names('demo'), (e) => e instanceof SecretfsError && e.code === 23 && e.codeName === 'invalid-project');
  const d2 = await fakeDaemon(t, (c) => c.destroy());
  const client2 = new Client({ socket: d2.socketPath });
  t.after(() => client2.close());
  await assert.rejects(client2.names('demo'), (e) => e.codeName === 'connection-closed');
  // One connection, then one more listening first for a refusal: never more.
  assert.ok(d2.stats.connections <= 2, `${d2.stats.connections} connections`);
});

test('a reply of the wrong type is a malformed reply, not a misread', async (t) => {
  const d = await fakeDaemon(t, (c) => c.write(frame(wire.Type.ENDED)));
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  await assert.rejects(client.names('demo'), (e) => e.codeName === 'malformed-reply' && /unexpected message 0x99/.test(e.message));
});

test('a socket in a directory others may write is not trusted', async (t) => {
  const d = await fakeDaemon(t, (c) => c.write(namesReply([])), { mode: 0o777 });
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  await assert.rejects(client.names('demo'), (e) => e.codeName === 'untrusted-server' && e.message.includes('writable by other users'));
  assert.equal(d.stats.connections, 0);
});

test("a socket reached through another user's symbolic link is not trusted", { skip: process.getuid() !== 0 && 'needs root to chown' }, async (t) => {
  // Their daemon, in a directory of theirs (its owner is trusted when the
  // path names that directory), reached through a link of theirs: the link
  // could be pointed anywhere, so it is refused; through our own link, the
  // directory it names is what is checked.
  const d = await fakeDaemon(t, (c) => c.write(namesReply(['THEIRS'])));
  fs.chownSync(d.dir, 65534, 65534);
  fs.chownSync(d.socketPath, 65534, 65534);
  const theirs = path.join(os.tmpdir(), `secretfs-node-link-theirs-${process.pid}`);
  const ours = path.join(os.tmpdir(), `secretfs-node-link-ours-${process.pid}`);
  fs.symlinkSync(d.dir, theirs);
  fs.lchownSync(theirs, 65534, 65534);
  fs.symlinkSync(d.dir, ours);
  t.after(() => { fs.rmSync(theirs, { force: true }); fs.rmSync(ours, { force: true }); });
  const client = new Client({ socket: path.join(theirs, 'd.sock') });
  t.after(() => client.close());
  await assert.rejects(client.names('demo'), (e) => e.codeName === 'untrusted-server' && /symbolic link of uid 65534/.test(e.message));
  assert.equal(d.stats.connections, 0);
  const viaOurs = new Client({ socket: path.join(ours, 'd.sock') });
  t.after(() => viaOurs.close());
  assert.deepEqual(await viaOurs.names('demo'), ['THEIRS']);
  // Our link to their link: theirs is still on the way.
  const chained = path.join(os.tmpdir(), `secretfs-node-link-chained-${process.pid}`);
  fs.symlinkSync(theirs, chained);
  t.after(() => fs.rmSync(chained, { force: true }));
  const viaChain = new Client({ socket: path.join(chained, 'd.sock') });
  t.after(() => viaChain.close());
  await assert.rejects(viaChain.names('demo'), (e) => e.codeName === 'untrusted-server' && /symbolic link of uid 65534/.test(e.message));
});

test('a reply that announces more names or problems than the daemon ever sends is malformed, not a heap', async (t) => {
  const huge = new wire.Builder(wire.Type.NAMES_REPLY, 4).u32(wire.MAX_LISTED_NAMES + 1).finish();
  const d = await fakeDaemon(t, (c) => c.write(huge));
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  await assert.rejects(client.names('demo'), (e) => e.codeName === 'malformed-reply' && /at most 1000000/.test(e.message));
  const problems = new wire.Builder(wire.Type.PROBLEMS, 4).u32(wire.MAX_PROBLEMS + 1).finish();
  const d2 = await fakeDaemon(t, (c) => c.write(problems));
  const client2 = new Client({ socket: d2.socketPath });
  t.after(() => client2.close());
  await assert.rejects(client2.resolve('demo', 'x: 1'), (e) => e.codeName === 'malformed-reply' && /at most 200000/.test(e.message));
});

test('names are checked before anything is sent', async (t) => {
  const client = new Client({ socket: '/nonexistent/d.sock' });
  await assert.rejects(client.names('no-dash'), (e) => e.codeName === 'invalid-project' && e.code === 23);
  await assert.rejects(client.values('demo', ['A', 'b c']), (e) => e.codeName === 'invalid-name' && e.code === 5);
  await assert.rejects(client.names('demo'), (e) => e.codeName === 'not-running' && e.code === 101);
});

test('arguments of the wrong type or value are SecretfsErrors, refused before anything is sent', async (t) => {
  const client = new Client({ socket: '/nonexistent/d.sock' });
  const invalid = (e) => e instanceof SecretfsError && e.codeName === 'invalid-argument' && e.code === 110;
  // A string is iterable: it must not become a request for its letters.
  await assert.rejects(client.values('demo', 'API_TOKEN'), invalid);
  await assert.rejects(client.resolve('demo', 'x: 1', { format: 'yaml' }), invalid);
  await assert.rejects(client.resolve('demo', 'x: 1', { format: 'toString' }), invalid);
  await assert.rejects(client.resolve('demo', 'x: 1', { output: 'bogus' }), invalid);
  await assert.rejects(client.resolve('demo', 42), invalid);
});

test('the redaction stream sends DATA frames of at most 64 KiB and pushes each REDACTED', async (t) => {
  const sizes = [];
  const d = await fakeDaemon(t, (c, f) => {
    if (f[5] === wire.Type.REDACT) c.write(new wire.Builder(wire.Type.REDACTING, 4).u32(0).finish());
    else if (f[5] === wire.Type.DATA) { sizes.push(f.length - wire.HEADER); c.write(frame(wire.Type.REDACTED, Buffer.from(`<${f.length - wire.HEADER}>`))); }
    else if (f[5] === wire.Type.END) c.write(frame(wire.Type.ENDED, Buffer.from('<end>')));
  });
  const client = new Client({ socket: d.socketPath });
  t.after(() => client.close());
  const s = client.redact('demo');
  const out = [];
  s.on('data', (b) => out.push(b.toString()));
  await new Promise((resolve, reject) => { s.on('end', resolve); s.on('error', reject); s.write(Buffer.alloc(150000)); s.end('x'); });
  assert.deepEqual(sizes, [65536, 65536, 150000 - 131072, 1]);
  assert.equal(out.join(''), '<65536><65536><18928><1><end>');
});

test("the default socket is SECRETFS_RESOLVER's, else the runtime directory's, else the installed service's", () => {
  const { defaultSocket } = require('..');
  const saved = { r: process.env.SECRETFS_RESOLVER, d: process.env.SECRETFS_RUNTIME_DIR };
  try {
    delete process.env.SECRETFS_RESOLVER;
    delete process.env.SECRETFS_RUNTIME_DIR;
    // Where secretfs-resolver.service listens (systemd/secretfs-resolver.service.in).
    assert.equal(defaultSocket(), '/run/secretfs-resolver/resolver.sock');
    const unit = fs.readFileSync(path.join(__dirname, '../../../systemd/secretfs-resolver.service.in'), 'utf8');
    assert.match(unit, /--listen %t\/secretfs-resolver\/resolver\.sock/);
    process.env.SECRETFS_RUNTIME_DIR = '/tmp/rt';
    assert.equal(defaultSocket(), '/tmp/rt/resolver.sock');
    process.env.SECRETFS_RESOLVER = '/tmp/d.sock';
    assert.equal(defaultSocket(), '/tmp/d.sock');
  } finally {
    for (const [k, v] of [['SECRETFS_RESOLVER', saved.r], ['SECRETFS_RUNTIME_DIR', saved.d]]) {
      if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  }
});
