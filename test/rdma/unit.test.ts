/** The unit on real rxe: admission by ticket, translation of discontiguous
 * extents, protection per connection, persistence, the control protocol's
 * authentication and robustness, client death, and kill -9 / restart of the
 * daemon. Most checks use a UnitServer in this process on a tmpfs file; the
 * devdax checks use the VM's emulated NVDIMM (the last of NPMU_DAX_DEVICES). */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import t, { Test } from 'tap';
import {
  ControlConnection,
  PERSIST_REQUEST_SIZE,
  decodeAcceptInfo,
  decodePersistReply,
  encodeFrame,
  encodePersistRequest,
} from '../../lib/protocol';
import type { PersistReply, PersistRequest } from '../../lib/protocol';
import { issueTicket } from '../../lib/ticket';
import { Access, mapFile, native, registerMemory } from '../../lib/verbs';
import type { Endpoint } from '../../lib/verbs';
import { UnitDevice } from '../../unit/device';
import { PERSIST_SLOTS, UnitServer } from '../../unit/server';
import { daxAlignment, requireDax, deviceName, rdmaAddress, regAll } from './fixture';
import {
  UnitAddress,
  client,
  newSession,
  peek,
  pmm,
  randomKey,
  rejectReason,
  startUnitProcess,
  ticket,
  waitFor,
  writeKeyFile,
  mountExt4,
  TEST_PMM,
} from './unit-helpers';

const MiB = 1024 * 1024;
const IOVA = 0x7f0000000000n;
/** Under TCG a test that starts unit processes can take longer than tap's default 30 s; every wait inside is bounded. */
const SLOW = { timeout: 300_000 };
const key = randomKey();
const shmPath = `/dev/shm/npmu-unit-test-${process.pid}`;
let unit: UnitServer;
let ctl: ControlConnection;
const logs: string[] = [];

const addressOf = (u: UnitServer): UnitAddress => ({ unitId: u.unitId, host: u.host, rdmaPort: u.rdmaPort, controlPort: u.controlPort });

async function startUnit(devicePath: string, open: Parameters<typeof UnitDevice.open>[1]): Promise<UnitServer> {
  const device = UnitDevice.open(devicePath, open);
  return UnitServer.start({ device, key, host: rdmaAddress(), rdmaDevice: deviceName(), helloTimeoutMs: 3000, log: (l) => logs.push(l) });
}

// Started by the first test, not by a root-level hook: every RDMA test file
// shares one process and one root tap test, and the other files' leak checks
// must not see this unit's listener.
let liveBefore: ReturnType<ReturnType<typeof native>['liveObjects']>;
t.test('a unit starts on a new tmpfs file (created and formatted on request)', SLOW, async (t) => {
  liveBefore = native().liveObjects();
  fs.rmSync(shmPath, { force: true });
  unit = await startUnit(shmPath, { create: { size: 16 * MiB }, format: { label: 'rdma-test' } });
  ctl = await pmm(key, addressOf(unit));
  t.equal(unit.device.formatted, true);
  t.ok(unit.rdmaPort > 0 && unit.controlPort > 0, `RDMA port ${unit.rdmaPort}, control port ${unit.controlPort}`);
});

/** A client connected for a new session, with `extents` mapped for it by the PMM. */
async function mapped(
  u: UnitServer,
  c: ControlConnection,
  extents: Array<{ page: number; pages: number }>,
  access: 'ro' | 'rw' = 'rw',
  iova = IOVA,
): Promise<{ sid: bigint; ep: Endpoint; rkey: number; length: number }> {
  const sid = newSession();
  const ep = await client(key, addressOf(u), sid);
  const r = await c.request('map', { sessionId: sid, mapId: '1', extents, iova, access });
  return { sid, ep, rkey: r.rkey, length: r.length };
}

/** One RDMA WRITE (or READ) of `buf` at `iova`, with its own local MR. */
async function rdma(ep: Endpoint, op: 'write' | 'read', buf: Buffer, iova: bigint, rkey: number): Promise<void> {
  const mr = regAll(ep.pd, buf);
  try {
    await ep[op](mr, 0, buf.length, iova, rkey);
  } finally {
    mr.close();
  }
}

/** A persist request SENT on the connection (or raw bytes), and the unit's reply. */
async function persistOverRdma(ep: Endpoint, req: PersistRequest | Buffer): Promise<PersistReply | undefined> {
  const buf = Buffer.alloc(128);
  const mr = regAll(ep.pd, buf);
  try {
    let n = PERSIST_REQUEST_SIZE;
    if (Buffer.isBuffer(req)) n = req.copy(buf, 0);
    else encodePersistRequest(req, buf, 0);
    const reply = ep.recv(mr, 96, 32);
    try {
      await ep.send(mr, 0, n);
    } finally {
      await reply.catch(() => undefined); // the buffer stays registered until the receive is done
    }
    return decodePersistReply(buf, 96, await reply);
  } finally {
    mr.close();
  }
}

async function expectAccessError(t: Test, p: Promise<unknown>, what: string): Promise<void> {
  await t.rejects(p, { code: 'IBV_WC_REM_ACCESS_ERR' }, what);
}

/**
 * [0040], [0076]: three extents, discontiguous in the device, become one
 * contiguous range; writes across the seams land in the right device pages.
 */
