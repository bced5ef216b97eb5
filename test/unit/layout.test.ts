import t from 'tap';
import { crc32c } from '../../lib/crc32c';
import {
  LAYOUT_VERSION,
  META_OFFSET,
  MIN_META_LENGTH,
  SUPERBLOCK_OFFSET,
  SUPERBLOCK_SIZE,
  SUPERBLOCK_SLOT_SIZE,
  Superblock,
  createSuperblock,
  dataPageOffset,
  decodeSuperblock,
  encodeSuperblock,
  nextSuperblockWrite,
  planLayout,
  readSuperblock,
} from '../../unit/layout';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const UNIT = '00112233445566778899aabbccddeeff';
const VOL = 'f0e1d2c3b4a5968778695a4b3c2d1e0f';

function sample(over: Partial<Superblock> = {}): Superblock {
  const layout = planLayout({ capacity: 64 * MiB, pageSize: 4 * KiB });
  return { ...createSuperblock(layout, { durability: 'msync', unitId: UNIT, label: 'unit-a', createdAtMs: 1_700_000_000_000 }), ...over };
}

/** Rewrites the CRC of a struct image (after a deliberate edit). */
function reseal(b: Buffer, headerSize = SUPERBLOCK_SIZE): Buffer {
  b.writeUInt32LE(crc32c(b.subarray(0, headerSize - 4)), headerSize - 4);
  return b;
}

function formatted(sb = sample(), size = 2 * SUPERBLOCK_SLOT_SIZE + 4096): Buffer {
  const dev = Buffer.alloc(size);
  const img = encodeSuperblock(sb);
  img.copy(dev, SUPERBLOCK_OFFSET.A);
  img.copy(dev, SUPERBLOCK_OFFSET.B);
  return dev;
}

t.test('planLayout: 4 KiB pages, default metadata', async (t) => {
  const l = planLayout({ capacity: 64 * MiB, pageSize: 4 * KiB });
  t.same(l, {
    capacity: 64 * MiB,
    pageSize: 4096,
    metaOffset: 8192,
    metaLength: 1 * MiB - 8192,
    dataOffset: 1 * MiB,
    dataPages: (63 * MiB) / 4096,
  });
});

t.test('planLayout: 2 MiB pages put the first data page at 2 MiB', async (t) => {
  const l = planLayout({ capacity: 64 * MiB, pageSize: 2 * MiB });
  t.equal(l.dataOffset, 2 * MiB);
  t.equal(l.metaLength, 2 * MiB - 8192);
  t.equal(l.dataPages, 31);
  const c = planLayout({ capacity: 64 * MiB + 3 * MiB, pageSize: 2 * MiB });
  t.equal(c.dataPages, 32, 'the tail after the last whole page is unused');
});

t.test('planLayout: configured metadata length is rounded to a page boundary', async (t) => {
  const a = planLayout({ capacity: 16 * MiB, pageSize: 4096, metaLength: MIN_META_LENGTH });
  t.equal(a.metaLength, 64 * KiB);
  t.equal(a.dataOffset, 8192 + 64 * KiB);
  const b = planLayout({ capacity: 16 * MiB, pageSize: 4096, metaLength: 100_000 });
  t.equal(b.dataOffset % 4096, 0);
  t.equal(b.dataOffset, 110_592);
  t.equal(b.metaLength, 110_592 - 8192);
  const c = planLayout({ capacity: 64 * MiB, pageSize: 2 * MiB, metaLength: MIN_META_LENGTH });
  t.equal(c.dataOffset, 2 * MiB);
  t.equal(c.metaLength, 2 * MiB - 8192);
  const d = planLayout({ capacity: 64 * MiB, pageSize: 2 * MiB, metaLength: 3 * MiB });
  t.equal(d.dataOffset, 4 * MiB);
});

t.test('planLayout: tiny devices', async (t) => {
  t.throws(() => planLayout({ capacity: 1 * MiB + 4095, pageSize: 4096 }), { code: 'ERR_NPMU_DEVICE_TOO_SMALL', name: 'NpmuError' });
  t.equal(planLayout({ capacity: 1 * MiB + 4096, pageSize: 4096 }).dataPages, 1, 'exactly one page fits');
  t.throws(() => planLayout({ capacity: 4096, pageSize: 4096 }), { code: 'ERR_NPMU_DEVICE_TOO_SMALL' });
  t.throws(() => planLayout({ capacity: 4 * MiB - 1, pageSize: 2 * MiB }), { code: 'ERR_NPMU_DEVICE_TOO_SMALL' });
  t.equal(planLayout({ capacity: 8192 + 64 * KiB + 4096, pageSize: 4096, metaLength: MIN_META_LENGTH }).dataPages, 1);
});

