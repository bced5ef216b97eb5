import t from 'tap';
import { crc32c } from '../../lib/crc32c';
import { NpmuError } from '../../lib/errors';
import { PageAllocator, pagesFor } from '../../pmm/alloc';
import {
  META_HEADER_SIZE,
  chooseNewest,
  decodeSlot,
  encodeMeta,
  newId,
  planWrite,
  slotOffsets,
  slotSize,
  usedExtents,
  validateMeta,
  type RegionMeta,
  type SlotCopy,
  type VolumeMeta,
} from '../../pmm/metadata';

const SLOT = 1 << 20;
const U64_MAX = (1n << 64n) - 1n;

function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) % n;
  };
}

const NAMES = ['wal', 'lock-table', 'журнал', '日本語の領域', 'émoji 🚀 tail', 'x'.repeat(64), 'é'.repeat(32), '🚀'.repeat(16)];

/** A valid volume with `n` regions, allocated by the real allocator on both halves. */
function makeMeta(n: number, seed = 1, pageSize = 4096, dataPages = 50_000): VolumeMeta {
  const r = rng(seed);
  const pa = new PageAllocator(dataPages);
  const ma = new PageAllocator(dataPages);
  // Leave holes so that extents are discontiguous and differ between halves.
  const spacer = ma.allocate(3);
  const regions: RegionMeta[] = [];
  for (let i = 0; i < n; i++) {
    const size = 1 + r(pageSize * 8);
    const pages = pagesFor(size, pageSize);
    const name = i < NAMES.length ? NAMES[i] : `region-${i}-ø`;
    regions.push({
      id: i + 1,
      name,
      size,
      basePointer: i === 0 ? U64_MAX - BigInt(size) + 1n : i === 1 ? 0n : BigInt(r(2 ** 30)) * 4096n,
      owner: i % 3 === 0 ? '' : `user${i}@host-ü`,
      createdAtMs: 1_700_000_000_000 + i,
      lastOpenAtMs: i % 2 === 0 ? 0 : 1_700_000_100_000 + i,
      durable: i % 2 === 1,
      primaryExtents: pa.allocate(pages),
      mirrorExtents: pages > 1 && i % 4 === 0 ? [...ma.allocate(1), ...ma.allocate(pages - 1)] : ma.allocate(pages),
    });
    if (i % 5 === 4) {
      pa.allocate(1);
      ma.allocate(2);
    }
  }
  ma.free(spacer);
  return {
    volumeId: newId(),
    name: 'vol0 – töst',
    primaryUnit: newId(),
    mirrorUnit: newId(),
    pageSize,
    dataPages,
    createdAtMs: 1_699_999_999_999,
    nextRegionId: n + 1,
    regions,
  };
}

function clone(m: VolumeMeta): VolumeMeta {
  return {
    ...m,
    regions: m.regions.map((r) => ({
      ...r,
      primaryExtents: r.primaryExtents.map((e) => ({ ...e })),
      mirrorExtents: r.mirrorExtents.map((e) => ({ ...e })),
    })),
  };
}

/** Recomputes both CRCs after a deliberate edit, so the parser itself is exercised. */
function reseal(buf: Buffer): Buffer {
  const len = buf.readUInt32LE(24);
  buf.writeUInt32LE(crc32c(buf.subarray(64, 64 + Math.min(len, buf.length - 64))), 28);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  return buf;
}

function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

const DECODE_CODES = new Set(['ERR_NPMU_META_EMPTY', 'ERR_NPMU_META_TOO_NEW', 'ERR_NPMU_META_CORRUPT']);