async function checkTranslation(t: Test, u: UnitServer, c: ControlConnection): Promise<void> {
  const { pageSize: ps, dataOffset } = u.device.superblock;
  const extents = [
    { page: 5, pages: 1 },
    { page: 1, pages: 2 },
    { page: 8, pages: 1 },
  ];
  const toDevice = (v: number): number => {
    for (const e of extents) {
      if (v < e.pages * ps) return dataOffset + e.page * ps + v;
      v -= e.pages * ps;
    }
    throw new Error('past the mapping');
  };
  // Bytes next to the mapped pages must not change.
  const untouched = [dataOffset + ps - 64, dataOffset + 3 * ps, dataOffset + 4 * ps, dataOffset + 6 * ps, dataOffset + 9 * ps];
  const m = mapFile(u.device.path); // read-write: devdax has no read-only buffer(); nothing is stored through it
  const view = Buffer.from(m.buffer());
  const before = untouched.map((o) => Buffer.from(view.subarray(o, o + 64)));

  const m1 = await mapped(u, c, extents);
  t.equal(m1.length, 4 * ps, 'one range of four pages');
  const chunks = [0, ps - 50, 2 * ps - 50, 3 * ps - 50, 4 * ps - 100]; // seams: 5|1, 1|2 (adjacent in the device too), 2|8
  const payloads = chunks.map(() => Buffer.from(Array.from({ length: 100 }, () => (Math.random() * 256) | 0)));
  for (let i = 0; i < chunks.length; i++) await rdma(m1.ep, 'write', payloads[i]!, IOVA + BigInt(chunks[i]!), m1.rkey);
  for (let i = 0; i < chunks.length; i++) {
    const back = Buffer.alloc(100);
    await rdma(m1.ep, 'read', back, IOVA + BigInt(chunks[i]!), m1.rkey);
    t.same(back, payloads[i], `RDMA READ returns chunk ${i}`);
    let wrong = -1;
    for (let j = 0; j < 100; j++) if (view[toDevice(chunks[i]! + j)] !== payloads[i]![j]) wrong = j;
    t.equal(wrong, -1, `chunk ${i} at network offset ${chunks[i]} is in the right device pages`);
  }
  untouched.forEach((o, i) => t.same(view.subarray(o, o + 64), before[i], `bytes at device offset ${o} untouched`));
  m.close();
  await m1.ep.close();
}

t.test('hello and info: geometry, volatile durability on tmpfs, nothing mapped', SLOW, async (t) => {
  const h = await ctl.request('hello', { ticket: ticket(key, unit, 'control') }).catch((e: Error) => e);
  t.match(h, { code: 'ERR_NPMU_ALREADY_AUTHENTICATED' }, 'one hello per connection');
  const c = await ControlConnection.connect({ host: unit.host, port: unit.controlPort });
  const hello = await c.request('hello', { ticket: ticket(key, unit, 'control') });
  t.match(hello, {
    unitId: unit.unitId,
    role: 'none',
    volumeId: '0'.repeat(32),
    label: 'rdma-test',
    capacity: 16 * MiB,
    pageSize: 4096,
    dataPages: 15 * 256,
    durability: 'volatile',
    layoutVersion: 2,
    generation: 2, // format, then the tests' PMM's claim (fencing epoch)
    epoch: 1,
  });
  const info = await c.request('info', {});
  t.match(info, { unitId: unit.unitId, capacity: 16 * MiB, pageSize: 4096, dataPages: 15 * 256, usedPages: 0, durability: 'volatile', mappings: 0 });
  t.same(info.connections, []);
  c.close();
});

t.test('translation: three discontiguous extents, writes across the seams land in the right pages (tmpfs)', SLOW, async (t) => {
  await checkTranslation(t, unit, ctl);
});

t.test('protection: beyond the mapping, read-only, and a dead rkey fail with IBV_WC_REM_ACCESS_ERR', SLOW, async (t) => {
  const ext = [{ page: 10, pages: 2 }];
  const a = await mapped(unit, ctl, ext);
  await expectAccessError(t, rdma(a.ep, 'write', Buffer.alloc(100), IOVA + BigInt(a.length - 50), a.rkey), 'a write straddling the end of the mapping');
  await a.ep.close();

  const ro = await mapped(unit, ctl, ext, 'ro');
  await rdma(ro.ep, 'read', Buffer.alloc(64), IOVA, ro.rkey);
  t.pass('a read-only mapping can be read');
  await expectAccessError(t, rdma(ro.ep, 'write', Buffer.alloc(64), IOVA, ro.rkey), 'a write into a read-only mapping');
  await ro.ep.close();

  const d = await mapped(unit, ctl, ext);
  await rdma(d.ep, 'write', Buffer.from('alive'), IOVA, d.rkey);
  await ctl.request('unmap', { sessionId: d.sid, mapId: '1' });
  await t.rejects(ctl.request('unmap', { sessionId: d.sid, mapId: '1' }), { code: 'ERR_NPMU_NO_MAPPING' });
  const dropped = waitFor(unit, 'session-closed', String(d.sid));
  await expectAccessError(t, rdma(d.ep, 'write', Buffer.from('dead!'), IOVA, d.rkey), 'the rkey of an unmapped mapping is dead at once');
  // The access error broke the connection: the unit, whose persist receives are posted on it, notices
  // at once and tears the session down (its mappings with it), not only when the client disconnects.
  await dropped;
  t.pass('the unit dropped the broken connection\'s session');
  await d.ep.close();
});

t.test("protection: the same pages for two clients, each its own rkey; one's rkey is useless to the other", SLOW, async (t) => {
  const ext = [{ page: 20, pages: 1 }, { page: 12, pages: 1 }];
  const a = await mapped(unit, ctl, ext);
  const b = await mapped(unit, ctl, ext, 'rw', IOVA); // the same iova: only the rkey/PD differ
  t.not(a.rkey, b.rkey, 'two rkeys');
  const info = await ctl.request('info', {});
  t.equal(info.mappings, 2);
  t.equal(info.connections.length, 2);
  await rdma(a.ep, 'write', Buffer.from('written by A across the seam'), IOVA + 4096n - 10n, a.rkey);
  const seen = Buffer.alloc(28);
  await rdma(b.ep, 'read', seen, IOVA + 4096n - 10n, b.rkey);
  t.equal(seen.toString(), 'written by A across the seam', 'B sees what A wrote ([0043]: shared pages)');
  await expectAccessError(t, rdma(b.ep, 'write', Buffer.from('x'), IOVA, a.rkey), "A's rkey used on B's connection");
  await rdma(a.ep, 'read', Buffer.alloc(8), IOVA, a.rkey);
  t.pass("A's own connection still works");
  await a.ep.close();
  await b.ep.close();
});

