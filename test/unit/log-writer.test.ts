/**
 * The whole NpmuLog (lib/log.ts) natively, over an in-memory two-half
 * stand-in for NpmuClient (log-fake-client.ts): group commit, wrap-around,
 * full, bad input, recovery after a cut at every byte of a write on either
 * half, divergent halves made equal at reopen, and the writer lease.
 */
import t from 'tap';
import { NpmuLog } from '../../lib/log';
import { HEADER_SIZE } from '../../lib/log-format';
import { FakeClient, FakeStore } from './log-fake-client';

const SMALL = HEADER_SIZE + 4096;
const rec = (lsn: number, len: number): Buffer => Buffer.alloc(len, lsn & 0xff);

async function readAll(log: NpmuLog, from?: bigint): Promise<Array<{ lsn: bigint; data: Buffer }>> {
  const out = [];
  for await (const r of log.read(from)) out.push(r);
  return out;
}

t.test('append, read, truncate, reopen', async (t) => {
  const c = new FakeClient();
  await NpmuLog.create(c.asClient(), 'wal', { size: 64 * 1024 });
  await t.rejects(NpmuLog.create(c.asClient(), 'wal'), { code: 'ERR_NPMU_REGION_EXISTS' });
  const log = await NpmuLog.open(c.asClient(), 'wal');
  t.equal(log.firstLsn, 1n);
  t.equal(log.nextLsn, 1n);
  t.equal(await log.append(Buffer.from('one')), 1n);
  t.same(await log.appendMany([Buffer.from('two'), Buffer.from(''), new Uint8Array([3])]), [2n, 3n, 4n]);
  const all = await readAll(log);
  t.same(
    all.map((r) => [r.lsn, r.data.toString('hex')]),
    [
      [1n, Buffer.from('one').toString('hex')],
      [2n, Buffer.from('two').toString('hex')],
      [3n, ''],
      [4n, '03'],
    ],
  );
  t.same((await readAll(log, 3n)).map((r) => r.lsn), [3n, 4n]);
  await log.truncate(2n);
  t.equal(log.firstLsn, 3n);
  t.same((await readAll(log)).map((r) => r.lsn), [3n, 4n]);
  await t.rejects(log.truncate(4n + 1n), { code: 'ERR_OUT_OF_RANGE' }, 'truncate past the end');
  await log.truncate(1n); // below firstLsn: nothing
  const reader = await NpmuLog.open(c.asClient(), 'wal', { writer: false });
  t.equal(reader.firstLsn, 3n);
  t.equal(reader.nextLsn, 5n);
  await t.rejects(reader.append(Buffer.from('x')), { code: 'ERR_NPMU_LOG_READ_ONLY' });
  await log.close();
  const again = await NpmuLog.open(c.asClient(), 'wal');
  t.equal(again.firstLsn, 3n);
  t.equal(again.nextLsn, 5n);
  t.equal(await again.append(Buffer.from('five')), 5n);
  t.same((await readAll(reader)).map((r) => r.lsn), [3n, 4n, 5n], 'a reader sees new records');
  await again.close();
  await t.rejects(again.append(Buffer.from('x')), { code: 'ERR_NPMU_LOG_CLOSED' });
});

t.test('group commit: 200 concurrent appends, every LSN once and in call order, far fewer writes', async (t) => {
  const c = new FakeClient();
  await NpmuLog.create(c.asClient(), 'g', { size: 1 << 20 });
  const log = await NpmuLog.open(c.asClient(), 'g');
  const w0 = c.writes;
  const lsns = await Promise.all(Array.from({ length: 200 }, (_, i) => log.append(rec(i, 10 + (i % 50)))));
  t.same(lsns, Array.from({ length: 200 }, (_, i) => BigInt(i + 1)));
  const writes = c.writes - w0;
  t.ok(writes <= 3, `${writes} writes for 200 appends`);
  t.equal(log.stats.writes, writes);
  const got = await readAll(log);
  t.equal(got.length, 200);
  got.forEach((r, i) => r.data.equals(rec(i, 10 + (i % 50))) || t.fail(`record ${r.lsn}`));
  await log.close();
});