t.test('round trip with many regions', async (t) => {
  const meta = makeMeta(300, 7);
  validateMeta(meta);
  const buf = encodeMeta(meta, 42, SLOT);
  t.ok(buf.length > META_HEADER_SIZE && buf.length < SLOT);
  t.equal(buf.subarray(0, 8).toString('ascii'), 'NPMUMETA');
  const d = decodeSlot(buf);
  t.equal(d.generation, 42);
  t.equal(d.length, buf.length);
  t.same(d.meta, meta);
  t.equal(d.meta.regions[0].basePointer, U64_MAX - BigInt(meta.regions[0].size) + 1n, 'basePointer near 2^64-1');
  t.equal(d.meta.regions[5].name, NAMES[5], 'non-ASCII name');
  t.equal(Buffer.byteLength(d.meta.regions[7].name), 64, '64-byte name of 4-byte characters');
  t.ok(encodeMeta(d.meta, 42, SLOT).equals(buf), 're-encoding gives the same bytes');

  // A whole slot, with an older, longer copy's tail after the payload, decodes the same.
  const slot = Buffer.alloc(SLOT, 0xa5);
  buf.copy(slot);
  t.same(decodeSlot(slot).meta, meta);
  // So does a Uint8Array view at an offset of a larger buffer.
  const area = new Uint8Array(SLOT * 2);
  area.set(buf, SLOT);
  t.same(decodeSlot(area.subarray(SLOT)).meta, meta);

  const empty = makeMeta(0);
  t.same(decodeSlot(encodeMeta(empty, 1, 4096)).meta, empty, 'a volume with no regions');

  const huge = makeMeta(3, 3, 2 ** 21, 2 ** 40);
  t.same(decodeSlot(encodeMeta(huge, Number.MAX_SAFE_INTEGER, 4096)).meta, huge, '2 MiB pages, 2^40 pages');
});

t.test('slot geometry and the write plan', async (t) => {
  t.same(slotOffsets(2 << 20), [0, 1 << 20]);
  t.equal(slotSize(2 << 20), 1 << 20);
  t.same(slotOffsets(10000), [0, 4096], 'half rounded down to 4096');
  t.equal(slotSize(8192), 4096);
  t.equal(slotSize(3 * 4096 + 100), 4096);
  t.throws(() => slotSize(8191), { code: 'ERR_OUT_OF_RANGE' });
  t.same(planWrite(0), { generation: 1, slot: 1, order: ['primary', 'mirror'] });
  t.same(planWrite(5), { generation: 6, slot: 0, order: ['primary', 'mirror'] });
  t.throws(() => planWrite(-1), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => encodeMeta(makeMeta(1), 0, SLOT), { code: 'ERR_OUT_OF_RANGE' }, 'generation 0 is never written');
});

t.test('too large for the slot', async (t) => {
  const meta = makeMeta(100);
  const size = encodeMeta(meta, 1, SLOT).length;
  t.equal(encodeMeta(meta, 1, size).length, size, 'exactly fits');
  const err = thrownBy(() => encodeMeta(meta, 1, size - 1)) as NpmuError;
  t.ok(err instanceof NpmuError);
  t.match(err, { code: 'ERR_NPMU_META_TOO_LARGE', size, slotSize: size - 1 });
});

t.test('usedExtents is the union of the region extents', async (t) => {
  const meta = makeMeta(20);
  const p = usedExtents(meta, 'primary');
  t.equal(p.length, meta.regions.reduce((s, r) => s + r.primaryExtents.length, 0));
  const pa = new PageAllocator(meta.dataPages, p);
  const ma = new PageAllocator(meta.dataPages, usedExtents(meta, 'mirror'));
  const pages = meta.regions.reduce((s, r) => s + pagesFor(r.size, meta.pageSize), 0);
  t.equal(pa.usedPages, pages);
  t.equal(ma.usedPages, pages);
});