t.test('admission: a connection without a valid client ticket is refused at connect time', SLOW, async (t) => {
  const u = addressOf(unit);
  const other = { unitId: 'ab'.repeat(16) };
  const tampered = ticket(key, u, 'client', 1);
  tampered[30]! ^= 1;
  const cases: Array<[string, Uint8Array | undefined, string]> = [
    ['no private data', Buffer.alloc(0), 'ERR_NPMU_TICKET_INVALID'],
    ['garbage', Buffer.from('let me in'), 'ERR_NPMU_TICKET_INVALID'],
    ['another key', ticket(randomKey(), u, 'client', 1), 'ERR_NPMU_TICKET_INVALID'],
    ['tampered', tampered, 'ERR_NPMU_TICKET_INVALID'],
    ['a control ticket', ticket(key, u, 'control'), 'ERR_NPMU_TICKET_INVALID'],
    ['another unit', ticket(key, other, 'client', 1), 'ERR_NPMU_TICKET_WRONG_UNIT'],
    ['expired', issueTicket({ key, kind: 'client', unitId: u.unitId, sessionId: 1, ttlSec: 1, now: Date.now() - 3_600_000 }), 'ERR_NPMU_TICKET_EXPIRED'],
  ];
  for (const [what, pd, code] of cases) {
    const err = await client(key, u, 0, pd).then(
      (ep) => ep.close().then(() => new Error('admitted')),
      (e: Error) => e,
    );
    t.match(err, { code: 'ERR_NPMU_REJECTED' }, `${what}: rejected`);
    t.equal(rejectReason(err), code, `${what}: reason ${code}`);
  }
  const sid = newSession();
  const first = await client(key, u, sid);
  const second = await client(key, u, sid).catch((e: Error) => e);
  t.equal(rejectReason(second), 'ERR_NPMU_SESSION_BUSY', 'one connection per session');
  const gone = waitFor(unit, 'session-closed', String(sid));
  await first.close();
  await gone;
  const again = await client(key, u, sid);
  t.pass('once the first connection is gone, the session may connect again');
  await again.close();
});

t.test('control connections: hello first, tickets checked, client tickets limited to their session', SLOW, async (t) => {
  const u = addressOf(unit);
  const closed = (c: ControlConnection): Promise<void> => (c.closed ? Promise.resolve() : new Promise((r) => c.once('close', () => r())));

  const anon = await ControlConnection.connect({ host: u.host, port: u.controlPort });
  await t.rejects(anon.request('info', {}), { code: 'ERR_NPMU_UNAUTHENTICATED' });
  await closed(anon);
  t.pass('and the connection is closed');

  for (const [what, tk, code] of [
    ['another key', ticket(randomKey(), u, 'control'), 'ERR_NPMU_TICKET_INVALID'],
    ['another unit', ticket(key, { unitId: 'cd'.repeat(16) }, 'control'), 'ERR_NPMU_TICKET_WRONG_UNIT'],
    ['garbage', Buffer.from('0123456789'), 'ERR_NPMU_TICKET_INVALID'],
  ] as const) {
    const c = await ControlConnection.connect({ host: u.host, port: u.controlPort });
    await t.rejects(c.request('hello', { ticket: tk }), { code }, `hello with ${what}`);
    await closed(c);
  }

  const silent = net.connect({ host: u.host, port: u.controlPort });
  const t0 = Date.now();
  await new Promise((r) => silent.on('close', r));
  t.ok(Date.now() - t0 >= 2500, 'a connection that never says hello is dropped after the hello timeout');

  // A client's control connection: persist-range on its own session only.
  const c = await mapped(unit, ctl, [{ page: 30, pages: 1 }]);
  const cc = await ControlConnection.connect({ host: u.host, port: u.controlPort });
  const hello = await cc.request('hello', { ticket: ticket(key, u, 'client', c.sid) });
  t.equal(hello.durability, 'volatile');
  await rdma(c.ep, 'write', Buffer.from('persist me'), IOVA + 100n, c.rkey);
  const p = await cc.request('persist-range', { sessionId: c.sid, mapId: '1', offset: 100, length: 10 });
  t.equal(p.method, 'msync', 'tmpfs: msync is all there is (durability says volatile)');
  await t.rejects(cc.request('persist-range', { sessionId: c.sid + 1n, mapId: '1', offset: 0, length: 1 }), { code: 'ERR_NPMU_FORBIDDEN' });
  await t.rejects(cc.request('persist-range', { sessionId: c.sid, mapId: '2', offset: 0, length: 1 }), { code: 'ERR_NPMU_NO_MAPPING' });
  await t.rejects(cc.request('persist-range', { sessionId: c.sid, mapId: '1', offset: 4090, length: 10 }), { code: 'ERR_NPMU_BAD_RANGE' });
  for (const type of ['info', 'sessions', 'set-usage'] as const) {
    await t.rejects(cc.request(type, (type === 'set-usage' ? { usedPages: 1 } : {}) as never), { code: 'ERR_NPMU_FORBIDDEN' }, `client may not ${type}`);
  }
  await t.rejects(cc.request('map', { sessionId: c.sid, mapId: '9', extents: [{ page: 0, pages: 1 }], iova: 0n, access: 'rw' }), { code: 'ERR_NPMU_FORBIDDEN' });
  await cc.request('ping', {});
  t.pass('the connection survives refusals');

  // The same over the session's RDMA connection: a SENT request, the unit's reply (lib/protocol.ts: PersistRequest).
  t.equal(decodeAcceptInfo(c.ep.peerPrivateData)?.persistSlots, PERSIST_SLOTS, 'the accept offers persist over RDMA');
  const served = unit.persistServed;
  const ok = await persistOverRdma(c.ep, { seq: 41, mapId: 1n, offset: 100n, length: 10n });
  t.same(ok, { seq: 41, status: 'ok', method: 'msync' }, 'persisted, over RDMA');
  for (const [what, req, status] of [
    ['another mapping', { seq: 42, mapId: 2n, offset: 0n, length: 1n }, 'ERR_NPMU_NO_MAPPING'],
    ['past the end', { seq: 43, mapId: 1n, offset: 4090n, length: 10n }, 'ERR_NPMU_BAD_RANGE'],
    ['no bytes', { seq: 44, mapId: 1n, offset: 0n, length: 0n }, 'ERR_NPMU_BAD_RANGE'],
    ['a u64 offset', { seq: 45, mapId: 1n, offset: 2n ** 64n - 1n, length: 1n }, 'ERR_NPMU_BAD_RANGE'],
    ['a u64 length', { seq: 46, mapId: 1n, offset: 0n, length: 2n ** 64n - 1n }, 'ERR_NPMU_BAD_RANGE'],
  ] as const) {
    t.same(await persistOverRdma(c.ep, req), { seq: req.seq, status }, what);
  }
  const short = Buffer.alloc(16);
  short.writeUInt32LE(47, 4);
  t.same(await persistOverRdma(c.ep, short), { seq: 47, status: 'ERR_NPMU_PROTO_MALFORMED' }, '16 bytes: malformed (the seq echoed)');
  t.same(await persistOverRdma(c.ep, Buffer.alloc(32, 0x41)), { seq: 0x41414141, status: 'ERR_NPMU_PROTO_MALFORMED' }, 'no magic: malformed');
  t.same(await persistOverRdma(c.ep, Buffer.alloc(1)), { seq: 0, status: 'ERR_NPMU_PROTO_MALFORMED' }, '1 byte: malformed, seq 0');
  t.equal(unit.persistServed - served, 9, 'every request answered');
  // Many at once: more than the unit's receives (the rest wait for RNR retries), every one answered.
  const many = await Promise.all(Array.from({ length: 2 * PERSIST_SLOTS }, (_, i) => persistOverRdma(c.ep, { seq: 100 + i, mapId: 1n, offset: BigInt(i), length: 1n })));
  t.same(
    many.map((r) => r?.status),
    many.map(() => 'ok'),
    `${2 * PERSIST_SLOTS} requests in flight`,
  );
  t.same(new Set(many.map((r) => r?.seq)).size, 2 * PERSIST_SLOTS, 'each its own reply');
  // Random bytes and random fields (seeded): every request answered with a status of the table.
  let seed = 0x9e3779b9;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return Math.floor((seed / 2 ** 32) * n);
  };
  const statuses = new Set<string>();
  for (let i = 0; i < 60; i++) {
    let r: PersistReply | undefined;
    if (i % 2) {
      const raw = Buffer.alloc(1 + rnd(PERSIST_REQUEST_SIZE));
      for (let j = 0; j < raw.length; j++) raw[j] = rnd(256);
      r = await persistOverRdma(c.ep, raw);
    } else {
      r = await persistOverRdma(c.ep, { seq: i, mapId: BigInt(rnd(3)), offset: BigInt(rnd(8192)), length: BigInt(rnd(8192)) });
    }
    if (!r) {
      t.fail(`request ${i}: no well-formed reply`);
      break;
    }
    statuses.add(r.status);
  }
  t.ok([...statuses].every((x) => ['ok', 'ERR_NPMU_PROTO_MALFORMED', 'ERR_NPMU_NO_MAPPING', 'ERR_NPMU_BAD_RANGE'].includes(x)), `60 random requests answered: ${[...statuses].join(', ')}`);
  await rdma(c.ep, 'write', Buffer.from('still here'), IOVA + 200n, c.rkey);
  t.pass('the connection survives refused and malformed requests');
  // A request larger than the unit's receive breaks that connection (its own), nothing else.
  const other = await mapped(unit, ctl, [{ page: 29, pages: 1 }]);
  const dead = await persistOverRdma(c.ep, Buffer.alloc(PERSIST_REQUEST_SIZE + 8)).catch((e: Error) => e);
  t.ok(dead instanceof Error, `an oversized request fails its sender: ${(dead as Error).message}`);
  t.same(await persistOverRdma(other.ep, { seq: 7, mapId: 1n, offset: 0n, length: 8n }), { seq: 7, status: 'ok', method: 'msync' }, 'another session is still served');
  await other.ep.close();
  cc.close();
  await c.ep.close();
});