t.test('planLayout: bad inputs', async (t) => {
  const bad: Array<[unknown, string]> = [
    [{ capacity: 0, pageSize: 4096 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: -1, pageSize: 4096 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 1.5 * MiB + 0.5, pageSize: 4096 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: NaN, pageSize: 4096 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 2 ** 53, pageSize: 4096 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: '64M', pageSize: 4096 }, 'ERR_INVALID_ARG_TYPE'],
    [{ capacity: 64 * MiB, pageSize: 3000 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 64 * MiB, pageSize: 0 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 64 * MiB, pageSize: 2048 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 64 * MiB, pageSize: 2 * GiB }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 64 * MiB, pageSize: 4096, metaLength: MIN_META_LENGTH - 1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 64 * MiB, pageSize: 4096, metaLength: 1e6 + 0.5 }, 'ERR_INVALID_ARG_VALUE'],
    [{ capacity: 64 * MiB, pageSize: 4096, metaLength: '1M' }, 'ERR_INVALID_ARG_TYPE'],
    [null, 'ERR_INVALID_ARG_TYPE'],
  ];
  for (const [opts, code] of bad) {
    t.throws(() => planLayout(opts as never), { code }, JSON.stringify(opts));
  }
});

t.test('huge capacity beyond 2^32 round-trips through the u64 fields', async (t) => {
  const capacity = 3 * 2 ** 40 + 12_345; // 3 TiB and change
  const l = planLayout({ capacity, pageSize: 2 * MiB });
  t.equal(l.dataPages, Math.floor((capacity - 8 * MiB) / (2 * MiB)), 'a large device gets the 8 MiB metadata area');
  t.ok(l.dataPages > 2 ** 20);
  const sb = createSuperblock(l, { durability: 'pmem', unitId: UNIT, createdAtMs: 1 });
  const img = encodeSuperblock(sb);
  t.equal(img.readBigUInt64LE(40), BigInt(capacity), 'capacity at offset 40, little-endian u64');
  t.equal(img.readBigUInt64LE(80), BigInt(l.dataPages), 'dataPages at offset 80');
  t.same(decodeSuperblock(img), sb);
  const last = dataPageOffset(l, l.dataPages - 1);
  t.equal(last, l.dataOffset + (l.dataPages - 1) * l.pageSize);
  t.ok(last + l.pageSize <= capacity);
  t.ok(last > 2 ** 32);
});

t.test('dataPageOffset bounds', async (t) => {
  const l = planLayout({ capacity: 2 * MiB, pageSize: 4096 });
  t.equal(dataPageOffset(l, 0), 1 * MiB);
  t.equal(dataPageOffset(l, 1), 1 * MiB + 4096);
  t.equal(dataPageOffset(l, l.dataPages - 1), 2 * MiB - 4096);
  for (const p of [-1, l.dataPages, 1.5, NaN, Infinity]) {
    t.throws(() => dataPageOffset(l, p), { code: 'ERR_OUT_OF_RANGE' }, String(p));
  }
});

t.test('superblock round trip', async (t) => {
  const sb = sample();
  const img = encodeSuperblock(sb);
  t.equal(img.length, SUPERBLOCK_SLOT_SIZE);
  t.equal(img.toString('latin1', 0, 8), 'NPMUUNIT');
  t.equal(img.readUInt32LE(8), LAYOUT_VERSION);
  t.equal(img.readUInt32LE(12), SUPERBLOCK_SIZE);
  t.ok(img.subarray(SUPERBLOCK_SIZE).every((x) => x === 0), 'the rest of the slot is zero');
  t.same(decodeSuperblock(img), sb);
  t.same(decodeSuperblock(img.subarray(0, SUPERBLOCK_SIZE)), sb, 'the struct alone is enough');

  const bound = sample({ volumeId: VOL, role: 'mirror', durability: 'pmem', label: 'café ☕ ünït 32 bytes!!!!!!!' });
  t.equal(Buffer.byteLength(bound.label), 32, 'multi-byte label filling the field');
  t.same(decodeSuperblock(encodeSuperblock(bound)), bound);
  const full = sample({ label: 'x'.repeat(32) });
  t.same(decodeSuperblock(encodeSuperblock(full)), full, 'a 32-byte label has no NUL terminator');
  const random = createSuperblock(planLayout({ capacity: 4 * MiB, pageSize: 4096 }), { durability: 'volatile' });
  t.match(random.unitId, /^[0-9a-f]{32}$/);
  t.equal(random.generation, 1);
  t.equal(random.role, 'none');
  t.same(decodeSuperblock(encodeSuperblock(random)), random);
});

