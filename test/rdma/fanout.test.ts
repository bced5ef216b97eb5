/**
 * The lean data path (issue 8): the native Fanout (one call posts a WRITE,
 * and optionally a fence READ, on every leg; one promise) and the client's
 * batched form, writeRegionBatch, in every error case: bad arguments refused
 * before anything is posted, one bad item, a half lost in the middle of a
 * batch, a buffer released or transferred while in flight.
 */
import t from 'tap';
import { connectedPair, regAll } from './fixture';
import type { Pair } from './fixture';
import { shmPath, startSystem, unitInProcess, unitProcess } from './pmm-helpers';
import type { System } from './pmm-helpers';
import { newFanout, registerMemory, Access } from '../../lib/verbs';
import type { MemoryRegion } from '../../lib/verbs';

t.setTimeout(30 * 60_000);

interface Leg {
  pair: Pair;
  remote: Buffer;
  rmr: MemoryRegion;
  fence: MemoryRegion;
}

async function leg(size = 1 << 16): Promise<Leg> {
  const pair = await connectedPair();
  const remote = Buffer.alloc(size);
  const rmr = regAll(pair.serverPd, remote);
  const fence = registerMemory(pair.client.pd, Buffer.alloc(8), { access: Access.LOCAL_WRITE });
  return { pair, remote, rmr, fence };
}

async function closeLeg(l: Leg): Promise<void> {
  l.fence.close();
  l.rmr.close();
  await l.pair.close();
}

t.test('Fanout: one call writes every leg (inline, registered, chained), fences, reads', async (t) => {
  const a = await leg();
  const b = await leg();
  t.teardown(async () => {
    await closeLeg(a);
    await closeLeg(b);
  });
  const fan = newFanout([a, b].map((l) => ({ ep: l.pair.client, rkey: l.rmr.rkey, remoteAddr: l.rmr.iova, length: l.remote.length, fence: l.fence })));
  t.equal(fan.legs, 2);
  t.ok(fan.maxInline >= 1 && fan.maxInline <= 64, `maxInline ${fan.maxInline}`);

  // Inline from unregistered memory; the source may change right after the call.
  const small = Buffer.from('inline bytes, copied at post time');
  const p = fan.write(small, 0, small.length, 100, undefined, true);
  small.fill(0);
  t.equal(await p, undefined, 'all legs succeeded');
  for (const l of [a, b]) t.equal(l.remote.toString('utf8', 100, 100 + 33), 'inline bytes, copied at post time');

  // Registered sources: one MR per leg, and a legMask selecting leg 1 only.
  const src = Buffer.alloc(8192, 0x5a);
  const mrs = [a, b].map((l) => regAll(l.pair.client.pd, src));
  t.equal(await fan.write(mrs, 0, 8192, 4096, 0b10, true), undefined);
  t.equal(a.remote[4096], 0, 'leg 0 not selected: untouched');
  t.equal(b.remote[4096], 0x5a);
  t.equal(b.remote[4096 + 8191], 0x5a);

  // writev: a chain of writes per leg, applied in order (the later overlapping one wins).
  src.fill(1, 0, 100);
  src.fill(2, 100, 200);
  const ops = new Float64Array([0, 100, 20000, 100, 100, 20050, 0, 10, 30000]);
  t.equal(await fan.writev(mrs, ops, undefined, true), undefined);
  for (const l of [a, b]) {
    t.equal(l.remote[20000], 1);
    t.equal(l.remote[20049], 1);
    t.equal(l.remote[20050], 2, 'the second write overlapped the first');
    t.equal(l.remote[20149], 2);
    t.equal(l.remote[30009], 1);
  }

  // read from one leg
  const dst = Buffer.alloc(64);
  const dmr = regAll(a.pair.client.pd, dst);
  a.remote.write('from leg zero', 50000);
  t.equal(await fan.read(dmr, 0, 13, 50000n, 0), undefined);
  t.equal(dst.toString('utf8', 0, 13), 'from leg zero');
  t.equal(a.pair.client.inFlight + b.pair.client.inFlight, 0, 'nothing left in flight');
  dmr.close();
  for (const m of mrs) m.close();
});