t.test('decode errors', async (t) => {
  const buf = encodeMeta(makeMeta(5), 9, SLOT);
  t.throws(() => decodeSlot(Buffer.alloc(4096)), { code: 'ERR_NPMU_META_EMPTY', name: 'NpmuError' }, 'zeroed slot');
  t.throws(() => decodeSlot(Buffer.alloc(0)), { code: 'ERR_NPMU_META_EMPTY' });
  t.throws(() => decodeSlot(buf.subarray(0, 40)), { code: 'ERR_NPMU_META_CORRUPT' }, 'truncated header');
  t.throws(() => decodeSlot(buf.subarray(0, buf.length - 1)), { code: 'ERR_NPMU_META_CORRUPT' }, 'truncated payload');

  const flip = (at: number) => {
    const b = Buffer.from(buf);
    b[at] ^= 0x01;
    return b;
  };
  t.throws(() => decodeSlot(flip(20)), { code: 'ERR_NPMU_META_CORRUPT', message: /header CRC/ });
  t.throws(() => decodeSlot(flip(200)), { code: 'ERR_NPMU_META_CORRUPT', message: /payload CRC/ });

  const v2 = Buffer.from(buf);
  v2.writeUInt32LE(2, 8);
  t.throws(() => decodeSlot(v2), { code: 'ERR_NPMU_META_CORRUPT' }, 'a changed version without a valid CRC is corruption');
  t.throws(() => decodeSlot(reseal(v2)), { code: 'ERR_NPMU_META_TOO_NEW', formatVersion: 2 });
  const v2big = Buffer.alloc(200);
  buf.copy(v2big, 0, 0, 16);
  v2big.writeUInt32LE(3, 8);
  v2big.writeUInt32LE(128, 12);
  v2big.writeUInt32LE(crc32c(v2big.subarray(0, 124)), 124);
  t.throws(() => decodeSlot(v2big), { code: 'ERR_NPMU_META_TOO_NEW', formatVersion: 3 }, 'a future, larger header');

  const edits: Array<[string, (b: Buffer) => void]> = [
    ['version 0', (b) => b.writeUInt32LE(0, 8)],
    ['header size 68', (b) => b.writeUInt32LE(68, 12)],
    ['header size 8', (b) => b.writeUInt32LE(8, 12)],
    ['generation 0', (b) => b.writeBigUInt64LE(0n, 16)],
    ['generation 2^63', (b) => b.writeBigUInt64LE(1n << 63n, 16)],
    ['payload length past the end', (b) => b.writeUInt32LE(b.length, 24)],
    ['payload length short', (b) => b.writeUInt32LE(b.readUInt32LE(24) - 1, 24)],
    ['flags', (b) => b.writeUInt32LE(1, 32)],
    ['reserved', (b) => (b[40] = 1)],
    ['volume name length 0', (b) => (b[64 + 16] = 0)],
    ['volume name length 200', (b) => (b[64 + 16] = 200)],
  ];
  for (const [what, edit] of edits) {
    const b = Buffer.from(buf);
    edit(b);
    t.throws(() => decodeSlot(reseal(b)), { code: 'ERR_NPMU_META_CORRUPT' }, what);
  }
  t.throws(() => decodeSlot('x' as unknown as Uint8Array), { code: 'ERR_INVALID_ARG_TYPE' });
});

t.test('decode applies the invariants', async (t) => {
  // Two one-page regions; patch fields in place at known offsets.
  const meta = makeMeta(0);
  const region = (id: number, name: string, page: number): RegionMeta => ({
    id,
    name,
    size: 100,
    basePointer: 0n,
    owner: 'o',
    createdAtMs: 1,
    lastOpenAtMs: 0,
    durable: true,
    primaryExtents: [{ page, pages: 1 }],
    mirrorExtents: [{ page, pages: 1 }],
  });
  meta.regions = [region(1, 'aa', 0), region(2, 'bb', 1)];
  meta.nextRegionId = 3;
  const buf = encodeMeta(meta, 1, SLOT);
  const nameAt = buf.indexOf('bb');
  const durableAt = buf.indexOf(Buffer.from([0x6f]), nameAt) + 1 + 16; // after owner "o" and the two times
  t.equal(buf[durableAt], 1, 'found the durable byte');
  const cases: Array<[string, (b: Buffer) => void]> = [
    ['duplicate name', (b) => b.write('aa', nameAt)],
    ['durable flag 2', (b) => (b[durableAt] = 2)],
    ['invalid UTF-8 name', (b) => (b[nameAt] = 0xff)],
    ['NUL in name', (b) => (b[nameAt] = 0)],
    ['overlapping pages', (b) => b.writeBigUInt64LE(0n, durableAt + 1 + 4)],
    ['page out of range', (b) => b.writeBigUInt64LE(BigInt(meta.dataPages), durableAt + 1 + 4)],
    ['zero-page extent', (b) => b.writeBigUInt64LE(0n, durableAt + 1 + 4 + 8)],
    ['huge extent count', (b) => b.writeUInt32LE(0xffffffff, durableAt + 1)],
    ['huge region count', (b) => b.writeUInt32LE(0xffffffff, 64 + 16 + 1 + Buffer.byteLength(meta.name) + 16 + 16 + 4 + 24)],
  ];
  for (const [what, edit] of cases) {
    const b = Buffer.from(buf);
    edit(b);
    t.throws(() => decodeSlot(reseal(b)), { code: 'ERR_NPMU_META_CORRUPT' }, what);
  }
});

