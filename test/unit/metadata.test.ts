import t from 'tap';
import { crc32c } from '../../lib/crc32c';
import { NpmuError } from '../../lib/errors';
import { PageAllocator, pagesFor } from '../../pmm/alloc';
import {
  MetaImage,
  PAGE_CAPACITY,
  ROOT_HEADER_SIZE,
  ROOT_SLOT_SIZE,
  TABLE_OFFSET,
  TABLE_PAGE_SIZE,
  decodePage,
  decodeRoot,
  encodePage,
  encodeRoot,
  newId,
  newestRoot,
  regionRecordSize,
  rootSlotOffset,
  tablePageCount,
  tablePageOffset,
  usedExtents,
  validateMeta,
  type AreaWrite,
  type Change,
  type Extent,
  type RegionMeta,
  type RootRecord,
  type SyncState,
  type UpdatePlan,
  type VolumeMeta,
} from '../../pmm/metadata';

const U64_MAX = (1n << 64n) - 1n;
const MIB = 1 << 20;
const IN_SYNC: SyncState = { peerStale: false, staleSince: 0 };
const WRITER = 'ab'.repeat(16);
const OPTS = { epoch: 7, writer: WRITER };

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

const NAMES = ['wal', 'lock-table', 'журнал', '日本語の領域', 'émoji 🚀 tail', 'x'.repeat(64), 'é'.repeat(32), '🚀'.repeat(16), 'y'];
const DECODE_CODES = new Set(['ERR_NPMU_META_EMPTY', 'ERR_NPMU_META_TOO_OLD', 'ERR_NPMU_META_TOO_NEW', 'ERR_NPMU_META_CORRUPT']);

function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

function volumeRecord(dataPages = 50_000, pageSize = 4096, name = 'vol0 – töst'): Omit<VolumeMeta, 'regions'> {
  return {
    volumeId: newId(),
    name,
    primaryUnit: newId(),
    mirrorUnit: newId(),
    pageSize,
    dataPages,
    createdAtMs: 1_699_999_999_999,
    nextRegionId: 1,
  };
}

function region(id: number, name: string, primaryExtents: Extent[], mirrorExtents: Extent[], pageSize = 4096, extra: Partial<RegionMeta> = {}): RegionMeta {
  const pages = primaryExtents.reduce((s, e) => s + e.pages, 0);
  return {
    id,
    name,
    size: (pages - 1) * pageSize + 1 + ((id * 37) % pageSize),
    basePointer: BigInt(id) * 0x1000_0000n,
    owner: id % 3 === 0 ? '' : `user${id}@host-ü`,
    createdAtMs: 1_700_000_000_000 + id,
    lastOpenAtMs: id % 2 === 0 ? 0 : 1_700_000_100_000 + id,
    durable: id % 2 === 1,
    primaryExtents,
    mirrorExtents,
    ...extra,
  };
}

