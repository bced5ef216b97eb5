import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KEY_SIZE, TICKET_SIZE, issueTicket, loadOrCreateKey, parseKey, verifyTicket } from '../../lib/ticket';

const KEY = Buffer.alloc(KEY_SIZE, 7);
const UNIT = '0123456789abcdeffedcba9876543210';
const NOW = 1_750_000_000_000; // ms

function issue(over: Partial<Parameters<typeof issueTicket>[0]> = {}): Buffer {
  return issueTicket({ key: KEY, kind: 'client', unitId: UNIT, sessionId: 42n, ttlSec: 60, now: NOW, ...over });
}

t.test('round trip', async (t) => {
  const tk = issue();
  t.equal(tk.length, TICKET_SIZE);
  t.equal(tk.toString('latin1', 0, 2), 'NT', 'magic reads "NT"');
  t.equal(tk[2], 1, 'version');
  t.equal(tk[3], 1, 'kind client');
  t.equal(tk.toString('hex', 4, 12), UNIT.slice(0, 16), 'unit id prefix');
  t.same(verifyTicket(tk, { key: KEY, unitId: UNIT, now: NOW }), { kind: 'client', sessionId: 42n, expiresAtSec: NOW / 1000 + 60 });

  const ctl = issue({ kind: 'control', sessionId: 0, unitId: Buffer.from(UNIT, 'hex') });
  t.equal(ctl[3], 2);
  t.same(verifyTicket(ctl, { key: KEY, unitId: Buffer.from(UNIT, 'hex'), now: NOW, kind: 'control' }), {
    kind: 'control',
    sessionId: 0n,
    expiresAtSec: NOW / 1000 + 60,
  });

  const max = issue({ sessionId: '18446744073709551615' });
  t.equal(verifyTicket(max, { key: KEY, unitId: UNIT, now: NOW }).sessionId, 2n ** 64n - 1n, 'u64 max session id');

  const inView = new Uint8Array(100);
  inView.set(tk, 13);
  t.equal(verifyTicket(inView.subarray(13, 13 + 52), { key: KEY, unitId: UNIT, now: NOW }).sessionId, 42n, 'a view with an offset');

  t.equal(verifyTicket(issue({ now: undefined }), { key: KEY, unitId: UNIT }).kind, 'client', 'default clock');
  t.not(issue().toString('hex'), issue().toString('hex'), 'nonces differ');
  t.ok(TICKET_SIZE <= 56, 'fits in rdma_cm private data');
});

t.test('every tampered byte fails', async (t) => {
  const tk = issue();
  const results = new Set<string>();
  for (let i = 0; i < TICKET_SIZE; i++) {
    for (const mask of [0x01, 0x80]) {
      const c = Buffer.from(tk);
      c[i]! ^= mask;
      try {
        verifyTicket(c, { key: KEY, unitId: UNIT, now: NOW });
        results.add(`byte ${i} accepted`);
      } catch (e) {
        results.add((e as { code: string }).code);
      }
    }
  }
  t.same([...results], ['ERR_NPMU_TICKET_INVALID']);
});

t.test('expiry', async (t) => {
  const tk = issue({ ttlSec: 10 });
  const exp = NOW / 1000 + 10;
  t.equal(verifyTicket(tk, { key: KEY, unitId: UNIT, now: exp * 1000 - 1 }).expiresAtSec, exp, 'valid until the last millisecond');
  t.throws(() => verifyTicket(tk, { key: KEY, unitId: UNIT, now: exp * 1000 }), { code: 'ERR_NPMU_TICKET_EXPIRED', expiresAtSec: exp, name: 'NpmuError' });
  t.throws(() => verifyTicket(tk, { key: KEY, unitId: UNIT, now: NOW + 86_400_000 }), { code: 'ERR_NPMU_TICKET_EXPIRED' });
  t.doesNotThrow(() => verifyTicket(tk, { key: KEY, unitId: UNIT, now: exp * 1000 + 4000, leewaySec: 5 }), 'leeway');
  t.throws(() => verifyTicket(tk, { key: KEY, unitId: UNIT, now: exp * 1000 + 5000, leewaySec: 5 }), { code: 'ERR_NPMU_TICKET_EXPIRED' });
});

t.test('wrong unit', async (t) => {
  const tk = issue();
  t.throws(() => verifyTicket(tk, { key: KEY, unitId: 'ff' + UNIT.slice(2), now: NOW }), { code: 'ERR_NPMU_TICKET_WRONG_UNIT' });
  // Only the first 8 bytes are carried (documented truncation).
  t.doesNotThrow(() => verifyTicket(tk, { key: KEY, unitId: UNIT.slice(0, 16) + '0'.repeat(16), now: NOW }));
});

t.test('wrong key, wrong kind, wrong sizes, wrong types', async (t) => {
  const tk = issue();
  const other = Buffer.alloc(KEY_SIZE, 8);
  t.throws(() => verifyTicket(tk, { key: other, unitId: UNIT, now: NOW }), { code: 'ERR_NPMU_TICKET_INVALID', message: /MAC/ });
  t.throws(() => verifyTicket(tk, { key: KEY, unitId: UNIT, now: NOW, kind: 'control' }), { code: 'ERR_NPMU_TICKET_INVALID', message: /kind|client ticket/ });
  for (const len of [0, 1, 51, 53, 56, 1000]) {
    const b = Buffer.alloc(len);
    tk.copy(b, 0, 0, Math.min(len, TICKET_SIZE));
    t.throws(() => verifyTicket(b, { key: KEY, unitId: UNIT, now: NOW }), { code: 'ERR_NPMU_TICKET_INVALID' }, `${len} bytes`);
  }
  t.throws(() => verifyTicket('ticket' as never, { key: KEY, unitId: UNIT, now: NOW }), { code: 'ERR_NPMU_TICKET_INVALID' });
  t.throws(() => verifyTicket(null as never, { key: KEY, unitId: UNIT, now: NOW }), { code: 'ERR_NPMU_TICKET_INVALID' });
  // A forged ticket with a valid layout and an unknown kind still fails on the MAC.
  const forged = Buffer.from(tk);
  forged[3] = 9;
  t.throws(() => verifyTicket(forged, { key: KEY, unitId: UNIT, now: NOW }), { code: 'ERR_NPMU_TICKET_INVALID' });
});