t.test('PMM requests: metadata area, usage, volume binding, persist, map errors', SLOW, async (t) => {
  const meta = Buffer.from('volume metadata slot 0');
  await ctl.request('meta-write', { offset: 4096, data: meta, persist: true });
  const back = await ctl.request('meta-read', { offset: 4096, length: meta.length });
  t.equal(Buffer.from(back.data, 'base64').toString(), meta.toString());
  const metaLength = unit.device.metaLength;
  await t.rejects(ctl.request('meta-read', { offset: metaLength - 4, length: 8 }), { code: 'ERR_NPMU_BAD_RANGE' });
  await t.rejects(ctl.request('meta-write', { offset: metaLength, data: Buffer.from('x'), persist: false }), { code: 'ERR_NPMU_BAD_RANGE' });

  await ctl.request('set-usage', { usedPages: 42 });
  t.equal((await ctl.request('info', {})).usedPages, 42, 'usage as the PMM last set it');
  await t.rejects(ctl.request('set-usage', { usedPages: unit.device.dataPages + 1 }), { code: 'ERR_NPMU_BAD_RANGE' });

  const volA = '1a'.repeat(16);
  const volB = '2b'.repeat(16);
  const g = (await ctl.request('format-volume', { volumeId: volA, role: 'primary', label: 'vol-a' })).generation;
  const g0 = g - 1;
  t.equal(g, unit.device.superblock.generation, 'a superblock update');
  await t.rejects(ctl.request('format-volume', { volumeId: volB, role: 'mirror', label: 'vol-b' }), { code: 'ERR_NPMU_UNIT_BOUND' });
  t.equal((await ctl.request('format-volume', { volumeId: volB, role: 'mirror', label: 'vol-b', force: true })).generation, g0 + 2);
  t.match(unit.device.superblock, { volumeId: volB, role: 'mirror', label: 'vol-b', generation: g0 + 2 });

  t.match(await ctl.request('persist', { page: 3, offset: 4000, length: 200 }), { type: 'ok', method: 'msync' });
  await t.rejects(ctl.request('persist', { page: unit.device.dataPages - 1, offset: 4000, length: 200 }), { code: 'ERR_NPMU_BAD_RANGE' });

  await t.rejects(ctl.request('map', { sessionId: '424242', mapId: '1', extents: [{ page: 0, pages: 1 }], iova: IOVA, access: 'rw' }), { code: 'ERR_NPMU_NO_SESSION' });
  const c = await mapped(unit, ctl, [{ page: 40, pages: 1 }]);
  const m = (extents: Array<{ page: number; pages: number }>, iova: bigint, mapId = '2') =>
    ctl.request('map', { sessionId: c.sid, mapId, extents, iova, access: 'rw' });
  await t.rejects(m([{ page: 0, pages: 1 }], IOVA, '1'), { code: 'ERR_NPMU_MAP_EXISTS' });
  await t.rejects(m([{ page: unit.device.dataPages - 1, pages: 2 }], IOVA), { code: 'ERR_NPMU_BAD_EXTENT' });
  await t.rejects(m([{ page: 0, pages: 1 }], IOVA + 8n), { code: 'ERR_NPMU_BAD_IOVA' });
  await t.rejects(m([{ page: 0, pages: 2 }], 2n ** 64n - 4096n), { code: 'ERR_NPMU_BAD_IOVA' }, 'past 2^64');
  await t.rejects(ctl.request('unmap', { sessionId: c.sid, mapId: '7' }), { code: 'ERR_NPMU_NO_MAPPING' });
  const second = await m([{ page: 41, pages: 1 }], IOVA + 0x100000n);
  t.equal(second.iova, String(IOVA + 0x100000n));
  const s = (await ctl.request('sessions', {})).sessions.find((x) => x.sessionId === String(c.sid));
  t.same(s?.mapIds.sort(), ['1', '2']);
  await c.ep.close();
});
t.test('a client that disconnects, or dies, has its mappings removed', SLOW, async (t) => {
  const c = await mapped(unit, ctl, [{ page: 50, pages: 1 }]);
  const gone = waitFor(unit, 'session-closed', String(c.sid));
  await c.ep.close();
  await gone;
  t.notOk((await ctl.request('info', {})).connections.some((x) => x.sessionId === String(c.sid)), 'disconnect: session and mappings gone');

  const sid = newSession();
  const child = spawn(process.execPath, [path.join(__dirname, 'unit-child.js'), unit.host, String(unit.rdmaPort), ticket(key, unit, 'client', sid).toString('hex')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.includes('connected') && resolve());
    child.on('exit', (code) => reject(new Error(`client child exited ${code}`)));
  });
  await ctl.request('map', { sessionId: sid, mapId: '1', extents: [{ page: 51, pages: 1 }], iova: IOVA, access: 'rw' });
  t.equal((await ctl.request('info', {})).connections.find((x) => x.sessionId === String(sid))?.mappings, 1);
  const died = waitFor(unit, 'session-closed', String(sid), 60_000);
  child.kill('SIGKILL');
  await died;
  const info = await ctl.request('info', {});
  t.notOk(info.connections.some((x) => x.sessionId === String(sid)), 'kill -9 of the client: session and mappings gone');
});

