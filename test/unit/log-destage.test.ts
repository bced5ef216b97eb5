/**
 * Destaging (lib/destage.ts) natively: the log over the two-half fake client,
 * the file on the local disk. One LSN sequence across file and tail; a crash
 * between fdatasync and truncate duplicates nothing; a torn file tail is cut
 * and its records are still in the log; the file scan at every byte.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t, { Test } from 'tap';
import { NpmuLog } from '../../lib/log';
import { Destager, FILE_HEADER, encodeFileFrame, readAll, scanFile } from '../../lib/destage';
import { FakeClient, FakeStore } from './log-fake-client';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-destage-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const rec = (i: number): Buffer => Buffer.from(`record ${i} `.repeat(1 + (i % 5)));

async function collect(it: AsyncIterableIterator<{ lsn: bigint; data: Buffer }>): Promise<Array<{ lsn: bigint; data: Buffer }>> {
  const out = [];
  for await (const r of it) out.push(r);
  return out;
}

function check(t: Test, got: Array<{ lsn: bigint; data: Buffer }>, n: number): void {
  t.equal(got.length, n, `${n} records`);
  t.ok(
    got.every((r, i) => r.lsn === BigInt(i + 1) && r.data.equals(rec(i + 1))),
    'LSNs 1..n once each, in order, bytes intact',
  );
}

t.test('destage batches to the file; readAll sees one sequence across file and tail', async (t) => {
  const c = new FakeClient();
  await NpmuLog.create(c.asClient(), 'd', { size: 64 * 1024 });
  const log = await NpmuLog.open(c.asClient(), 'd');
  const file = path.join(dir, 'a.log');
  const d = await Destager.open(log, file, { maxBytes: 2000 });
  let n = 0;
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < 30; i++) await log.append(rec(++n));
    const r = await d.destageOnce();
    t.ok(r.records > 0);
    check(t, await collect(readAll(file, log)), n);
  }
  t.ok(log.firstLsn > 300n, `the log was truncated to ${log.firstLsn}`);
  t.ok(d.batches >= 20);
  // Background destaging while appending; readAll at any moment.
  d.start(1);
  for (let i = 0; i < 300; i++) {
    await log.append(rec(++n));
    if (i % 50 === 0) check(t, await collect(readAll(file, log)), n);
  }
  await d.close();
  check(t, await collect(readAll(file, log)), n);
  t.same((await collect(readAll(file, log, 250n))).map((r) => r.lsn)[0], 250n, 'from an LSN');
  await log.close();
});

t.test('a crash between fdatasync and truncate, and a torn file tail: nothing lost, nothing twice', async (t) => {
  const store = new FakeStore();
  const c = new FakeClient(store);
  await NpmuLog.create(c.asClient(), 'e', { size: 64 * 1024 });
  let log = await NpmuLog.open(c.asClient(), 'e', { leaseMs: 100 });
  const file = path.join(dir, 'b.log');
  let d = await Destager.open(log, file);
  let n = 0;
  for (let i = 0; i < 40; i++) await log.append(rec(++n));
  // The truncate never happens (the process dies after the fdatasync).
  const truncate = log.truncate.bind(log);
  log.truncate = async () => {
    throw new Error('crash');
  };
  await t.rejects(d.destageOnce());
  log.truncate = truncate;
  t.equal(log.firstLsn, 1n, 'the log still holds everything');
  check(t, await collect(readAll(file, log)), n);
  await d.close();
  await log.close();
  log = await NpmuLog.open(c.asClient(), 'e', { leaseMs: 100 });
  d = await Destager.open(log, file);
  t.equal(d.fileNextLsn, 41n);
  for (let i = 0; i < 10; i++) await log.append(rec(++n));
  await d.destageOnce();
  check(t, await collect(readAll(file, log)), n);
  // A torn tail: half a frame at the end of the file (the write before fdatasync).
  for (let i = 0; i < 10; i++) await log.append(rec(++n));
  const b = Buffer.alloc(200);
  const len = encodeFileFrame(b, 0, BigInt(n - 9), rec(n - 9), log.logId);
  fs.appendFileSync(file, b.subarray(0, len - 3));
  await d.close();
  d = await Destager.open(log, file);
  t.equal(d.fileNextLsn, BigInt(n - 9), 'the torn frame is cut');
  check(t, await collect(readAll(file, log)), n);
  await d.destageOnce();
  check(t, await collect(readAll(file, log)), n);
  t.equal(log.firstLsn, log.nextLsn, 'all destaged');
  await d.close();
  await log.close();
});

t.test('scanFile: a frame torn at every byte is never taken', async (t) => {
  const logId = 0xabcdefn;
  const b = Buffer.alloc(1000);
  b.write('NPMUDST1', 0, 'latin1');
  b.writeBigUInt64LE(logId, 8);
  let at = FILE_HEADER;
  at += encodeFileFrame(b, at, 7n, Buffer.from('first'), logId);
  const before = at;
  at += encodeFileFrame(b, at, 8n, Buffer.from('second record'), logId);
  for (let k = 0; k < at - before; k++) {
    const torn = Buffer.from(b.subarray(0, before + k));
    const s = scanFile(torn, logId);
    if (s.records.length !== 1 || s.validBytes !== before) t.fail(`torn at ${k}`);
    const z = Buffer.from(b.subarray(0, at));
    z.fill(0, before + k);
    if (scanFile(z, logId).records.length !== 1) t.fail(`zero-filled from ${k}`);
  }
  t.same(scanFile(b.subarray(0, at), logId).records.map((r) => r.lsn), [7n, 8n]);
  t.throws(() => scanFile(b, 5n), { code: 'ERR_NPMU_LOG_CORRUPT' }, 'another log\'s file');
});