t.test('validateMeta: each invariant', async (t) => {
  const base = makeMeta(6, 11);
  const cases: Array<[string, (m: VolumeMeta) => void, RegExp]> = [
    ['duplicate name', (m) => (m.regions[1].name = m.regions[0].name), /appears twice/],
    ['duplicate id', (m) => (m.regions[1].id = m.regions[0].id), /used by another region/],
    ['id >= nextRegionId', (m) => (m.nextRegionId = m.regions.length), /nextRegionId/],
    ['id 0', (m) => (m.regions[0].id = 0), /id 0/],
    ['empty name', (m) => (m.regions[0].name = ''), /UTF-8 bytes/],
    ['name of 65 bytes', (m) => (m.regions[0].name = 'é'.repeat(32) + 'x'), /65 UTF-8 bytes/],
    ['NUL in name', (m) => (m.regions[0].name = 'a\0b'), /NUL/],
    ['lone surrogate', (m) => (m.regions[0].name = 'a\ud800'), /well-formed/],
    ['owner too long', (m) => (m.regions[1].owner = 'o'.repeat(65)), /owner/],
    ['volume name empty', (m) => (m.name = ''), /volume name/],
    ['bad volume id', (m) => (m.volumeId = 'ABCDEF'), /volumeId/],
    ['same unit twice', (m) => (m.mirrorUnit = m.primaryUnit), /same unit/],
    ['page size not a power of two', (m) => (m.pageSize = 6000), /pageSize/],
    ['page size too small', (m) => (m.pageSize = 2048), /pageSize/],
    ['size 0', (m) => (m.regions[0].size = 0), /size/],
    ['size not integral', (m) => (m.regions[0].size = 1.5), /size/],
    ['basePointer + size past 2^64', (m) => (m.regions[0].basePointer = U64_MAX), /2\^64/],
    ['basePointer negative', (m) => (m.regions[1].basePointer = -1n), /basePointer/],
    ['basePointer a number', (m) => ((m.regions[1] as unknown as { basePointer: number }).basePointer = 5), /basePointer/],
    ['durable not boolean', (m) => ((m.regions[1] as unknown as { durable: number }).durable = 1), /durable/],
    [
      'extent past dataPages',
      (m) => (m.regions[0].primaryExtents[0].page = m.dataPages - m.regions[0].primaryExtents[0].pages + 1),
      /outside/,
    ],
    ['extent of 0 pages', (m) => m.regions[0].mirrorExtents.push({ page: 0, pages: 0 }), /pages/],
    ['too few pages', (m) => (m.regions[2].size += m.pageSize * 3), /needs ceil/],
    ['too many pages', (m) => m.regions[2].mirrorExtents.push({ page: m.dataPages - 1, pages: 1 }), /needs ceil/],
    [
      'two regions share a primary page',
      (m) => (m.regions[1].primaryExtents[0].page = m.regions[0].primaryExtents[0].page),
      /primary page \d+ is owned by regions/,
    ],
    [
      'two regions share a mirror page',
      (m) => {
        const last = m.regions[m.regions.length - 1];
        const prev = m.regions[m.regions.length - 2];
        // Give `last` a one-page layout on the mirror that lands on prev's first mirror page.
        last.size = 1;
        last.primaryExtents = [last.primaryExtents[0]].map((e) => ({ page: e.page, pages: 1 }));
        last.mirrorExtents = [{ page: prev.mirrorExtents[0].page, pages: 1 }];
      },
      /mirror page \d+ is owned by regions/,
    ],
    [
      'a region overlaps itself',
      (m) => {
        const e = m.regions[0].primaryExtents[0];
        m.regions[0].primaryExtents = [{ page: e.page, pages: 1 }, { page: e.page, pages: 1 }];
        m.regions[0].size = 2 * m.pageSize;
        m.regions[0].mirrorExtents = m.regions[0].mirrorExtents.slice(0, 1).map((x) => ({ page: x.page, pages: 2 }));
      },
      /twice/,
    ],
    ['regions not an array', (m) => ((m as unknown as { regions: unknown }).regions = {}), /regions/],
  ];
  t.doesNotThrow(() => validateMeta(base));
  for (const [what, edit, msg] of cases) {
    const m = clone(base);
    edit(m);
    const err = thrownBy(() => validateMeta(m));
    t.ok(err instanceof NpmuError, `${what}: an NpmuError`);
    t.match(err, { code: 'ERR_NPMU_META_CORRUPT', message: msg }, what);
    t.throws(() => encodeMeta(m, 1, SLOT), { code: 'ERR_NPMU_META_CORRUPT' }, `${what}: never encoded`);
  }
});