t.test('encodeSuperblock refuses inconsistent superblocks', async (t) => {
  const bad: Array<[string, Partial<Superblock>]> = [
    ['label too long', { label: 'x'.repeat(33) }],
    ['label too long in bytes', { label: 'é'.repeat(17) }],
    ['label with NUL', { label: 'a\0b' }],
    ['lone surrogate', { label: 'a\ud800' }],
    ['role without volume', { role: 'primary' }],
    ['volume without role', { volumeId: VOL }],
    ['bad role', { volumeId: VOL, role: 'boss' as never }],
    ['bad durability', { durability: 'disk' as never }],
    ['uppercase id', { unitId: UNIT.toUpperCase() }],
    ['short id', { unitId: 'abcd' }],
    ['zero id', { unitId: '0'.repeat(32) }],
    ['generation 0', { generation: 0 }],
    ['generation not integer', { generation: 1.5 }],
    ['pageSize', { pageSize: 3000 }],
    ['metaOffset', { metaOffset: 4096 }],
    ['overlap', { metaLength: 2 * MiB }],
    ['beyond capacity', { dataPages: 1e9 }],
    ['unaligned data', { pageSize: 2 * MiB }],
    ['version', { layoutVersion: 3 }],
    ['epoch without holder', { epoch: 3 }],
    ['holder without epoch', { holder: VOL }],
  ];
  for (const [name, over] of bad) {
    t.throws(() => encodeSuperblock(sample(over)), { code: 'ERR_INVALID_ARG_VALUE' }, name);
  }
});

t.test('a flipped byte anywhere in the struct is detected', async (t) => {
  const img = encodeSuperblock(sample({ volumeId: VOL, role: 'primary' }));
  const regions: Array<[string, number, number]> = [
    ['magic', 0, 8],
    ['layoutVersion', 8, 12],
    ['headerSize', 12, 16],
    ['generation', 16, 24],
    ['unitId', 24, 40],
    ['capacity', 40, 48],
    ['pageSize', 48, 52],
    ['reserved', 52, 56],
    ['metaOffset', 56, 64],
    ['metaLength', 64, 72],
    ['dataOffset', 72, 80],
    ['dataPages', 80, 88],
    ['createdAtMs', 88, 96],
    ['volumeId', 96, 112],
    ['role', 112, 113],
    ['durability', 113, 114],
    ['reserved', 114, 120],
    ['label', 120, 152],
    ['epoch', 152, 160],
    ['holder', 160, 176],
    ['reserved', 176, 252],
    ['crc32c', 252, 256],
  ];
  for (const [name, from, to] of regions) {
    const failures = new Set<string>();
    for (let i = from; i < to; i++) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const c = Buffer.from(img);
        c[i]! ^= mask;
        try {
          decodeSuperblock(c);
          failures.add('decoded');
        } catch (e) {
          const err = e as { code: string; message: string };
          const crcMsg = /CRC-32C mismatch/.test(err.message);
          failures.add(from >= 16 ? `${err.code}${crcMsg ? ' crc' : ''}` : err.code);
        }
      }
    }
    const expect = name === 'magic' ? ['ERR_NPMU_NOT_FORMATTED'] : from >= 16 ? ['ERR_NPMU_CORRUPT crc'] : ['ERR_NPMU_CORRUPT'];
    t.same([...failures], expect, `${name} [${from}, ${to})`);
  }
  // The slot padding after the struct is not covered (and not read).
  const pad = Buffer.from(img);
  pad[SUPERBLOCK_SIZE + 10] = 0x55;
  t.doesNotThrow(() => decodeSuperblock(pad), 'padding after the struct is ignored');
});

