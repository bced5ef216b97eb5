/**
 * The PMM's management logic, natively: volumes, sessions, every management
 * verb and error, implicit close, degraded mode, restart recovery and crash
 * points, against protocol-level fake units (test/unit/pmm-fake-unit.ts).
 * The data path (RDMA) is tested on rxe in test/rdma/pmm*.test.ts.
 */
import t from 'tap';
import * as net from 'node:net';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { ControlConnection, encodeFrame } from '../../lib/protocol';
import { verifyTicket } from '../../lib/ticket';
import { ClientRegistry, clientLine, parseClients } from '../../pmm/credentials';
import { PmmServer } from '../../pmm/server';
import { mapIdFor, regionOfMapId } from '../../pmm/volume';
import { MetaImage, ROOT_SLOT_SIZE, newestRoot, rootSlotOffset, tablePageOffset } from '../../pmm/metadata';
import type { SyncState, VolumeMeta } from '../../pmm/metadata';
import { FakeUnit } from './pmm-fake-unit';

const KEY = randomBytes(32);
const clients = new ClientRegistry({
  entries: parseClients(
    [clientLine('alice', 'alice-secret', { logN: 4 }), clientLine('bob', 'bob-secret', { logN: 4 }), clientLine('ops', 'ops-secret', { logN: 4, roles: ['admin'] })].join(
      '\n',
    ),
  ),
});
const SECRETS: Record<string, string> = { alice: 'alice-secret', bob: 'bob-secret', ops: 'ops-secret' };

async function units(o: { dataPages?: number; durability?: 'pmem' | 'msync' | 'volatile' } = {}): Promise<[FakeUnit, FakeUnit]> {
  const a = await new FakeUnit({ key: KEY, rdmaPort: 7471, ...o }).start();
  const b = await new FakeUnit({ key: KEY, rdmaPort: 7472, ...o }).start();
  return [a, b];
}

async function pmmFor(p: FakeUnit, m: FakeUnit, extra: Partial<Parameters<typeof PmmServer.start>[0]> = {}): Promise<PmmServer> {
  return PmmServer.start({ key: KEY, clients, host: '127.0.0.1', port: 0, units: [p.address, m.address], zeroNewRegions: false, reconnectMs: 100, touchFlushMs: 50, ...extra });
}

async function connect(pmm: PmmServer): Promise<ControlConnection> {
  return ControlConnection.connect({ host: '127.0.0.1', port: pmm.port });
}

async function attach(pmm: PmmServer, name: string, volume = 'vol'): Promise<ControlConnection> {
  const c = await connect(pmm);
  await c.request('attach', { client: name, credential: Buffer.from(SECRETS[name]!), volume });
  return c;
}

async function system(o: Parameters<typeof units>[0] = {}): Promise<{ p: FakeUnit; m: FakeUnit; pmm: PmmServer; close: () => Promise<void> }> {
  const [p, m] = await units(o);
  const pmm = await pmmFor(p, m);
  const c = await connect(pmm);
  await c.request('create-volume', { volume: 'vol', primary: p.address, mirror: m.address });
  c.close();
  return {
    p,
    m,
    pmm,
    close: async () => {
      await pmm.close();
      await p.kill();
      await m.kill();
    },
  };
}

/** The newest metadata on a fake unit's own metadata area (its root and the table pages it names). */
function imageOf(u: FakeUnit): { meta: VolumeMeta; generation: number; sync: SyncState } {
  const slot = (i: 0 | 1) => u.meta.subarray(rootSlotOffset(i), rootSlotOffset(i) + ROOT_SLOT_SIZE);
  const root = newestRoot(slot(0), slot(1)).root;
  if (!root) throw new Error('no root on this unit');
  const pages = new Map<number, Uint8Array>();
  for (const ref of root.pages) pages.set(ref.index, u.meta.subarray(tablePageOffset(ref.index), tablePageOffset(ref.index) + ref.length));
  const img = MetaImage.load(root, pages, u.meta.length);
  return { meta: img.toMeta(), generation: img.generation, sync: root.sync };
}
/** The table and generation (what both halves must agree on; their sync states differ by design). */
function metaOf(u: FakeUnit): { meta: VolumeMeta; generation: number } {
  const { meta, generation } = imageOf(u);
  return { meta, generation };
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
};

t.test('create-volume binds both units to one volume and commits generation 1 on both', async (t) => {
  const s = await system();
  t.equal(s.p.role, 'primary');
  t.equal(s.m.role, 'mirror');
  t.equal(s.p.volumeId, s.m.volumeId);
  const a = metaOf(s.p);
  const b = metaOf(s.m);
  t.equal(a.generation, 1);
  t.same(a, b, 'identical metadata on both halves');
  t.equal(a.meta.name, 'vol');
  t.same([a.meta.primaryUnit, a.meta.mirrorUnit], [s.p.unitId, s.m.unitId]);
  const c = await connect(s.pmm);
  const st = await c.request('volume-status', { volume: 'vol' });
  t.equal(st.state, 'ok');
  t.equal(st.totalPages, 1024);
  t.equal(st.primary.unitId, s.p.unitId);
  await t.rejects(c.request('create-volume', { volume: 'vol', primary: s.p.address, mirror: s.m.address }), { code: 'ERR_NPMU_VOLUME_EXISTS' });
  c.close();
  await s.close();
});