t.test('Fanout: an atomic fence on a fence word orders like the READ and leaves the word as it was', async (t) => {
  const a = await leg();
  const b = await leg();
  t.teardown(async () => {
    await closeLeg(a);
    await closeLeg(b);
  });
  // The fence words: the last aligned word of each remote buffer, which no write below touches.
  const word = (l: Leg): bigint => ((l.rmr.iova + BigInt(l.remote.length) - 8n) & ~7n);
  const fan = newFanout([a, b].map((l) => ({ ep: l.pair.client, rkey: l.rmr.rkey, remoteAddr: l.rmr.iova, length: 4096, fence: l.fence, fenceAddr: word(l), fenceRkey: l.rmr.rkey })));
  const off = (l: Leg): number => Number(word(l) - l.rmr.iova);
  for (const l of [a, b]) l.remote.writeBigUInt64LE(0x1122334455667788n, off(l));
  const src = Buffer.alloc(64, 0x3c);
  for (let i = 0; i < 50; i++) {
    src.writeUInt32LE(i, 60);
    t.equal(await fan.write(src, 0, 64, 128, undefined, true), undefined);
    for (const l of [a, b]) if (l.remote.readUInt32LE(128 + 60) !== i) t.fail(`write ${i} not placed when its fence completed`);
  }
  for (const l of [a, b]) t.equal(l.remote.readBigUInt64LE(off(l)), 0x1122334455667788n, 'the fence word is unchanged (FETCH_AND_ADD of 0)');
  t.equal(a.fence.closed, false);
  // a fence word without a fence buffer, misaligned, or of the wrong type
  t.throws(() => newFanout([{ ep: a.pair.client, rkey: 1, remoteAddr: 0n, length: 8, fenceAddr: 8n, fenceRkey: 1 }]), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => newFanout([{ ep: a.pair.client, rkey: 1, remoteAddr: 0n, length: 8, fence: a.fence, fenceAddr: 12n, fenceRkey: 1 }]), { code: 'ERR_NPMU_NOT_ALIGNED' });
  t.throws(() => newFanout([{ ep: a.pair.client, rkey: 1, remoteAddr: 0n, length: 8, fence: a.fence, fenceAddr: 8 as never, fenceRkey: 1 }]), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => newFanout([{ ep: a.pair.client, rkey: 1, remoteAddr: 0n, length: 8, fence: a.fence, fenceAddr: 8n }]), { code: 'ERR_INVALID_ARG_TYPE' }, 'fenceRkey missing');
});