/** Sends raw bytes on a fresh, authenticated socket; collects replies until the server closes or `ms` pass. */
async function raw(
  u: UnitAddress,
  send: Buffer[],
  opts: { end?: boolean; ms?: number; replies?: number } = {},
): Promise<{ replies: Array<Record<string, unknown>>; closed: boolean }> {
  const sock = net.connect({ host: u.host, port: u.controlPort });
  await new Promise((r) => sock.once('connect', r));
  const replies: Array<Record<string, unknown>> = [];
  let buf = Buffer.alloc(0);
  let closed = false;
  let enough: () => void = () => undefined;
  const gotAll = new Promise<void>((r) => (enough = r));
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      replies.push(JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()));
      buf = buf.subarray(4 + buf.readUInt32BE(0));
    }
    if (opts.replies !== undefined && replies.length >= opts.replies) enough();
  });
  const done = new Promise<void>((r) => sock.on('close', () => ((closed = true), r())));
  sock.on('error', () => undefined);
  sock.write(encodeFrame({ v: 1, id: 1, type: 'hello', ticket: ticket(key, u, 'control').toString('base64') }));
  for (const b of send) sock.write(b);
  if (opts.end) sock.end();
  await Promise.race([done, gotAll, new Promise((r) => setTimeout(r, opts.ms ?? 4000))]);
  await new Promise((r) => setTimeout(r, 100)); // nothing more should follow
  sock.destroy();
  return { replies, closed };
}

function rawFrame(body: string | Buffer): Buffer {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(b.length);
  return Buffer.concat([h, b]);
}

t.test('bad control messages get error replies or a clean close, and the unit keeps serving', SLOW, async (t) => {
  const u = addressOf(unit);
  const codes = (r: { replies: Array<Record<string, unknown>> }) => r.replies.slice(1).map((x) => [x.id, x.type === 'ok' ? 'ok' : x.code]);
  const bad = await raw(u, [
    encodeFrame({ v: 1, id: 2, type: 'map', sessionId: 5, mapId: '1', extents: [{ page: 0, pages: 1 }], iova: '0', access: 'rw' }),
    encodeFrame({ v: 2, id: 3, type: 'ping' }),
    encodeFrame({ v: 1, id: 4, type: 'attach', client: 'x', credential: '', volume: 'v' }),
    encodeFrame({ v: 1, id: 5, type: 'frobnicate' }),
    rawFrame('{"v":1,"id":6,'),
    rawFrame('[1,2,3]'),
    rawFrame(Buffer.from([0xff, 0xfe, 0x00])),
    encodeFrame({ v: 1, id: 7, type: 'meta-read', offset: 0, length: 10 * MiB }),
    encodeFrame({ v: 1, id: 8, type: 'map', sessionId: '1', mapId: '1', extents: Array.from({ length: 5000 }, () => ({ page: 0, pages: 1 })), iova: '0', access: 'rw' }),
    encodeFrame({ v: 1, id: 9, type: 'ping', extra: true }),
    encodeFrame({ v: 1, id: 10, type: 'info' }),
  ], { replies: 12, ms: 15_000 });
  t.equal(bad.replies[0]?.type, 'ok', 'hello accepted');
  t.same(codes(bad), [
    [2, 'ERR_NPMU_PROTO_INVALID'],
    [3, 'ERR_NPMU_PROTO_VERSION'],
    [4, 'ERR_NPMU_PROTO_UNKNOWN_TYPE'],
    [5, 'ERR_NPMU_PROTO_UNKNOWN_TYPE'],
    [0, 'ERR_NPMU_PROTO_MALFORMED'],
    [0, 'ERR_NPMU_PROTO_MALFORMED'],
    [0, 'ERR_NPMU_PROTO_MALFORMED'],
    [7, 'ERR_NPMU_PROTO_INVALID'],
    [8, 'ERR_NPMU_PROTO_INVALID'],
    [9, 'ERR_NPMU_PROTO_INVALID'],
    [10, 'ok'],
  ]);
  t.equal(bad.closed, false, 'the connection survives well-framed bad messages');

  const huge = Buffer.alloc(4);
  huge.writeUInt32BE(0xffffffff);
  const h = await raw(u, [huge, Buffer.alloc(1000, 0x41)], { ms: 15_000 });
  t.same(codes(h), [[0, 'ERR_NPMU_PROTO_TOO_LARGE']], 'a huge length prefix: an error…');
  t.equal(h.closed, true, '…and a clean close');

  const truncated = rawFrame(JSON.stringify({ v: 1, id: 2, type: 'ping' })).subarray(0, 12);
  const tr = await raw(u, [truncated], { end: true, ms: 15_000 });
  t.same(codes(tr), [], 'a truncated frame then EOF: no reply');
  t.equal(tr.closed, true, 'and the connection is closed');

  const slow = await raw(u, [...rawFrame(JSON.stringify({ v: 1, id: 2, type: 'ping' }))].map((b) => Buffer.from([b])), { replies: 2, ms: 15_000 });
  t.same(codes(slow), [[2, 'ok']], 'a frame sent one byte at a time is fine');

  t.match(await ctl.request('ping', {}), { type: 'ok' }, 'the PMM connection kept working throughout');
  const fresh = await pmm(key, u);
  t.equal((await fresh.request('info', {})).unitId, unit.unitId, 'and new connections are served');
  fresh.close();
});

