/**
 * The log's on-region format (lib/log-format.ts) on Buffers: framing, the
 * recovery scan, torn frames at every byte boundary, stale bytes of earlier
 * laps, wrap-around planning, header checks.
 */
import t from 'tap';
import {
  FRAME_HEADER,
  HEADER_SIZE,
  MIN_LOG_SIZE,
  TRUNC_OFFSET,
  TRUNC_SLOT,
  bufferReader,
  decodeSuperblock,
  decodeTruncation,
  encodeFrame,
  encodeTruncation,
  formatHeader,
  frameSize,
  planAppend,
  scanAll,
} from '../../lib/log-format';

const LOG_ID = 0x1234_5678_9abc_def1n;
const SIZE = HEADER_SIZE + 4096;
const DATA = SIZE - HEADER_SIZE;

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function payload(lsn: bigint, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (Number(lsn) * 31 + i * 7) & 0xff;
  return b;
}

/** Appends records of `lens` at `tail` into the image the way lib/log.ts does; returns the new tail. */
function appendInto(img: Buffer, first: bigint, lens: number[], tail: number, used: number, logId = LOG_ID): { tail: number; bytes: Buffer[]; offs: number[] } {
  const plan = planAppend(lens, tail, used, DATA);
  if (!plan) throw new Error('does not fit');
  const bytes: Buffer[] = [];
  let pos = tail;
  for (let i = 0; i < lens.length; i++) {
    if (i === plan.wrapLsnIndex) encodeFrame(img, HEADER_SIZE + plan.wrapAt!, first + BigInt(i), null, logId);
    pos = plan.offs[i]!;
    const p = payload(first + BigInt(i), lens[i]!);
    encodeFrame(img, HEADER_SIZE + pos, first + BigInt(i), p, logId);
    bytes.push(p);
  }
  return { tail: plan.newTail, bytes, offs: plan.offs };
}

function newImage(): Buffer {
  const img = Buffer.alloc(SIZE);
  formatHeader(SIZE, LOG_ID).copy(img, 0);
  return img;
}

t.test('round trip: records come back in LSN order with their bytes; the end is exact', async (t) => {
  const img = newImage();
  const lens = [0, 1, 7, 8, 9, 100, 300];
  const { tail, bytes } = appendInto(img, 1n, lens, 0, 0);
  const { records, end } = await scanAll(bufferReader(img), DATA, LOG_ID, 1n, 0, { chunk: 64 });
  t.same(
    records.map((r) => r.lsn),
    [1n, 2n, 3n, 4n, 5n, 6n, 7n],
  );
  records.forEach((r, i) => t.ok(r.data.equals(bytes[i]!), `record ${r.lsn} bytes`));
  t.equal(end.nextLsn, 8n);
  t.equal(end.tail, tail);
  t.equal(end.walked, lens.reduce((a, n) => a + frameSize(n), 0));
});