/** A valid volume with `n` regions, allocated by the real allocator on both halves. */
function makeMeta(n: number, seed = 1, pageSize = 4096, dataPages = 50_000): VolumeMeta {
  const r = rng(seed);
  const pa = new PageAllocator(dataPages);
  const ma = new PageAllocator(dataPages);
  const spacer = ma.allocate(3);
  const regions: RegionMeta[] = [];
  for (let i = 0; i < n; i++) {
    const size = 1 + r(pageSize * 8);
    const pages = pagesFor(size, pageSize);
    regions.push({
      id: i + 1,
      name: i < NAMES.length ? NAMES[i] : `region-${i}-ø`,
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
  return { ...volumeRecord(dataPages, pageSize), nextRegionId: n + 1, regions };
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

function makeRoot(overrides: Partial<RootRecord> = {}): RootRecord {
  return {
    generation: 5,
    epoch: 3,
    writer: WRITER,
    sync: { peerStale: true, staleSince: 4 },
    volume: { ...volumeRecord(), nextRegionId: 10 },
    regionCount: 9,
    pages: [
      { index: 0, length: 100, crc: 0xdeadbeef },
      { index: 3, length: TABLE_PAGE_SIZE, crc: 0 },
      { index: 1000, length: 36, crc: 0xffffffff },
    ],
    ...overrides,
  };
}

/** Recomputes both root CRCs after a deliberate edit, so the parser itself is exercised. */
function resealRoot(buf: Buffer): Buffer {
  const len = buf.readUInt32LE(24);
  buf.writeUInt32LE(crc32c(buf.subarray(64, 64 + Math.min(len, buf.length - 64))), 28);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  return buf;
}

/** Recomputes a page's trailing CRC (at `length - 4`). */
function resealPage(buf: Buffer): Buffer {
  buf.writeUInt32LE(crc32c(buf.subarray(0, buf.length - 4)), buf.length - 4);
  return buf;
}

/** JSON replacer for bigint fields. */
function big(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? `${v}n` : v;
}

// ---------------------------------------------------------------------------
// A simulated metadata area.

function writeAll(area: Buffer, writes: readonly AreaWrite[]): void {
  for (const w of writes) w.bytes.copy(area, w.offset);
}

function writePlan(area: Buffer, plan: UpdatePlan, sync: SyncState = IN_SYNC): void {
  writeAll(area, plan.pageWrites);
  plan.rootBytes(sync).copy(area, plan.rootOffset);
}

/** Every write of a plan in order (pages, then the root). */
function planWrites(plan: UpdatePlan, sync: SyncState = IN_SYNC): AreaWrite[] {
  return [...plan.pageWrites, { offset: plan.rootOffset, bytes: plan.rootBytes(sync) }];
}

/** Recovery of one half from its area bytes alone. */
function reload(area: Buffer): MetaImage | null {
  const { root } = newestRoot(area.subarray(0, ROOT_SLOT_SIZE), area.subarray(ROOT_SLOT_SIZE, 2 * ROOT_SLOT_SIZE));
  if (root === null) return null;
  const pages = new Map<number, Uint8Array>();
  for (const p of root.pages) pages.set(p.index, area.subarray(tablePageOffset(p.index), tablePageOffset(p.index) + TABLE_PAGE_SIZE));
  return MetaImage.load(root, pages, area.length);
}

/** A model of the volume plus the allocators the PMM would derive. */
class Model {
  img: MetaImage;
  area: Buffer;
  alloc: { primary: PageAllocator; mirror: PageAllocator };
  constructor(areaLength: number, volume = volumeRecord()) {
    this.area = Buffer.alloc(areaLength);
    this.img = MetaImage.create(volume, areaLength);
    this.alloc = { primary: new PageAllocator(volume.dataPages), mirror: new PageAllocator(volume.dataPages) };
    this.commit({});
  }

  commit(change: Change, sync: SyncState = IN_SYNC): UpdatePlan {
    const plan = this.img.plan(change, OPTS);
    writePlan(this.area, plan, sync);
    this.img.apply(plan);
    return plan;
  }

  newRegion(name: string, size: number, extra: Partial<RegionMeta> = {}): RegionMeta {
    const pages = pagesFor(size, this.img.volume.pageSize);
    return {
      id: this.img.volume.nextRegionId,
      name,
      size,
      basePointer: 0x7000_0000_0000n + BigInt(this.img.volume.nextRegionId) * 0x1_0000_0000n,
      owner: `owner-${name.length}`,
      createdAtMs: 1_700_000_000_000,
      lastOpenAtMs: 0,
      durable: true,
      primaryExtents: this.alloc.primary.allocate(pages, { maxExtents: 8 }),
      mirrorExtents: this.alloc.mirror.allocate(pages, { maxExtents: 8 }),
      ...extra,
    };
  }

  create(name: string, size: number, extra: Partial<RegionMeta> = {}): RegionMeta {
    const r = this.newRegion(name, size, extra);
    try {
      this.commit({ add: r });
    } catch (e) {
      this.alloc.primary.free(r.primaryExtents);
      this.alloc.mirror.free(r.mirrorExtents);
      throw e;
    }
    return r;
  }

  remove(id: number): void {
    const r = this.img.regionById(id)!;
    this.commit({ remove: id });
    this.alloc.primary.free(r.primaryExtents);
    this.alloc.mirror.free(r.mirrorExtents);
  }
}

// ---------------------------------------------------------------------------

t.test('geometry', async (t) => {
  t.equal(rootSlotOffset(0), 0);
  t.equal(rootSlotOffset(1), 8192);
  t.equal(tablePageOffset(0), 16384);
  t.equal(tablePageOffset(3), 16384 + 3 * 8192);
  t.equal(tablePageCount(16384), 0);
  t.equal(tablePageCount(64 * 1024), 6);
  t.equal(tablePageCount(8 * MIB), 1022);
  t.equal(tablePageCount(8 * MIB + 8191), 1022);
  t.throws(() => tablePageCount(16383), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => rootSlotOffset(2 as 0), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => tablePageOffset(-1), { code: 'ERR_OUT_OF_RANGE' });
  t.equal(TABLE_OFFSET, 2 * ROOT_SLOT_SIZE);
});

t.test('root round trip: every field', async (t) => {
  const cases: RootRecord[] = [
    makeRoot(),
    makeRoot({ generation: 1, epoch: 0, sync: IN_SYNC, regionCount: 0, pages: [] }),
    makeRoot({ generation: Number.MAX_SAFE_INTEGER, epoch: Number.MAX_SAFE_INTEGER, sync: { peerStale: true, staleSince: Number.MAX_SAFE_INTEGER } }),
    makeRoot({ volume: { ...volumeRecord(2 ** 40, 2 ** 30, 'v'), nextRegionId: Number.MAX_SAFE_INTEGER, createdAtMs: 0 } }),
  ];
  for (const name of ['é'.repeat(32), '🚀'.repeat(16), 'x'.repeat(64), 'ü', 'a']) {
    cases.push(makeRoot({ volume: { ...volumeRecord(), name, nextRegionId: 10 } }));
  }
  // As many page refs as fit a slot with a 64-byte volume name.
  const many = makeRoot({ volume: { ...volumeRecord(), name: '🚀'.repeat(16), nextRegionId: 10_000 }, regionCount: 9000 });
  many.pages = Array.from({ length: 662 }, (_, i) => ({ index: i * 2, length: 36 + i, crc: (i * 2654435761) >>> 0 }));
  cases.push(many);
  for (const root of cases) {
    const buf = encodeRoot(root);
    t.ok(buf.length <= ROOT_SLOT_SIZE);
    t.equal(buf.subarray(0, 8).toString('ascii'), 'NPMUROOT');
    t.equal(buf.length, ROOT_HEADER_SIZE + 8 + 16 + 1 + 8 + 16 + 1 + Buffer.byteLength(root.volume.name) + 16 + 16 + 4 + 24 + 8 + 12 * root.pages.length);
    t.same(decodeRoot(buf), root);
    t.ok(encodeRoot(decodeRoot(buf)).equals(buf), 're-encoding gives the same bytes');
    // Whole slot with junk after the root, and a view at an offset of a bigger buffer.
    const slot = Buffer.alloc(ROOT_SLOT_SIZE, 0xa5);
    buf.copy(slot);
    t.same(decodeRoot(slot), root);
    const area = new Uint8Array(3 * ROOT_SLOT_SIZE);
    area.set(buf, ROOT_SLOT_SIZE);
    t.same(decodeRoot(area.subarray(ROOT_SLOT_SIZE)), root);
  }
  t.equal(encodeRoot(many).length, 8190, 'a 662-page root with a 64-byte name nearly fills its slot');
  const tooMany = { ...many, pages: [...many.pages, { index: 5000, length: 36, crc: 1 }] };
  t.match(thrownBy(() => encodeRoot(tooMany)), { code: 'ERR_NPMU_META_TOO_LARGE', needed: 8202, available: 8192 });
});

t.test('encodeRoot refuses impossible roots', async (t) => {
  const v = makeRoot().volume;
  const cases: Array<[string, Partial<RootRecord>]> = [
    ['generation 0', { generation: 0 }],
    ['fractional epoch', { epoch: 1.5 }],
    ['bad writer', { writer: 'ABC' }],
    ['stale without staleSince', { sync: { peerStale: true, staleSince: 0 } }],
    ['staleSince after generation', { sync: { peerStale: true, staleSince: 6 } }],
    ['in sync with staleSince', { sync: { peerStale: false, staleSince: 2 } }],
    ['pages not ascending', { pages: [{ index: 3, length: 40, crc: 0 }, { index: 3, length: 40, crc: 0 }] }],
    ['page too long', { pages: [{ index: 3, length: 8193, crc: 0 }] }],
    ['page too short', { pages: [{ index: 3, length: 35, crc: 0 }] }],
    ['crc not u32', { pages: [{ index: 3, length: 40, crc: 2 ** 32 }] }],
    ['more pages than regions', { regionCount: 2 }],
    ['regions without pages', { pages: [] }],
    ['same unit twice', { volume: { ...v, mirrorUnit: v.primaryUnit } }],
    ['page size', { volume: { ...v, pageSize: 6000 } }],
    ['nextRegionId 0', { volume: { ...v, nextRegionId: 0 } }],
  ];
  for (const [what, o] of cases) t.throws(() => encodeRoot(makeRoot(o)), { code: 'ERR_NPMU_META_CORRUPT' }, what);
});

t.test('page round trip', async (t) => {
  const meta = makeMeta(NAMES.length + 3, 7);
  const recs = meta.regions.slice(0, 12);
  recs[0].owner = 'ö'.repeat(32);
  const buf = encodePage(17, 3, recs);
  t.equal(buf.subarray(0, 8).toString('ascii'), 'NPMUPAGE');
  t.equal(buf.length, 32 + recs.reduce((s, r) => s + regionRecordSize(r), 0) + 4);
  const d = decodePage(buf, 17);
  t.same(d, { index: 17, generation: 3, records: recs, length: buf.length });
  t.equal(d.records[0].basePointer, U64_MAX - BigInt(recs[0].size) + 1n, 'basePointer near 2^64 - 1');
  t.equal(Buffer.byteLength(d.records[5].name), 64);
  t.equal(Buffer.byteLength(d.records[7].name), 64, '64 bytes of 4-byte characters');
  t.equal(Buffer.byteLength(d.records[0].owner), 64, '64-byte multibyte owner');
  t.ok(encodePage(17, 3, d.records).equals(buf), 're-encoding gives the same bytes');
  const page = Buffer.alloc(TABLE_PAGE_SIZE, 0x5a);
  buf.copy(page);
  t.same(decodePage(page).records, recs, 'a whole page with stale bytes after the CRC');
  t.throws(() => decodePage(buf, 18), { code: 'ERR_NPMU_META_CORRUPT', message: /says it is page 17/ });
  t.throws(() => encodePage(1, 1, [recs[1], recs[0]]), { code: 'ERR_NPMU_META_CORRUPT', message: /ascending/ });
  t.throws(() => encodePage(1, 1, []), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => encodePage(1, 0, recs), { code: 'ERR_OUT_OF_RANGE' });
  const big = Array.from({ length: 60 }, (_, i) => region(i + 1, `r${i}`, [{ page: i * 10, pages: 4 }], [{ page: i * 10, pages: 4 }], 4096, { owner: 'o'.repeat(64), name: `n${i}`.padEnd(64, 'n') }));
  t.match(thrownBy(() => encodePage(1, 1, big)), { code: 'ERR_NPMU_META_TOO_LARGE', available: PAGE_CAPACITY });
});

t.test('decode errors', async (t) => {
  const root = encodeRoot(makeRoot());
  t.throws(() => decodeRoot(Buffer.alloc(ROOT_SLOT_SIZE)), { code: 'ERR_NPMU_META_EMPTY', name: 'NpmuError' }, 'zeroed slot');
  t.throws(() => decodeRoot(Buffer.alloc(0)), { code: 'ERR_NPMU_META_EMPTY' });
  t.throws(() => decodeRoot(root.subarray(0, 40)), { code: 'ERR_NPMU_META_CORRUPT' }, 'truncated header');
  t.throws(() => decodeRoot(root.subarray(0, root.length - 1)), { code: 'ERR_NPMU_META_CORRUPT' }, 'truncated body');
  t.throws(() => decodeRoot('x' as unknown as Uint8Array), { code: 'ERR_INVALID_ARG_TYPE' });

  // A version 1 slot: too old, with a message saying what to do.
  const v1 = Buffer.alloc(4096);
  v1.write('NPMUMETA', 0, 'ascii');
  v1.writeUInt32LE(1, 8);
  v1.writeUInt32LE(64, 12);
  v1.writeUInt32LE(crc32c(v1.subarray(0, 60)), 60);
  t.throws(() => decodeRoot(v1), { code: 'ERR_NPMU_META_TOO_OLD', formatVersion: 1, message: /recreate the volume/ });

  // A newer version with a valid header CRC: too new; without one: corrupt.
  const v3 = Buffer.from(root);
  v3.writeUInt32LE(3, 8);
  t.throws(() => decodeRoot(v3), { code: 'ERR_NPMU_META_CORRUPT', message: /header CRC/ });
  t.throws(() => decodeRoot(resealRoot(v3)), { code: 'ERR_NPMU_META_TOO_NEW', formatVersion: 3 });
  const v3big = Buffer.alloc(300);
  root.copy(v3big, 0, 0, 16);
  v3big.writeUInt32LE(3, 8);
  v3big.writeUInt32LE(128, 12);
  v3big.writeUInt32LE(crc32c(v3big.subarray(0, 124)), 124);
  t.throws(() => decodeRoot(v3big), { code: 'ERR_NPMU_META_TOO_NEW', formatVersion: 3 }, 'a future, larger header');

  const flipMagic = Buffer.from(root);
  flipMagic[2] ^= 0x10;
  t.throws(() => decodeRoot(flipMagic), { code: 'ERR_NPMU_META_CORRUPT', message: /magic is damaged/ }, 'a damaged magic is not emptiness');
  const flip = (at: number) => {
    const b = Buffer.from(root);
    b[at] ^= 0x01;
    return b;
  };
  t.throws(() => decodeRoot(flip(20)), { code: 'ERR_NPMU_META_CORRUPT', message: /header CRC/ });
  t.throws(() => decodeRoot(flip(200)), { code: 'ERR_NPMU_META_CORRUPT', message: /body CRC/ });

  const B = 64; // body start
  const nameLen = Buffer.byteLength(makeRoot().volume.name);
  const afterVol = B + 33 + 16 + 1 + nameLen + 16 + 16 + 4 + 24;
  const edits: Array<[string, (b: Buffer) => void]> = [
    ['version 1 with the v2 magic', (b) => b.writeUInt32LE(1, 8)],
    ['header size 68', (b) => b.writeUInt32LE(68, 12)],
    ['header size 8', (b) => b.writeUInt32LE(8, 12)],
    ['generation 0', (b) => b.writeBigUInt64LE(0n, 16)],
    ['generation 2^63', (b) => b.writeBigUInt64LE(1n << 63n, 16)],
    ['body length past the end', (b) => b.writeUInt32LE(b.length, 24)],
    ['body length past the slot', (b) => b.writeUInt32LE(ROOT_SLOT_SIZE, 24)],
    ['body length short', (b) => b.writeUInt32LE(b.readUInt32LE(24) - 1, 24)],
    ['flags', (b) => b.writeUInt32LE(1, 32)],
    ['reserved', (b) => (b[40] = 1)],
    ['peerStale 2', (b) => (b[B + 24] = 2)],
    ['staleSince 0 while stale', (b) => b.writeBigUInt64LE(0n, B + 25)],
    ['epoch 2^60', (b) => b.writeBigUInt64LE(1n << 60n, B)],
    ['volume name length 0', (b) => (b[B + 33 + 16] = 0)],
    ['volume name length 200', (b) => (b[B + 33 + 16] = 200)],
    ['regionCount 1 with 3 pages', (b) => b.writeUInt32LE(1, afterVol)],
    ['page ref count 4', (b) => b.writeUInt32LE(4, afterVol + 4)],
    ['page ref count 2', (b) => b.writeUInt32LE(2, afterVol + 4)],
    ['page refs out of order', (b) => b.writeUInt32LE(5000, afterVol + 8)],
    ['page length 0', (b) => b.writeUInt32LE(0, afterVol + 12)],
  ];
  for (const [what, edit] of edits) {
    const b = Buffer.from(root);
    edit(b);
    t.throws(() => decodeRoot(resealRoot(b)), { code: 'ERR_NPMU_META_CORRUPT' }, what);
  }

  // Pages.
  const page = encodePage(4, 2, makeMeta(3).regions);
  t.throws(() => decodePage(Buffer.alloc(TABLE_PAGE_SIZE)), { code: 'ERR_NPMU_META_CORRUPT', message: /magic/ });
  t.throws(() => decodePage(page.subarray(0, 30)), { code: 'ERR_NPMU_META_CORRUPT' });
  const pageEdits: Array<[string, (b: Buffer) => void]> = [
    ['version 3', (b) => b.writeUInt32LE(3, 8)],
    ['header size', (b) => b.writeUInt32LE(64, 12)],
    ['generation 0', (b) => b.writeBigUInt64LE(0n, 16)],
    ['no records', (b) => b.writeUInt32LE(0, 28)],
    ['more records', (b) => b.writeUInt32LE(4, 28)],
    ['fewer records', (b) => b.writeUInt32LE(2, 28)],
    ['huge record count', (b) => b.writeUInt32LE(0xffffffff, 28)],
    ['id 0', (b) => b.writeBigUInt64LE(0n, 32)],
    ['ids not ascending', (b) => b.writeBigUInt64LE(9n, 32)],
    ['name length 0', (b) => (b[40] = 0)],
    ['invalid UTF-8 name', (b) => (b[41] = 0xff)],
  ];
  for (const [what, edit] of pageEdits) {
    const b = Buffer.from(page);
    edit(b);
    t.throws(() => decodePage(resealPage(b)), { code: 'ERR_NPMU_META_CORRUPT' }, `page: ${what}`);
  }
});

t.test('fuzz: decoding never throws anything but the listed NpmuErrors', async (t) => {
  const r = rng(2024);
  const failures: string[] = [];
  const attemptRoot = (what: string, b: Uint8Array) => {
    try {
      const d = decodeRoot(b);
      if (!encodeRoot(d).equals(Buffer.from(b.subarray(0, encodeRoot(d).length)))) failures.push(`${what}: not canonical`);
    } catch (e) {
      if (!(e instanceof NpmuError) || !DECODE_CODES.has(e.code)) failures.push(`${what}: ${String(e)}`);
    }
  };
  const attemptPage = (what: string, b: Uint8Array) => {
    try {
      const d = decodePage(b);
      if (!encodePage(d.index, d.generation, d.records).equals(Buffer.from(b.subarray(0, d.length)))) failures.push(`${what}: not canonical`);
    } catch (e) {
      if (!(e instanceof NpmuError) || e.code !== 'ERR_NPMU_META_CORRUPT') failures.push(`${what}: ${String(e)}`);
    }
  };
  const small = encodeRoot(makeRoot({ volume: { ...volumeRecord(), name: 'v', nextRegionId: 10 } }));
  const page = encodePage(4, 2, makeMeta(4, 3).regions);
  let rootOk = 0;
  for (let i = 0; i < 3000; i++) {
    const kind = i % 3;
    const base = i % 2 === 0 ? small : page;
    let b: Buffer;
    if (kind === 0) {
      b = Buffer.alloc(r(600));
      for (let k = 0; k < b.length; k++) b[k] = r(256);
      if (r(2)) b.write(r(2) ? 'NPMUROOT' : 'NPMUPAGE', 0, 'ascii');
    } else {
      b = Buffer.from(base);
      const edits = 1 + r(4);
      for (let k = 0; k < edits; k++) {
        const at = r(b.length);
        b[at] = kind === 1 ? b[at] ^ (1 << r(8)) : r(256);
      }
      if (base === small) resealRoot(b);
      else resealPage(b);
    }
    attemptRoot(`random #${i} as root`, b);
    attemptPage(`random #${i} as page`, b);
    if (base === small && thrownBy(() => decodeRoot(b)) === undefined) rootOk++;
  }
  for (let n = 0; n < small.length; n++) attemptRoot(`root truncated to ${n}`, small.subarray(0, n));
  for (let n = 0; n < page.length; n++) attemptPage(`page truncated to ${n}`, page.subarray(0, n));
  // Every single flipped bit of a small root, and of a page: always corrupt (never empty, never valid).
  let caught = 0;
  for (let bit = 0; bit < small.length * 8; bit++) {
    const b = Buffer.from(small);
    b[bit >> 3] ^= 1 << (bit & 7);
    const e = thrownBy(() => decodeRoot(b));
    if (e instanceof NpmuError && e.code === 'ERR_NPMU_META_CORRUPT') caught++;
    else failures.push(`root bit ${bit}: ${String(e)}`);
  }
  t.equal(caught, small.length * 8, `all ${small.length * 8} single-bit flips of a ${small.length}-byte root are corrupt`);
  caught = 0;
  for (let bit = 0; bit < page.length * 8; bit++) {
    const b = Buffer.from(page);
    b[bit >> 3] ^= 1 << (bit & 7);
    const e = thrownBy(() => decodePage(b));
    if (e instanceof NpmuError && e.code === 'ERR_NPMU_META_CORRUPT') caught++;
    else failures.push(`page bit ${bit}: ${String(e)}`);
  }
  t.equal(caught, page.length * 8, `all single-bit flips of a ${page.length}-byte page are corrupt`);
  t.same(failures, [], 'no other throw, no non-canonical success');
  t.ok(rootOk > 0, `some resealed root mutations still decode (${rootOk})`);
});

t.test('newestRoot', async (t) => {
  const vol = { ...volumeRecord(), nextRegionId: 1 };
  const at = (generation: number, sync = IN_SYNC) => encodeRoot({ generation, epoch: 1, writer: WRITER, sync, volume: vol, regionCount: 0, pages: [] });
  const zero = Buffer.alloc(ROOT_SLOT_SIZE);
  t.same(newestRoot(zero, zero), { root: null, slot: null, states: ['empty', 'empty'] });
  let r = newestRoot(zero, at(1));
  t.equal(r.root?.generation, 1);
  t.equal(r.slot, 1);
  t.same(r.states, ['empty', 'valid']);
  r = newestRoot(at(6), at(5));
  t.equal(r.root?.generation, 6);
  t.equal(r.slot, 0);
  r = newestRoot(at(4), at(5));
  t.equal(r.slot, 1);
  // A torn newer root: the older stands.
  const torn = Buffer.from(at(6));
  torn.fill(0, 70); // the header and 6 body bytes of generation 6 reached the slot
  r = newestRoot(torn, at(5));
  t.equal(r.root?.generation, 5);
  t.same(r.states, ['corrupt', 'valid']);
  // A generation in the wrong slot is corrupt.
  r = newestRoot(at(7), at(5));
  t.equal(r.root?.generation, 5);
  t.same(r.states, ['corrupt', 'valid']);
  t.throws(() => newestRoot(at(7), zero), { code: 'ERR_NPMU_META_CORRUPT', message: /slot 0/ });
  const junk = Buffer.from(at(6));
  junk[100] ^= 1;
  t.throws(() => newestRoot(junk, junk), { code: 'ERR_NPMU_META_CORRUPT' }, 'nothing valid');
  // Newer format in either slot: never fall back.
  const v3 = resealRoot(Buffer.from(at(5)));
  v3.writeUInt32LE(3, 8);
  resealRoot(v3);
  t.throws(() => newestRoot(at(6), v3), { code: 'ERR_NPMU_META_TOO_NEW', slot: 1, formatVersion: 3 });
  t.throws(() => newestRoot(v3, zero), { code: 'ERR_NPMU_META_TOO_NEW', slot: 0 });
  // A version 1 area (NPMUMETA at area offset 0).
  const v1 = Buffer.alloc(ROOT_SLOT_SIZE);
  v1.write('NPMUMETA', 0, 'ascii');
  t.throws(() => newestRoot(v1, zero), { code: 'ERR_NPMU_META_TOO_OLD', slot: 0, message: /recreate/ });
  t.throws(() => newestRoot(v1, at(1)), { code: 'ERR_NPMU_META_TOO_OLD' });
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
    ['durable not boolean', (m) => ((m.regions[1] as unknown as { durable: number }).durable = 1), /durable/],
    ['extent past dataPages', (m) => (m.regions[0].primaryExtents[0].page = m.dataPages - m.regions[0].primaryExtents[0].pages + 1), /outside/],
    ['extent of 0 pages', (m) => m.regions[0].mirrorExtents.push({ page: 0, pages: 0 }), /pages/],
    ['too few pages', (m) => (m.regions[2].size += m.pageSize * 3), /needs ceil/],
    ['two regions share a primary page', (m) => (m.regions[1].primaryExtents[0].page = m.regions[0].primaryExtents[0].page), /primary page \d+ is owned by regions/],
    ['regions not an array', (m) => ((m as unknown as { regions: unknown }).regions = {}), /regions/],
  ];
  t.doesNotThrow(() => validateMeta(base));
  for (const [what, edit, msg] of cases) {
    const m = clone(base);
    edit(m);
    const err = thrownBy(() => validateMeta(m));
    t.ok(err instanceof NpmuError, `${what}: an NpmuError`);
    t.match(err, { code: 'ERR_NPMU_META_CORRUPT', message: msg }, what);
  }
  const p = usedExtents(base, 'primary');
  t.equal(new PageAllocator(base.dataPages, p).usedPages, base.regions.reduce((s, r) => s + pagesFor(r.size, base.pageSize), 0));
});

t.test('image basics: create, lookups, order, root-only updates and sync states', async (t) => {
  const m = new Model(MIB);
  t.equal(m.img.generation, 1, 'the first root');
  t.equal(m.img.regionCount, 0);
  t.same(reload(m.area)?.toMeta(), m.img.toMeta());
  t.same(newestRoot(m.area.subarray(0, 8192), m.area.subarray(8192, 16384)).states, ['empty', 'valid']);
  const created = NAMES.map((n, i) => m.create(n, 1 + i * 5000));
  t.same(m.img.names(3), NAMES.slice(0, 3));
  t.same(m.img.names(100), NAMES);
  t.same(m.img.names(0), []);
  t.same([...m.img.regions()].map((r) => r.id), created.map((r) => r.id), 'creation order');
  t.same(m.img.region('журнал'), created[2]);
  t.same(m.img.regionById(created[4].id), created[4]);
  t.equal(m.img.region('nope'), undefined);
  t.ok(Object.isFrozen(m.img.region('wal')), 'returned regions are frozen');
  t.throws(() => {
    (m.img.region('wal') as RegionMeta).owner = 'x';
  }, TypeError);
  t.equal(m.img.volume.nextRegionId, NAMES.length + 1);
  for (const half of ['primary', 'mirror'] as const) {
    t.same(m.img.usedExtents(half).sort((a, b) => a.page - b.page), usedExtents(m.img.toMeta(), half).sort((a, b) => a.page - b.page));
  }

  // A root-only update: no page writes; the halves' roots differ only in the sync state.
  const before = m.img.toMeta();
  const plan = m.img.plan({}, { epoch: 9, writer: 'cd'.repeat(16) });
  t.same(plan.pageWrites, []);
  t.equal(plan.rootOffset, rootSlotOffset((plan.generation % 2) as 0 | 1));
  const stale = { peerStale: true, staleSince: plan.generation };
  const a = decodeRoot(plan.rootBytes(IN_SYNC));
  const b = decodeRoot(plan.rootBytes(stale));
  t.same({ ...a, sync: stale }, b, 'same root but for the sync state');
  t.same(b.sync, stale);
  t.equal(a.epoch, 9);
  t.equal(a.writer, 'cd'.repeat(16));
  t.throws(() => plan.rootBytes({ peerStale: true, staleSince: 0 }), { code: 'ERR_NPMU_META_CORRUPT' });
  writePlan(m.area, plan, stale);
  m.img.apply(plan);
  t.same(m.img.lastWriter, { epoch: 9, writer: 'cd'.repeat(16) });
  const { root } = newestRoot(m.area.subarray(0, 8192), m.area.subarray(8192, 16384));
  t.same(root?.sync, stale);
  t.same(reload(m.area)?.toMeta(), before);
  t.throws(() => m.img.plan({}, { epoch: -1, writer: WRITER }), { code: 'ERR_NPMU_META_CORRUPT' });
  t.throws(() => m.img.plan({}, { epoch: 1, writer: 'x' }), { code: 'ERR_NPMU_META_CORRUPT' });
});

t.test('plan refuses impossible changes; apply takes only the latest plan', async (t) => {
  const m = new Model(MIB, volumeRecord(1000));
  const a = m.create('a', 3 * 4096);
  const b = m.create('b', 4096);
  const snapshot = m.img.toMeta();
  const gen = m.img.generation;
  const next = m.img.volume.nextRegionId;
  const pa = a.primaryExtents[0];
  const ma = a.mirrorExtents[0];
  const mk = (extra: Partial<RegionMeta>): RegionMeta => ({ ...region(next, 'c', [{ page: 900, pages: 1 }], [{ page: 900, pages: 1 }]), size: 10, ...extra });
  const cases: Array<[string, Change, RegExp]> = [
    ['duplicate name', { add: mk({ name: 'a' }) }, /appears twice/],
    ['wrong id', { add: mk({ id: next + 1 }) }, /nextRegionId/],
    ['reused id', { add: mk({ id: a.id }) }, /nextRegionId/],
    ['primary overlap', { add: mk({ primaryExtents: [{ page: pa.page + 2, pages: 1 }] }) }, /primary pages \[\d+, \d+\) of region "c" overlap region "a"/],
    ['mirror overlap', { add: mk({ mirrorExtents: [{ page: ma.page, pages: 1 }] }) }, /mirror pages .* overlap region "a"/],
    ['extent past dataPages', { add: mk({ primaryExtents: [{ page: 1000, pages: 1 }] }) }, /outside/],
    ['too many pages', { add: mk({ primaryExtents: [{ page: 900, pages: 2 }] }) }, /needs ceil/],
    ['self overlap', { add: mk({ size: 8192, primaryExtents: [{ page: 900, pages: 1 }, { page: 900, pages: 1 }], mirrorExtents: [{ page: 900, pages: 2 }] }) }, /twice/],
    ['bad name', { add: mk({ name: '' }) }, /UTF-8 bytes/],
    ['remove unknown', { remove: 999 }, /no region with id 999/],
    ['update unknown', { update: [mk({ id: 999 })] }, /no region with id 999/],
    ['update and remove', { remove: a.id, update: [{ ...a }] }, /changed twice/],
    ['update twice', { update: [{ ...a }, { ...a }] }, /changed twice/],
    ['update renames onto another', { update: [{ ...a, name: 'b' }] }, /appears twice/],
    ['update overlaps another', { update: [{ ...a, primaryExtents: [{ page: b.primaryExtents[0].page - 2, pages: 3 }] }] }, /overlap region "b"/],
    ['add overlaps an update', { update: [{ ...b, mirrorExtents: [{ page: 900, pages: 1 }] }], add: mk({}) }, /mirror page 900 is owned by regions "b" and "c"/],
  ];
  for (const [what, change, msg] of cases) {
    const e = thrownBy(() => m.img.plan(change, OPTS));
    t.match(e, { code: 'ERR_NPMU_META_CORRUPT', message: msg }, what);
  }
  t.throws(() => m.img.plan(null as unknown as Change, OPTS), { code: 'ERR_INVALID_ARG_TYPE' });
  t.same(m.img.toMeta(), snapshot, 'nothing changed');
  t.equal(m.img.generation, gen);

  // Allowed in one update: a region takes the name and pages of one removed alongside it.
  const swap = m.img.plan({ remove: a.id, add: { ...a, id: next } }, OPTS);
  // An update may move its own pages over its old ones.
  const p1 = m.img.plan({ update: [{ ...a, primaryExtents: [{ page: 500, pages: 1 }, { page: pa.page + 1, pages: 2 }] }] }, OPTS);
  t.throws(() => m.img.apply(swap), { code: 'ERR_INVALID_ARG_VALUE' }, 'an older plan is refused');
  const p2 = m.img.plan({}, OPTS);
  t.throws(() => m.img.apply(p1), { code: 'ERR_INVALID_ARG_VALUE' });
  writePlan(m.area, p2);
  m.img.apply(p2);
  t.throws(() => m.img.apply(p2), { code: 'ERR_INVALID_ARG_VALUE' }, 'a plan applies once');
  const other = MetaImage.create(volumeRecord(), MIB);
  t.throws(() => other.apply(p2), { code: 'ERR_INVALID_ARG_VALUE' }, "another image's plan");
  t.throws(() => other.fullImage(OPTS, IN_SYNC), { code: 'ERR_INVALID_ARG_VALUE' }, 'fullImage needs a root');
  const p3 = m.img.plan({ remove: a.id, add: { ...a, id: next } }, OPTS);
  writePlan(m.area, p3);
  m.img.apply(p3);
  t.same(m.img.region('a')?.id, next);
  t.same(reload(m.area)?.toMeta(), m.img.toMeta());
});

t.test('random create/delete/update sequences against a model, reloaded after every step', async (t) => {
  const r = rng(77);
  const m = new Model(4 * MIB, volumeRecord(20_000));
  const model = new Map<number, RegionMeta>();
  let maxPages = 0;
  let checked = 0;
  for (let step = 0; step < 600; step++) {
    const op = r(10);
    const ids = [...model.keys()];
    let change: Change;
    if (op < 5 || ids.length < 3) {
      const reg = m.newRegion(`r${step}-${'é'.repeat(r(29))}`, 1 + r(20 * 4096), { owner: 'ü'.repeat(r(33)) });
      change = { add: reg };
      model.set(reg.id, reg);
    } else if (op < 8) {
      const id = ids[r(ids.length)];
      const old = model.get(id)!;
      change = { remove: id };
      model.delete(id);
      m.alloc.primary.free(old.primaryExtents);
      m.alloc.mirror.free(old.mirrorExtents);
    } else {
      // Update 1..3 regions: new times, owners, sometimes new (more or fewer) extents.
      const chosen = [...new Set([ids[r(ids.length)], ids[r(ids.length)], ids[r(ids.length)]].slice(0, 1 + r(3)))];
      const ups = chosen.map((id) => {
        const old = model.get(id)!;
        const u: RegionMeta = { ...old, lastOpenAtMs: 1_800_000_000_000 + step, owner: 'o'.repeat(r(65)) };
        if (r(2)) {
          m.alloc.mirror.free(old.mirrorExtents);
          u.mirrorExtents = m.alloc.mirror.allocate(pagesFor(old.size, 4096), { maxExtents: 1 + r(8) });
        }
        return u;
      });
      for (const u of ups) model.set(u.id, u);
      change = { update: ups };
    }
    const plan = m.img.plan(change, OPTS);
    // Determinism: an image reloaded from the area plans the same bytes.
    const twin = reload(m.area)!;
    const tplan = twin.plan(change, OPTS);
    if (
      tplan.generation !== plan.generation ||
      tplan.pageWrites.length !== plan.pageWrites.length ||
      tplan.pageWrites.some((w, i) => w.offset !== plan.pageWrites[i].offset || !w.bytes.equals(plan.pageWrites[i].bytes)) ||
      !tplan.rootBytes(IN_SYNC).equals(plan.rootBytes(IN_SYNC))
    ) {
      t.fail(`step ${step}: a reloaded image plans differently`);
    }
    if (plan.pageWrites.length > 2 * Math.max(1, change.update?.length ?? 1)) t.fail(`step ${step}: ${plan.pageWrites.length} pages written`);
    writePlan(m.area, plan);
    m.img.apply(plan);
    maxPages = Math.max(maxPages, m.img.pagesInUse);
    const want = [...model.values()].sort((a, b) => a.id - b.id);
    const got = reload(m.area)!;
    const meta = got.toMeta();
    if (JSON.stringify(meta.regions, big) !== JSON.stringify(want, big)) {
      t.fail(`step ${step}: reloaded table differs from the model`);
    }
    if (JSON.stringify(m.img.toMeta(), big) !== JSON.stringify(meta, big)) t.fail(`step ${step}: reloaded image differs from the image`);
    if (got.generation !== m.img.generation) t.fail(`step ${step}: generation`);
    for (const half of ['primary', 'mirror'] as const) {
      const fromImg = new PageAllocator(20_000, got.usedExtents(half));
      if (fromImg.usedPages !== m.alloc[half].usedPages) t.fail(`step ${step}: ${half} used pages differ`);
    }
    checked++;
  }
  t.equal(checked, 600);
  t.ok(m.img.regionCount > 50, `${m.img.regionCount} regions at the end, up to ${maxPages} table pages`);
});

t.test('crash safety: every prefix of every plan, and torn last writes', async (t) => {
  const r = rng(5);
  const m = new Model(TABLE_OFFSET + 24 * TABLE_PAGE_SIZE, volumeRecord(5_000));
  let outcomes = { before: 0, after: 0 };
  let prefixes = 0;
  for (let step = 0; step < 120; step++) {
    const ids = [...m.img.regions()].map((x) => x.id);
    let change: Change;
    const op = r(6);
    if (op < 3 || ids.length < 2) {
      change = { add: m.newRegion(`n${step}${'ж'.repeat(r(30))}`, 1 + r(8 * 4096), { owner: 'q'.repeat(r(64)) }) };
    } else if (op < 5) {
      change = { remove: ids[r(ids.length)] };
    } else if (r(2)) {
      const old = m.img.regionById(ids[r(ids.length)])!;
      change = { update: [{ ...old, owner: 'p'.repeat(r(65)), lastOpenAtMs: step }] };
    } else {
      change = {};
    }
    const before = m.img.toMeta();
    const beforeGen = m.img.generation;
    // The state after, from a twin image (plans are deterministic).
    const twin = reload(m.area)!;
    twin.apply(twin.plan(change, OPTS));
    const after = twin.toMeta();
    const plan = m.img.plan(change, OPTS);
    const sync: SyncState = step % 7 === 0 ? { peerStale: true, staleSince: plan.generation } : IN_SYNC;
    const writes = planWrites(plan, sync);
    const check = (what: string, area: Buffer) => {
      let got: MetaImage | null = null;
      try {
        got = reload(area);
      } catch (e) {
        t.fail(`step ${step} ${what}: reload threw ${String(e)}`);
        return;
      }
      prefixes++;
      const gen = got!.generation;
      const meta = got!.toMeta();
      if (gen === beforeGen) {
        outcomes.before++;
        if (what === 'complete') t.fail(`step ${step}: a complete update did not count`);
        if (JSON.stringify(meta, big) !== JSON.stringify(before, big)) t.fail(`step ${step} ${what}: not the state before`);
      } else if (gen === plan.generation) {
        outcomes.after++;
        if (!(what === 'complete' || what.startsWith('torn root'))) t.fail(`step ${step} ${what}: counted without its root`);
        if (JSON.stringify(meta, big) !== JSON.stringify(after, big)) t.fail(`step ${step} ${what}: not the state after`);
      } else {
        t.fail(`step ${step} ${what}: generation ${gen}`);
      }
    };
    for (let k = 0; k <= writes.length; k++) {
      const area = Buffer.from(m.area);
      writeAll(area, writes.slice(0, k));
      check(k === writes.length ? 'complete' : `prefix ${k}/${writes.length}`, area);
      if (k < writes.length) {
        const w = writes[k];
        for (const cut of [1, 7, 8, 63, 64, 65, Math.floor(w.bytes.length / 2), w.bytes.length - 4, w.bytes.length - 1]) {
          if (cut <= 0 || cut >= w.bytes.length) continue;
          const torn = Buffer.from(area);
          w.bytes.copy(torn, w.offset, 0, cut);
          check(`${k === writes.length - 1 ? 'torn root' : 'torn page'} ${k} at ${cut}`, torn);
        }
      }
    }
    // Go forward: the complete update.
    writeAll(m.area, writes);
    m.img.apply(plan);
    t.same(reload(m.area)!.toMeta(), m.img.toMeta());
    if (change.remove !== undefined) {
      const old = before.regions.find((x) => x.id === change.remove)!;
      m.alloc.primary.free(old.primaryExtents);
      m.alloc.mirror.free(old.mirrorExtents);
    }
  }
  t.ok(outcomes.before > 100 && outcomes.after > 100, `${prefixes} crash points: ${JSON.stringify(outcomes)}`);
});

t.test('10,000 regions with max-length names and owners in an 8 MiB area', async (t) => {
  const AREA = 8 * MIB;
  const N = 10_000;
  const r = rng(10_000);
  const vol = volumeRecord(10_000_000, 4096, '🚀'.repeat(16));
  const area = Buffer.alloc(AREA);
  let img = MetaImage.create(vol, AREA);
  let nextPage = 0;
  const mk = (i: number): RegionMeta => {
    const name = `r${String(i).padStart(9, '0')}${'é'.repeat(27)}`; // 64 UTF-8 bytes
    const ext = (p: number) => [{ page: p, pages: 1 }, { page: p + 2, pages: 2 }, { page: p + 5, pages: 1 }];
    const reg: RegionMeta = {
      id: img.volume.nextRegionId,
      name,
      size: 4 * 4096,
      basePointer: BigInt(i) << 32n,
      owner: 'ø'.repeat(32),
      createdAtMs: 1_700_000_000_000 + i,
      lastOpenAtMs: 0,
      durable: true,
      primaryExtents: ext(nextPage),
      mirrorExtents: ext(nextPage + 1),
    };
    nextPage += 8;
    return reg;
  };
  t.equal(Buffer.byteLength(mk(0).name), 64);
  const commit = (change: Change): { bytes: number; pages: number; ms: number } => {
    const t0 = process.hrtime.bigint();
    const plan = img.plan(change, OPTS);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const root = plan.rootBytes(IN_SYNC);
    writeAll(area, plan.pageWrites);
    root.copy(area, plan.rootOffset);
    img.apply(plan);
    return { bytes: plan.pageWrites.reduce((s, w) => s + w.bytes.length, 0) + root.length, pages: plan.pageWrites.length, ms };
  };
  commit({});
  let maxBytes = 0;
  let maxPagesWritten = 0;
  const t0 = Date.now();
  for (let i = 0; i < N; i++) {
    const c = commit({ add: mk(i) });
    maxBytes = Math.max(maxBytes, c.bytes);
    maxPagesWritten = Math.max(maxPagesWritten, c.pages);
  }
  const createMs = Date.now() - t0;
  t.equal(img.regionCount, N);
  t.ok(maxPagesWritten <= 2, `at most ${maxPagesWritten} table page(s) written per create`);
  t.ok(maxBytes <= 2 * TABLE_PAGE_SIZE + ROOT_SLOT_SIZE, `at most ${maxBytes} bytes written per create`);
  t.comment(`${N} creates in ${createMs} ms; ${img.pagesInUse} table pages in use of ${img.pageCount}; root ${encodeRoot({ generation: 1, epoch: 0, writer: WRITER, sync: IN_SYNC, volume: img.volume, regionCount: img.regionCount, pages: img.pageRefs() }).length} bytes`);

  // Plan time at n = 10,000.
  const probe = mk(N);
  const times: number[] = [];
  for (let k = 0; k < 50; k++) {
    const s = process.hrtime.bigint();
    img.plan({ add: probe }, OPTS);
    times.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  times.sort((a, b) => a - b);
  t.comment(`plan of a create at n=${N}: median ${times[25].toFixed(3)} ms, min ${times[0].toFixed(3)} ms`);
  t.ok(times[25] < 20, 'a create plans in milliseconds at most (not asserted tightly)');

  let loaded = reload(area)!;
  t.ok(JSON.stringify(loaded.toMeta(), big) === JSON.stringify(img.toMeta(), big), 'reloaded after 10,000 creates');

  // Delete a random half, then recreate some.
  const ids = [...img.regions()].map((x) => x.id);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = r(i + 1);
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  for (const id of ids.slice(0, N / 2)) {
    const c = commit({ remove: id });
    if (c.pages > 1) t.fail('a delete wrote more than one page');
  }
  t.equal(img.regionCount, N / 2);
  const pagesAfterDelete = img.pagesInUse;
  for (let i = 0; i < 3000; i++) {
    const c = commit({ add: mk(N + i) });
    maxBytes = Math.max(maxBytes, c.bytes);
    if (c.pages > 2) t.fail('a create wrote more than two pages');
  }
  t.ok(maxBytes <= 2 * TABLE_PAGE_SIZE + ROOT_SLOT_SIZE);
  t.equal(img.pagesInUse, pagesAfterDelete, 'recreated regions fill the room deletes left');
  loaded = reload(area)!;
  t.ok(JSON.stringify(loaded.toMeta(), big) === JSON.stringify(img.toMeta(), big), 'reloaded after deletes and recreates');
  t.equal(loaded.regionCount, N / 2 + 3000);
  t.same(loaded.names(3), img.names(3));
  t.equal(loaded.region(mk(N + 2999).name)?.id, img.volume.nextRegionId - 1);
});

t.test('TOO_LARGE before any write', async (t) => {
  // A 64 KiB area: 6 table pages, one kept free. Records of ~2.2 KiB: 3 per page.
  const m = new Model(64 * 1024, volumeRecord(100_000));
  const extents = (base: number) => Array.from({ length: 64 }, (_, k) => ({ page: base + 2 * k, pages: 1 }));
  let made = 0;
  let err: unknown;
  for (let i = 0; i < 100; i++) {
    const before = Buffer.from(m.area);
    const meta = m.img.toMeta();
    const gen = m.img.generation;
    const reg: RegionMeta = {
      ...region(m.img.volume.nextRegionId, `big-${i}`.padEnd(64, '.'), extents(i * 200), extents(i * 200 + 1)),
      owner: 'w'.repeat(64),
      size: 64 * 4096,
    };
    err = thrownBy(() => m.commit({ add: reg }));
    if (err !== undefined) {
      t.ok(before.equals(m.area), 'nothing written');
      t.same(m.img.toMeta(), meta, 'image unchanged');
      t.equal(m.img.generation, gen);
      break;
    }
    made++;
  }
  t.match(err, { code: 'ERR_NPMU_META_TOO_LARGE', what: 'pages', available: 6 });
  t.ok(err instanceof NpmuError);
  t.equal(made, 15, '5 pages of 3 records');
  t.equal(m.img.pagesInUse, 5);
  // A small record still fits nowhere either; a delete always can be planned, and then a create fits again.
  const ids = [...m.img.regions()].map((r) => r.id);
  m.commit({ remove: ids[4] });
  t.equal(m.img.regionCount, 14);
  m.commit({ add: { ...region(m.img.volume.nextRegionId, 'small', [{ page: 99_000, pages: 1 }], [{ page: 99_000, pages: 1 }]), size: 100 } });
  t.same(reload(m.area)?.toMeta(), m.img.toMeta());
  // Deleting everything drops every page.
  for (const r of [...m.img.regions()]) m.commit({ remove: r.id });
  t.equal(m.img.pagesInUse, 0);
  t.same(reload(m.area)?.toMeta().regions, []);

  // A record larger than a page.
  const huge: RegionMeta = { ...region(m.img.volume.nextRegionId, 'huge', extents(0).concat(extents(1000)).concat(extents(2000)).concat(extents(3000)).concat(extents(4000)), extents(1)), size: 320 * 4096 };
  huge.mirrorExtents = huge.primaryExtents.map((e) => ({ page: e.page + 1, pages: 1 }));
  t.match(thrownBy(() => m.img.plan({ add: huge }, OPTS)), { code: 'ERR_NPMU_META_TOO_LARGE', what: 'record', available: PAGE_CAPACITY });

  // The root's page list: one ~4.3 KiB record per page, in 8 MiB (1022 pages), stops at the root (662).
  const big = new Model(8 * MIB, { ...volumeRecord(10_000_000), name: 'n'.repeat(64) });
  let rootErr: unknown;
  for (let i = 0; i < 1000 && rootErr === undefined; i++) {
    const base = i * 300;
    const reg: RegionMeta = { ...region(big.img.volume.nextRegionId, `r${i}`, extents(base).concat(extents(base + 130)), extents(base + 1).concat(extents(base + 131))), size: 128 * 4096 };
    rootErr = thrownBy(() => big.commit({ add: reg }));
  }
  t.match(rootErr, { code: 'ERR_NPMU_META_TOO_LARGE', what: 'root', available: ROOT_SLOT_SIZE });
  t.equal(big.img.pagesInUse, 662, 'a root lists up to 662 pages');
  t.same(reload(big.area)?.regionCount, 662);
});

t.test('fullImage puts the image on a half with arbitrary metadata', async (t) => {
  const m = new Model(MIB);
  for (let i = 0; i < 40; i++) m.create(`f${i}`, 1 + i * 1000);
  for (let i = 0; i < 10; i++) m.remove([...m.img.regions()][i * 2].id);
  const r = rng(3);
  const stale: SyncState = { peerStale: true, staleSince: m.img.generation };
  const targets: Array<[string, Buffer]> = [];
  const noise = Buffer.alloc(MIB);
  for (let k = 0; k < noise.length; k++) noise[k] = r(256);
  targets.push(['random bytes', noise]);
  targets.push(['zeroes', Buffer.alloc(MIB)]);
  // Another volume's metadata, with a higher generation in the other root slot.
  const foreign = new Model(MIB);
  for (let i = 0; i < 30; i++) foreign.create(`x${i}`, 5000);
  while (foreign.img.generation <= m.img.generation || foreign.img.generation % 2 === m.img.generation % 2) foreign.commit({});
  targets.push(['a foreign volume with a higher generation', foreign.area]);
  const v1 = Buffer.alloc(MIB);
  v1.write('NPMUMETA', 0, 'ascii');
  targets.push(['a version 1 area', v1]);
  for (const [what, area] of targets) {
    const full = m.img.fullImage({ epoch: 11, writer: WRITER }, stale);
    t.equal(full.pageWrites.length, m.img.pagesInUse + 1, `${what}: every page and the other root slot`);
    writeAll(area, full.pageWrites);
    full.rootBytes.copy(area, full.rootOffset);
    const got = reload(area)!;
    t.same(got.toMeta(), m.img.toMeta(), what);
    t.equal(got.generation, m.img.generation);
    const { root, states } = newestRoot(area.subarray(0, 8192), area.subarray(8192, 16384));
    t.same(root?.sync, stale);
    t.same(states.filter((s) => s === 'empty').length, 1, 'the other slot is cleared');
    // The half then follows ordinary updates.
    const plan = got.plan({ remove: [...got.regions()][0].id }, OPTS);
    writePlan(area, plan);
    got.apply(plan);
    t.same(reload(area)?.toMeta(), got.toMeta());
  }
});

t.test('load rejects pages that do not match their root', async (t) => {
  const m = new Model(MIB);
  for (let i = 0; i < 30; i++) m.create(`p${i}`, 5000, { owner: 'o'.repeat(60) });
  const { root } = newestRoot(m.area.subarray(0, 8192), m.area.subarray(8192, 16384));
  const pages = (area: Buffer) => new Map(root!.pages.map((p) => [p.index, area.subarray(tablePageOffset(p.index), tablePageOffset(p.index) + TABLE_PAGE_SIZE)] as [number, Uint8Array]));
  t.same(MetaImage.load(root!, pages(m.area), MIB).toMeta(), m.img.toMeta());
  const ref = root!.pages[0];
  const cases: Array<[string, () => MetaImage, RegExp]> = [
    ['missing page', () => MetaImage.load(root!, new Map(), MIB), /not given/],
    ['short bytes', () => MetaImage.load(root!, new Map([...pages(m.area)].map(([i, b]) => [i, b.subarray(0, 10)])), MIB), /bytes given/],
    ['stale bytes', () => {
      const a = Buffer.from(m.area);
      a[tablePageOffset(ref.index) + 50] ^= 1;
      return MetaImage.load(root!, pages(a), MIB);
    }, /does not match its root/],
    ['page beyond the area', () => MetaImage.load(root!, pages(m.area), TABLE_OFFSET + ref.index * TABLE_PAGE_SIZE), /the area has/],
    ['wrong region count', () => MetaImage.load({ ...root!, regionCount: root!.regionCount + 1 }, pages(m.area), MIB), /counts/],
    ['wrong length', () => MetaImage.load({ ...root!, pages: root!.pages.map((p, i) => (i === 0 ? { ...p, length: p.length - 1 } : p)) }, pages(m.area), MIB), /does not match|bytes, the root lists/],
    ['page copied to another index', () => {
      const a = Buffer.from(m.area);
      const free = root!.pages[root!.pages.length - 1].index + 1;
      a.copy(a, tablePageOffset(free), tablePageOffset(ref.index), tablePageOffset(ref.index) + TABLE_PAGE_SIZE);
      const moved = { ...root!, pages: [...root!.pages.slice(1), { ...ref, index: free }] };
      const pm = new Map(moved.pages.map((p) => [p.index, a.subarray(tablePageOffset(p.index), tablePageOffset(p.index) + TABLE_PAGE_SIZE)] as [number, Uint8Array]));
      return MetaImage.load(moved, pm, MIB);
    }, /says it is page/],
    ['nextRegionId too low', () => MetaImage.load({ ...root!, volume: { ...root!.volume, nextRegionId: 2 } }, pages(m.area), MIB), /nextRegionId/],
  ];
  for (const [what, fn, msg] of cases) t.match(thrownBy(fn), { code: 'ERR_NPMU_META_CORRUPT', message: msg }, what);
});
