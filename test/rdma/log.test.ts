/**
 * The log (lib/log.ts) on real rxe with two pmem units: append/read/truncate
 * and wrap-around, group commit under 200 concurrent appends, the writer lease
 * (a second writer refused; a killed writer's lease expiring), destaging to a
 * file with one LSN sequence across file and tail, and bad input.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { NpmuLog } from '../../lib/log';
import { Destager, readAll } from '../../lib/destage';
import { HEADER_SIZE } from '../../lib/log-format';
import { rdmaAddress } from './fixture';
import { SECRETS, child, startSystem } from './pmm-helpers';
import type { System } from './pmm-helpers';

t.setTimeout(30 * 60_000);

let sys: System;
t.before(async () => {
  sys = await startSystem();
});
t.teardown(async () => {
  await sys.close();
});

const rec = (i: number, len: number): Buffer => Buffer.alloc(len, i & 0xff);
async function all(log: NpmuLog, from?: bigint): Promise<Array<{ lsn: bigint; data: Buffer }>> {
  const out = [];
  for await (const r of log.read(from)) out.push(r);
  return out;
}

t.test('append, read, truncate and wrap-around on both halves', async (t) => {
  const c = await sys.attach('alice');
  await NpmuLog.create(c, 'log-basic', { size: HEADER_SIZE + 8192 });
  const log = await NpmuLog.open(c, 'log-basic', { leaseMs: 2000 });
  const expect = new Map<bigint, Buffer>();
  for (let i = 0; i < 300; i++) {
    const r = rec(i, 1 + ((i * 37) % 400));
    let lsn: bigint;
    try {
      lsn = await log.append(r);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_NPMU_LOG_FULL') throw e;
      const upTo = log.nextLsn - 3n;
      await log.truncate(upTo);
      for (const k of [...expect.keys()]) if (k <= upTo) expect.delete(k);
      lsn = await log.append(r);
    }
    expect.set(lsn, r);
  }
  t.ok(log.nextLsn === 301n, 'LSNs 1..300');
  const got = await all(log);
  t.same(
    got.map((r) => r.lsn),
    [...expect.keys()],
  );
  t.ok(
    got.every((r) => expect.get(r.lsn)!.equals(r.data)),
    'bytes intact',
  );
  // Both halves hold the same records: read through each one as a reader.
  const h = await c.openRegion('log-basic');
  const p = Buffer.alloc(h.size);
  const m = Buffer.alloc(h.size);
  await c.readRegion(h, p, h.size, h.basePointer, { mirror: 'primary' });
  await c.readRegion(h, m, h.size, h.basePointer, { mirror: 'mirror' });
  t.ok(p.subarray(128).equals(m.subarray(128)), 'primary and mirror hold the same log bytes');
  await c.closeRegion(h);
  await log.close();
  const again = await NpmuLog.open(c, 'log-basic', { leaseMs: 2000 });
  t.same((await all(again)).map((r) => r.lsn), [...expect.keys()], 'recovered after reopen');
  await again.close();
});

t.test('group commit: 200 concurrent appends, every LSN once, in order, far fewer writes', async (t) => {
  const c = await sys.attach('alice');
  await NpmuLog.create(c, 'log-group', { size: 1 << 20 });
  const log = await NpmuLog.open(c, 'log-group');
  const lsns = await Promise.all(Array.from({ length: 200 }, (_, i) => log.append(rec(i, 16 + (i % 100)))));
  t.same(lsns, Array.from({ length: 200 }, (_, i) => BigInt(i + 1)), 'LSNs in call order');
  const s = log.stats;
  t.ok(s.writes <= 20, `${s.writes} writes for ${s.appends} appends`);
  t.comment(`group commit: ${s.appends} appends in ${s.writes} writes`);
  const got = await all(log);
  t.equal(got.length, 200);
  t.ok(got.every((r, i) => r.lsn === BigInt(i + 1) && r.data.equals(rec(i, 16 + (i % 100)))));
  await log.close();
});

t.test('the writer lease: a second writer is refused; a killed writer\'s lease expires', async (t) => {
  const c = await sys.attach('alice');
  await NpmuLog.create(c, 'log-lease', { size: 64 * 1024 });
  const leaseMs = 1500;
  const ch = child(path.join(__dirname, 'log-child.js'), [rdmaAddress(), String(sys.pmm.port), 'alice', SECRETS.alice!, sys.volume, 'log-lease', String(leaseMs)]);
  await ch.line(/^WRITER 1$/);
  await t.rejects(NpmuLog.open(c, 'log-lease', { leaseMs }), { code: 'ERR_NPMU_LOG_BUSY' }, 'a live writer holds the lease');
  const reader = await NpmuLog.open(c, 'log-lease', { writer: false });
  t.equal(reader.nextLsn, 2n, 'a reader opens meanwhile');
  ch.proc.kill('SIGKILL');
  await ch.exited;
  const t0 = Date.now();
  const log = await NpmuLog.open(c, 'log-lease', { leaseMs });
  t.ok(Date.now() - t0 < 4 * leaseMs, `took the dead writer's lease in ${Date.now() - t0} ms`);
  t.equal(await log.append(Buffer.from('after')), 2n);
  t.same((await all(log)).map((r) => r.data.toString().replace(/\d+$/, 'N')), ['child N', 'after']);
  await log.close();
  await reader.close();
});

t.test('bad input: not a log, a corrupt header, truncate past the end, an append larger than the log', async (t) => {
  const c = await sys.attach('alice');
  await c.createRegion('not-a-log', 16 * 1024);
  const h = await c.openRegion('not-a-log');
  const junk = Buffer.alloc(16 * 1024, 0x5a);
  await c.writeRegion(h, junk, junk.length, h.basePointer, { durable: true });
  await t.rejects(NpmuLog.open(c, 'not-a-log'), { code: 'ERR_NPMU_NOT_A_LOG' });
  const after = Buffer.alloc(junk.length);
  await c.readRegion(h, after, after.length, h.basePointer);
  t.ok(after.equals(junk), 'nothing overwritten');
  await c.closeRegion(h);
  await t.rejects(NpmuLog.create(c, 'not-a-log'), { code: 'ERR_NPMU_REGION_EXISTS' });

  await NpmuLog.create(c, 'log-bad', { size: HEADER_SIZE + 4096 });
  const log = await NpmuLog.open(c, 'log-bad');
  await log.append(Buffer.from('x'));
  await t.rejects(log.truncate(5n), { code: 'ERR_OUT_OF_RANGE' }, 'truncate past the end');
  await t.rejects(log.append(Buffer.alloc(5000)), { code: 'ERR_OUT_OF_RANGE' }, 'append larger than the log');
  await log.close();
  const lh = await c.openRegion('log-bad');
  await c.writeRegion(lh, Buffer.from([0xee]), 1, lh.basePointer + 17n, { durable: true });
  const before = Buffer.alloc(lh.size);
  await c.readRegion(lh, before, lh.size, lh.basePointer);
  await t.rejects(NpmuLog.open(c, 'log-bad'), { code: 'ERR_NPMU_LOG_CORRUPT' }, 'corrupt superblock');
  const now = Buffer.alloc(lh.size);
  await c.readRegion(lh, now, lh.size, lh.basePointer);
  t.ok(now.equals(before), 'a corrupt log is not written');
  await c.closeRegion(lh);
});

t.test('destaging: records go to a file, the log is truncated, a reader sees one LSN sequence across file and tail', async (t) => {
  const c = await sys.attach('alice');
  await NpmuLog.create(c, 'log-destage', { size: HEADER_SIZE + 16 * 1024 });
  const log = await NpmuLog.open(c, 'log-destage');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-log-'));
  const file = path.join(dir, 'wal.destaged');
  let d = await Destager.open(log, file, { maxBytes: 8 * 1024 });
  d.start(5);
  // 600 records of ~100 bytes go round a 16 KiB log several times: only destaging makes room.
  let n = 0;
  while (n < 600) {
    try {
      await log.appendMany(Array.from({ length: 10 }, (_, i) => rec(n + i + 1, 100)));
      n += 10;
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_NPMU_LOG_FULL') throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  const reader = await NpmuLog.open(c, 'log-destage', { writer: false });
  const check = async (what: string, from?: NpmuLog): Promise<void> => {
    const got = [];
    for await (const r of readAll(file, from ?? log)) got.push(r);
    t.ok(got.length === n && got.every((r, i) => r.lsn === BigInt(i + 1) && r.data.equals(rec(i + 1, 100))), `${what}: LSNs 1..${n} once each (${got.length})`);
  };
  await check('while destaging, through the writer');
  await check('while destaging, through a reader', reader);
  await d.close();
  t.ok(log.firstLsn > 400n, `the log holds only the tail (from ${log.firstLsn})`);
  // The destager restarts (as after a crash) and finishes.
  d = await Destager.open(log, file);
  await d.destageOnce();
  t.equal(log.firstLsn, log.nextLsn, 'everything destaged');
  await check('after a restart');
  await d.close();
  await reader.close();
  await log.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