t.test('wrap-around over many laps, with reopen (recovery) between', async (t) => {
  const store = new FakeStore();
  let c = new FakeClient(store);
  await NpmuLog.create(c.asClient(), 'w', { size: SMALL });
  let log = await NpmuLog.open(c.asClient(), 'w', { leaseMs: 100 });
  const expect = new Map<bigint, Buffer>();
  let seed = 5;
  const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) / 2 ** 24;
  for (let step = 0; step < 600; step++) {
    const n = 1 + Math.floor(rnd() * 4);
    const recs = Array.from({ length: n }, (_, i) => rec(step * 7 + i, Math.floor(rnd() * 200)));
    let lsns: bigint[];
    try {
      lsns = await log.appendMany(recs);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_NPMU_LOG_FULL') throw e;
      const upTo = log.firstLsn + (log.nextLsn - log.firstLsn) / 2n;
      await log.truncate(upTo);
      for (const k of [...expect.keys()]) if (k <= upTo) expect.delete(k);
      continue;
    }
    lsns.forEach((l, i) => expect.set(l, recs[i]!));
    if (step % 40 === 39) {
      await log.close();
      c = new FakeClient(store);
      log = await NpmuLog.open(c.asClient(), 'w', { leaseMs: 100 });
    }
    if (step % 20 === 0) {
      const got = await readAll(log);
      if (got.length !== expect.size) return t.fail(`step ${step}: ${got.length} records, expected ${expect.size}`);
      for (const r of got) if (!expect.get(r.lsn)?.equals(r.data)) return t.fail(`step ${step}: record ${r.lsn}`);
    }
  }
  t.ok(log.nextLsn > 100n, `${log.nextLsn - 1n} records went round a 4 KiB circle`);
  await log.close();
});

t.test('full log: ERR_NPMU_LOG_FULL and nothing overwritten; bad input', async (t) => {
  const c = new FakeClient();
  await NpmuLog.create(c.asClient(), 'f', { size: SMALL });
  const log = await NpmuLog.open(c.asClient(), 'f');
  await t.rejects(log.append(Buffer.alloc(4096)), { code: 'ERR_OUT_OF_RANGE' }, 'an append larger than the log');
  await t.rejects(log.append('text' as never), { code: 'ERR_INVALID_ARG_TYPE' });
  await t.rejects(log.truncate(1 as never), { code: 'ERR_INVALID_ARG_TYPE' });
  await t.rejects(log.truncate(1n), { code: 'ERR_OUT_OF_RANGE' }, 'truncate of an empty log');
  let n = 0;
  for (;;) {
    try {
      await log.append(rec(n, 100));
      n++;
    } catch (e) {
      t.equal((e as { code?: string }).code, 'ERR_NPMU_LOG_FULL');
      break;
    }
  }
  t.ok(n > 20, `${n} records fit`);
  const got = await readAll(log);
  t.equal(got.length, n);
  got.forEach((r, i) => r.data.equals(rec(i, 100)) || t.fail(`record ${r.lsn} overwritten`));
  await log.truncate(1n);
  t.equal(await log.append(rec(n, 100)), BigInt(n + 1), 'space reused after truncate');
  await log.close();
  // Not a log; a corrupt header: clear errors, nothing written.
  await c.createRegion('plain', SMALL);
  c.store.regions.get('plain')!.primary.write('hello', 0);
  const before = Buffer.from(c.store.regions.get('plain')!.primary);
  await t.rejects(NpmuLog.open(c.asClient(), 'plain'), { code: 'ERR_NPMU_NOT_A_LOG' });
  t.ok(c.store.regions.get('plain')!.primary.equals(before), 'not-a-log region untouched');
  const r = c.store.regions.get('f')!;
  r.primary[20]! ^= 0xff;
  const img = Buffer.from(r.primary);
  await t.rejects(NpmuLog.open(c.asClient(), 'f'), { code: 'ERR_NPMU_LOG_CORRUPT' });
  t.ok(r.primary.equals(img), 'corrupt log untouched');
});