t.test('create-volume refuses units that are bound, or not asked from the PMM host by an admin', async (t) => {
  const [p, m] = await units();
  const [q, r] = await units();
  const pmm = await pmmFor(p, m);
  const c = await connect(pmm);
  await c.request('create-volume', { volume: 'one', primary: p.address, mirror: m.address });
  await t.rejects(c.request('create-volume', { volume: 'two', primary: p.address, mirror: q.address }), { code: 'ERR_NPMU_UNIT_BOUND' }, 'a unit of a served volume');
  await t.rejects(c.request('create-volume', { volume: 'two', primary: q.address, mirror: q.address }), { code: 'ERR_NPMU_UNIT_MISMATCH' }, 'same unit twice');
  // a non-admin attached client may not create volumes
  const alice = await attach(pmm, 'alice', 'one');
  await t.rejects(alice.request('create-volume', { volume: 'two', primary: q.address, mirror: r.address }), { code: 'ERR_NPMU_NOT_AUTHORIZED' });
  const ops = await attach(pmm, 'ops', 'one');
  const made = await ops.request('create-volume', { volume: 'two', primary: q.address, mirror: r.address });
  t.match(made.volumeId, /^[0-9a-f]{32}$/);
  t.same([...pmm.volumes.keys()].sort(), ['one', 'two']);
  for (const x of [c, alice, ops]) x.close();
  await pmm.close();
  for (const u of [p, m, q, r]) await u.kill();
});

t.test('attach: credentials, volume, one session per connection, tickets for both units', async (t) => {
  const s = await system();
  const c = await connect(s.pmm);
  await t.rejects(c.request('attach', { client: 'alice', credential: Buffer.from('wrong'), volume: 'vol' }), { code: 'ERR_NPMU_NOT_AUTHORIZED' });
  await t.rejects(c.request('attach', { client: 'mallory', credential: Buffer.from('x'), volume: 'vol' }), { code: 'ERR_NPMU_NOT_AUTHORIZED' });
  await t.rejects(c.request('attach', { client: 'alice', credential: Buffer.from('alice-secret'), volume: 'nope' }), { code: 'ERR_NPMU_NO_SUCH_VOLUME' });
  await t.rejects(c.request('list-regions', { volume: 'vol', max: 10 }), { code: 'ERR_NPMU_NOT_ATTACHED' });
  const r = await c.request('attach', { client: 'alice', credential: Buffer.from('alice-secret'), volume: 'vol' });
  await t.rejects(c.request('attach', { client: 'alice', credential: Buffer.from('alice-secret'), volume: 'vol' }), { code: 'ERR_NPMU_ALREADY_ATTACHED' });
  t.equal(r.pmmId, s.pmm.pmmId);
  t.equal(r.units.primary.unitId, s.p.unitId);
  t.equal(r.units.mirror.rdmaPort, 7472, 'the RDMA port the unit reported in hello');
  t.equal(r.units.primary.available, true);
  const claims = verifyTicket(Buffer.from(r.tickets.primary, 'base64'), { key: KEY, unitId: s.p.unitId, kind: 'client' });
  t.equal(claims.sessionId.toString(), r.sessionId);
  t.throws(() => verifyTicket(Buffer.from(r.tickets.primary, 'base64'), { key: KEY, unitId: s.m.unitId }), { code: 'ERR_NPMU_TICKET_WRONG_UNIT' });
  await t.rejects(c.request('list-regions', { volume: 'other', max: 10 }), { code: 'ERR_NPMU_WRONG_VOLUME' });
  c.close();
  await s.close();
});

t.test('create / list / attributes: unique names, space, pointers, the true count', async (t) => {
  const s = await system({ dataPages: 100 });
  const c = await attach(s.pmm, 'alice');
  await c.request('create-region', { volume: 'vol', name: 'a', size: 10_000, basePointer: 0x7f0000000000n });
  await t.rejects(c.request('create-region', { volume: 'vol', name: 'a', size: 1, basePointer: 0n }), { code: 'ERR_NPMU_REGION_EXISTS' });
  await t.rejects(c.request('create-region', { volume: 'vol', name: 'big', size: 98 * 4096, basePointer: 0n }), { code: 'ERR_NPMU_NO_SPACE' }, '97 pages free');
  await c.request('create-region', { volume: 'vol', name: 'rest', size: 97 * 4096, basePointer: 0n, durable: false });
  await t.rejects(c.request('create-region', { volume: 'vol', name: 'one', size: 1, basePointer: 0n }), { code: 'ERR_NPMU_NO_SPACE' }, 'full');
  await c.request('delete-region', { volume: 'vol', name: 'rest' });
  await t.rejects(
    c.request('create-region', { volume: 'vol', name: 'wrap', size: 4096, basePointer: (1n << 64n) - 100n }),
    { code: 'ERR_OUT_OF_RANGE' },
    'base + size past 2^64',
  );
  await t.rejects(c.request('create-region', { volume: 'vol', name: 'zero', size: 0, basePointer: 0n }), { code: 'ERR_NPMU_PROTO_INVALID' });
  for (const n of ['b', 'c', 'd']) await c.request('create-region', { volume: 'vol', name: n, size: 4096, basePointer: 0n });
  const l = await c.request('list-regions', { volume: 'vol', max: 2 });
  t.same(l.names, ['a', 'b']);
  t.equal(l.count, 4, '[0095] the count, though the list was cut');
  t.same((await c.request('list-regions', { volume: 'vol', max: 0 })).names, []);
  const { attrs } = await c.request('read-attributes', { volume: 'vol', name: 'a' });
  t.match(attrs, { name: 'a', size: 10_000, basePointer: String(0x7f0000000000n), owner: 'alice', lastOpenAtMs: 0, durable: true, durability: 'pmem', pages: 3, openCount: 0 });
  t.ok(attrs.createdAtMs > Date.now() - 60_000);
  await t.rejects(c.request('read-attributes', { volume: 'vol', name: 'zz' }), { code: 'ERR_NPMU_NO_SUCH_REGION' });
  t.same(metaOf(s.p), metaOf(s.m), 'both halves hold the same generation');
  t.equal(s.p.usedPages, 6, 'set-usage tells the unit');
  c.close();
  await s.close();
});