t.test('a record torn at every byte boundary is never returned (over zeros and over stale records)', async (t) => {
  for (const over of ['zeros', 'stale lap'] as const) {
    const base = newImage();
    let tail = 0;
    if (over === 'stale lap') {
      // An earlier lap: the area is full of valid records with lower LSNs.
      const old = appendInto(base, 1n, [40, 40, 40, 40, 40, 40], 0, 0);
      tail = old.tail;
    }
    // The live log: starts after truncation at LSN 100, offset 0 (over the stale lap).
    const firstLsn = 100n;
    const live = appendInto(base, firstLsn, [10, 20], 0, 0);
    // The next record (LSN 102) goes at live.tail; build it on the side to tear it.
    const full = Buffer.from(base);
    const next = appendInto(full, 102n, [57], live.tail, live.tail);
    const start = HEADER_SIZE + live.tail;
    const frameLen = frameSize(57);
    let returned = 0;
    for (let k = 0; k <= frameLen; k++) {
      const img = Buffer.from(base);
      full.copy(img, start, start, start + k); // the first k bytes landed, the rest is what was there
      const { records } = await scanAll(bufferReader(img), DATA, LOG_ID, firstLsn, 0, { chunk: 48 });
      // Complete = every byte the frame means (header and payload) landed; the pad to 8 bytes means nothing.
      const complete = img.subarray(start, start + FRAME_HEADER + 57).equals(full.subarray(start, start + FRAME_HEADER + 57));
      const lsns = records.map((r) => r.lsn);
      if (complete) {
        returned++;
        t.same(lsns, [100n, 101n, 102n], `k=${k}: complete record found`);
        t.ok(records[2]!.data.equals(next.bytes[0]!));
      } else if (lsns.length !== 2) {
        t.fail(`${over}: torn at byte ${k} of ${frameLen}, scan returned ${lsns.join(',')}`);
      }
    }
    t.ok(returned >= 1 && returned <= 8, `${over}: only complete images return the record (${returned} of ${frameLen + 1}, trailing pad bytes may already match)`);
    // Torn in random 8-byte-word subsets too (pmem persists 8-byte words in any order).
    const r = rng(over === 'zeros' ? 7 : 11);
    for (let trial = 0; trial < 300; trial++) {
      const img = Buffer.from(base);
      let all = true;
      for (let w = 0; w < frameLen / 8; w++) {
        if (r() < 0.5) full.copy(img, start + w * 8, start + w * 8, start + w * 8 + 8);
        else all = false;
      }
      const { records } = await scanAll(bufferReader(img), DATA, LOG_ID, firstLsn, 0);
      const complete = img.subarray(start, start + FRAME_HEADER + 57).equals(full.subarray(start, start + FRAME_HEADER + 57));
      if (records.length === 3 && !complete) t.fail(`word-torn record returned (trial ${trial})`);
      if (all && records.length !== 3) t.fail('complete record not found');
    }
  }
});

t.test('stale records of an earlier lap, or of another log, are never taken for records', async (t) => {
  const img = newImage();
  // Lap 1 fills the data area with LSNs 1..; lap 2 restarts at offset 0 with fewer records.
  let tail = 0;
  let lsn = 1n;
  while (true) {
    const plan = planAppend([100], tail, tail, DATA);
    if (!plan || plan.wrapAt !== null || plan.offs[0] === 0 && tail !== 0) break;
    tail = appendInto(img, lsn, [100], tail, tail).tail;
    lsn++;
  }
  const lap1End = lsn;
  // Lap 2: truncated to lap1End at offset 0; two records over the start of lap 1.
  const lap2 = appendInto(img, lap1End, [100, 100], 0, 0);
  const { records, end } = await scanAll(bufferReader(img), DATA, LOG_ID, lap1End, 0);
  t.same(
    records.map((r) => r.lsn),
    [lap1End, lap1End + 1n],
    'lap-1 records after the tail (valid CRC, older LSN) end the scan',
  );
  t.equal(end.tail, lap2.tail);
  // A valid frame of ANOTHER log (another id) with the expected LSN is not taken either.
  encodeFrame(img, HEADER_SIZE + lap2.tail, lap1End + 2n, payload(1n, 30), 0x999n);
  const again = await scanAll(bufferReader(img), DATA, LOG_ID, lap1End, 0);
  t.equal(again.records.length, 2, 'a frame of another log id is not a record of this log');
});

t.test('wrap-around: a wrap frame, or an implicit skip of < 24 bytes, then offset 0; many laps', async (t) => {
  const r = rng(3);
  const img = newImage();
  let head = 0;
  let tail = 0;
  let first = 1n;
  let next = 1n;
  const live: Array<{ lsn: bigint; off: number; data: Buffer }> = [];
  let wraps = 0;
  for (let step = 0; step < 3000; step++) {
    const n = 1 + Math.floor(r() * 3);
    const lens = Array.from({ length: n }, () => Math.floor(r() * 300));
    const used = (tail - head + DATA) % DATA;
    const plan = planAppend(lens, tail, used, DATA);
    if (!plan) {
      // Full: truncate about half.
      const k = Math.max(1, Math.floor(live.length / 2));
      const cut = live.splice(0, k);
      first = cut[cut.length - 1]!.lsn + 1n;
      head = live.length > 0 ? live[0]!.off : tail;
      continue;
    }
    if (plan.newTail < tail || plan.offs.some((o) => o === 0)) wraps++;
    const res = appendInto(img, next, lens, tail, used);
    res.bytes.forEach((b, i) => live.push({ lsn: next + BigInt(i), off: res.offs[i]!, data: b }));
    next += BigInt(n);
    tail = res.tail;
    if (step % 50 === 0) {
      const { records, end } = await scanAll(bufferReader(img), DATA, LOG_ID, first, head, { chunk: 100 + (step % 700) });
      if (records.length !== live.length || end.nextLsn !== next || end.tail !== tail) {
        t.fail(`step ${step}: scan found ${records.length} records to ${end.nextLsn}@${end.tail}, expected ${live.length} to ${next}@${tail}`);
        return;
      }
      for (let i = 0; i < live.length; i++) if (!records[i]!.data.equals(live[i]!.data)) t.fail(`step ${step}: record ${live[i]!.lsn} bytes differ`);
    }
  }
  t.ok(wraps > 20, `wrapped ${wraps} times`);
});