t.test('fencing: a claim of a higher epoch drops the older PMM at once; lower epochs are refused; revoke kills every rkey', SLOW, async (t) => {
  const u = addressOf(unit);
  const other = 'beef'.repeat(8);
  const before = unit.device.superblock.epoch;
  const old = await pmm(key, u); // the tests' PMM, at the current epoch
  const closed = new Promise<void>((r) => old.once('close', () => r()));
  const fresh = await ControlConnection.connect({ host: u.host, port: u.controlPort });
  const hello = await fresh.request('hello', { ticket: ticket(key, u, 'control') });
  t.equal(hello.holder, TEST_PMM);
  await t.rejects(fresh.request('meta-write', { offset: 0, data: Buffer.from('x'), persist: false }), { code: 'ERR_NPMU_FENCED' }, 'no state change before a claim');
  await t.rejects(fresh.request('claim', { epoch: hello.epoch, pmmId: other }), { code: 'ERR_NPMU_FENCED' }, 'the same epoch for another PMM');
  const r = await fresh.request('claim', { epoch: hello.epoch + 1, pmmId: other });
  t.match(r, { epoch: hello.epoch + 1, previousEpoch: hello.epoch, previousHolder: TEST_PMM });
  await closed; // the fenced PMM's connection is dropped by the unit itself
  t.equal(unit.device.superblock.epoch, hello.epoch + 1, 'persisted in the superblock');
  t.equal(unit.device.superblock.holder, other);
  const again = await ControlConnection.connect({ host: u.host, port: u.controlPort });
  const h2 = await again.request('hello', { ticket: ticket(key, u, 'control') });
  t.match(h2, { epoch: hello.epoch + 1, holder: other });
  await t.rejects(again.request('claim', { epoch: h2.epoch, pmmId: TEST_PMM }), { code: 'ERR_NPMU_FENCED' }, 'the same epoch for another PMM');
  await t.rejects(again.request('claim', { epoch: hello.epoch, pmmId: TEST_PMM }), { code: 'ERR_NPMU_FENCED' }, 'a lower epoch');
  await t.rejects(again.request('map', { sessionId: 1n, mapId: 1n, extents: [{ page: 0, pages: 1 }], iova: IOVA, access: 'rw' }), { code: 'ERR_NPMU_FENCED' });
  again.close();
  // revoke: a client's live mapping dies at once
  const m = await mapped(unit, fresh, [{ page: 3, pages: 1 }]);
  const buf = Buffer.alloc(64, 7);
  const mr = registerMemory(m.ep.pd, buf, { access: Access.LOCAL_WRITE });
  await m.ep.write(mr, 0, 64, IOVA, m.rkey);
  t.equal((await fresh.request('revoke', {})).mappings, 1);
  await t.rejects(m.ep.write(mr, 0, 64, IOVA, m.rkey), { code: 'IBV_WC_REM_ACCESS_ERR' }, "a revoked mapping's rkey is dead");
  mr.close();
  await m.ep.close();
  fresh.close();
  t.ok(unit.device.superblock.epoch > before);
  // the tests' PMM takes the unit back for the tests that follow
  ctl.close();
  ctl = await pmm(key, u);
});

t.test('kill -9 and restart of the unit daemon (tmpfs file): data and metadata intact, no mapping alive', SLOW, async (t) => {
  await restartCheck(t, `/dev/shm/npmu-unit-restart-${process.pid}`, ['--create-size', '16M', '--format']);
});

