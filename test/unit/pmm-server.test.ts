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
import { regionOfMapId } from '../../pmm/volume';
import { chooseNewest, slotOffsets, slotSize } from '../../pmm/metadata';
import type { SlotCopy, VolumeMeta } from '../../pmm/metadata';
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
  return PmmServer.start({ key: KEY, clients, host: '127.0.0.1', port: 0, units: [p.address, m.address], zeroNewRegions: false, reconnectMs: 100, ...extra });
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

/** The newest metadata on a fake unit's own two slots. */
function metaOf(u: FakeUnit): { meta: VolumeMeta; generation: number } {
  const [s0, s1] = slotOffsets(u.meta.length);
  const n = slotSize(u.meta.length);
  const copies: SlotCopy[] = [
    { unit: 'primary', slot: 0, bytes: u.meta.subarray(s0, s0 + n) },
    { unit: 'primary', slot: 1, bytes: u.meta.subarray(s1, s1 + n) },
  ];
  const r = chooseNewest(copies);
  return { meta: r.meta, generation: r.generation };
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
  const meta = metaOf(s.p).meta;
  const region = meta.regions.find((r) => r.name === 'r')!;
  t.equal(regionOfMapId(h.primary.mapId), region.id, 'the mapId names the region');
  t.ok(region.lastOpenAtMs > 0, 'last open time recorded in the metadata');
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
  const before = s.pmm.volumes.get('vol')!.meta;
  alice.destroy();
  await s.pmm.close();
  // the client's mapping of r4 survives on the units as if its RDMA connection were still up
  const sess = open.primary.mapId;
  s.p.maps.set('424242', new Map([[sess, { extents: [], iova: '0', rkey: 1 }]]));

  const pmm2 = await pmmFor(s.p, s.m);
  const v = pmm2.volumes.get('vol')!;
  t.ok(v, 'volume recovered');
  t.same(v.meta, before, 'identical region table');
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

t.test('degraded: a half that dies is reported, commits go to the survivor, the half is repaired when it returns', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'a', size: 4096, basePointer: 0n });
  await s.m.kill();
  await until(() => s.pmm.volumes.get('vol')!.state === 'degraded');
  const st = await alice.request('volume-status', { volume: 'vol' });
  t.equal(st.state, 'degraded');
  t.equal(st.mirror.available, false);
  await t.rejects(alice.request('create-region', { volume: 'vol', name: 'b', size: 1, basePointer: 0n }), { code: 'ERR_NPMU_VOLUME_DEGRADED' });
  const h = await alice.request('open-region', { volume: 'vol', name: 'a' });
  t.equal(h.primary.available, true);
  t.equal(h.mirror.available, false, 'the handle says the mirror is unavailable');
  await alice.request('close-region', { handleId: h.handleId });
  await alice.request('delete-region', { volume: 'vol', name: 'a' });
  const pg = metaOf(s.p).generation;
  t.ok(pg > metaOf(s.m).generation, 'the mirror lags');
  await s.m.start(); // same port
  await until(() => s.pmm.volumes.get('vol')!.state === 'ok');
  t.same(metaOf(s.m), metaOf(s.p), 'the returning half was brought up to the newest generation');
  await alice.request('create-region', { volume: 'vol', name: 'b', size: 1, basePointer: 0n });
  t.equal(metaOf(s.m).generation, pg + 1);
  alice.close();
  await s.close();
});

t.test('a PMM started with one half down serves the volume degraded from that half alone', async (t) => {
  const s = await system();
  const alice = await attach(s.pmm, 'alice');
  await alice.request('create-region', { volume: 'vol', name: 'a', size: 4096, basePointer: 0n });
  alice.close();
  await s.pmm.close();
  await s.p.kill();
  const pmm2 = await pmmFor(s.p, s.m);
  const v = pmm2.volumes.get('vol')!;
  t.equal(v.state, 'degraded');
  t.same(v.meta.regions.map((r) => r.name), ['a'], 'recovered from the mirror');
  await s.p.start();
  await until(() => v.state === 'ok');
  await pmm2.close();
  await s.p.kill();
  await s.m.kill();
});

t.test('crash at every metadata write: a restarted PMM finds the old or the new state, never a broken one', async (t) => {
  // Script: create a, create b, delete a, create c. Crash the k-th meta-write (whichever unit) by killing that unit.
  const ops = async (c: ControlConnection): Promise<void> => {
    await c.request('create-region', { volume: 'vol', name: 'a', size: 3 * 4096, basePointer: 0n });
    await c.request('create-region', { volume: 'vol', name: 'b', size: 5 * 4096, basePointer: 0n });
    await c.request('delete-region', { volume: 'vol', name: 'a' });
    await c.request('create-region', { volume: 'vol', name: 'c', size: 2 * 4096, basePointer: 0n });
  };
  const states = new Set<string>();
  for (let k = 1; k <= 8; k++) {
    for (const mode of ['die', 'torn'] as const) {
      const s = await system();
      let n = 0;
      const hook = (u: FakeUnit) => (): 'die' | 'torn' | void => {
        if (++n === k) {
          void u;
          return mode;
        }
      };
      s.p.onMetaWrite = hook(s.p);
      s.m.onMetaWrite = hook(s.m);
      const c = await attach(s.pmm, 'alice');
      await ops(c).catch(() => undefined);
      c.destroy();
      await s.pmm.close();
      s.p.onMetaWrite = s.m.onMetaWrite = null;
      if (!s.p.server) await s.p.start();
      if (!s.m.server) await s.m.start();
      const pmm2 = await pmmFor(s.p, s.m);
      const v = pmm2.volumes.get('vol');
      t.ok(v, `k=${k} ${mode}: the volume opens`);
      if (!v) continue;
      t.equal(v.state, 'ok');
      const names = v.meta.regions.map((r) => r.name).join(',');
      states.add(names);
      t.ok(['', 'a', 'a,b', 'b', 'b,c'].includes(names), `k=${k} ${mode}: a state the script passed through (${names})`);
      t.same(metaOf(s.p), metaOf(s.m), `k=${k} ${mode}: both halves hold the newest generation after recovery`);
      t.equal(v.halves.primary.alloc.usedPages, v.meta.regions.reduce((a, r) => a + Math.ceil(r.size / 4096), 0), 'no page leaked');
      // the volume goes on working
      const c2 = await attach(pmm2, 'alice');
      await c2.request('create-region', { volume: 'vol', name: 'after', size: 4096, basePointer: 0n });
      c2.close();
      await pmm2.close();
      await s.p.kill();
      await s.m.kill();
    }
  }
  t.ok(states.size >= 3, `crashes landed at different points (${[...states].join(' | ')})`);
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