t.test('open maps both halves at the base pointer; close unmaps; handles belong to their session', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  const bob = await attach(s.pmm, 'bob');
  await alice.request('create-region', { volume: 'vol', name: 'r', size: 3 * 4096, basePointer: 0x10000000n });
  await alice.request('create-region', { volume: 'vol', name: 'odd', size: 100, basePointer: 0x10000123n });
  const h = await alice.request('open-region', { volume: 'vol', name: 'r' });
  t.equal(h.size, 3 * 4096);
  t.equal(h.basePointer, String(0x10000000));
  t.equal(h.primary.iova, String(0x10000000), '[0074] base NVA = base pointer');
  t.equal(h.mirror.iova, String(0x10000000));
  t.equal(h.primary.available, true);
  t.equal(h.pmmId, s.pmm.pmmId);
  t.equal(s.p.mappingCount(), 1);
  t.equal(s.m.mappingCount(), 1);
  const gen = metaOf(s.p).generation;
  const region = metaOf(s.p).meta.regions.find((r) => r.name === 'r')!;
  t.equal(regionOfMapId(h.primary.mapId), region.id, 'the mapId names the region');
  t.equal(region.lastOpenAtMs, 0, 'an open writes no metadata on its path');
  t.ok((await alice.request('read-attributes', { volume: 'vol', name: 'r' })).attrs.lastOpenAtMs > 0, 'the last open time is an attribute at once');
  await until(() => metaOf(s.p).meta.regions.find((r) => r.name === 'r')!.lastOpenAtMs > 0);
  t.equal(metaOf(s.p).generation, gen + 1, 'written back to the units in one later update');
  t.same(metaOf(s.m), metaOf(s.p));
  const odd = await bob.request('open-region', { volume: 'vol', name: 'odd' });
  t.equal(odd.primary.iova, String(0x10000000), 'an unaligned base pointer maps from its 4 KiB page');
  await t.rejects(bob.request('close-region', { handleId: h.handleId }), { code: 'ERR_NPMU_NOT_OWNER' });
  await t.rejects(bob.request('close-region', { handleId: 999999 }), { code: 'ERR_NPMU_BAD_HANDLE' });
  await t.rejects(alice.request('open-region', { volume: 'vol', name: 'nope' }), { code: 'ERR_NPMU_NO_SUCH_REGION' });
  const { attrs } = await bob.request('read-attributes', { volume: 'vol', name: 'r' });
  t.equal(attrs.openCount, 1);
  await alice.request('close-region', { handleId: h.handleId });
  await t.rejects(alice.request('close-region', { handleId: h.handleId }), { code: 'ERR_NPMU_BAD_HANDLE' }, 'twice');
  t.equal(s.p.mappingCount(), 1, "only bob's open is left");
  await bob.request('close-region', { handleId: odd.handleId });
  t.equal(s.p.mappingCount() + s.m.mappingCount(), 0);
  alice.close();
  bob.close();
  await s.close();
});

t.test('delete: missing, not the owner, open by another client; the owner\'s own opens are closed', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  const bob = await attach(s.pmm, 'bob');
  await alice.request('create-region', { volume: 'vol', name: 'r', size: 4096, basePointer: 0n });
  await t.rejects(alice.request('delete-region', { volume: 'vol', name: 'zz' }), { code: 'ERR_NPMU_NO_SUCH_REGION' });
  await t.rejects(bob.request('delete-region', { volume: 'vol', name: 'r' }), { code: 'ERR_NPMU_NOT_AUTHORIZED' });
  const hb = await bob.request('open-region', { volume: 'vol', name: 'r' });
  await t.rejects(alice.request('delete-region', { volume: 'vol', name: 'r' }), { code: 'ERR_NPMU_REGION_OPEN' });
  await bob.request('close-region', { handleId: hb.handleId });
  const ha = await alice.request('open-region', { volume: 'vol', name: 'r' });
  await alice.request('delete-region', { volume: 'vol', name: 'r' });
  t.equal(s.p.mappingCount() + s.m.mappingCount(), 0, 'own open closed by the delete');
  await t.rejects(alice.request('close-region', { handleId: ha.handleId }), { code: 'ERR_NPMU_BAD_HANDLE' });
  t.equal(metaOf(s.m).meta.regions.length, 0);
  // the same client name in another session is the owner too
  await alice.request('create-region', { volume: 'vol', name: 'r2', size: 4096, basePointer: 0n });
  const alice2 = await attach(s.pmm, 'alice');
  await alice2.request('delete-region', { volume: 'vol', name: 'r2' });
  for (const c of [alice, alice2, bob]) c.close();
  await s.close();
});

t.test('a client whose connection drops has its opens closed and unmapped ([0085])', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'r', size: 4096, basePointer: 0n });
  const bob = await attach(s.pmm, 'bob');
  await bob.request('open-region', { volume: 'vol', name: 'r' });
  await bob.request('open-region', { volume: 'vol', name: 'r' });
  t.equal(s.pmm.openCount, 2);
  t.equal(s.p.mappingCount(), 2);
  bob.destroy();
  await until(() => s.pmm.openCount === 0 && s.p.mappingCount() === 0 && s.m.mappingCount() === 0);
  t.equal(s.pmm.sessionCount, 1);
  await alice.request('delete-region', { volume: 'vol', name: 'r' });
  alice.close();
  await s.close();
});