t.test('planAppend: never plans past the free space (no overwrite of live records)', async (t) => {
  t.equal(planAppend([DATA], 0, 0, DATA), null, 'a record larger than the data area');
  t.equal(planAppend([DATA - 8 - FRAME_HEADER + 1], 0, 0, DATA), null, 'one byte too many');
  t.ok(planAppend([DATA - 8 - FRAME_HEADER], 0, 0, DATA), 'the largest record fits an empty log');
  t.equal(planAppend([100], 0, DATA - 100, DATA), null, 'full');
  const p = planAppend([100], DATA - 40, 1000, DATA)!;
  t.equal(p.wrapAt, DATA - 40, 'wrap frame where 40 bytes are left');
  t.same(p.offs, [0]);
  t.equal(p.consumed, 40 + frameSize(100));
  const q = planAppend([100], DATA - 16, 1000, DATA)!;
  t.equal(q.wrapAt, null, 'fewer than 24 bytes left: implicit skip');
  t.same(q.offs, [0]);
  t.equal(planAppend([100], DATA - 40, DATA - 8 - 40 - frameSize(100) + 1, DATA), null, 'the wrap waste counts');
});

t.test('header: not a log, corrupt superblock, torn truncation slots', async (t) => {
  const zero = Buffer.alloc(HEADER_SIZE);
  t.throws(() => decodeSuperblock(zero, SIZE), { code: 'ERR_NPMU_NOT_A_LOG' });
  t.throws(() => decodeSuperblock(Buffer.from('some other bytes entirely, not a log'.padEnd(64)), SIZE), { code: 'ERR_NPMU_NOT_A_LOG' });
  const h = formatHeader(SIZE, LOG_ID);
  t.same(decodeSuperblock(h, SIZE), { version: 1, size: SIZE, logId: LOG_ID });
  t.throws(() => decodeSuperblock(h, SIZE - 8), { code: 'ERR_NPMU_LOG_CORRUPT' }, 'log larger than the region');
  for (const at of [8, 16, 24, 40, 60]) {
    const c = Buffer.from(h);
    c[at]! ^= 0x10;
    t.throws(() => decodeSuperblock(c, SIZE), { code: 'ERR_NPMU_LOG_CORRUPT' }, `byte ${at} flipped`);
  }
  t.same(decodeTruncation(h, LOG_ID, DATA), { seq: 1n, firstLsn: 1n, firstOff: 0, slot: 0 });
  // seq 2 into slot 1, then torn: the older slot is used.
  const t2 = encodeTruncation({ seq: 2n, firstLsn: 50n, firstOff: 800 }, LOG_ID);
  const ok = Buffer.from(h);
  t2.copy(ok, TRUNC_OFFSET + TRUNC_SLOT);
  t.same(decodeTruncation(ok, LOG_ID, DATA), { seq: 2n, firstLsn: 50n, firstOff: 800, slot: 1 });
  for (let k = 0; k < TRUNC_SLOT - 4; k++) {
    const torn = Buffer.from(h);
    t2.copy(torn, TRUNC_OFFSET + TRUNC_SLOT, 0, k);
    const got = decodeTruncation(torn, LOG_ID, DATA);
    if (got.seq !== 1n) t.fail(`slot torn at ${k} taken`);
  }
  const both = Buffer.from(h);
  both[TRUNC_OFFSET + 3]! ^= 1;
  t.throws(() => decodeTruncation(both, LOG_ID, DATA), { code: 'ERR_NPMU_LOG_CORRUPT' }, 'no slot checks');
  t.ok(MIN_LOG_SIZE === SIZE);
});