t.test('Fanout: every bad argument is refused before anything is posted', async (t) => {
  const a = await leg(4096);
  const b = await leg(4096);
  t.teardown(async () => {
    await closeLeg(a);
    await closeLeg(b);
  });
  const legs = [a, b].map((l) => ({ ep: l.pair.client, rkey: l.rmr.rkey, remoteAddr: l.rmr.iova, length: 4096, fence: l.fence }));
  t.throws(() => newFanout(undefined as never), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => newFanout([]), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => newFanout(Array(9).fill(legs[0])), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => newFanout([[] as never]), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => newFanout([{ ...legs[0]!, ep: {} as never }]), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => newFanout([{ ...legs[0]!, rkey: -1 }]), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => newFanout([{ ...legs[0]!, remoteAddr: 5 as never }]), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => newFanout([{ ...legs[0]!, length: 0 }]), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => newFanout([{ ...legs[0]!, remoteAddr: (1n << 64n) - 10n, length: 100 }]), { code: 'ERR_OUT_OF_RANGE' }, 'window past 2^64');
  const tiny = registerMemory(a.pair.client.pd, Buffer.alloc(4), { access: Access.LOCAL_WRITE });
  t.throws(() => newFanout([{ ...legs[0]!, fence: tiny }]), { code: 'ERR_INVALID_ARG_VALUE' }, 'fence under 8 bytes');
  const ro = registerMemory(a.pair.client.pd, Buffer.alloc(8), { access: 0 });
  t.throws(() => newFanout([{ ...legs[0]!, fence: ro }]), { code: 'ERR_INVALID_ARG_VALUE' }, 'fence without LOCAL_WRITE');
  t.throws(() => newFanout([{ ...legs[0]!, fence: b.fence }]), { code: 'ERR_INVALID_ARG_VALUE' }, 'fence of another PD');
  tiny.close();
  ro.close();

  const fan = newFanout(legs);
  const noFence = newFanout(legs.map(({ fence: _f, ...l }) => l));
  const src = Buffer.alloc(4096, 7);
  const mrs = [a, b].map((l) => regAll(l.pair.client.pd, src));
  const cases: Array<[string, () => unknown, string]> = [
    ['src not a buffer or MR', () => fan.write('x' as never, 0, 1, 0), 'ERR_INVALID_ARG_TYPE'],
    ['src array of the wrong length', () => fan.write([mrs[0]!], 0, 1, 0), 'ERR_INVALID_ARG_VALUE'],
    ['src MR of another PD on leg 1', () => fan.write(mrs[0]!, 0, 1, 0), 'ERR_INVALID_ARG_VALUE'],
    ['length 0', () => fan.write(mrs, 0, 0, 0), 'ERR_OUT_OF_RANGE'],
    ['length not an integer', () => fan.write(mrs, 0, 1.5, 0), 'ERR_OUT_OF_RANGE'],
    ['srcOffset + length past the MR', () => fan.write(mrs, 4000, 100, 0), 'ERR_OUT_OF_RANGE'],
    ['remoteOffset + length past the window', () => fan.write(mrs, 0, 100, 4000), 'ERR_OUT_OF_RANGE'],
    ['remoteOffset negative', () => fan.write(mrs, 0, 1, -1), 'ERR_OUT_OF_RANGE'],
    ['remoteOffset 2^64', () => fan.write(mrs, 0, 1, 1n << 64n), 'ERR_OUT_OF_RANGE'],
    ['inline source over maxInline', () => fan.write(Buffer.alloc(fan.maxInline + 1), 0, fan.maxInline + 1, 0), 'ERR_OUT_OF_RANGE'],
    ['inline source shorter than length', () => fan.write(Buffer.alloc(4), 0, 8, 0), 'ERR_OUT_OF_RANGE'],
    ['legMask 0', () => fan.write(mrs, 0, 1, 0, 0), 'ERR_OUT_OF_RANGE'],
    ['legMask naming a leg that does not exist', () => fan.write(mrs, 0, 1, 0, 0b100), 'ERR_OUT_OF_RANGE'],
    ['fence not a boolean', () => fan.write(mrs, 0, 1, 0, 3, 1 as never), 'ERR_INVALID_ARG_TYPE'],
    ['fence on legs without a fence buffer', () => noFence.write(mrs, 0, 1, 0, 3, true), 'ERR_INVALID_ARG_VALUE'],
    ['ops not a Float64Array', () => fan.writev(mrs, [0, 1, 0] as never), 'ERR_INVALID_ARG_TYPE'],
    ['ops empty', () => fan.writev(mrs, new Float64Array(0)), 'ERR_INVALID_ARG_VALUE'],
    ['ops not triples', () => fan.writev(mrs, new Float64Array(4)), 'ERR_INVALID_ARG_VALUE'],
    ['ops with a negative offset', () => fan.writev(mrs, new Float64Array([-1, 1, 0])), 'ERR_OUT_OF_RANGE'],
    ['ops with a fractional length', () => fan.writev(mrs, new Float64Array([0, 1.5, 0])), 'ERR_OUT_OF_RANGE'],
    ['ops with NaN', () => fan.writev(mrs, new Float64Array([0, NaN, 0])), 'ERR_OUT_OF_RANGE'],
    ['ops item 2 past the window', () => fan.writev(mrs, new Float64Array([0, 1, 0, 0, 1, 1, 0, 10, 4090])), 'ERR_OUT_OF_RANGE'],
    ['read: dst without LOCAL_WRITE', () => fan.read(registerMemory(a.pair.client.pd, Buffer.alloc(8), { access: 0 }), 0, 8, 0, 0), 'ERR_INVALID_ARG_VALUE'],
    ['read: leg out of range', () => fan.read(mrs[0]!, 0, 8, 0, 2), 'ERR_OUT_OF_RANGE'],
    ['read: dst of another PD', () => fan.read(mrs[1]!, 0, 8, 0, 0), 'ERR_INVALID_ARG_VALUE'],
    ['read: past the window', () => fan.read(mrs[0]!, 0, 8, 4092, 0), 'ERR_OUT_OF_RANGE'],
  ];
  for (const [what, fn, code] of cases) t.throws(fn, { code }, what);
  t.equal(a.pair.client.inFlight + b.pair.client.inFlight, 0, 'nothing was posted');
  t.equal(a.remote.readUInt32LE(0) + b.remote.readUInt32LE(0), 0, 'nothing was written');
  mrs[1]!.close();
  t.throws(() => fan.write(mrs, 0, 1, 0), { code: 'ERR_NPMU_CLOSED' }, 'a closed MR');
  t.equal(await fan.write(mrs, 0, 1, 0, 0b01), undefined, 'the closed MR of an unselected leg is not used');
  mrs[0]!.close();
  t.equal(a.pair.client.state, 'connected');
  t.equal(b.pair.client.state, 'connected');
});