t.test('a PMM started again recovers every region from the units alone', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  for (let i = 0; i < 5; i++) await alice.request('create-region', { volume: 'vol', name: `r${i}`, size: 5000 * (i + 1), basePointer: BigInt(i) << 32n });
  await alice.request('delete-region', { volume: 'vol', name: 'r2' });
  const open = await alice.request('open-region', { volume: 'vol', name: 'r4' }); // left mapped: a live client
  const before = s.pmm.volumes.get('vol')!.image.toMeta();
  alice.destroy();
  await s.pmm.close();
  // the client's mapping of r4 survives on the units as if its RDMA connection were still up
  const sess = open.primary.mapId;
  s.p.maps.set('424242', new Map([[sess, { extents: [], iova: '0', rkey: 1 }]]));
  // and a mapping of a region that does not exist (an earlier branch's): removed at recovery
  s.p.maps.set('555', new Map([[String(mapIdFor(9999, 1)), { extents: [], iova: '0', rkey: 2 }]]));

  const pmm2 = await pmmFor(s.p, s.m);
  const v = pmm2.volumes.get('vol')!;
  t.ok(v, 'volume recovered');
  t.same(v.image.toMeta(), before, 'identical region table');
  t.notOk(s.p.maps.get('555')?.size, 'the mapping of an unknown region was removed');
  t.equal(v.usedPages, before.regions.reduce((a, r) => a + Math.ceil(r.size / 4096), 0));
  const c = await attach(pmm2, 'alice');
  t.same((await c.request('list-regions', { volume: 'vol', max: 100 })).names, ['r0', 'r1', 'r3', 'r4']);
  await t.rejects(c.request('delete-region', { volume: 'vol', name: 'r4' }), { code: 'ERR_NPMU_REGION_OPEN' }, "an earlier PMM's client still maps it");
  s.p.maps.clear(); // those clients' connections dropped: the units forget their mappings
  s.m.maps.clear();
  await c.request('delete-region', { volume: 'vol', name: 'r4' });
  c.close();
  await pmm2.close();
  await s.p.kill();
  await s.m.kill();
});

t.test('degraded: a half that dies is recorded stale on the survivor, never served again until resynced', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'a', size: 4096, basePointer: 0n });
  const g0 = metaOf(s.p).generation;
  await s.m.kill();
  await until(() => s.pmm.volumes.get('vol')!.state === 'degraded' && imageOf(s.p).sync.peerStale);
  t.same(imageOf(s.p).sync, { peerStale: true, staleSince: g0 + 1 }, 'the primary records the mirror stale at once');
  const st = await alice.request('volume-status', { volume: 'vol' });
  t.equal(st.state, 'degraded');
  t.equal(st.mirror.available, false);
  t.equal(st.mirror.sync, 'stale');
  t.match(st.reason, /mirror missed updates/);
  await alice.request('create-region', { volume: 'vol', name: 'b', size: 4096, basePointer: 0n });
  const h = await alice.request('open-region', { volume: 'vol', name: 'a' });
  t.equal(h.primary.available, true);
  t.equal(h.mirror.available, false, 'the handle says the mirror is unavailable');
  t.equal(h.mirror.stale, true, '... and stale');
  await alice.request('close-region', { handleId: h.handleId });
  await alice.request('delete-region', { volume: 'vol', name: 'a' });
  const mirrorGen = metaOf(s.m).generation;
  t.ok(metaOf(s.p).generation > mirrorGen, 'the mirror lags');
  // The mirror comes back with a mapping a client made before: revoked before anything else, and not served.
  s.m.maps.set('77', new Map([['5', { extents: [], iova: '0', rkey: 1 }]]));
  await s.m.start(); // same port
  await until(() => s.pmm.volumes.get('vol')!.isUp('mirror'));
  t.equal(s.m.mappingCount(), 0, "the returning stale half's old mappings are dead");
  t.equal(s.pmm.volumes.get('vol')!.state, 'degraded', 'a stale half is not served when it returns');
  t.equal(metaOf(s.m).generation, mirrorGen, 'nothing written to it either');
  const h2 = await alice.request('open-region', { volume: 'vol', name: 'b' });
  t.equal(h2.mirror.available, false, 'opens do not map the stale half');
  // Resync needs every region closed.
  const ops = await connect(s.pmm);
  await t.rejects(ops.request('volume-resync', { volume: 'vol' }), { code: 'ERR_NPMU_VOLUME_BUSY' });
  await alice.request('close-region', { handleId: h2.handleId });
  await t.rejects(alice.request('volume-resync', { volume: 'vol' }), { code: 'ERR_NPMU_NOT_AUTHORIZED' }, 'operators only');
  await alice.request('delete-region', { volume: 'vol', name: 'b' }); // (a region's bytes are copied by RDMA: tested on rxe)
  const r = await ops.request('volume-resync', { volume: 'vol' });
  t.match(r, { half: 'mirror', regions: 0, bytes: 0 });
  t.equal(s.pmm.volumes.get('vol')!.state, 'ok');
  t.same(metaOf(s.m), metaOf(s.p), 'the resynced half holds the current metadata');
  t.same(imageOf(s.p).sync, { peerStale: false, staleSince: 0 });
  t.same(imageOf(s.m).sync, { peerStale: false, staleSince: 0 });
  await t.rejects(ops.request('volume-resync', { volume: 'vol' }), { code: 'ERR_NPMU_NOT_STALE' });
  ops.close();
  alice.close();
  await s.close();
});