t.test('impossible values under a valid CRC are corrupt', async (t) => {
  const base = encodeSuperblock(sample({ volumeId: VOL, role: 'primary' }));
  const cases: Array<[string, (b: Buffer) => void]> = [
    ['pageSize not a power of two', (b) => b.writeUInt32LE(3000, 48)],
    ['pageSize zero', (b) => b.writeUInt32LE(0, 48)],
    ['pageSize 2^31', (b) => b.writeUInt32LE(2 ** 31, 48)],
    ['dataOffset unaligned', (b) => b.writeBigUInt64LE(BigInt(MiB + 100), 72)],
    ['metadata overlaps data', (b) => b.writeBigUInt64LE(BigInt(MiB), 64)],
    ['metadata too small', (b) => (b.writeBigUInt64LE(4096n, 64), b.writeBigUInt64LE(8192n + 4096n, 72))],
    ['metaOffset inside the superblocks', (b) => b.writeBigUInt64LE(4096n, 56)],
    ['data beyond capacity', (b) => b.writeBigUInt64LE(BigInt(64 * 256), 80)],
    ['dataPages times pageSize overflows', (b) => b.writeBigUInt64LE(2n ** 52n, 80)],
    ['capacity above 2^53', (b) => b.writeBigUInt64LE(2n ** 60n, 40)],
    ['dataPages zero', (b) => b.writeBigUInt64LE(0n, 80)],
    ['generation zero', (b) => b.writeBigUInt64LE(0n, 16)],
    ['generation above 2^53', (b) => b.writeBigUInt64LE(2n ** 63n, 16)],
    ['unitId zero', (b) => b.fill(0, 24, 40)],
    ['role 3', (b) => (b[112] = 3)],
    ['durability 3', (b) => (b[113] = 3)],
    ['role none with a volume', (b) => (b[112] = 0)],
    ['role primary without a volume', (b) => b.fill(0, 96, 112)],
    ['reserved word', (b) => (b[53] = 1)],
    ['reserved after durability', (b) => (b[119] = 1)],
    ['reserved tail', (b) => (b[200] = 1)],
    ['label not NUL padded', (b) => (b[151] = 0x41)],
    ['label invalid UTF-8', (b) => (b[120] = 0xff)],
    ['layoutVersion 0', (b) => b.writeUInt32LE(0, 8)],
    ['headerSize 128', (b) => b.writeUInt32LE(128, 12)],
    ['headerSize 5000', (b) => b.writeUInt32LE(5000, 12)],
  ];
  for (const [name, edit] of cases) {
    const b = Buffer.from(base);
    edit(b);
    const hs = b.readUInt32LE(12);
    reseal(b, hs >= 20 && hs <= 4096 && hs % 4 === 0 ? hs : SUPERBLOCK_SIZE);
    t.throws(() => decodeSuperblock(b), { code: 'ERR_NPMU_CORRUPT', name: 'NpmuError' }, name);
  }
});

t.test('newer layout versions are refused, damaged ones are corrupt', async (t) => {
  const b = encodeSuperblock(sample());
  b.writeUInt32LE(3, 8);
  reseal(b);
  t.throws(() => decodeSuperblock(b), { code: 'ERR_NPMU_LAYOUT_TOO_NEW', layoutVersion: 3, supported: 2 });
  // A future version with a bigger struct keeps the CRC in its last 4 bytes.
  const big = encodeSuperblock(sample());
  big.writeUInt32LE(7, 8);
  big.writeUInt32LE(512, 12);
  big.fill(0xab, 256, 508);
  reseal(big, 512);
  t.throws(() => decodeSuperblock(big), { code: 'ERR_NPMU_LAYOUT_TOO_NEW' });
  const torn = Buffer.from(big);
  torn[300]! ^= 1;
  t.throws(() => decodeSuperblock(torn), { code: 'ERR_NPMU_CORRUPT' }, 'a newer version that fails its CRC is corrupt');
});

