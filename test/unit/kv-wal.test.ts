/**
 * The file WALs of examples/kv/wal.ts: group commit under concurrent commits
 * (every commit acknowledged once, LSNs in call order, fewer flushes than
 * commits), one flush per commit without it, framing, bad input.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileWal, GroupCommitWal, HEADER, frameRecord, parseSegment } from '../../examples/kv/wal';

const tmp = (): string => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-kvwal-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

async function collect(it: AsyncIterable<{ lsn: bigint; data: Buffer }>): Promise<Array<{ lsn: bigint; data: string }>> {
  const out: Array<{ lsn: bigint; data: string }> = [];
  for await (const r of it) out.push({ lsn: r.lsn, data: r.data.toString() });
  return out;
}

t.test('frames: CRC over length, LSN and data', async (t) => {
  const f = frameRecord(7n, Buffer.from('hello'));
  t.equal(f.length, HEADER + 5);
  t.same(parseSegment(f, 0, 7n).records.map((r) => r.data.toString()), ['hello']);
  t.same(parseSegment(f, 0, 8n).records, [], 'an LSN other than the expected one ends the log');
  for (let i = 0; i < f.length; i++) {
    if (i >= 4 && i < 8) continue; // the CRC field itself
    const g = Buffer.from(f);
    g[i]! ^= 0x01;
    t.equal(parseSegment(g, 0, 7n).records.length, 0, `a flipped bit in byte ${i} is caught`);
  }
  t.same(parseSegment(Buffer.alloc(4096), 0, 1n), { records: [], end: 0 }, 'zeros are no record');
});

for (const [name, open, grouped] of [
  ['GroupCommitWal', GroupCommitWal.open, true],
  ['FileWal', FileWal.open, false],
] as const) {
  t.test(`${name}: concurrent commits`, async (t) => {
    const dir = tmp();
    const w = await open(dir, { segmentSize: 1 << 20 });
    const N = 200;
    const acks = new Array<number>(N).fill(0);
    const order: number[] = [];
    const lsns = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        w.append(Buffer.from(`record ${i}`)).then((lsn) => {
          acks[i]!++;
          order.push(i);
          return lsn;
        }),
      ),
    );
    t.same(lsns, Array.from({ length: N }, (_, i) => BigInt(i + 1)), 'LSNs in call order, each once');
    t.ok(acks.every((a) => a === 1), 'every commit acknowledged once');
    t.same(order, [...order].sort((a, b) => a - b), 'acknowledged in LSN order');
    if (grouped) t.ok(w.flushes < N / 4, `group commit: ${w.flushes} write+fdatasync for ${N} commits`);
    else t.equal(w.flushes, N, 'one write+fdatasync per commit');
    // Commits that arrive while a flush is in flight, in waves.
    const more: Array<Promise<bigint>> = [];
    for (let wave = 0; wave < 5; wave++) {
      for (let i = 0; i < 10; i++) more.push(w.append(Buffer.from(`wave ${wave}.${i}`)));
      await new Promise((r) => setImmediate(r));
    }
    t.same(await Promise.all(more), Array.from({ length: 50 }, (_, i) => BigInt(N + i + 1)));
    const all = await collect(w.replay());
    t.equal(all.length, N + 50);
    t.same(all.slice(0, 3), [
      { lsn: 1n, data: 'record 0' },
      { lsn: 2n, data: 'record 1' },
      { lsn: 3n, data: 'record 2' },
    ]);
    await w.close();
    const w2 = await open(dir, { segmentSize: 1 << 20 });
    t.equal(w2.nextLsn, BigInt(N + 51), 'a reopen continues the LSNs');
    t.equal(await w2.append(Buffer.from('next')), BigInt(N + 51));
    await w2.close();
  });
}

t.test('segments are preallocated and zero-filled (no size change per commit)', async (t) => {
  const dir = tmp();
  const w = await FileWal.open(dir, { segmentSize: 8192 });
  t.equal(fs.statSync(path.join(dir, 'wal-000001')).size, 8192);
  for (let i = 0; i < 10; i++) await w.append(Buffer.alloc(1000, i)); // ~8 per segment
  t.equal(fs.statSync(path.join(dir, 'wal-000001')).size, 8192, 'the size never changes');
  t.ok(fs.existsSync(path.join(dir, 'wal-000002')), 'the next segment was used');
  await w.close();
  t.ok(fs.existsSync(path.join(dir, 'wal-000003')), 'the one after it was prepared');
  t.equal(fs.statSync(path.join(dir, 'wal-000003')).size, 8192);
  const w2 = await FileWal.open(dir, { segmentSize: 8192 });
  t.equal((await collect(w2.replay())).length, 10);
  t.equal(await w2.append(Buffer.alloc(10)), 11n);
  await w2.close();
});

t.test('bad input', async (t) => {
  const dir = tmp();
  await t.rejects(FileWal.open('', {}), { code: 'ERR_INVALID_ARG_TYPE' }, 'no directory');
  await t.rejects(FileWal.open(dir, { segmentSize: 1000 }), { code: 'ERR_OUT_OF_RANGE' }, 'a segment size not a multiple of 4096');
  await t.rejects(GroupCommitWal.open(dir, { segmentSize: 0 }), { code: 'ERR_OUT_OF_RANGE' });
  const w = await GroupCommitWal.open(dir, { segmentSize: 4096 });
  await t.rejects(w.append('text' as unknown as Uint8Array), { code: 'ERR_INVALID_ARG_TYPE' }, 'a record that is not bytes');
  await t.rejects(w.append(Buffer.alloc(4096 - HEADER + 1)), { code: 'ERR_OUT_OF_RANGE' }, 'a record larger than a segment');
  t.equal(await w.append(Buffer.alloc(4096 - HEADER)), 1n, 'a record filling a segment exactly');
  t.equal(await w.append(Buffer.from('x')), 2n, 'the bad appends took no LSN');
  await w.close();
  await t.rejects(w.append(Buffer.from('y')), { code: 'ERR_WAL_CLOSED' }, 'append after close');
  await t.rejects(GroupCommitWal.open(dir, { segmentSize: 8192 }), /not the segment size/, 'opened with another segment size');
  fs.renameSync(path.join(dir, 'wal-000002'), path.join(dir, 'wal-000004'));
  fs.writeFileSync(path.join(dir, 'wal-000005'), Buffer.alloc(4096));
  await t.rejects(GroupCommitWal.open(dir, { segmentSize: 4096 }), /missing/, 'a gap in the segments');
});
