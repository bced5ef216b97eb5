/**
 * The KV store of examples/kv recovers to exactly its committed state after a
 * crash: the last record torn at every byte boundary (the bytes past the cut
 * left as the preallocated zeros, or as stale garbage) gives every fully
 * committed transaction and no partial one; appends after such a recovery are
 * not followed by resurrected bytes; multi-segment logs; bad input.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KvStore, decodeRecord, encodePut } from '../../examples/kv/store';
import { FileWal, GroupCommitWal, HEADER, NpmuWal, type NpmuLogLike, type Wal } from '../../examples/kv/wal';

const SEG = 64 * 1024;
const tmp = (_t?: unknown): string => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-kv-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

const kinds = [
  { name: 'FileWal', open: (dir: string, segmentSize = SEG): Promise<Wal> => FileWal.open(dir, { segmentSize }) },
  { name: 'GroupCommitWal', open: (dir: string, segmentSize = SEG): Promise<Wal> => GroupCommitWal.open(dir, { segmentSize }) },
];

const snapshot = (s: KvStore): Record<string, string> => Object.fromEntries(s.entries().map(([k, v]) => [k, v.toString('hex')]));

let seed = 12345;
const rand = (n: number): number => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed % n;
};

for (const kind of kinds) {
  t.test(`${kind.name}: the last record torn at every byte boundary`, async (t) => {
    const dir = tmp(t);
    const s = await KvStore.open(await kind.open(dir));
    await s.put('a', Buffer.from('one'));
    await s.put('b', Buffer.from('two'));
    await s.del('a');
    await s.put('c', Buffer.alloc(40, 7));
    const before = snapshot(s);
    await s.put('b', Buffer.from('three, the last one'));
    const after = snapshot(s);
    await s.close();
    const seg = fs.readFileSync(path.join(dir, 'wal-000001'));
    const lastLen = HEADER + encodePut('b', Buffer.from('three, the last one')).length;
    // Where the last record starts: the end of the first four.
    const lens = [encodePut('a', Buffer.from('one')), encodePut('b', Buffer.from('two')), Buffer.alloc(8), encodePut('c', Buffer.alloc(40, 7))].map((r) => HEADER + r.length);
    const start = lens.reduce((a, b) => a + b, 0);
    t.not(seg[start], 0, 'the last record is where we expect it');
    t.equal(seg[start + lastLen], 0, 'and ends where we expect');
    let checked = 0;
    for (let cut = start; cut <= start + lastLen; cut++) {
      for (const fill of ['zeros', 'garbage', 'half']) {
        if (cut === start + lastLen && fill !== 'zeros') continue;
        const d2 = path.join(dir, `cut-${cut}-${fill}`);
        fs.mkdirSync(d2);
        const torn = Buffer.from(seg);
        // Bytes past the cut never reached the disk: preallocated zeros, or
        // stale garbage, or (half) the record's own later half written first.
        if (fill === 'zeros') torn.fill(0, cut, start + lastLen);
        else if (fill === 'garbage') torn.fill(0xa5, cut, start + lastLen);
        else {
          const mid = cut + Math.floor((start + lastLen - cut) / 2);
          torn.fill(0, cut, mid);
        }
        fs.writeFileSync(path.join(d2, 'wal-000001'), torn);
        const r = await KvStore.open(await kind.open(d2));
        const want = cut === start + lastLen || (fill === 'half' && cut + Math.floor((start + lastLen - cut) / 2) === cut) ? after : before;
        t.same(snapshot(r), want, `cut at ${cut - start}/${lastLen} (${fill})`);
        // Commit again after the recovery: the new record follows the good
        // ones, nothing of the torn write comes back, and a reopen agrees.
        await r.put('d', Buffer.from('after recovery'));
        const expect = snapshot(r);
        await r.close();
        const r2 = await KvStore.open(await kind.open(d2));
        t.same(snapshot(r2), expect, `cut at ${cut - start} (${fill}): commit after recovery survives a reopen`);
        await r2.close();
        checked++;
      }
    }
    t.ok(checked > 3 * lastLen - 3, `${checked} crash images checked`);
  });

  t.test(`${kind.name}: random concurrent commits, reopen = the acknowledged state`, async (t) => {
    const dir = tmp(t);
    // Small segments: records cross into many segment files.
    const s = await KvStore.open(await kind.open(dir, 4096));
    const model = new Map<string, string>();
    const acked: Array<{ lsn: bigint; key: string; value: string | undefined }> = [];
    for (let round = 0; round < 20; round++) {
      const ps: Array<Promise<void>> = [];
      for (let i = 0; i < 8; i++) {
        const key = `k${rand(12)}`;
        const value = rand(5) === 0 ? undefined : Buffer.alloc(rand(300), rand(256)).toString('hex');
        const p = value === undefined ? s.del(key) : s.put(key, Buffer.from(value, 'hex'));
        ps.push(p.then((lsn) => void acked.push({ lsn, key, value })));
      }
      await Promise.all(ps);
    }
    acked.sort((a, b) => (a.lsn < b.lsn ? -1 : 1));
    t.same(
      acked.map((a) => a.lsn),
      acked.map((_, i) => BigInt(i + 1)),
      'LSNs 1..N, each once',
    );
    for (const a of acked) {
      if (a.value === undefined) model.delete(a.key);
      else model.set(a.key, a.value);
    }
    const want = Object.fromEntries([...model].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
    t.same(snapshot(s), want, 'the live store is the model');
    t.ok(fs.readdirSync(dir).filter((f) => f.startsWith('wal-')).length > 3, 'several segments');
    // The "crash": the process is gone; only the files remain (every commit was acknowledged).
    const r = await KvStore.open(await kind.open(dir, 4096));
    t.same(snapshot(r), want, 'recovery gives the acknowledged state');
    t.equal(r.lastLsn, BigInt(acked.length));
    await r.close();
    await s.close();
  });

  t.test(`${kind.name}: the first record of a new segment torn`, async (t) => {
    const dir = tmp(t);
    const w = await kind.open(dir, 4096);
    const s = await KvStore.open(w);
    let n = 0;
    while (!fs.existsSync(path.join(dir, 'wal-000002')) || fs.readFileSync(path.join(dir, 'wal-000002'))[0] === 0) {
      await s.put(`k${n}`, Buffer.alloc(500, n));
      n++;
    }
    const full = snapshot(s);
    await s.close();
    const seg2 = fs.readFileSync(path.join(dir, 'wal-000002'));
    seg2.fill(0x5a, 20, 60); // torn inside the first record of segment 2
    fs.writeFileSync(path.join(dir, 'wal-000002'), seg2);
    const r = await KvStore.open(await kind.open(dir, 4096));
    const want = { ...full };
    delete want[`k${n - 1}`];
    t.same(snapshot(r), want, 'all but the torn record');
    await r.put('z', Buffer.from('z'));
    await r.close();
    const r2 = await KvStore.open(await kind.open(dir, 4096));
    t.same(snapshot(r2), { ...want, z: Buffer.from('z').toString('hex') }, 'a commit after it lands in the new segment, and survives');
    await r2.close();
  });
}

t.test('the store: bad input', async (t) => {
  const dir = tmp(t);
  const s = await KvStore.open(await FileWal.open(dir, { segmentSize: SEG }));
  await t.rejects(s.put(1 as unknown as string, Buffer.alloc(1)), { code: 'ERR_INVALID_ARG_TYPE' }, 'a key that is not a string');
  await t.rejects(s.put('', Buffer.alloc(1)), { code: 'ERR_OUT_OF_RANGE' }, 'an empty key');
  await t.rejects(s.put('x'.repeat(70000), Buffer.alloc(1)), { code: 'ERR_OUT_OF_RANGE' }, 'a key over 64 KiB');
  await t.rejects(s.put('k', 'v' as unknown as Uint8Array), { code: 'ERR_INVALID_ARG_TYPE' }, 'a value that is not bytes');
  await t.rejects(s.put('k', Buffer.alloc(SEG)), { code: 'ERR_OUT_OF_RANGE' }, 'a value larger than a segment');
  await t.rejects(s.del(null as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => s.get(5 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' });
  t.equal(s.size, 0, 'nothing was committed');
  await s.put('k', Buffer.from('v'));
  t.equal(s.get('k')?.toString(), 'v');
  await s.close();
  await t.rejects(s.put('k', Buffer.from('w')), { code: 'ERR_KV_CLOSED' }, 'a put after close');
  await t.rejects(KvStore.open({} as Wal), { code: 'ERR_INVALID_ARG_TYPE' }, 'not a WAL');
  // A WAL whose (well-framed) records are not the store's.
  const d2 = path.join(dir, 'foreign');
  const w = await FileWal.open(d2, { segmentSize: SEG });
  await w.append(Buffer.from('not a store record'));
  await w.close();
  await t.rejects(KvStore.open(await FileWal.open(d2, { segmentSize: SEG })), { code: 'ERR_KV_CORRUPT' }, 'a WAL of foreign records');
  t.throws(() => decodeRecord(Buffer.from([2, 1, 0, 1, 0, 0, 0, 0x61, 0x62])), { code: 'ERR_KV_CORRUPT' }, 'a del with a value');
});

t.test('NpmuWal: the adapter over an NpmuLog-shaped log', async (t) => {
  // An in-memory stand-in with lib/log.ts's API (the real one is tested on rxe).
  const recs: Array<{ lsn: bigint; data: Buffer }> = [];
  let first = 1n;
  const log: NpmuLogLike = {
    get firstLsn() {
      return first;
    },
    get nextLsn() {
      return first + BigInt(recs.length);
    },
    async append(r) {
      recs.push({ lsn: first + BigInt(recs.length), data: Buffer.from(r) });
      return first + BigInt(recs.length - 1);
    },
    async *read(from = first) {
      for (const r of recs) if (r.lsn >= from) yield r;
    },
    async close() {},
  };
  const s = await KvStore.open(new NpmuWal(log));
  await s.put('a', Buffer.from('1'));
  await s.put('b', Buffer.from('2'));
  await s.del('a');
  await s.close();
  const r = await KvStore.open(new NpmuWal(log));
  t.same(snapshot(r), { b: Buffer.from('2').toString('hex') });
  t.equal(r.lastLsn, 3n);
});
