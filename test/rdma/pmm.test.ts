/**
 * The PMM and the region verbs on real rxe: two units on the VM's emulated
 * NVDIMMs (devdax, pmem durability), a PMM, clients. Every management verb
 * and its errors, zeroed allocation, mirrored and one-sided writes, two
 * clients on one region, durability reporting, implicit close when a client
 * process dies, and a PMM killed with SIGKILL and started again.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { NpmuClient, Mirror, ReadFrom } from '../../lib/client';
import { ControlConnection } from '../../lib/protocol';
import { rdmaAddress } from './fixture';
import { KEY, MiB, SECRETS, child, clients, fileDir, keyFile, pmmProcess, shmPath, startSystem, unitInProcess, until } from './pmm-helpers';
import { startUnitProcess } from './unit-helpers';
import { PmmServer } from '../../pmm/server';
import { MetaImage } from '../../pmm/metadata';
import type { System } from './pmm-helpers';

// Every RDMA test file shares one tap root in one process (run.ts); its default
// 30 s budget is far too short for a suite of VM tests.
t.setTimeout(30 * 60_000);

let sys: System;
let alice: NpmuClient;
let bob: NpmuClient;
const BASE = 0x7f0000000000n;

const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
};

t.test('a volume on two units: create, open, a mirrored durable write, read back from each half', async (t) => {
  sys = await startSystem();
  alice = await sys.attach('alice');
  bob = await sys.attach('bob');
  t.equal(alice.halfAvailable('primary'), true);
  t.equal(alice.halfAvailable('mirror'), true);
  const st = await alice.volumeStatus();
  t.equal(st.state, 'ok');
  const pmem = st.primary.durability === 'pmem';
  t.comment(`units: ${st.primary.durability} / ${st.mirror.durability}, ${st.totalPages} pages of ${st.pageSize} bytes`);

  await alice.createRegion('r1', 3 * MiB, BASE);
  const h = await alice.openRegion('r1');
  t.equal(h.size, 3 * MiB);
  t.equal(h.basePointer, BASE);
  t.equal(h.primary.baseNva, BASE, '[0074] base NVA = base pointer: pointers are remote addresses');
  t.equal(h.mirror.baseNva, BASE);
  t.equal(h.primary.unitId, sys.primary.unitId);
  t.equal(h.mirror.unitId, sys.mirror.unitId);
  t.equal(h.pmmId, sys.pmm.pmmId);
  t.ok(h.primary.available && h.mirror.available);

  const big = pattern(200_000, 1); // above the staging threshold: zero-copy from this Buffer
  const w = await alice.writeRegion(h, big, big.length, BASE + 12_345n);
  // pmem: flushed on the unit unless it reports an eADR platform (rxe-vm.sh without --nvdimm-persistence: 'none')
  const method = (half: 'primary' | 'mirror') => (!pmem ? 'none' : alice.persistDomain(half) === 'cpu_cache' ? 'read-after-write' : 'unit-flush');
  t.same(w, {
    bytes: big.length,
    halves: ['primary', 'mirror'],
    durable: pmem,
    durability: pmem ? 'pmem' : 'volatile',
    methods: { primary: method('primary'), mirror: method('mirror') },
  });
  const small = Buffer.from('the last bytes of the region');
  await alice.writeRegion(h, small, small.length, h.end - BigInt(small.length));
  t.equal(alice.cachedBuffers, 1, 'the large buffer is registered and cached; the small one went through the staging area');

  for (const mirror of [ReadFrom.ANY, ReadFrom.PRIMARY, ReadFrom.MIRROR]) {
    const back = Buffer.alloc(big.length);
    const r = await alice.readRegion(h, back, back.length, BASE + 12_345n, { mirror });
    t.ok(back.equals(big), `read ${mirror}: the bytes written`);
    t.equal(r.half, mirror === 'any' ? 'primary' : mirror);
    t.equal(r.failedOver, false);
  }
  const tail = Buffer.alloc(small.length);
  await alice.readRegion(h, tail, tail.length, h.end - BigInt(small.length), { mirror: ReadFrom.MIRROR });
  t.equal(tail.toString(), small.toString());
  const cached = alice.cachedBuffers; // the three read buffers too
  await alice.writeRegion(h, big, big.length, BASE + 12_345n); // reuses the cached registration
  t.equal(alice.cachedBuffers, cached);
  t.equal(alice.releaseBuffer(big), true);
  t.equal(alice.cachedBuffers, cached - 1);
  t.equal(alice.releaseBuffer(big), false);
  await alice.closeRegion(h);
  t.equal(h.closed, true);
});

t.test('new regions read as zeros: no region shows a deleted region\'s bytes', async (t) => {
  // At least the 64 KiB written below: one page on 2 MiB devdax, several on 4 KiB.
  const size = Math.max(sys.pmm.volumes.get(sys.volume)!.image.volume.pageSize, 65536);
  await alice.createRegion('z1', size, 0n);
  const h1 = await alice.openRegion('z1');
  await alice.writeRegion(h1, Buffer.alloc(65536, 0xab), 65536, 0n);
  await alice.closeRegion(h1);
  const pages = sys.pmm.volumes.get(sys.volume)!.region('z1')!.primaryExtents;
  await alice.deleteRegion('z1');
  await alice.createRegion('z2', size, 0n);
  t.same(sys.pmm.volumes.get(sys.volume)!.region('z2')!.primaryExtents, pages, 'the same pages were allocated again');
  const h2 = await alice.openRegion('z2');
  const back = Buffer.alloc(65536, 1);
  await alice.readRegion(h2, back, back.length, 0n, { mirror: ReadFrom.PRIMARY });
  t.ok(back.equals(Buffer.alloc(65536)), 'zeros on the primary');
  back.fill(1);
  await alice.readRegion(h2, back, back.length, 0n, { mirror: ReadFrom.MIRROR });
  t.ok(back.equals(Buffer.alloc(65536)), 'zeros on the mirror');
  await alice.closeRegion(h2);
  await alice.deleteRegion('z2');
});

t.test('management errors: exists, no space, missing, open elsewhere, not the owner, bad handles, ranges', async (t) => {
  await t.rejects(alice.createRegion('r1', 1, 0n), { code: 'ERR_NPMU_REGION_EXISTS' });
  const st = await alice.volumeStatus();
  const free = (st.totalPages - st.usedPages) * st.pageSize;
  await t.rejects(alice.createRegion('huge', free + 1, 0n), { code: 'ERR_NPMU_NO_SPACE' }, '[0078] size up to the free space');
  await t.rejects(alice.openRegion('missing'), { code: 'ERR_NPMU_NO_SUCH_REGION' });
  await t.rejects(alice.deleteRegion('missing'), { code: 'ERR_NPMU_NO_SUCH_REGION' });
  await t.rejects(alice.readAttributes('missing'), { code: 'ERR_NPMU_NO_SUCH_REGION' });
  await t.rejects(bob.deleteRegion('r1'), { code: 'ERR_NPMU_NOT_AUTHORIZED' }, 'only the owner deletes');
  const hb = await bob.openRegion('r1');
  await t.rejects(alice.deleteRegion('r1'), { code: 'ERR_NPMU_REGION_OPEN' }, 'open by another client');
  await t.rejects(alice.closeRegion(hb), { code: 'ERR_NPMU_NOT_OWNER' }, "a handle that is not the caller's");
  await t.rejects(alice.writeRegion(hb, Buffer.alloc(8), 8, BASE), { code: 'ERR_NPMU_NOT_OWNER' });
  await bob.closeRegion(hb);
  await t.rejects(bob.closeRegion(hb), { code: 'ERR_NPMU_BAD_HANDLE' });
  await t.rejects(bob.readRegion(hb, Buffer.alloc(8), 8, BASE), { code: 'ERR_NPMU_BAD_HANDLE' });
  await t.rejects(bob.writeRegion(hb, Buffer.alloc(8), 8, BASE), { code: 'ERR_NPMU_BAD_HANDLE' });
  const h = await alice.openRegion('r1');
  await t.rejects(alice.writeRegion(h, Buffer.alloc(8), 8, BASE - 1n), { code: 'ERR_OUT_OF_RANGE', name: 'RangeError' }, 'below the base pointer');
  await t.rejects(alice.writeRegion(h, Buffer.alloc(8), 8, h.end - 7n), { code: 'ERR_OUT_OF_RANGE' }, 'past the end');
  await t.rejects(alice.readRegion(h, Buffer.alloc(8), 8, h.end), { code: 'ERR_OUT_OF_RANGE' });
  await t.rejects(alice.readRegion(h, Buffer.alloc(8), 9, BASE), { code: 'ERR_OUT_OF_RANGE' }, 'len beyond the buffer');
  await alice.closeRegion(h);

  await alice.createRegion('r2', 1000, 0n, { durable: false });
  await bob.createRegion('r3', 1000, 0n);
  const l = await bob.listRegions(2);
  t.same(l.names, ['r1', 'r2']);
  t.equal(l.count, 3, '[0095] the true count though the list was cut');
  t.same((await bob.listRegions()).names, ['r1', 'r2', 'r3']);
});

t.test('read_attributes: typed accessors, wrong types, truncation, free', async (t) => {
  const a = await bob.readAttributes('r1');
  t.equal(a.getAttrNumber('size'), 3 * MiB);
  t.equal(a.getAttrU64('basePointer'), BASE);
  t.equal(a.getAttrU64('size'), BigInt(3 * MiB), 'a number attribute widens to u64');
  t.equal(a.getAttrString('owner'), 'alice');
  t.equal(a.getAttrString('name'), 'r1');
  t.equal(a.getAttrBool('durable'), true);
  t.match(a.getAttrString('durability'), /^(pmem|volatile)$/);
  t.ok(a.getAttrDate('createdAtMs').getTime() > Date.now() - 3_600_000);
  t.ok(a.getAttrDate('lastOpenAtMs').getTime() > 0, 'last open time recorded');
  t.equal(a.getAttrString('primaryUnit'), sys.primary.unitId);
  t.throws(() => a.getAttrNumber('owner'), { code: 'ERR_NPMU_ATTR_TYPE' }, 'wrong accessor');
  t.throws(() => a.getAttrBool('size'), { code: 'ERR_NPMU_ATTR_TYPE' });
  t.throws(() => a.getAttrString('owner', 3), { code: 'ERR_NPMU_ATTR_TRUNCATED', value: 'ali', length: 5 }, '[0098] cut and flagged');
  t.throws(() => a.getAttrString('nope'), { code: 'ERR_NPMU_ATTR_UNKNOWN' });
  const r2 = await bob.readAttributes('r2');
  t.equal(r2.getAttrBool('durable'), false);
  bob.freeRegionAttrs(a);
  t.throws(() => a.getAttrNumber('size'), { code: 'ERR_NPMU_ATTR_FREED' }, '[0099] the handle is invalid after free');
  t.throws(() => bob.freeRegionAttrs({} as never), { code: 'ERR_INVALID_ARG_TYPE' });
});

t.test('two clients on one region, each with its own mapping and rkeys ([0071])', async (t) => {
  const ha = await alice.openRegion('r1');
  const hb = await bob.openRegion('r1');
  t.not(ha.primary.rkey, hb.primary.rkey, 'distinct rkeys on the primary');
  t.not(ha.mirror.rkey, hb.mirror.rkey, 'distinct rkeys on the mirror');
  t.not(ha.handleId, hb.handleId);
  const msg = Buffer.from('written by alice, read by bob');
  await alice.writeRegion(ha, msg, msg.length, BASE + 1000n);
  const back = Buffer.alloc(msg.length);
  await bob.readRegion(hb, back, back.length, BASE + 1000n);
  t.equal(back.toString(), msg.toString());
  const reply = Buffer.from('and bob answers');
  await bob.writeRegion(hb, reply, reply.length, BASE + 2000n);
  const back2 = Buffer.alloc(reply.length);
  await alice.readRegion(ha, back2, back2.length, BASE + 2000n, { mirror: ReadFrom.MIRROR });
  t.equal(back2.toString(), reply.toString());
  const a = await alice.readAttributes('r1');
  t.equal(a.typeOf('size'), 'number');
  await alice.closeRegion(ha);
  await bob.closeRegion(hb);
});

t.test('mirror modes: a PRIMARY-only write records the mirror stale first; nothing reads it until a full-copy resync; BOTH reaches both', async (t) => {
  const h = await alice.openRegion('r1');
  const carol = await sys.attach('carol');
  const hc = await carol.openRegion('r1'); // another client's handle, opened while both halves were current
  const at = BASE + 100_000n;
  const p = Buffer.from('primary only....');
  t.same((await alice.writeRegion(h, p, p.length, at, { mirror: Mirror.PRIMARY })).halves, ['primary']);
  const st = await alice.volumeStatus();
  t.equal(st.state, 'degraded', 'the write was acknowledged only once the mirror was recorded stale');
  t.equal(st.mirror.sync, 'stale');
  await t.rejects(alice.writeRegion(h, p, p.length, at, { mirror: Mirror.MIRROR }), { code: 'ERR_NPMU_HALF_STALE' });
  await t.rejects(alice.readRegion(h, Buffer.alloc(16), 16, at, { mirror: ReadFrom.MIRROR }), { code: 'ERR_NPMU_HALF_STALE' });
  const b = Buffer.alloc(16);
  t.match(await alice.readRegion(h, b, 16, at), { half: 'primary' });
  t.equal(b.toString(), p.toString());
  // The older handle's rkey on the stale half was revoked: a read of it fails, ANY fails over to the current half.
  await t.rejects(carol.readRegion(hc, Buffer.alloc(16), 16, at, { mirror: ReadFrom.MIRROR }), { code: 'ERR_NPMU_HALF_UNAVAILABLE' }, 'the stale half is not read through an old mapping');
  const bc = Buffer.alloc(16);
  t.match(await carol.readRegion(hc, bc, 16, at), { half: 'primary' });
  t.equal(bc.toString(), p.toString());
  const h2 = await alice.openRegion('r1');
  t.equal(h2.mirror.available, false, 'new opens do not map the stale half');
  t.equal(h2.mirror.stale, true);
  await alice.closeRegion(h2);
  // A full-copy resync, by the operator, with every region closed.
  const ops = await ControlConnection.connect({ host: rdmaAddress(), port: sys.pmm.port });
  await t.rejects(ops.request('volume-resync', { volume: sys.volume }), { code: 'ERR_NPMU_VOLUME_BUSY' }, 'refused while regions are open');
  await carol.closeRegion(hc);
  await carol.close();
  await alice.closeRegion(h);
  const r = await ops.request('volume-resync', { volume: sys.volume }, { timeoutMs: 600_000 });
  t.equal(r.half, 'mirror');
  t.ok(r.bytes >= 3 * MiB, `${r.regions} regions, ${r.bytes} bytes copied`);
  t.equal((await alice.volumeStatus()).state, 'ok');
  ops.close();
  const h3 = await alice.openRegion('r1');
  t.equal(h3.mirror.available, true, 'mapped again once current');
  await alice.readRegion(h3, b, 16, at, { mirror: ReadFrom.MIRROR });
  t.equal(b.toString(), p.toString(), 'the resync copied the bytes the mirror missed');
  const both = Buffer.from('both halves.....');
  await alice.writeRegion(h3, both, 16, at);
  for (const mirror of [ReadFrom.PRIMARY, ReadFrom.MIRROR]) {
    await alice.readRegion(h3, b, 16, at, { mirror });
    t.equal(b.toString(), both.toString(), mirror);
  }
  await alice.closeRegion(h3);
});

t.test('durability is reported honestly: not asked, per region, and volatile units', async (t) => {
  const h = await alice.openRegion('r1');
  t.same(await alice.writeRegion(h, Buffer.alloc(64), 64, BASE, { durable: false }), {
    bytes: 64,
    halves: ['primary', 'mirror'],
    durable: false,
    durability: 'none',
    methods: { primary: 'none', mirror: 'none' },
  });
  await alice.closeRegion(h);
  const h2 = await alice.openRegion('r2');
  t.equal(h2.durable, false, 'the region asks for non-durable writes by default');
  t.equal((await alice.writeRegion(h2, Buffer.alloc(64), 64, 0n)).durable, false);
  t.equal((await alice.writeRegion(h2, Buffer.alloc(64), 64, 0n, { durable: true })).durable, h2.primary.durability === 'pmem');
  await alice.closeRegion(h2);

  const vol = await startSystem({ devices: 'tmpfs' });
  try {
    const c = await vol.attach('carol');
    await c.createRegion('v', 10_000, 0n);
    const hv = await c.openRegion('v');
    t.equal(hv.primary.durability, 'volatile');
    const r = await c.writeRegion(hv, Buffer.from('gone at power loss'), undefined, 0n);
    t.same(r, { bytes: 18, halves: ['primary', 'mirror'], durable: false, durability: 'volatile', methods: { primary: 'none', mirror: 'none' } }, 'a tmpfs unit never claims durability');
    const a = await c.readAttributes('v');
    t.equal(a.getAttrString('durability'), 'volatile');
    await c.closeRegion(hv);
  } finally {
    await vol.close();
  }
});

for (const persistSlots of [16, 0]) {
  const how = persistSlots ? 'a persist request over RDMA' : 'persist-range over the control connection (the units offer no persist slots)';
  t.test(`msync units (files on ext4): a durable write ends with ${how} to each half`, async (t) => {
    const d = fileDir();
    const p = await unitInProcess(path.join(d, `p${persistSlots}-${process.pid}`), 32 * MiB, { persistSlots });
    const m = await unitInProcess(path.join(d, `m${persistSlots}-${process.pid}`), 32 * MiB, { persistSlots });
    const calls: string[] = [];
    for (const [name, u] of [['primary', p], ['mirror', m]] as const) {
      const s = u.server!;
      const orig = s.persistRange.bind(s);
      s.persistRange = (sessionId, mapId, offset, length) => {
        calls.push(`${name} ${offset}+${length}`);
        return orig(sessionId, mapId, offset, length);
      };
    }
    const served = (): number => p.server!.persistServed + m.server!.persistServed;
    const vol = await startSystem({ primary: p, mirror: m });
    try {
      const c = await vol.attach('carol');
      await c.createRegion('f', 100_000, 0x10000n);
      const h = await c.openRegion('f');
      t.equal(h.primary.durability, 'msync');
      const data = Buffer.from('made durable by msync on both halves');
      const r = await c.writeRegion(h, data, data.length, 0x10000n + 5000n);
      t.same(r, { bytes: data.length, halves: ['primary', 'mirror'], durable: true, durability: 'msync', methods: { primary: 'msync', mirror: 'msync' } });
      t.same(calls.sort(), [`mirror 5000+${data.length}`, `primary 5000+${data.length}`], 'persist asked of each half, at the offset in the mapping');
      t.equal(served(), persistSlots ? 2 : 0, persistSlots ? 'over RDMA' : 'not over RDMA');
      calls.length = 0;
      t.equal((await c.writeRegion(h, data, data.length, 0x10000n, { durable: false })).durability, 'none');
      t.same(calls, [], 'no persist for a non-durable write');
      // Many in flight: more than the units' persist slots; a large (registered) write; a batch.
      const many = Array.from({ length: 40 }, (_, i) => Buffer.alloc(100, i + 1));
      await Promise.all(many.map((b, i) => c.writeRegion(h, b, 100, 0x10000n + 20_000n + BigInt(i * 100))));
      const big = pattern(60_000, 5);
      await c.writeRegion(h, big, big.length, 0x10000n + 30_000n);
      await c.writeRegionBatch(h, [{ buf: data, pointer: 0x10000n + 90_000n }, { buf: data, pointer: 0x10000n + 95_000n }], { durable: true });
      t.equal(calls.length, 2 * (40 + 1 + 1), 'one persist per half per write (and per batch)');
      t.equal(served(), persistSlots ? 2 + calls.length : 0);
      const back = Buffer.alloc(4000);
      await c.readRegion(h, back, back.length, 0x10000n + 20_000n, { mirror: ReadFrom.MIRROR });
      t.ok(back.equals(Buffer.concat(many)), 'the 40 writes, read back from the mirror');
      const bigBack = Buffer.alloc(big.length);
      await c.readRegion(h, bigBack, bigBack.length, 0x10000n + 30_000n, { mirror: ReadFrom.PRIMARY });
      t.ok(bigBack.equals(big));
      const back1 = Buffer.alloc(data.length);
      await c.readRegion(h, back1, back1.length, 0x10000n + 5000n, { mirror: ReadFrom.MIRROR });
      t.equal(back1.toString(), data.toString());
      t.equal((await c.readAttributes('f')).getAttrString('durability'), 'msync');
      await c.closeRegion(h);
    } finally {
      await vol.close();
    }
  });
}

t.test('a client process killed with regions open has them closed by the PMM ([0085])', async (t) => {
  const opensBefore = sys.pmm.openCount;
  const mapsBefore = sys.primary.server!.info().mappings + sys.mirror.server!.info().mappings;
  const c = child(path.join(__dirname, 'pmm-client-child.js'), [rdmaAddress(), String(sys.pmm.port), 'carol', SECRETS.carol!, sys.volume, 'r1', 'r3']);
  await c.line(/^OPEN 2/);
  t.equal(sys.pmm.openCount, opensBefore + 2);
  t.equal(sys.primary.server!.info().mappings + sys.mirror.server!.info().mappings, mapsBefore + 4, 'mapped on both halves');
  await t.rejects(bob.deleteRegion('r3'), { code: 'ERR_NPMU_REGION_OPEN' });
  c.proc.kill('SIGKILL');
  await c.exited;
  await until(() => sys.pmm.openCount === opensBefore, 30_000, 'the PMM to close the dead client\'s opens');
  await until(() => sys.primary.server!.info().mappings + sys.mirror.server!.info().mappings === mapsBefore, 30_000, 'the units to drop the mappings');
  await bob.deleteRegion('r3');
  t.pass('the region can be deleted once its opener died');
});

t.test('a large region: zeroed to its last page on both halves (outside the volume lock: see test/unit/pmm-server)', async (t) => {
  const big = 128 * MiB;
  const creating = alice.createRegion('big', big, 0n);
  const h = await alice.openRegion('r1');
  await alice.closeRegion(h);
  await t.rejects(bob.createRegion('big', 4096, 0n), { code: 'ERR_NPMU_REGION_EXISTS' }, 'its name is taken while it is zeroed, and after');
  await creating;
  const hb = await alice.openRegion('big');
  const b = Buffer.alloc(4096, 1);
  await alice.readRegion(hb, b, 4096, BigInt(big - 4096), { mirror: ReadFrom.MIRROR });
  t.ok(b.every((x) => x === 0), 'zeroed to its last page on the mirror');
  await alice.closeRegion(hb);
  await alice.deleteRegion('big');
});

t.test('two PMMs on the same real units: the second fences the first, which stops serving; no page is handed out twice', async (t) => {
  const s1 = await startSystem({ devices: 'tmpfs' });
  try {
    const c1 = await s1.attach('alice');
    await c1.createRegion('one', 3 * 4096, 0n);
    const pmm2 = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units: [s1.primary.address, s1.mirror.address], reconnectMs: 300 });
    try {
      const v2 = pmm2.volumes.get(s1.volume)!;
      t.ok(v2, 'the second PMM took the volume');
      await until(() => !s1.pmm.volumes.has(s1.volume), 30_000, 'the first PMM to stop serving');
      await t.rejects(c1.createRegion('two', 4096, 0n), { code: /ERR_NPMU_(DISCONNECTED|FENCED)/ }, "the first PMM's clients are cut off from management");
      const c2 = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm2.port }, client: 'bob', secret: SECRETS.bob!, volume: s1.volume });
      await c2.createRegion('two', 3 * 4096, 0n);
      const meta = v2.image.toMeta();
      t.same(meta.regions.map((r) => r.name), ['one', 'two']);
      for (const half of ['primaryExtents', 'mirrorExtents'] as const) {
        const pages = meta.regions.flatMap((r) => r[half].flatMap((e) => Array.from({ length: e.pages }, (_, i) => e.page + i)));
        t.equal(new Set(pages).size, pages.length, `${half}: no page owned twice`);
      }
      const h = await c2.openRegion('two');
      const msg = Buffer.from('through the second PMM');
      await c2.writeRegion(h, msg, msg.length, 0n);
      const back = Buffer.alloc(msg.length);
      await c2.readRegion(h, back, back.length, 0n, { mirror: ReadFrom.MIRROR });
      t.equal(back.toString(), msg.toString());
      await c2.closeRegion(h);
      await c2.close();
      await c1.close();
    } finally {
      await pmm2.close();
    }
  } finally {
    await s1.close();
  }
});

t.test('the fork of the issue on real units: a delete acknowledged on the primary alone, a restart on the mirror alone, the primary returns', async (t) => {
  const dev = { p: shmPath(), m: shmPath() };
  const ports: Record<'p' | 'm', { controlPort: number; rdmaPort: number } | null> = { p: null, m: null };
  const start = async (which: 'p' | 'm', format: boolean) => {
    const args = ['--device', dev[which], '--key-file', keyFile, '--quiet'];
    if (format) args.push('--create-size', '32M', '--format', '--force');
    const at = ports[which];
    if (at) args.push('--control-port', String(at.controlPort), '--rdma-port', String(at.rdmaPort));
    const proc = await startUnitProcess(args);
    ports[which] = { controlPort: proc.ready.controlPort, rdmaPort: proc.ready.rdmaPort };
    return { address: { host: proc.ready.host, controlPort: proc.ready.controlPort, rdmaPort: proc.ready.rdmaPort }, kill: async () => (proc.child.kill('SIGKILL'), await proc.exited) };
  };
  let p = await start('p', true);
  let m = await start('m', true);
  const units = [p.address, m.address];
  let pmm = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units, reconnectMs: 300 });
  const ops = await ControlConnection.connect({ host: rdmaAddress(), port: pmm.port });
  await ops.request('create-volume', { volume: 'fork', primary: p.address, mirror: m.address, force: true }, { timeoutMs: 60_000 });
  ops.close();
  let c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: 'fork' });
  await c.createRegion('a', 4096, 0n);
  await c.createRegion('b', 4096, 0n);
  let h = await c.openRegion('b');
  await c.writeRegion(h, Buffer.from('before'), 6, 0n);
  await m.kill();
  await until(() => pmm.volumes.get('fork')?.syncOf('mirror') === 'stale', 30_000, 'the mirror to be recorded stale');
  await c.deleteRegion('a'); // acknowledged on the primary alone
  await c.writeRegion(h, Buffer.from('after!'), 6, 0n, { mirror: Mirror.PRIMARY }); // acknowledged on the primary alone
  await c.close();
  await pmm.close();
  await p.kill();
  m = await start('m', false); // the mirror comes back alone
  pmm = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units, reconnectMs: 300 });
  try {
    const st = await ControlConnection.connect({ host: rdmaAddress(), port: pmm.port });
    const s1 = await st.request('volume-status', { volume: 'fork' });
    t.equal(s1.state, 'waiting', 'the stale branch alone is never served');
    await t.rejects(NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: 'fork' }), {
      code: 'ERR_NPMU_VOLUME_UNAVAILABLE',
    });
    p = await start('p', false); // the primary returns (same ports: the PMM finds it)
    await until(() => pmm.volumes.has('fork'), 60_000, 'the volume to be served');
    const v = pmm.volumes.get('fork')!;
    t.equal(v.state, 'degraded');
    t.equal(v.syncOf('mirror'), 'stale');
    c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: 'fork' });
    t.same((await c.listRegions()).names, ['b'], 'the acknowledged delete holds');
    h = await c.openRegion('b');
    const back = Buffer.alloc(6);
    t.match(await c.readRegion(h, back, 6, 0n), { half: 'primary' });
    t.equal(back.toString(), 'after!', 'the acknowledged single-half write holds; the stale mirror is not read');
    await t.rejects(c.readRegion(h, back, 6, 0n, { mirror: ReadFrom.MIRROR }), { code: 'ERR_NPMU_HALF_STALE' });
    await c.closeRegion(h);
    t.match(await st.request('volume-resync', { volume: 'fork' }, { timeoutMs: 300_000 }), { half: 'mirror', regions: 1 });
    await c.close(); // it never connected to the mirror (stale at attach): a client attaches again to use it
    c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: 'fork' });
    h = await c.openRegion('b');
    await c.readRegion(h, back, 6, 0n, { mirror: ReadFrom.MIRROR });
    t.equal(back.toString(), 'after!', 'after the resync the mirror holds what it missed');
    await c.closeRegion(h);
    await c.close();
    st.close();
  } finally {
    await pmm.close();
    await p.kill();
    await m.kill();
    for (const d of Object.values(dev)) fs.rmSync(d, { force: true });
  }
});

t.test('10,000 regions on real units: recovered by a PMM, listed, opened, written, created and deleted against a model, recovered again', async (t) => {
  // Two tmpfs units of 160 MiB (the 8 MiB default metadata area). The 10,000 regions are laid down by
  // pmm/metadata.ts (the code a PMM runs) and written to both units: creating them one by one through a
  // PMM would take hours under TCG (bench:meta times single creates at this size).
  const N = 10_000;
  const p = await unitInProcess(shmPath(), 160 * MiB);
  const m = await unitInProcess(shmPath(), 160 * MiB);
  const units = [p.address, m.address];
  let pmm = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units });
  const ops = await ControlConnection.connect({ host: rdmaAddress(), port: pmm.port });
  await ops.request('create-volume', { volume: 'ten', primary: p.address, mirror: m.address, force: true }, { timeoutMs: 60_000 });
  ops.close();
  const v0 = pmm.volumes.get('ten')!;
  const { volume, epoch } = { volume: v0.image.volume, epoch: v0.epoch };
  await pmm.close();
  let seed = 99;
  const rnd = (k: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed % k);
  const model = new Map<string, number>(); // name -> size, in creation order
  const image = MetaImage.create(volume, Math.min(p.server!.device.metaLength, m.server!.device.metaLength));
  let page = 0;
  for (let i = 0; i < N; i++) {
    const name = `r${String(i).padStart(5, '0')}-${'n'.repeat(rnd(40))}`;
    const size = 1 + rnd(8192);
    const pages = Math.ceil(size / 4096);
    image.apply(
      image.plan(
        {
          add: {
            id: image.volume.nextRegionId, name, size, basePointer: BigInt(i) << 20n, owner: 'alice', createdAtMs: Date.now(), lastOpenAtMs: 0, durable: true,
            primaryExtents: [{ page, pages }], mirrorExtents: [{ page, pages }],
          },
        },
        { epoch, writer: '0'.repeat(31) + '2' },
      ),
    );
    page += pages;
    model.set(name, size);
  }
  const img = image.fullImage({ epoch, writer: '0'.repeat(31) + '2' }, { peerStale: false, staleSince: 0 });
  for (const u of [p, m]) for (const w of [...img.pageWrites, { offset: img.rootOffset, bytes: img.rootBytes }]) u.server!.device.writeMeta(w.offset, w.bytes, true);
  try {
    pmm = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units });
    const c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: 'ten' });
    const l = await c.listRegions(4096);
    t.equal(l.count, N, 'a PMM recovered all 10,000 regions from the units');
    t.same(l.names, [...model.keys()].slice(0, 4096), 'listed in creation order');
    const names = [...model.keys()];
    for (let k = 0; k < 12; k++) {
      const name = names[rnd(names.length)]!;
      const h = await c.openRegion(name);
      t.equal(h.size, model.get(name));
      const msg = Buffer.from(`region ${name.slice(0, 6)}`);
      await c.writeRegion(h, msg, msg.length, h.basePointer + BigInt(h.size - msg.length));
      const back = Buffer.alloc(msg.length);
      await c.readRegion(h, back, back.length, h.basePointer + BigInt(h.size - msg.length), { mirror: ReadFrom.MIRROR });
      t.equal(back.toString(), msg.toString());
      await c.closeRegion(h);
    }
    for (let k = 0; k < 25; k++) {
      const name = `new-${k}`;
      const size = 1 + rnd(20_000);
      await c.createRegion(name, size, 0n);
      model.set(name, size);
    }
    for (let k = 0; k < 25; k++) {
      const all = [...model.keys()];
      const name = all[rnd(all.length)]!;
      await c.deleteRegion(name);
      model.delete(name);
    }
    await t.rejects(c.createRegion([...model.keys()][0]!, 1, 0n), { code: 'ERR_NPMU_REGION_EXISTS' }, 'names stay unique among 10,000');
    t.equal((await c.listRegions(0)).count, model.size);
    await c.close();
    await pmm.close();
    pmm = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units });
    const v = pmm.volumes.get('ten')!;
    t.equal(v.state, 'ok');
    const got = new Map(v.image.toMeta().regions.map((r) => [r.name, r.size]));
    t.equal(got.size, model.size, `a fresh PMM recovered ${model.size} regions`);
    t.same([...got].sort(), [...model].sort(), 'every name and size as the model says');
  } finally {
    await pmm.close();
    await p.kill();
    await m.kill();
  }
});

t.test('the PMM killed with SIGKILL: I/O goes on without it; a new PMM recovers every region', async (t) => {
  // Hand the units to a PMM daemon.
  await alice.close();
  await bob.close();
  await sys.pmm.close();
  const units = [sys.primary.address, sys.mirror.address];
  const pmm1 = await pmmProcess(units);
  const c1 = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm1.port }, client: 'alice', secret: SECRETS.alice!, volume: sys.volume });
  const before = await c1.listRegions();
  t.same(before.names, ['r1', 'r2'], 'the daemon recovered the volume');
  await c1.createRegion('r4', 5000, BASE);
  const h = await c1.openRegion('r4');
  await pmm1.kill();
  await until(async () => {
    try {
      await c1.listRegions();
      return false;
    } catch (e) {
      return (e as { code?: string }).code === 'ERR_NPMU_DISCONNECTED';
    }
  }, 30_000, 'management calls to fail');
  // [0045] the PMM is not on the data path
  const msg = Buffer.from('written while the PMM was dead');
  const w = await c1.writeRegion(h, msg, msg.length, BASE + 10n);
  t.equal(w.halves.length, 2, 'a mirrored write with no PMM running');

  const pmm2 = await pmmProcess(units);
  const c2 = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm2.port }, client: 'alice', secret: SECRETS.alice!, volume: sys.volume });
  t.same((await c2.listRegions()).names, ['r1', 'r2', 'r4'], 'every region recovered from the units alone');
  const a = await c2.readAttributes('r4');
  t.equal(a.getAttrU64('basePointer'), BASE);
  const h2 = await c2.openRegion('r4');
  const back = Buffer.alloc(msg.length);
  await c2.readRegion(h2, back, back.length, BASE + 10n, { mirror: ReadFrom.MIRROR });
  t.equal(back.toString(), msg.toString());
  await c2.closeRegion(h2);
  await t.rejects(c2.deleteRegion('r4'), { code: 'ERR_NPMU_REGION_OPEN' }, "still mapped by the earlier PMM's client");
  await c1.close(); // its connections go: the units drop its mappings
  await until(async () => {
    try {
      await c2.deleteRegion('r4');
      return true;
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_NPMU_REGION_OPEN') throw e;
      return false;
    }
  }, 30_000, 'the delete to be allowed');
  t.same((await c2.listRegions()).names, ['r1', 'r2']);
  await c2.close();
  await pmm2.stop();
  await sys.primary.kill();
  await sys.mirror.kill();
});