t.test('non-formatted input is refused', async (t) => {
  t.throws(() => decodeSuperblock(Buffer.alloc(4096)), { code: 'ERR_NPMU_NOT_FORMATTED' });
  t.throws(() => decodeSuperblock(Buffer.alloc(4)), { code: 'ERR_NPMU_NOT_FORMATTED' });
  t.throws(() => decodeSuperblock(Buffer.from('NPMUUNI')), { code: 'ERR_NPMU_NOT_FORMATTED' });
  t.throws(() => decodeSuperblock(Buffer.from('npmuunit' + '\0'.repeat(300))), { code: 'ERR_NPMU_NOT_FORMATTED' });
  t.throws(() => decodeSuperblock(encodeSuperblock(sample()).subarray(0, 100)), { code: 'ERR_NPMU_CORRUPT' }, 'truncated struct');
  t.throws(() => decodeSuperblock('NPMUUNIT' as never), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => readSuperblock(Buffer.alloc(1 * MiB)), { code: 'ERR_NPMU_NOT_FORMATTED' });
  t.throws(() => readSuperblock(Buffer.alloc(0)), { code: 'ERR_NPMU_NOT_FORMATTED' });
});

t.test('readSuperblock: fresh format, updates alternate slots', async (t) => {
  const dev = formatted();
  let cur = readSuperblock(dev);
  t.same(cur, { sb: sample(), copy: 'A', other: 'valid' });

  const w1 = nextSuperblockWrite(cur, { volumeId: VOL, role: 'primary', label: 'vol0/primary' });
  t.equal(w1.offset, SUPERBLOCK_OFFSET.B);
  t.equal(w1.copy, 'B');
  t.equal(w1.sb.generation, 2);
  w1.bytes.copy(dev, w1.offset);
  cur = readSuperblock(dev);
  t.same(cur, { sb: w1.sb, copy: 'B', other: 'older' });
  t.equal(cur.sb.role, 'primary');
  t.equal(cur.sb.unitId, UNIT, 'identity is kept');

  const w2 = nextSuperblockWrite(cur, { durability: 'pmem' });
  t.equal(w2.offset, SUPERBLOCK_OFFSET.A);
  w2.bytes.copy(dev, w2.offset);
  cur = readSuperblock(dev);
  t.same(cur, { sb: { ...w1.sb, durability: 'pmem', generation: 3 }, copy: 'A', other: 'older' });

  // Chaining on the write result without re-reading works too.
  const w3 = nextSuperblockWrite(w2, { volumeId: '0'.repeat(32), role: 'none' });
  t.equal(w3.copy, 'B');
  t.equal(w3.sb.generation, 4);
});

t.test('readSuperblock: a torn update falls back to the other copy', async (t) => {
  const dev = formatted();
  const w = nextSuperblockWrite(readSuperblock(dev), { label: 'renamed' });
  // Torn at every 8-byte boundary of the struct: only a prefix of the new copy landed.
  for (let cut = 8; cut < SUPERBLOCK_SIZE; cut += 8) {
    const d = Buffer.from(dev);
    w.bytes.copy(d, w.offset, 0, cut);
    const r = readSuperblock(d);
    // Up to byte 16 the new struct equals the old one (magic, version, size).
    const other = cut <= 16 ? 'valid' : 'invalid';
    if (r.copy !== 'A' || r.sb.generation !== 1 || r.other !== other) {
      t.fail(`cut at ${cut}: ${JSON.stringify({ copy: r.copy, other: r.other })}`);
    }
  }
  t.pass('the old copy is used for every cut');

  const garbageA = formatted();
  garbageA.fill(0x5a, 0, 4096);
  t.same(readSuperblock(garbageA), { sb: sample(), copy: 'B', other: 'invalid' });

  const badCrcA = formatted();
  badCrcA[130]! ^= 4;
  const r = readSuperblock(badCrcA);
  t.equal(r.copy, 'B', 'magic but bad CRC in A: B is used');
  t.equal(r.other, 'invalid');

  const onlyA = formatted();
  onlyA.fill(0, 4096, 8192);
  t.same(readSuperblock(onlyA), { sb: sample(), copy: 'A', other: 'invalid' });

  const short = formatted().subarray(0, 4096 + 100);
  t.same(readSuperblock(short), { sb: sample(), copy: 'A', other: 'invalid' }, 'device image shorter than both slots');
});