t.test('bad arguments to issue/verify', async (t) => {
  const bad: Array<[string, Partial<Parameters<typeof issueTicket>[0]>]> = [
    ['short key', { key: Buffer.alloc(31) }],
    ['key as string', { key: 'k'.repeat(32) as never }],
    ['kind', { kind: 'admin' as never }],
    ['kind toString', { kind: 'toString' as never }],
    ['unit id short', { unitId: 'abcd' }],
    ['unit id bytes', { unitId: Buffer.alloc(8) }],
    ['unit id number', { unitId: 5 as never }],
    ['negative session', { sessionId: -1n }],
    ['session 2^64', { sessionId: 2n ** 64n }],
    ['session hex string', { sessionId: '0x10' }],
    ['session float', { sessionId: 1.5 }],
    ['session unsafe number', { sessionId: 2 ** 60 }],
    ['ttl 0', { ttlSec: 0 }],
    ['ttl float', { ttlSec: 1.5 }],
    ['ttl beyond 2106', { ttlSec: 2 ** 32 }],
    ['now negative', { now: -1 }],
  ];
  for (const [name, over] of bad) {
    t.throws(() => issue(over), { code: /^ERR_INVALID_ARG_(VALUE|TYPE)$/ }, name);
  }
  t.throws(() => verifyTicket(issue(), { key: Buffer.alloc(5), unitId: UNIT }), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => verifyTicket(issue(), { key: KEY, unitId: 'zz' }), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => verifyTicket(issue(), { key: KEY, unitId: UNIT, leewaySec: -1 }), { code: 'ERR_INVALID_ARG_VALUE' });
});

t.test('key files', async (t) => {
  const dir = t.testdir({ 'bad.key': 'nothex\n', 'loose.key': 'ab'.repeat(32) + '\n' });
  fs.chmodSync(path.join(dir, 'loose.key'), 0o644);

  const file = path.join(dir, 'npmu.key');
  const k1 = loadOrCreateKey(file);
  t.equal(k1.length, KEY_SIZE);
  const st = fs.statSync(file);
  t.equal(st.mode & 0o777, 0o600, 'created with mode 0600');
  t.match(fs.readFileSync(file, 'utf8'), /^[0-9a-f]{64}\n$/);
  t.same(loadOrCreateKey(file), k1, 'loaded again');
  t.same(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'no temporary files left');

  fs.chmodSync(path.join(dir, 'bad.key'), 0o600);
  t.throws(() => loadOrCreateKey(path.join(dir, 'bad.key')), { code: 'ERR_NPMU_KEY_INVALID' });
  t.throws(() => loadOrCreateKey(path.join(dir, 'loose.key')), { code: 'ERR_NPMU_KEY_PERMISSIONS', mode: 0o644 });
  fs.chmodSync(path.join(dir, 'loose.key'), 0o600);
  t.same(loadOrCreateKey(path.join(dir, 'loose.key')), Buffer.alloc(32, 0xab));
  t.throws(() => loadOrCreateKey(path.join(dir, 'no', 'such', 'dir.key')), { code: 'ERR_NPMU_KEY_FILE', errno: 'ENOENT' });
  t.throws(() => loadOrCreateKey(dir), { code: 'ERR_NPMU_KEY_FILE' }, 'a directory');
  t.throws(() => loadOrCreateKey(''), { code: 'ERR_INVALID_ARG_TYPE' });

  t.same(parseKey('AB'.repeat(32)), Buffer.alloc(32, 0xab), 'no newline, upper case');
  t.throws(() => parseKey('ab'.repeat(32) + '\n\n'), { code: 'ERR_NPMU_KEY_INVALID' });
  t.throws(() => parseKey('ab'.repeat(31)), { code: 'ERR_NPMU_KEY_INVALID' });

  // The key round-trips into a working ticket.
  const tk = issueTicket({ key: k1, kind: 'client', unitId: UNIT, sessionId: 1, ttlSec: 5 });
  t.equal(verifyTicket(tk, { key: loadOrCreateKey(file), unitId: UNIT }).sessionId, 1n);
});

t.test('concurrent creators agree on one key', async (t) => {
  const dir = t.testdir({});
  const file = path.join(dir, 'shared.key');
  const mod = path.resolve(__dirname, '../../lib/ticket.js');
  const script = `process.stdout.write(require(${JSON.stringify(mod)}).loadOrCreateKey(${JSON.stringify(file)}).toString('hex'))`;
  const outs = await Promise.all(
    Array.from(
      { length: 8 },
      () =>
        new Promise<string>((resolve, reject) => {
          const p = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          p.stdout.on('data', (d: Buffer) => (out += d));
          p.on('error', reject);
          p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}`))));
        }),
    ),
  );
  t.equal(new Set(outs).size, 1, 'all processes got the same key');
  t.equal(outs[0], fs.readFileSync(file, 'utf8').trim());
});