t.test('a PMM started on the only half that does not know the other went on: waits; the other returns: served', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'a', size: 4096, basePointer: 0n });
  alice.close();
  await s.pmm.close(); // the PMM goes first: nobody recorded anything
  await s.p.kill();
  const pmm2 = await pmmFor(s.p, s.m);
  t.notOk(pmm2.volumes.get('vol'), 'not served from the mirror on a guess');
  const c = await connect(pmm2);
  const st = await c.request('volume-status', { volume: 'vol' });
  t.equal(st.state, 'waiting');
  t.match(st.reason, /may have gone on without it/);
  await t.rejects(
    c.request('attach', { client: 'alice', credential: Buffer.from('alice-secret'), volume: 'vol' }),
    { code: 'ERR_NPMU_VOLUME_UNAVAILABLE' },
  );
  await s.p.start();
  await until(() => pmm2.volumes.get('vol')?.state === 'ok');
  t.same(pmm2.volumes.get('vol')!.image.toMeta().regions.map((r) => r.name), ['a']);
  c.close();
  await pmm2.close();
  await s.p.kill();
  await s.m.kill();
});

t.test('a PMM started on the survivor of record serves it degraded; an operator can force a waiting volume', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'a', size: 4096, basePointer: 0n });
  await s.p.kill();
  await until(() => imageOf(s.m).sync.peerStale);
  alice.close();
  await s.pmm.close();
  const pmm2 = await pmmFor(s.p, s.m);
  const v = pmm2.volumes.get('vol')!;
  t.equal(v.state, 'degraded');
  t.equal(v.syncOf('primary'), 'stale');
  t.same(v.image.toMeta().regions.map((r) => r.name), ['a'], 'recovered from the mirror');
  await pmm2.close();
  await s.m.kill();

  // Only the primary now, which knows nothing of the mirror's history: wait, until forced.
  await s.p.start();
  const pmm3 = await pmmFor(s.p, s.m);
  const c = await connect(pmm3);
  t.equal((await c.request('volume-status', { volume: 'vol' })).state, 'waiting');
  await t.rejects(c.request('volume-force', { volume: 'vol', half: 'mirror' }), { code: 'ERR_NPMU_HALF_UNAVAILABLE' });
  // (a loopback connection counts as the PMM host: an operator)
  t.same(await c.request('volume-force', { volume: 'vol', half: 'primary' }), { v: 1, id: 3, type: 'ok', stale: 'mirror' });
  const st = await c.request('volume-status', { volume: 'vol' });
  t.equal(st.state, 'degraded');
  t.equal(st.mirror.sync, 'stale');
  t.ok(imageOf(s.p).sync.peerStale, 'the forced half records the other stale');
  // Now both halves say the other is stale: a split brain when both are back, never merged.
  await pmm3.close();
  await s.m.start();
  const pmm4 = await pmmFor(s.p, s.m);
  const c4 = await connect(pmm4);
  const st4 = await c4.request('volume-status', { volume: 'vol' });
  t.equal(st4.state, 'split-brain');
  await c4.request('volume-force', { volume: 'vol', half: 'primary' });
  t.equal((await c4.request('volume-status', { volume: 'vol' })).mirror.sync, 'stale');
  c.close();
  c4.close();
  await pmm4.close();
  await s.p.kill();
  await s.m.kill();
});

t.test('one writer: a second PMM fences the first, which stops serving at once; the two never both allocate', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'a', size: 4096, basePointer: 0n });
  const first = s.pmm.volumes.get('vol')!;
  const pmm2 = await pmmFor(s.p, s.m);
  const v2 = pmm2.volumes.get('vol')!;
  t.ok(v2, 'the second PMM took the volume');
  t.ok(v2.epoch > first.epoch, 'at a higher epoch');
  t.equal(s.p.epoch, v2.epoch);
  t.equal(s.p.holder, pmm2.pmmId);
  await until(() => !s.pmm.volumes.has('vol'));
  t.equal(first.state, 'fenced', 'the first PMM stopped serving the moment the units dropped it');
  await t.rejects(alice.request('create-region', { volume: 'vol', name: 'b', size: 4096, basePointer: 0n }), { code: /ERR_NPMU_(DISCONNECTED|FENCED)/ }, "the first PMM's session is gone");
  const bob = await attach(pmm2, 'bob');
  await bob.request('create-region', { volume: 'vol', name: 'c', size: 4096, basePointer: 0n });
  const c1 = await connect(s.pmm);
  const st = await c1.request('volume-status', { volume: 'vol' });
  t.equal(st.state, 'fenced');
  await t.rejects(c1.request('attach', { client: 'alice', credential: Buffer.from('alice-secret'), volume: 'vol' }), { code: 'ERR_NPMU_FENCED' });
  // The first PMM's poll loop reaches the units again: it does not take the volume back.
  await new Promise((r) => setTimeout(r, 400));
  t.notOk(s.pmm.volumes.has('vol'));
  t.equal(s.p.holder, pmm2.pmmId);
  const meta = metaOf(s.p).meta;
  t.same(meta.regions.map((r) => r.name).sort(), ['a', 'c']);
  const pages = meta.regions.flatMap((r) => r.primaryExtents.map((e) => e.page));
  t.equal(new Set(pages).size, pages.length, 'no page owned twice');
  // A fenced PMM's stale request reaching a unit is refused by the unit itself.
  await t.rejects(first.unitRequest('primary', 'set-usage', { usedPages: 1 }), { code: 'ERR_NPMU_FENCED' });
  for (const x of [alice, bob, c1]) x.close();
  await pmm2.close();
  await s.close();
});