t.test('Fanout: a leg whose endpoint fails reports its error; the other leg is written', async (t) => {
  const a = await leg();
  const b = await leg();
  t.teardown(async () => {
    await closeLeg(a);
    await closeLeg(b);
  });
  // leg 1 has a wrong rkey: its WRITE fails with a remote access error.
  const fan = newFanout([
    { ep: a.pair.client, rkey: a.rmr.rkey, remoteAddr: a.rmr.iova, length: a.remote.length, fence: a.fence },
    { ep: b.pair.client, rkey: b.rmr.rkey ^ 0x5a5a00, remoteAddr: b.rmr.iova, length: b.remote.length, fence: b.fence },
  ]);
  const out = await fan.write(Buffer.from('half'), 0, 4, 0, undefined, true);
  t.ok(Array.isArray(out), 'an outcome per leg');
  t.equal(out![0], undefined, 'leg 0 succeeded');
  t.match(out![1], { code: 'IBV_WC_REM_ACCESS_ERR' }, 'leg 1: its first error');
  t.equal(a.remote.toString('utf8', 0, 4), 'half');
  t.equal(b.pair.client.state, 'error');
  // The errored leg now fails at once (not connected); the good one still works.
  const again = await fan.write(Buffer.from('more'), 0, 4, 8);
  t.match(again![1], { code: 'ERR_NPMU_ENDPOINT_STATE' });
  t.equal(again![0], undefined);
  t.equal(a.remote.toString('utf8', 8, 12), 'more');
});

t.test('writeRegionBatch: many writes, one post per half, read back from each half', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  t.teardown(() => sys.close());
  const c = await sys.attach('alice', { stagingThreshold: 4096, stagingSlots: 2 });
  await c.createRegion('batch', 1 << 20, 0x10000000n);
  const h = await c.openRegion('batch');
  const big = Buffer.alloc(64 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  const items = [
    { buf: Buffer.from('a small record'), pointer: h.basePointer }, // inline-sized, staged
    { buf: big.subarray(0, 3000), pointer: h.basePointer + 4096n }, // staged
    { buf: big.subarray(100, 100 + 20000), pointer: h.basePointer + 65536n }, // over the threshold: registered
    { buf: new Uint16Array([1, 2, 3, 4]), pointer: h.basePointer + 16n, len: 6 }, // a typed array, part of it
    ...Array.from({ length: 40 }, (_, i) => ({ buf: Buffer.alloc(1000, i), pointer: h.basePointer + 200000n + BigInt(i * 1000) })), // more than the slots
  ];
  const r = await c.writeRegionBatch(h, items, { durable: true });
  t.equal(r.bytes, items.reduce((n, it) => n + (it.len ?? it.buf.byteLength), 0));
  t.same(r.halves, ['primary', 'mirror']);
  t.equal(r.durable, false, 'tmpfs units are volatile');
  for (const half of ['primary', 'mirror'] as const) {
    for (const it of items) {
      const n = it.len ?? it.buf.byteLength;
      const out = Buffer.alloc(n);
      await c.readRegion(h, out, n, it.pointer, { mirror: half });
      const want = Buffer.from(it.buf.buffer, it.buf.byteOffset, n);
      if (!out.equals(want)) t.fail(`${half}: item at ${it.pointer} differs`);
    }
  }
  t.pass('every item is on both halves');
  t.equal(c.cachedBuffers >= 1, true, 'the large item went from a registration');
  t.ok(c.releaseBuffer(big), 'nothing in flight: the registration can be dropped');
});