function copies(p0: Buffer | null, p1: Buffer | null, m0: Buffer | null, m1: Buffer | null): SlotCopy[] {
  const z = Buffer.alloc(4096);
  return [
    { unit: 'primary', slot: 0, bytes: p0 ?? z },
    { unit: 'primary', slot: 1, bytes: p1 ?? z },
    { unit: 'mirror', slot: 0, bytes: m0 ?? z },
    { unit: 'mirror', slot: 1, bytes: m1 ?? z },
  ];
}

t.test('chooseNewest: steady state and generation ordering across halves', async (t) => {
  const m4 = makeMeta(3, 1);
  const m5 = clone(m4);
  m5.regions.pop();
  const m6 = clone(m5);
  m6.regions[0].lastOpenAtMs = 1_800_000_000_000;
  const g4 = encodeMeta(m4, 4, SLOT);
  const g5 = encodeMeta(m5, 5, SLOT);
  const g6 = encodeMeta(m6, 6, SLOT);

  let r = chooseNewest(copies(g4, g5, g4, g5));
  t.equal(r.generation, 5);
  t.same(r.from, { unit: 'primary', slot: 1 });
  t.same(r.meta, m5);
  t.same(r.lagging, [], 'both halves hold the newest: nothing lags');
  t.equal(r.diverged, null);
  t.same(r.copies.map((c) => c.state), ['older', 'current', 'older', 'current']);
  t.ok(r.bytes.equals(g5));

  // Crash after the primary persisted 6, before the mirror did.
  r = chooseNewest(copies(g6, g5, g4, g5));
  t.equal(r.generation, 6);
  t.same(r.from, { unit: 'primary', slot: 0 });
  t.same(r.lagging, [{ unit: 'mirror', slot: 0, generation: 5, reason: 'older' }]);
  t.same(r.meta, m6);

  // Only two copies given (one per half): the same answer.
  r = chooseNewest([
    { unit: 'primary', slot: 0, bytes: g6 },
    { unit: 'mirror', slot: 1, bytes: g5 },
  ]);
  t.same(r.lagging, [{ unit: 'mirror', slot: 0, generation: 5, reason: 'older' }]);

  // The mirror is newer (the primary was replaced or lost its update).
  r = chooseNewest(copies(g4, g5, g6, g5));
  t.same(r.from, { unit: 'mirror', slot: 0 });
  t.same(r.lagging, [{ unit: 'primary', slot: 0, generation: 5, reason: 'older' }]);

  // A fresh replacement mirror with nothing on it.
  r = chooseNewest(copies(g6, g5, null, null));
  t.same(r.lagging, [{ unit: 'mirror', slot: 0, generation: null, reason: 'invalid' }]);
  t.same(r.copies.map((c) => c.state), ['current', 'older', 'empty', 'empty']);

  // Degraded: only the mirror is reachable.
  r = chooseNewest(copies(g4, g5, g6, g5).slice(2));
  t.same(r.from, { unit: 'mirror', slot: 0 });
  t.same(r.lagging, []);
});