async function restartCheck(t: Test, device: string, formatArgs: string[]): Promise<void> {
  const keyFile = writeKeyFile('/tmp', key);
  t.teardown(() => fs.rmSync(keyFile, { force: true }));
  if (device.startsWith('/dev/shm/')) t.teardown(() => fs.rmSync(device, { force: true }));
  const first = await startUnitProcess(['--device', device, '--key-file', keyFile, ...formatArgs]);
  t.equal(first.ready.formatted, true);
  const u: UnitAddress = first.ready;
  const ps = first.ready.pageSize;
  let c = await pmm(key, u);
  const metaToken = Buffer.from(`metadata ${Date.now()}`);
  await c.request('meta-write', { offset: 123, data: metaToken, persist: true });
  const sid = newSession();
  const ep = await client(key, u, sid);
  const extents = [{ page: 2, pages: 1 }, { page: 0, pages: 1 }];
  const { rkey } = await c.request('map', { sessionId: sid, mapId: '1', extents, iova: IOVA, access: 'rw' });
  const data = Buffer.from(`data across the seam ${Date.now()}`);
  const at = IOVA + BigInt(ps - 10);
  await rdma(ep, 'write', data, at, rkey);
  await rdma(ep, 'read', Buffer.alloc(8), at, rkey); // read-after-write: the write has landed
  const p = await c.request('persist', { page: 2, offset: ps - 10, length: 10 });
  t.equal(p.method, first.ready.durability === 'pmem' ? 'pmem' : 'msync');
  await c.request('persist', { page: 0, offset: 0, length: data.length - 10 });

  first.child.kill('SIGKILL');
  t.match(await first.exited, { signal: 'SIGKILL' }, 'the unit was killed');
  c.destroy();
  await ep.close();

  const second = await startUnitProcess(['--device', device, '--key-file', keyFile]);
  t.match(second.ready, { unitId: u.unitId, formatted: false }, 'the same unit, recognised, not reformatted');
  const u2: UnitAddress = second.ready;
  c = await pmm(key, u2);
  t.same((await c.request('sessions', {})).sessions, [], 'no session and no mapping survive a restart');
  t.equal((await c.request('info', {})).mappings, 0);
  const meta = await c.request('meta-read', { offset: 123, length: metaToken.length });
  t.equal(Buffer.from(meta.data, 'base64').toString(), metaToken.toString(), 'the metadata area is intact');

  const sid2 = newSession();
  const ep2 = await client(key, u2, sid2);
  await expectAccessError(t, rdma(ep2, 'read', Buffer.alloc(8), at, rkey), 'the old rkey is dead after the restart');
  await ep2.close();
  const sid3 = newSession();
  const ep3 = await client(key, u2, sid3);
  const again = await c.request('map', { sessionId: sid3, mapId: '1', extents, iova: IOVA, access: 'ro' });
  const back = Buffer.alloc(data.length);
  await rdma(ep3, 'read', back, at, again.rkey);
  t.equal(back.toString(), data.toString(), 'the data is intact once the PMM maps it again');
  await ep3.close();
  c.close();

  second.child.kill('SIGTERM');
  t.match(await second.exited, { code: 0 }, 'SIGTERM: a clean shutdown');
}

/**
 * A directory on an ordinary file system (not tmpfs, not DAX): in the VM an
 * ext4 on a loop device of our own (the VM has no disk); natively the
 * project's .cache.
 */
function ordinaryDir(t: Test): string {
  if (!process.env.NPMU_IN_VM) {
    const d = fs.mkdtempSync(path.join(__dirname, '..', '..', '..', '.cache', 'npmu-unit-file-'));
    t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
    return d;
  }
  const mnt = `/tmp/npmu-unit-ext4-${process.pid}`;
  t.teardown(mountExt4(`${mnt}.img`, mnt, 64 * MiB));
  return mnt;
}

t.test('an ordinary-file unit: msync durability, persist-range, bytes in the file', SLOW, async (t) => {
  const file = path.join(ordinaryDir(t), 'unit.img');
  const u = await startUnit(file, { create: { size: 8 * MiB }, format: { label: 'file-unit' } });
  const c = await pmm(key, addressOf(u));
  t.match(await c.request('info', {}), { durability: 'msync', pageSize: 4096 });
  const m = await mapped(u, c, [{ page: 7, pages: 1 }, { page: 2, pages: 1 }]);
  const data = Buffer.from(`durable once persisted ${Date.now()}`);
  await rdma(m.ep, 'write', data, IOVA + 4096n - 16n, m.rkey);
  const cc = await ControlConnection.connect({ host: u.host, port: u.controlPort });
  await cc.request('hello', { ticket: ticket(key, u, 'client', m.sid) });
  t.equal((await cc.request('persist-range', { sessionId: m.sid, mapId: '1', offset: 4096 - 16, length: data.length })).method, 'msync');
  const { dataOffset } = u.device.superblock;
  const f = fs.readFileSync(file);
  const got = Buffer.concat([f.subarray(dataOffset + 7 * 4096 + 4096 - 16, dataOffset + 8 * 4096), f.subarray(dataOffset + 2 * 4096, dataOffset + 2 * 4096 + data.length - 16)]);
  t.equal(got.toString(), data.toString(), 'the bytes are in the file, split across device pages 7 and 2');
  cc.close();
  await m.ep.close();
  c.close();
  await u.close();
});

t.test('devdax unit: pages of the device alignment (4 KiB), pmem durability, translation and persist', SLOW, async (t) => {
  const dax = requireDax(t)?.at(-1); // the last NVDIMM: others may hold other tests' data
  if (!dax) return; // failed: NVDIMMs are required
  const u = await startUnit(dax, { format: { label: 'dax-unit' }, force: true });
  t.teardown(() => u.close());
  const c = await pmm(key, addressOf(u));
  const info = await c.request('info', {});
  const align = daxAlignment(dax);
  t.match(info, { pageSize: align, durability: 'pmem' });
  t.equal(align, 4096, "the test bed's devdax namespaces have 4 KiB alignment: regions of 4 KiB granularity");
  t.ok(info.dataPages >= 8, `${info.dataPages} data pages`);
  await checkTranslation(t, u, c);
  t.equal((await c.request('persist', { page: 5, offset: align - 50, length: 100 })).method, 'pmem');
  c.close();

  // The CLI reads the superblock of a device in use and asks the live unit.
  const keyFile = writeKeyFile('/tmp', key);
  t.teardown(() => fs.rmSync(keyFile, { force: true }));
  const cli = path.join(__dirname, '..', '..', 'unit', 'main.js');
  const args = ['info', '--device', dax, '--json', '--host', u.host, '--control-port', String(u.controlPort), '--key-file', keyFile];
  const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const p = spawn(process.execPath, [cli, ...args]);
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    p.on('close', (code) => resolve({ code, out, err }));
  });
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), {
    kind: 'devdax',
    durability: 'pmem',
    unitId: u.unitId,
    label: 'dax-unit',
    pageSize: align,
    live: { unitId: u.unitId, durability: 'pmem', mappings: 0, connections: [] },
  });
});