t.test('a client with hybrid polling (spinUs): writes, batches and reads on both halves, as in event mode', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  t.teardown(() => sys.close());
  const c = await sys.attach('alice', { spinUs: 500 });
  await c.createRegion('hybrid', 1 << 20, 0x20000000n);
  const h = await c.openRegion('hybrid');
  for (let i = 0; i < 20; i++) {
    const b = Buffer.alloc(i % 2 ? 64 : 4096, i);
    await c.writeRegion(h, b, b.length, h.basePointer + BigInt(i * 4096), { durable: true });
  }
  await c.writeRegionBatch(h, Array.from({ length: 8 }, (_, i) => ({ buf: Buffer.alloc(100, 0x80 + i), pointer: h.basePointer + 200000n + BigInt(i * 100) })), { durable: true });
  for (const half of ['primary', 'mirror'] as const) {
    for (let i = 0; i < 20; i++) {
      const n = i % 2 ? 64 : 4096;
      const out = Buffer.alloc(n);
      await c.readRegion(h, out, n, h.basePointer + BigInt(i * 4096), { mirror: half });
      if (!out.equals(Buffer.alloc(n, i))) t.fail(`${half}: write ${i} differs`);
    }
    const out = Buffer.alloc(800);
    await c.readRegion(h, out, 800, h.basePointer + 200000n, { mirror: half });
    for (let i = 0; i < 8; i++) if (!out.subarray(i * 100, i * 100 + 100).equals(Buffer.alloc(100, 0x80 + i))) t.fail(`${half}: batch item ${i} differs`);
  }
  t.pass('every write and batch item is on both halves');
  await c.closeRegion(h);
});

t.test('writeRegionBatch: one bad item refuses the batch before anything is written', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  t.teardown(() => sys.close());
  const c = await sys.attach('alice');
  await c.createRegion('bad', 8192, 0n);
  const h = await c.openRegion('bad');
  const good = (i: number) => ({ buf: Buffer.alloc(16, 0xee), pointer: BigInt(i * 16) });
  const cases: Array<[string, unknown[], string, RegExp]> = [
    ['pointer past the end', [good(0), good(1), good(2), { buf: Buffer.alloc(16), pointer: 8190n }], 'ERR_OUT_OF_RANGE', /items\[3\]\.pointer/],
    ['buf not a view', [good(0), { buf: 'text', pointer: 0n }], 'ERR_INVALID_ARG_TYPE', /items\[1\]\.buf/],
    ['len over the buffer', [good(0), { buf: Buffer.alloc(4), pointer: 0n, len: 5 }], 'ERR_OUT_OF_RANGE', /items\[1\]\.len/],
    ['pointer of the wrong type', [{ buf: Buffer.alloc(4), pointer: '0' }], 'ERR_INVALID_ARG_TYPE', /items\[0\]\.pointer/],
    ['an item that is not an object', [good(0), null], 'ERR_INVALID_ARG_TYPE', /items\[1\]/],
    ['a hole', [good(0), undefined], 'ERR_INVALID_ARG_TYPE', /items\[1\]/],
  ];
  for (const [what, items, code, msg] of cases) await t.rejects(c.writeRegionBatch(h, items as never), { code, message: msg }, what);
  await t.rejects(c.writeRegionBatch(h, [] as never), { code: 'ERR_OUT_OF_RANGE' }, 'no items');
  await t.rejects(c.writeRegionBatch(h, Array.from({ length: 4097 }, () => good(0))), { code: 'ERR_OUT_OF_RANGE' }, 'over 4,096 items');
  await t.rejects(c.writeRegionBatch(h, 'x' as never), { code: 'ERR_INVALID_ARG_TYPE' });
  await t.rejects(c.writeRegionBatch(h, [good(0)], { mirror: 'left' } as never), { code: 'ERR_INVALID_ARG_VALUE' });
  const out = Buffer.alloc(64);
  for (const half of ['primary', 'mirror'] as const) {
    await c.readRegion(h, out, 64, 0n, { mirror: half });
    t.ok(out.equals(Buffer.alloc(64)), `${half}: nothing was written`);
  }
  t.equal(c.halfAvailable('primary') && c.halfAvailable('mirror'), true);
});