t.test('chooseNewest: torn writes fall back to the older slot', async (t) => {
  const m5 = makeMeta(4, 2);
  const m6 = clone(m5);
  m6.regions.pop();
  const g5 = encodeMeta(m5, 5, SLOT);
  const g6 = encodeMeta(m6, 6, SLOT);
  const m4 = clone(m5);
  m4.regions[0].owner = 'z'.repeat(60); // a different, longer layout under the torn write
  const g4 = encodeMeta(m4, 4, SLOT);

  // The primary's slot 0 was being overwritten with 6 when power failed: a prefix of 6 over 4.
  for (const cut of [20, 64, 100, g6.length - 1]) {
    const torn = Buffer.from(g4);
    g6.copy(torn, 0, 0, cut);
    if (torn.subarray(0, g6.length).equals(g6)) continue; // the tail happened to match: not torn
    const r = chooseNewest(copies(torn, g5, g4, g5));
    t.equal(r.generation, 5, `torn at ${cut}: generation 5 wins`);
    t.same(r.meta, m5);
    t.same(r.lagging, [], 'both halves still hold 5');
    t.equal(r.copies[0].state, 'corrupt');
  }
  // A newer slot with a bad payload CRC.
  const bad = Buffer.from(g6);
  bad[bad.length - 1] ^= 0xff;
  const r = chooseNewest(copies(bad, g5, g4, g5));
  t.equal(r.generation, 5);
  t.match(r.copies[0].error, { code: 'ERR_NPMU_META_CORRUPT', message: /payload CRC/ });
});

t.test('chooseNewest: divergence, misplaced copies and no valid copy', async (t) => {
  const a = makeMeta(2, 3);
  const b = clone(a);
  b.regions[0].owner = 'someone-else';
  const ga = encodeMeta(a, 7, SLOT);
  const gb = encodeMeta(b, 7, SLOT);
  const g6 = encodeMeta(a, 6, SLOT);
  let r = chooseNewest(copies(g6, ga, g6, gb));
  t.match(r.diverged, { code: 'ERR_NPMU_META_DIVERGED', generation: 7 });
  t.ok(r.diverged instanceof NpmuError);
  t.same(r.from, { unit: 'primary', slot: 1 }, "the primary's copy wins");
  t.same(r.meta, a);
  t.same(r.lagging, [{ unit: 'mirror', slot: 1, generation: 7, reason: 'diverged' }]);
  t.equal(r.copies[3].state, 'diverged');

  // Generation 7 in slot 0 is not where the protocol puts it.
  r = chooseNewest(copies(ga, g6, g6, null));
  t.equal(r.generation, 6);
  t.match(r.copies[0], { state: 'corrupt', error: { message: /slot 0/ } });

  t.throws(() => chooseNewest(copies(null, null, null, null)), { code: 'ERR_NPMU_META_EMPTY' }, 'unformatted');
  const junk = Buffer.from(ga);
  junk[300] ^= 1;
  t.throws(() => chooseNewest(copies(junk, null, junk, null)), { code: 'ERR_NPMU_META_CORRUPT' }, 'nothing valid');
  const newer = reseal(Buffer.from(g6));
  newer.writeUInt32LE(2, 8);
  reseal(newer);
  t.throws(() => chooseNewest(copies(newer, ga, g6, ga)), { code: 'ERR_NPMU_META_TOO_NEW', unit: 'primary', slot: 0, formatVersion: 2 }, 'never overwrite a newer format');
  t.throws(() => chooseNewest([{ unit: 'left', slot: 0, bytes: ga } as unknown as SlotCopy]), {
    code: 'ERR_INVALID_ARG_TYPE',
  });
  t.throws(
    () =>
      chooseNewest([
        { unit: 'primary', slot: 1, bytes: ga },
        { unit: 'primary', slot: 1, bytes: ga },
      ]),
    { code: 'ERR_INVALID_ARG_TYPE' },
    'the same copy twice',
  );
});