t.test('persistence domain: reported in hello and info, overridable on devdax only; test-only shadow mode', SLOW, async (t) => {
  const dax = requireDax(t)?.at(-1); // the last NVDIMM: others may hold other tests' data
  if (!dax) return; // failed: NVDIMMs are required
  // A tmpfs unit reports 'none' and refuses both devdax-only options with a clear error.
  const hc = await ControlConnection.connect({ host: unit.host, port: unit.controlPort });
  const hello = await hc.request('hello', { ticket: ticket(key, addressOf(unit), 'control') });
  hc.close();
  t.equal(hello.persistDomain, 'none', 'a tmpfs unit: none');
  t.match((await ctl.request('info', {})), { persistDomain: 'none', shadow: false });
  const tmp = UnitDevice.open(`${shmPath}-pd`, { create: { size: 4 * MiB }, format: {} });
  t.teardown(() => fs.rmSync(`${shmPath}-pd`, { force: true }));
  for (const bad of [{ persistDomain: 'cpu_cache' as const }, { shadow: true }, { persistDomain: 'eadr' as never }]) {
    await t.rejects(UnitServer.start({ device: tmp, key, host: rdmaAddress(), rdmaDevice: deviceName(), ...bad }), { code: 'ERR_INVALID_ARG_VALUE' }, JSON.stringify(bad));
  }
  tmp.close();

  // devdax: sysfs says what it says here (rxe-vm.sh without --nvdimm-persistence: none); the override wins.
  const dev = UnitDevice.open(dax, { format: { label: 'shadow' }, force: true });
  const sysfs = dev.persistDomain;
  t.ok(['cpu_cache', 'memory_controller', 'none'].includes(sysfs), `sysfs: ${sysfs}`);
  const u = await UnitServer.start({ device: dev, key, host: rdmaAddress(), rdmaDevice: deviceName(), persistDomain: 'memory_controller', shadow: true, log: (l) => logs.push(l) });
  t.teardown(() => u.close());
  const c = await pmm(key, addressOf(u));
  t.match(await c.request('info', {}), { persistDomain: 'memory_controller', shadow: true, durability: 'pmem' });
  const { pageSize: ps, dataOffset } = u.device.superblock;
  // Shadow: a WRITE lands in DRAM only; persist-range (or persist) copies exactly its range to the device.
  const m = await mapped(u, c, [{ page: 3, pages: 1 }, { page: 1, pages: 1 }]);
  // Unique per run: the NVDIMM image (and its data pages) outlives a run.
  const stamp = Date.now().toString(36);
  const a = Buffer.from(`persisted across the seam of pages 3 and 1 ${stamp}`);
  const b = Buffer.from(`never persisted ${stamp}`);
  await rdma(m.ep, 'write', a, IOVA + BigInt(ps - 10), m.rkey);
  await rdma(m.ep, 'write', b, IOVA + BigInt(ps + 1000), m.rkey);
  const back = Buffer.alloc(a.length);
  await rdma(m.ep, 'read', back, IOVA + BigInt(ps - 10), m.rkey);
  t.same(back, a, 'RDMA reads the shadow');
  const onDevice = (off: number, n: number): Buffer => peek(dax, off, n);
  const at3 = dataOffset + 3 * ps + ps - 10;
  const at1 = dataOffset + 1 * ps;
  t.not(onDevice(at3, 10).toString(), a.subarray(0, 10).toString(), 'not on the device before persist-range');
  const cc = await ControlConnection.connect({ host: u.host, port: u.controlPort });
  await cc.request('hello', { ticket: ticket(key, addressOf(u), 'client', m.sid) });
  t.equal((await cc.request('persist-range', { sessionId: m.sid.toString(), mapId: '1', offset: ps - 10, length: a.length })).method, 'pmem');
  t.equal(onDevice(at3, 10).toString() + onDevice(at1, a.length - 10).toString(), a.toString(), 'persist-range copied the range through both extents');
  t.not(onDevice(at1 + 1000, b.length).toString(), b.toString(), 'an unpersisted write is not on the device');
  t.equal((await c.request('persist', { page: 1, offset: 1000, length: b.length })).method, 'pmem');
  t.equal(onDevice(at1 + 1000, b.length).toString(), b.toString(), 'persist (page, offset) copied it');
  const d = Buffer.from(`persisted by a SEND ${stamp}`);
  await rdma(m.ep, 'write', d, IOVA + BigInt(ps + 2000), m.rkey);
  t.not(onDevice(at1 + 2000, d.length).toString(), d.toString(), 'not on the device before the persist request');
  t.same(await persistOverRdma(m.ep, { seq: 1, mapId: 1n, offset: BigInt(ps + 2000), length: BigInt(d.length) }), { seq: 1, status: 'ok', method: 'pmem' });
  t.equal(onDevice(at1 + 2000, d.length).toString(), d.toString(), 'a persist request over RDMA copied it');
  cc.close();
  await m.ep.close();
  c.close();
});

t.test('kill -9 and restart of the unit daemon (devdax)', SLOW, async (t) => {
  const dax = requireDax(t)?.at(-1); // the last NVDIMM: others may hold other tests' data
  if (!dax) return; // failed: NVDIMMs are required
  await restartCheck(t, dax, ['--format', '--force']);
});

t.test('server close drops everything; nothing leaked by this file', SLOW, async (t) => {
  const u = await startUnit(`${shmPath}-close`, { create: { size: 4 * MiB }, format: {} });
  const c = await pmm(key, addressOf(u));
  const m = await mapped(u, c, [{ page: 1, pages: 1 }]);
  const disconnected = new Promise<void>((r) => (m.ep.onEvent = (e) => e.type === 'disconnected' && r()));
  await u.close();
  await disconnected;
  t.pass('the client saw its connection go');
  t.equal(u.device.closed, true);
  await m.ep.close();
  c.destroy();
  fs.rmSync(`${shmPath}-close`, { force: true });
  ctl.close();
  await unit.close();
  fs.rmSync(shmPath, { force: true });
  const live = native().liveObjects();
  t.same(live, liveBefore, 'contexts, PDs, mappings, MRs, endpoints and listeners back where they were');
  if (t.passing() === false || process.env.NPMU_TEST_VERBOSE) t.comment(logs.join('\n'));
});