t.test('crash at every metadata write: a restarted PMM finds every acknowledged operation, never a broken state', async (t) => {
  // Script: create a, create b, delete a, create c. Crash the k-th meta-write (whichever unit) by killing that unit.
  const STATES = ['', 'a', 'a,b', 'b', 'b,c'];
  const script = [
    (c: ControlConnection) => c.request('create-region', { volume: 'vol', name: 'a', size: 3 * 4096, basePointer: 0n }),
    (c: ControlConnection) => c.request('create-region', { volume: 'vol', name: 'b', size: 5 * 4096, basePointer: 0n }),
    (c: ControlConnection) => c.request('delete-region', { volume: 'vol', name: 'a' }),
    (c: ControlConnection) => c.request('create-region', { volume: 'vol', name: 'c', size: 2 * 4096, basePointer: 0n }),
  ];
  const states = new Set<string>();
  let checked = 0;
  for (let k = 1; k <= 14; k++) {
    // die / torn: the unit being written dies (the other carries on alone); power: both die, the write torn.
    for (const mode of ['die', 'torn', 'power'] as const) {
      const s = await system();
      let n = 0;
      const hook = (other: FakeUnit) => (): 'die' | 'torn' | void => {
        if (++n !== k) return;
        if (mode !== 'power') return mode;
        void other.powerCut(); // what it had not persisted is gone
        return 'torn';
      };
      s.p.onMetaWrite = hook(s.m);
      s.m.onMetaWrite = hook(s.p);
      const c = await attach(s.pmm, 'alice');
      let acked = 0; // the log of acknowledgements
      for (const op of script) {
        try {
          await op(c);
          acked++;
        } catch {
          break;
        }
      }
      c.destroy();
      await s.pmm.close();
      s.p.onMetaWrite = s.m.onMetaWrite = null;
      if (!s.p.server) await s.p.start();
      if (!s.m.server) await s.m.start();
      const pmm2 = await pmmFor(s.p, s.m);
      const v = pmm2.volumes.get('vol');
      t.ok(v, `k=${k} ${mode}: the volume opens`);
      if (!v) continue;
      const names = v.image.toMeta().regions.map((r) => r.name).join(',');
      states.add(names);
      // Every acknowledged operation is there; the one in flight may or may not be; nothing else.
      const allowed = [STATES[acked]!, ...(acked < script.length ? [STATES[acked + 1]!] : [])];
      t.ok(allowed.includes(names), `k=${k} ${mode}: ${acked} acknowledged, recovered "${names}" (allowed: ${allowed.map((x) => `"${x}"`).join(' or ')})`);
      checked += acked;
      if (v.state === 'ok') {
        t.same(metaOf(s.p), metaOf(s.m), `k=${k} ${mode}: both halves hold the newest generation after recovery`);
      } else {
        t.equal(v.state, 'degraded', `k=${k} ${mode}: otherwise one half is recorded stale`);
        t.ok(v.stale, 'and it is the stale one');
      }
      t.equal(v.halves.primary.alloc.usedPages, v.image.toMeta().regions.reduce((a, r) => a + Math.ceil(r.size / 4096), 0), 'no page leaked');
      // the volume goes on working
      const c2 = await attach(pmm2, 'alice');
      await c2.request('create-region', { volume: 'vol', name: 'after', size: 4096, basePointer: 0n });
      c2.close();
      await pmm2.close();
      await s.p.kill();
      await s.m.kill();
    }
  }
  t.ok(checked > 0, `${checked} acknowledged operations were checked after the crashes`);
  t.ok(states.size >= 3, `crashes landed at different points (${[...states].join(' | ')})`);
});

t.test('the forks of the issue: a delete and a create acknowledged on one half, a restart on the other, the first returns', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  for (const n of ['a', 'b']) await alice.request('create-region', { volume: 'vol', name: n, size: 4096, basePointer: 0n });
  // A create whose mirror write fails: acknowledged once the primary has recorded the mirror stale.
  let fail = true;
  s.m.onMetaWrite = () => (fail ? ((fail = false), 'die') : undefined);
  await alice.request('create-region', { volume: 'vol', name: 'c', size: 4096, basePointer: 0n });
  t.ok(imageOf(s.p).sync.peerStale, 'the primary recorded the mirror stale before acknowledging the create');
  await alice.request('delete-region', { volume: 'vol', name: 'a' }); // acknowledged on the primary alone
  alice.close();
  await s.pmm.close();
  await s.p.kill();
  s.m.onMetaWrite = null;
  await s.m.start();
  const pmm2 = await pmmFor(s.p, s.m);
  const c = await connect(pmm2);
  t.equal((await c.request('volume-status', { volume: 'vol' })).state, 'waiting', 'the mirror alone is not served');
  await t.rejects(c.request('attach', { client: 'bob', credential: Buffer.from('bob-secret'), volume: 'vol' }), { code: 'ERR_NPMU_VOLUME_UNAVAILABLE' }, 'no open of b on the stale branch');
  t.same(metaOf(s.m).meta.regions.map((r) => r.name), ['a', 'b'], '(the mirror still holds the old branch)');
  await s.p.start();
  await until(() => pmm2.volumes.get('vol') !== undefined);
  const v = pmm2.volumes.get('vol')!;
  t.same(v.image.toMeta().regions.map((r) => r.name), ['b', 'c'], 'every acknowledged operation is there: a deleted, c created');
  t.equal(v.state, 'degraded');
  t.equal(v.syncOf('mirror'), 'stale', 'the old branch is stale, never merged');
  const bob = await attach(pmm2, 'bob');
  const h = await bob.request('open-region', { volume: 'vol', name: 'b' });
  t.equal(h.mirror.available, false);
  t.equal(s.m.mappingCount(), 0, 'nothing mapped on the stale half');
  bob.close();
  c.close();
  await pmm2.close();
  await s.p.kill();
  await s.m.kill();
});