t.test('writeRegionBatch: a buffer is neither released nor transferred while its batch is in flight', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  t.teardown(() => sys.close());
  const c = await sys.attach('alice', { stagingThreshold: 1024 });
  await c.createRegion('busy', 1 << 20, 0n);
  const h = await c.openRegion('busy');
  const buf = Buffer.alloc(256 * 1024, 3);
  const items = Array.from({ length: 64 }, (_, i) => ({ buf: buf.subarray(i * 4096, (i + 1) * 4096), pointer: BigInt(i * 4096) }));
  const p = c.writeRegionBatch(h, items);
  t.throws(() => c.releaseBuffer(buf), { code: 'ERR_NPMU_BUSY' }, 'release refused while in flight');
  try {
    structuredClone(buf.buffer, { transfer: [buf.buffer as ArrayBuffer] });
  } catch {
    // refused (Node >= 21): as good as copied
  }
  t.equal(buf.buffer.byteLength, 256 * 1024, 'a transfer did not detach the memory in flight');
  const r = await p;
  t.equal(r.bytes, 256 * 1024);
  t.ok(c.releaseBuffer(buf), 'released once the batch completed');
});

t.test('writeRegionBatch: a half lost while batches are in flight fails the batch on that half, not the other', async (t) => {
  // rxe on one host runs a posted chain largely inside ibv_post_send, so a
  // batch cannot be cut at a chosen item: the mirror's process is killed
  // and batches keep going until one fails. It fails either in flight (its
  // WRITEs to the dead unit time out: `written` names the primary) or, if
  // the client learnt of the loss first, before anything is posted.
  const primary = await unitInProcess(shmPath(), 64 << 20);
  const mirror = await unitProcess(shmPath(), '64M');
  let sys: System | undefined;
  try {
    sys = await startSystem({ primary, mirror });
    const c = await sys.attach('alice');
    await c.createRegion('midway', 4 << 20, 0n);
    const h = await c.openRegion('midway');
    const buf = Buffer.alloc(1 << 20);
    const items = Array.from({ length: 256 }, (_, i) => ({ buf: buf.subarray(i * 4096, (i + 1) * 4096), pointer: BigInt(i * 4096) }));
    await c.writeRegionBatch(h, items, { durable: true });
    mirror.proc!.child.kill('SIGKILL');
    let err: unknown;
    let done = 0;
    for (let i = 0; i < 1000 && !err; i++) {
      buf.fill(i & 0xff);
      try {
        await c.writeRegionBatch(h, items, { durable: true });
        done++;
      } catch (e) {
        err = e;
      }
    }
    await mirror.proc!.exited;
    t.comment(`${done} batch(es) completed after the kill; then: ${String(err)}`);
    t.match(err, { code: 'ERR_NPMU_HALF_UNAVAILABLE', half: 'mirror' }, 'a batch failed on the mirror');
    const written = (err as { written?: string[] }).written;
    if (written) t.same(written, ['primary'], 'failed in flight: the primary took it');
    t.equal(c.halfAvailable('mirror'), false, 'the mirror is marked down');
    t.equal(c.halfAvailable('primary'), true, 'the primary stays up');
    if (written) {
      const out = Buffer.alloc(4096);
      await c.readRegion(h, out, 4096, BigInt(255 * 4096), { mirror: 'primary' });
      t.ok(out.equals(buf.subarray(0, 4096)), 'the primary has the failed batch');
    }
    await t.rejects(c.writeRegionBatch(h, items), { code: 'ERR_NPMU_HALF_UNAVAILABLE', half: 'mirror' }, 'later batches are refused up front');
  } finally {
    if (sys) await sys.close();
    else {
      await primary.kill();
      await mirror.kill();
    }
  }
});
