/**
 * The `npmu` CLI's management commands, natively: volumes and regions
 * against a PMM on protocol-level fake units (no data path needed), human
 * and --json output, errors with codes, clients files, hexdump layout.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { ClientRegistry, parseClients } from '../../pmm/credentials';
import { PmmServer } from '../../pmm/server';
import { hexdump, parseSize } from '../../cli/npmu';
import { FakeUnit } from './pmm-fake-unit';

const cli = path.join(__dirname, '..', '..', 'cli', 'npmu.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-cli-'));
const clientsFile = path.join(dir, 'clients');

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { env: { ...process.env, ...env } }, (e, out, err) => {
      resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out, err });
    });
  });
}

t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

t.test('sizes and hexdump', async (t) => {
  t.equal(parseSize('4096'), 4096);
  t.equal(parseSize('64K'), 65536);
  t.equal(parseSize('2MiB'), 2 << 20);
  t.equal(parseSize('0x100'), 256);
  t.throws(() => parseSize('lots'));
  const d = hexdump(Buffer.concat([Buffer.from('hello, world\n\0\x01\x02'), Buffer.alloc(48)]), 0x7f0000000000n);
  t.equal(
    d,
    [
      '7f0000000000  68 65 6c 6c 6f 2c 20 77  6f 72 6c 64 0a 00 01 02  |hello, world....|',
      '7f0000000010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
      '*',
      '7f0000000030  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
      '7f0000000040',
    ].join('\n'),
  );
});

t.test('pmm add-client writes a clients file the PMM accepts', async (t) => {
  const a = await run(['pmm', 'add-client', 'alice', '--clients-file', clientsFile, '--log-n', '4', '--json']);
  t.equal(a.code, 0, a.err);
  const { secret } = JSON.parse(a.out) as { secret: string };
  t.match(secret, /^[A-Za-z0-9_-]{43}$/);
  const b = await run(['pmm', 'add-client', 'ops', '--clients-file', clientsFile, '--log-n', '4', '--secret', 'ops-secret', '--admin']);
  t.match(b.out, /client ops added/);
  const again = await run(['pmm', 'add-client', 'ops', '--clients-file', clientsFile]);
  t.equal(again.code, 2);
  t.match(again.err, /already/);
  t.equal((fs.statSync(clientsFile).mode & 0o777).toString(8), '600');
  const reg = new ClientRegistry({ entries: parseClients(fs.readFileSync(clientsFile, 'utf8')) });
  t.same(reg.verify('alice', Buffer.from(secret)), ['user']);
  t.same(reg.verify('ops', Buffer.from('ops-secret')), ['admin']);
  process.env.NPMU_TEST_ALICE_SECRET = secret;
});

t.test('volume and region commands', async (t) => {
  const key = randomBytes(32);
  const p = await new FakeUnit({ key, rdmaPort: 7471 }).start();
  const m = await new FakeUnit({ key, rdmaPort: 7472 }).start();
  const pmm = await PmmServer.start({
    key,
    clients: new ClientRegistry({ file: clientsFile }),
    host: '127.0.0.1',
    port: 0,
    zeroNewRegions: false,
  });
  const conn = { NPMU_PMM: `127.0.0.1:${pmm.port}`, NPMU_VOLUME: 'v1', NPMU_CLIENT: 'alice', NPMU_SECRET: process.env.NPMU_TEST_ALICE_SECRET! };
  try {
    const mk = await run(['volume', 'create', 'v1', '--pmm', conn.NPMU_PMM, '--primary', `127.0.0.1:${p.port}`, '--mirror', `127.0.0.1:${m.port}`]);
    t.equal(mk.code, 0, mk.err);
    t.match(mk.out, /volume v1 created/);
    const st = await run(['volume', 'status', 'v1', '--pmm', conn.NPMU_PMM]);
    t.match(st.out, /volume v1 \([0-9a-f]{32}\): OK/);
    t.match(st.out, /primary +unit [0-9a-f]{32} +127\.0\.0\.1:\d+ +up +pmem/);
    const stj = JSON.parse((await run(['volume', 'status', 'v1', '--pmm', conn.NPMU_PMM, '--json'])).out) as { state: string; totalPages: number };
    t.equal(stj.state, 'ok');
    t.equal(stj.totalPages, 1024);

    const cr = await run(['region', 'create', 'log', '64K', '--base', '0x7f0000000000'], conn);
    t.equal(cr.code, 0, cr.err);
    t.match(cr.out, /region log created: 64.0 KiB at base pointer 0x7f0000000000/);
    t.equal((await run(['region', 'create', 'tmp', '4096', '--not-durable'], conn)).code, 0);
    const dup = await run(['region', 'create', 'log', '1'], conn);
    t.equal(dup.code, 1);
    t.match(dup.err, /^npmu: ERR_NPMU_REGION_EXISTS: /);
    const ls = await run(['region', 'list', '--max', '1'], conn);
    t.equal(ls.out, 'log\n2 region(s) (1 listed)\n');
    t.same(JSON.parse((await run(['region', 'list', '--json'], conn)).out), { names: ['log', 'tmp'], count: 2 });
    const stat = await run(['region', 'stat', 'log'], conn);
    t.match(stat.out, /basePointer +0x7f0000000000/);
    t.match(stat.out, /owner +alice/);
    t.match(stat.out, /lastOpenAt +never/);
    const sj = JSON.parse((await run(['region', 'stat', 'tmp', '--json'], conn)).out) as Record<string, unknown>;
    t.match(sj, { name: 'tmp', size: 4096, basePointer: '0', durable: false, durability: 'pmem' });
    const bad = await run(['region', 'stat', 'nope'], conn);
    t.match(bad.err, /ERR_NPMU_NO_SUCH_REGION/);
    const wrong = await run(['region', 'list'], { ...conn, NPMU_SECRET: 'wrong' });
    t.match(wrong.err, /ERR_NPMU_NOT_AUTHORIZED/);
    t.match((await run(['region', 'delete', 'tmp'], conn)).out, /region tmp deleted/);
    t.same(JSON.parse((await run(['region', 'list', '--json'], conn)).out), { names: ['log'], count: 1 });
    const usage = await run(['region', 'create', 'x', 'big'], conn);
    t.equal(usage.code, 2);
    t.match(usage.err, /not a size/);
  } finally {
    await pmm.close();
    await p.kill();
    await m.kill();
  }
});