t.test('10,000 regions: created, listed, opened and deleted against a model, recovered by a fresh PMM', async (t) => {
  t.setTimeout(600_000);
  const N = 10_000;
  const [p, m] = await units({ dataPages: 32_000 });
  p.setMetaLength(8 * 1024 * 1024 - 8192); // the default metadata area of a large unit
  m.setMetaLength(8 * 1024 * 1024 - 8192);
  const pmm = await pmmFor(p, m);
  const c0 = await connect(pmm);
  await c0.request('create-volume', { volume: 'vol', primary: p.address, mirror: m.address });
  c0.close();
  const c = await attach(pmm, 'alice');
  const model = new Map<string, number>();
  const name = (i: number) => `region-${String(i).padStart(5, '0')}-${'x'.repeat(40)}`; // 53-byte names
  const timing: Record<string, number[]> = {};
  const timed = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    const t0 = process.hrtime.bigint();
    await fn();
    (timing[what] ??= []).push(Number(process.hrtime.bigint() - t0) / 1e6);
  };
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  const writesBefore = p.metaWrites;
  for (let i = 0; i < N; i++) {
    const size = 1 + rnd(3 * 4096);
    await timed(i < 100 ? 'create@<100' : i >= N - 100 ? 'create@10k' : 'create', () => c.request('create-region', { volume: 'vol', name: name(i), size, basePointer: BigInt(i) << 20n }));
    model.set(name(i), size);
  }
  const perCreate = (p.metaWrites - writesBefore) / N;
  t.ok(perCreate <= 3, `metadata writes per create on a unit stay bounded (${perCreate.toFixed(2)})`);
  const l = await c.request('list-regions', { volume: 'vol', max: 4096 });
  t.equal(l.count, N, 'the true count');
  t.same(l.names, [...model.keys()].slice(0, 4096), 'in creation order');
  for (let k = 0; k < 200; k++) {
    const n = name(rnd(N));
    let h: { handleId: number; size: number } | undefined;
    await timed('open@10k', async () => (h = await c.request('open-region', { volume: 'vol', name: n })));
    t.equal(h!.size, model.get(n));
    await c.request('close-region', { handleId: h!.handleId });
  }
  // delete a random third, recreate some
  for (let i = 0; i < N; i += 3) {
    await c.request('delete-region', { volume: 'vol', name: name(i) });
    model.delete(name(i));
  }
  for (let i = 0; i < 300; i += 3) {
    await c.request('create-region', { volume: 'vol', name: name(i), size: 4096, basePointer: 0n });
    model.set(name(i), 4096);
  }
  c.close();
  await pmm.close();
  const pmm2 = await pmmFor(p, m);
  const v = pmm2.volumes.get('vol')!;
  t.equal(v.state, 'ok');
  const got = new Map(v.image.toMeta().regions.map((r) => [r.name, r.size]));
  t.equal(got.size, model.size, `a fresh PMM recovered all ${model.size} regions`);
  t.same([...got].sort(), [...model].sort(), 'names and sizes as the model says');
  t.same(metaOf(p), metaOf(m));
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!.toFixed(2);
  t.comment(`median ms (native, fake units over TCP): create at <100 regions ${med(timing['create@<100']!)}, at 10k ${med(timing['create@10k']!)}; open at 10k ${med(timing['open@10k']!)}`);
  await pmm2.close();
  await p.kill();
  await m.kill();
});

t.test('a power cut of both units right after acknowledged operations loses none of them (the PMM persists every write)', async (t) => {
  const s = await system();
  const c = await attach(s.pmm, 'alice');
  for (const n of ['a', 'b', 'c']) await c.request('create-region', { volume: 'vol', name: n, size: 4096, basePointer: 0n });
  await c.request('delete-region', { volume: 'vol', name: 'b' });
  c.destroy();
  await s.pmm.close();
  await s.p.powerCut();
  await s.m.powerCut();
  // the fake keeps only what was persisted: a write without persist is gone after a cut
  const probe = new FakeUnit({ key: KEY });
  probe.meta.write('volatile', 0);
  await probe.powerCut();
  t.equal(probe.meta.subarray(0, 8).toString(), '\0'.repeat(8), 'the fake unit honours the persist flag');
  await s.p.start();
  await s.m.start();
  const pmm2 = await pmmFor(s.p, s.m);
  t.same(pmm2.volumes.get('vol')!.image.toMeta().regions.map((r) => r.name), ['a', 'c']);
  t.equal(pmm2.volumes.get('vol')!.state, 'ok');
  await pmm2.close();
  await s.p.kill();
  await s.m.kill();
});