t.test('the write protocol survives a crash at any point', async (t) => {
  // Two units' metadata areas; every update follows planWrite; a crash tears
  // the write in progress at a random byte. Recovery must always give the
  // generation before or the one being written, and repair must converge.
  const area = 3 * 4096 * 4;
  const size = slotSize(area);
  const [, off1] = slotOffsets(area);
  const units = { primary: Buffer.alloc(area), mirror: Buffer.alloc(area) };
  const read = (): SlotCopy[] =>
    (['primary', 'mirror'] as const).flatMap((unit) =>
      ([0, 1] as const).map((slot) => ({ unit, slot, bytes: units[unit].subarray(slot * off1, slot * off1 + size) })),
    );
  const r = rng(99);
  let meta = makeMeta(1, 5, 4096, 1000);
  let generation = 0;
  // Format: generation 1 on both halves.
  let plan = planWrite(generation);
  for (const u of plan.order) encodeMeta(meta, plan.generation, size).copy(units[u], plan.slot * off1);
  generation = plan.generation;
  let outcomes = { old: 0, new: 0 };
  for (let step = 0; step < 300; step++) {
    const next = clone(meta);
    next.regions[0].lastOpenAtMs = 1_800_000_000_000 + step;
    next.regions[0].owner = 'o'.repeat(r(40));
    plan = planWrite(generation);
    const bytes = encodeMeta(next, plan.generation, size);
    const crashAt = r(2 * bytes.length + 50); // beyond 2*length: no crash
    let written = 0;
    for (const u of plan.order) {
      const n = Math.min(bytes.length, Math.max(0, crashAt - written));
      bytes.copy(units[u], plan.slot * off1, 0, n);
      written += bytes.length;
    }
    const got = chooseNewest(read());
    if (got.generation === plan.generation) {
      outcomes.new++;
      t.same(got.meta, next);
    } else {
      outcomes.old++;
      if (got.generation !== generation) t.fail(`step ${step}: recovered ${got.generation}`);
      t.same(got.meta, meta);
    }
    // Repair: copy the winner to lagging halves (primary first).
    for (const l of got.lagging) got.bytes.copy(units[l.unit], l.slot * off1);
    const again = chooseNewest(read());
    if (again.lagging.length !== 0 || again.generation !== got.generation) t.fail(`step ${step}: repair did not converge`);
    meta = got.meta;
    generation = got.generation;
  }
  t.ok(outcomes.old > 50 && outcomes.new > 50, `crashes before and after the update counted: ${JSON.stringify(outcomes)}`);
});

t.test('fuzz: decoding never throws anything but NpmuError', async (t) => {
  const r = rng(2024);
  const valid = encodeMeta(makeMeta(12, 4), 3, SLOT);
  const failures: string[] = [];
  let decodedOk = 0;
  const attempt = (what: string, b: Uint8Array) => {
    try {
      const d = decodeSlot(b);
      decodedOk++;
      // Whatever decodes is valid and re-encodes to the same bytes.
      if (!encodeMeta(d.meta, d.generation, SLOT).equals(Buffer.from(b.subarray(0, d.length)))) {
        failures.push(`${what}: not canonical`);
      }
    } catch (e) {
      if (!(e instanceof NpmuError) || !DECODE_CODES.has(e.code)) failures.push(`${what}: ${String(e)}`);
    }
  };

  // 2000 random inputs: pure noise, noise behind a valid magic, and resealed mutations of a valid slot.
  for (let i = 0; i < 2000; i++) {
    const kind = i % 4;
    let b: Buffer;
    if (kind === 0) {
      b = Buffer.alloc(r(300));
      for (let k = 0; k < b.length; k++) b[k] = r(256);
    } else if (kind === 1) {
      b = Buffer.alloc(64 + r(2000));
      for (let k = 0; k < b.length; k++) b[k] = r(256);
      b.write('NPMUMETA', 0, 'ascii');
      b.writeUInt32LE(1, 8);
      b.writeUInt32LE(64, 12);
      b.writeUInt32LE(r(2) ? b.length - 64 : r(4000), 24);
      b.fill(0, 32, 60);
      reseal(b);
    } else {
      b = Buffer.from(valid);
      const edits = 1 + r(4);
      for (let k = 0; k < edits; k++) {
        const at = 64 + r(b.length - 64);
        b[at] = kind === 2 ? b[at] ^ (1 << r(8)) : r(256);
      }
      reseal(b);
    }
    attempt(`random #${i}`, b);
  }
  // Every truncation.
  for (let n = 0; n < valid.length; n++) attempt(`truncated to ${n}`, valid.subarray(0, n));
  // Every byte flipped (CRC-32C catches every one of these).
  let caught = 0;
  for (let at = 0; at < valid.length; at++) {
    const b = Buffer.from(valid);
    b[at] ^= 0xff;
    const e = thrownBy(() => decodeSlot(b));
    if (e instanceof NpmuError && DECODE_CODES.has(e.code)) caught++;
    else failures.push(`flip at ${at}: ${String(e)}`);
  }
  t.same(failures, [], 'no other throw, no non-canonical success');
  t.equal(caught, valid.length, 'every flipped byte detected');
  t.ok(decodedOk > 0, `some resealed mutations still decode (${decodedOk})`);
});