t.test('a write cut at every byte, on either half: acknowledged records found once, the torn one never half', async (t) => {
  for (const which of ['both', 'primary only', 'mirror only'] as const) {
    for (let k = 0; k <= 2 * 88 + 8; k += 1) {
      const store = new FakeStore();
      const c = new FakeClient(store);
      await NpmuLog.create(c.asClient(), 'cut', { size: SMALL });
      const log = await NpmuLog.open(c.asClient(), 'cut', { leaseMs: 100 });
      // Lap the circle once so stale records lie ahead of the tail.
      for (let i = 0; i < 60; i++) {
        const l = await log.append(rec(i, 57));
        if (i % 10 === 9) await log.truncate(l - 2n);
      }
      const acked = await readAll(log);
      c.cut = { primary: which === 'mirror only' ? Infinity : k, mirror: which === 'primary only' ? Infinity : k };
      const torn = [rec(1000, 57), rec(1001, 57)];
      await log.appendMany(torn).then(
        () => t.fail('cut write acknowledged'),
        () => undefined,
      );
      for (const from of ['primary', 'mirror'] as const) {
        // Each recovery from its own copy of the halves as the cut left them.
        const copy = new FakeStore();
        for (const [name, r] of store.regions) copy.regions.set(name, { ...r, primary: Buffer.from(r.primary), mirror: Buffer.from(r.mirror) });
        const c2 = new FakeClient(copy);
        c2.readFrom = from;
        // The dead writer's lease: expired (the lease itself is tested below).
        copy.regions.get('cut')!.primary.writeBigUInt64LE(0n, 64);
        const log2 = await NpmuLog.open(c2.asClient(), 'cut', { leaseMs: 100 });
        const got = await readAll(log2);
        const head = got.slice(0, acked.length);
        if (head.length !== acked.length || head.some((r, i) => r.lsn !== acked[i]!.lsn || !r.data.equals(acked[i]!.data))) {
          return t.fail(`${which} k=${k} from ${from}: acknowledged records lost or changed`);
        }
        const extra = got.slice(acked.length);
        if (extra.length > 2 || extra.some((r, i) => !r.data.equals(torn[i]!))) return t.fail(`${which} k=${k}: a torn record returned`);
        // The reopen made both halves equal: reading the other half gives the same records.
        const c3 = new FakeClient(copy);
        c3.readFrom = from === 'primary' ? 'mirror' : 'primary';
        const r3 = await NpmuLog.open(c3.asClient(), 'cut', { writer: false });
        const other = await readAll(r3);
        if (other.length !== got.length) return t.fail(`${which} k=${k}: halves differ after the writer's reopen`);
        // And the next append is found once.
        const lsn = await log2.append(Buffer.from('after'));
        const final = await readAll(log2);
        if (final.filter((r) => r.lsn === lsn).length !== 1 || final.length !== got.length + 1) return t.fail(`${which} k=${k}: append after recovery`);
        await log2.close();
      }
    }
  }
  t.pass('every cut recovered');
});

t.test('the writer lease: a second writer is refused; a dead writer\'s lease expires; a fenced writer stops', async (t) => {
  const store = new FakeStore();
  const a = new FakeClient(store);
  await NpmuLog.create(a.asClient(), 'l', { size: SMALL });
  const la = await NpmuLog.open(a.asClient(), 'l', { leaseMs: 200 });
  await la.append(Buffer.from('a1'));
  const b = new FakeClient(store);
  const t0 = Date.now();
  await t.rejects(NpmuLog.open(b.asClient(), 'l', { leaseMs: 200 }), { code: 'ERR_NPMU_LOG_BUSY' }, 'a live writer holds it');
  t.ok(Date.now() - t0 >= 200, 'the opener watched the heartbeat for one lease');
  const rd = await NpmuLog.open(b.asClient(), 'l', { writer: false });
  t.equal(rd.nextLsn, 2n, 'readers need no lease');
  // a dies (its client stops answering: no more heartbeats)
  a.dead = true;
  const lb = await NpmuLog.open(b.asClient(), 'l', { leaseMs: 200 });
  t.equal(await lb.append(Buffer.from('b1')), 2n);
  a.dead = false; // a comes back: its next renewal sees b's word
  await new Promise((r) => setTimeout(r, 200));
  await t.rejects(la.append(Buffer.from('a2')), { code: 'ERR_NPMU_LOG_BUSY' }, 'the old writer is fenced');
  t.same((await readAll(lb)).map((r) => r.data.toString()), ['a1', 'b1']);
  await lb.close();
  const lc = await NpmuLog.open(a.asClient(), 'l', { leaseMs: 200 });
  t.pass('a closed writer releases the lease at once');
  await lc.close();
});

t.test('read() while records are truncated and their space reused: every record yielded is intact, in order, none past the end lost', async (t) => {
  for (const as of ['writer', 'reader'] as const) {
    const c = new FakeClient();
    await NpmuLog.create(c.asClient(), 'rt', { size: SMALL });
    const log = await NpmuLog.open(c.asClient(), 'rt');
    const body = (i: bigint): Buffer => rec(Number(i), 100 + Number(i % 7n));
    for (let i = 1n; i <= 30n; i++) await log.append(body(i));
    const view = as === 'writer' ? log : await NpmuLog.open(c.asClient(), 'rt', { writer: false });
    const got: bigint[] = [];
    let bad = 0;
    let turned = false;
    for await (const r of view.read()) {
      if (!r.data.equals(body(r.lsn))) bad++;
      got.push(r.lsn);
      if (!turned && got.length === 3) {
        turned = true;
        // Truncate most of what the reader has not read yet and lap the circle with new records.
        await log.truncate(25n);
        for (let i = 31n; i <= 50n; i++) await log.append(body(i));
      }
    }
    t.equal(bad, 0, `${as}: every record yielded has its own bytes`);
    t.ok(
      got.every((l, i) => i === 0 || l > got[i - 1]!),
      `${as}: LSNs strictly increasing (${got.join(',')})`,
    );
    t.ok(got.includes(1n) && got.includes(3n), `${as}: what was read before the truncation`);
    t.ok(got[got.length - 1]! >= 30n, `${as}: reads on past the truncation point`);
    if (view !== log) await view.close();
    await log.close();
  }
});