t.test('a create zeroes its pages outside the volume lock: opens, closes and other creates go on meanwhile', async (t) => {
  const [p, m] = await units();
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => (release = r));
  let zeroing = 0;
  const pmm = await pmmFor(p, m, {
    zeroNewRegions: true,
    zeroer: async (_half, extents) => {
      if (extents.reduce((n, e) => n + e.pages, 0) < 100) return; // small regions: at once
      zeroing++;
      await gate; // a large region: until released
    },
  });
  const c0 = await connect(pmm);
  await c0.request('create-volume', { volume: 'vol', primary: p.address, mirror: m.address });
  c0.close();
  const c = await attach(pmm, 'alice');
  await c.request('create-region', { volume: 'vol', name: 'small', size: 4096, basePointer: 0n });
  let done = false;
  const big = c.request('create-region', { volume: 'vol', name: 'big', size: 200 * 4096, basePointer: 0n }).then(() => (done = true));
  await until(() => zeroing === 2);
  const c2 = await attach(pmm, 'bob');
  const h = await c2.request('open-region', { volume: 'vol', name: 'small' });
  await c2.request('close-region', { handleId: h.handleId });
  await c2.request('create-region', { volume: 'vol', name: 'other', size: 4096, basePointer: 0n });
  await t.rejects(c2.request('create-region', { volume: 'vol', name: 'big', size: 4096, basePointer: 0n }), { code: 'ERR_NPMU_REGION_EXISTS' }, 'the name is taken while its pages are zeroed');
  t.same((await c2.request('list-regions', { volume: 'vol', max: 10 })).names, ['small', 'other'], 'not visible before its commit');
  t.equal(done, false, 'all that while the large create was still zeroing');
  const ops = await connect(pmm);
  await t.rejects(ops.request('volume-resync', { volume: 'vol' }), { code: 'ERR_NPMU_VOLUME_BUSY' }, 'no resync while a create zeroes outside the lock');
  ops.close();
  release();
  await big;
  t.same((await c2.request('list-regions', { volume: 'vol', max: 10 })).names, ['small', 'other', 'big']);
  t.same(metaOf(p), metaOf(m));
  c.close();
  c2.close();
  await pmm.close();
  await p.kill();
  await m.kill();
});

t.test('malformed management requests get error replies and the PMM keeps serving', async (t) => {
  const s = await system();
  const sock = net.connect({ host: '127.0.0.1', port: s.pmm.port });
  await once(sock, 'connect');
  const replies: Array<Record<string, unknown>> = [];
  let buf = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      replies.push(JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()));
      buf = buf.subarray(4 + buf.readUInt32BE(0));
    }
  });
  const raw = (body: string): void => {
    const b = Buffer.from(body);
    const f = Buffer.alloc(4 + b.length);
    f.writeUInt32BE(b.length, 0);
    b.copy(f, 4);
    sock.write(f);
  };
  raw('not json');
  raw('[1,2]');
  sock.write(encodeFrame({ v: 2, id: 1, type: 'ping' }));
  sock.write(encodeFrame({ v: 1, id: 2, type: 'format-volume', volumeId: '0'.repeat(32), role: 'primary', label: '' }));
  sock.write(encodeFrame({ v: 1, id: 3, type: 'create-region', volume: 'vol', name: 'x', size: -1, basePointer: '0' }));
  sock.write(encodeFrame({ v: 1, id: 4, type: 'create-region', volume: 'vol', name: 'x', size: 1, basePointer: '0' }));
  sock.write(encodeFrame({ v: 1, id: 5, type: 'attach', client: 'alice', credential: '!!!', volume: 'vol' }));
  sock.write(encodeFrame({ v: 1, id: 6, type: 'close-region', handleId: 1, extra: true }));
  sock.write(encodeFrame({ v: 1, id: 7, type: 'ping' }));
  await until(() => replies.length >= 9);
  const codes = replies.map((r) => r.code ?? r.type);
  t.same(codes, [
    'ERR_NPMU_PROTO_MALFORMED',
    'ERR_NPMU_PROTO_MALFORMED',
    'ERR_NPMU_PROTO_VERSION',
    'ERR_NPMU_PROTO_UNKNOWN_TYPE',
    'ERR_NPMU_PROTO_INVALID',
    'ERR_NPMU_NOT_ATTACHED',
    'ERR_NPMU_PROTO_INVALID',
    'ERR_NPMU_PROTO_INVALID',
    'ok',
  ]);
  // an oversized frame closes that connection only
  const big = Buffer.alloc(4);
  big.writeUInt32BE(0x7fffffff, 0);
  sock.write(big);
  await once(sock, 'close');
  const c = await attach(s.pmm, 'alice');
  t.same(await c.request('ping', {}), { v: 1, id: 2, type: 'ok' });
  c.close();
  await s.close();
});

t.test('clients file: parse errors name the line; verification caches', async (t) => {
  t.throws(() => parseClients('alice user nope'), { code: 'ERR_NPMU_CLIENTS_FILE', message: /line 1/ });
  t.throws(() => parseClients('# c\n\nbad name user scrypt$1$1$1$AAAAAAAAAAA=$AAAA'), { code: 'ERR_NPMU_CLIENTS_FILE', message: /line 3/ });
  t.throws(() => parseClients(`${clientLine('a', 's', { logN: 4 })}\n${clientLine('a', 's', { logN: 4 })}`), { message: /twice/ });
  const reg = new ClientRegistry({ entries: parseClients(clientLine('a', 's', { logN: 4, roles: ['admin', 'user'] })) });
  t.same(reg.verify('a', Buffer.from('s')), ['admin', 'user']);
  t.same(reg.verify('a', Buffer.from('s')), ['admin', 'user'], 'again, from the cache');
  t.throws(() => reg.verify('a', Buffer.from('t')), { code: 'ERR_NPMU_NOT_AUTHORIZED' });
  t.throws(() => reg.verify('b', Buffer.from('s')), { code: 'ERR_NPMU_NOT_AUTHORIZED' });
});