t.test('readSuperblock: no valid copy', async (t) => {
  const bothBad = formatted();
  bothBad[30]! ^= 1;
  bothBad[4096 + 30]! ^= 1;
  t.throws(() => readSuperblock(bothBad), { code: 'ERR_NPMU_CORRUPT', copyA: 'ERR_NPMU_CORRUPT', copyB: 'ERR_NPMU_CORRUPT' });
  const oneBlank = formatted();
  oneBlank.fill(0, 0, 4096);
  oneBlank[4096 + 30]! ^= 1;
  t.throws(() => readSuperblock(oneBlank), { code: 'ERR_NPMU_CORRUPT' }, 'one blank, one corrupt');
});

t.test('readSuperblock: a newer copy anywhere is refused', async (t) => {
  const dev = formatted();
  const w = nextSuperblockWrite(readSuperblock(dev), { label: 'v2' });
  const newer = Buffer.from(w.bytes);
  newer.writeUInt32LE(3, 8);
  reseal(newer);
  newer.copy(dev, w.offset);
  t.throws(() => readSuperblock(dev), { code: 'ERR_NPMU_LAYOUT_TOO_NEW' });
});

t.test('readSuperblock: equal generations must agree', async (t) => {
  const dev = formatted();
  encodeSuperblock(sample({ label: 'other' })).copy(dev, SUPERBLOCK_OFFSET.B);
  t.throws(() => readSuperblock(dev), { code: 'ERR_NPMU_CORRUPT', generation: 1 });
});

t.test('readSuperblock: a copy of another format is not "older"', async (t) => {
  const dev = formatted();
  const stale = sample({ unitId: 'ffffffffffffffffffffffffffffffff', generation: 1 });
  const cur = sample({ generation: 5 });
  encodeSuperblock(cur).copy(dev, SUPERBLOCK_OFFSET.A);
  encodeSuperblock(stale).copy(dev, SUPERBLOCK_OFFSET.B);
  t.same(readSuperblock(dev), { sb: cur, copy: 'A', other: 'invalid' });
});

t.test('nextSuperblockWrite refuses immutable fields and inconsistent results', async (t) => {
  const cur = readSuperblock(formatted());
  for (const k of ['unitId', 'capacity', 'pageSize', 'dataPages', 'dataOffset', 'metaLength', 'generation', 'createdAtMs', 'layoutVersion', 'bogus']) {
    t.throws(() => nextSuperblockWrite(cur, { [k]: 1 } as never), { code: 'ERR_INVALID_ARG_VALUE' }, k);
  }
  t.throws(() => nextSuperblockWrite(cur, { role: 'primary' }), { code: 'ERR_INVALID_ARG_VALUE' }, 'role without a volume');
  t.throws(() => nextSuperblockWrite(cur, { label: 'y'.repeat(40) }), { code: 'ERR_INVALID_ARG_VALUE' });
  t.equal(cur.sb.generation, 1, 'the current superblock is not modified');
});

t.test('layout constants match the documented format', async (t) => {
  t.equal(META_OFFSET, 2 * SUPERBLOCK_SLOT_SIZE);
  t.same(SUPERBLOCK_OFFSET, { A: 0, B: 4096 });
  t.equal(SUPERBLOCK_SIZE, 256);
});

t.test('layout version 1 superblocks are read (epoch 0, no holder) and rewritten as version 2', async (t) => {
  const v2 = encodeSuperblock(sample({ volumeId: VOL, role: 'primary' }));
  const v1 = Buffer.from(v2);
  v1.writeUInt32LE(1, 8);
  reseal(v1);
  const sb = decodeSuperblock(v1);
  t.equal(sb.layoutVersion, 1);
  t.equal(sb.epoch, 0);
  t.equal(sb.holder, '0'.repeat(32));
  const dev = Buffer.alloc(16384);
  v1.copy(dev, SUPERBLOCK_OFFSET.A);
  const w = nextSuperblockWrite(readSuperblock(dev), { epoch: 7, holder: VOL });
  t.equal(w.sb.layoutVersion, 2);
  t.equal(w.bytes.readUInt32LE(8), 2);
  w.bytes.copy(dev, w.offset);
  const r = readSuperblock(dev);
  t.equal(r.sb.epoch, 7);
  t.equal(r.sb.holder, VOL);
  t.throws(() => nextSuperblockWrite(r, { epoch: 6, holder: VOL }), { code: 'ERR_INVALID_ARG_VALUE' }, 'the epoch never goes down');
});
