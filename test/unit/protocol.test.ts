import t from 'tap';
import * as net from 'node:net';
import { once } from 'node:events';
import { NpmuError } from '../../lib/errors';
import {
  ControlConnection,
  FieldSpec,
  FrameDecoder,
  FrameResult,
  Handler,
  MAX_EXTENTS,
  MAX_FRAME,
  MESSAGES,
  META_IO_MAX,
  MessageType,
  ObjectSpec,
  PROTOCOL_VERSION,
  Request,
  ServeOptions,
  ServerConnection,
  checkValue,
  decodeBytes,
  encodeFrame,
  parseU64,
  schema,
  serve,
  typesServedBy,
  validateReply,
  validateRequest,
} from '../../lib/protocol';

// ---------------------------------------------------------------------------
// A valid example of every request and its reply.
// ---------------------------------------------------------------------------

const UNIT_A = '0123456789abcdef0123456789abcdef';
const UNIT_B = 'fedcba9876543210fedcba9876543210';
const VOL_ID = '00000000000000000000000000000abc';
const PMM_ID = '11111111111111111111111111111111';
const TICKET = Buffer.alloc(52, 0x4e).toString('base64');
const half = (unitId: string, mapId: string) => ({
  unitId,
  mapId,
  iova: '18446744073709551615',
  rkey: 0xfffffff0,
  durability: 'msync',
  available: true,
});
const unitStatus = (unitId: string, p: number) => ({ unitId, host: 'node-1.example', controlPort: p, available: true, durability: 'pmem' });

const EXAMPLES: Record<MessageType, { request: Record<string, unknown>; reply: Record<string, unknown> }> = {
  ping: { request: {}, reply: {} },
  hello: {
    request: { ticket: TICKET },
    reply: {
      unitId: UNIT_A,
      role: 'primary',
      volumeId: VOL_ID,
      label: 'vol0 primary',
      capacity: 2 ** 40,
      pageSize: 2 * 1024 * 1024,
      dataPages: 524287,
      metaLength: 2 * 1024 * 1024 - 8192,
      durability: 'pmem',
      layoutVersion: 2,
      generation: 3,
      epoch: 4,
      holder: UNIT_B,
    },
  },
  claim: { request: { epoch: 5, pmmId: UNIT_B }, reply: { epoch: 5, previousEpoch: 4, previousHolder: UNIT_A } },
  revoke: { request: {}, reply: { mappings: 3 } },
  info: {
    request: {},
    reply: {
      unitId: UNIT_A,
      capacity: 64 * 1024 * 1024,
      pageSize: 4096,
      dataPages: 16128,
      usedPages: 12,
      durability: 'volatile',
      connections: [
        { sessionId: '1', remoteAddress: '192.168.1.7', mappings: 2 },
        { sessionId: '9007199254740993', remoteAddress: 'fe80::1%eth0', mappings: 0 },
      ],
      mappings: 2,
    },
  },
  'format-volume': { request: { volumeId: VOL_ID, role: 'mirror', label: 'vol0 mirror', force: false }, reply: { generation: 2 } },
  'meta-read': { request: { offset: 4096, length: META_IO_MAX }, reply: { data: Buffer.from('metadata bytes').toString('base64') } },
  'meta-write': { request: { offset: 0, data: Buffer.alloc(100, 1).toString('base64'), persist: true }, reply: {} },
  'set-usage': { request: { usedPages: 77 }, reply: {} },
  map: {
    request: {
      sessionId: '42',
      mapId: '7',
      extents: [
        { page: 10, pages: 4 },
        { page: 2, pages: 1 },
      ],
      iova: '140737488355328',
      access: 'rw',
    },
    reply: { rkey: 0x1234, iova: '140737488355328', length: 5 * 4096 },
  },
  unmap: { request: { sessionId: '42', mapId: '7' }, reply: {} },
  persist: { request: { page: 3, offset: 100, length: 8000 }, reply: { method: 'msync' } },
  sessions: {
    request: {},
    reply: { sessions: [{ sessionId: '42', remoteAddress: '10.0.0.2', connectedAtMs: 1_750_000_000_000, mapIds: ['7', '8'] }] },
  },
  'persist-range': { request: { sessionId: '42', mapId: '7', offset: 0, length: 64 }, reply: { method: 'pmem' } },
  attach: {
    request: { client: 'wal-writer@db1', credential: Buffer.from('secret').toString('base64'), volume: 'vol0' },
    reply: {
      sessionId: '42',
      pmmId: PMM_ID,
      tickets: { primary: TICKET, mirror: TICKET },
      units: {
        primary: { host: '10.0.0.1', rdmaPort: 7471, controlPort: 7470, unitId: UNIT_A, available: true },
        mirror: { host: '10.0.1.1', rdmaPort: 7471, controlPort: 7470, unitId: UNIT_B, available: false },
      },
    },
  },
  'create-region': {
    request: { volume: 'vol0', name: 'wal tail ✓', size: 1 << 20, basePointer: '12297829382473034752', durable: true },
    reply: {},
  },
  'delete-region': { request: { volume: 'vol0', name: 'wal tail ✓' }, reply: {} },
  'open-region': {
    request: { volume: 'vol0', name: 'wal tail ✓' },
    reply: {
      handleId: 1,
      name: 'wal tail ✓',
      size: 1 << 20,
      basePointer: '12297829382473034752',
      pmmId: PMM_ID,
      durable: true,
      primary: half(UNIT_A, '7'),
      mirror: { ...half(UNIT_B, '0'), iova: '0', rkey: 0, available: false },
    },
  },
  'close-region': { request: { handleId: 1 }, reply: {} },
  'list-regions': { request: { volume: 'vol0', max: 2 }, reply: { names: ['a', 'b'], count: 5 } },
  'read-attributes': {
    request: { volume: 'vol0', name: 'a' },
    reply: {
      attrs: {
        name: 'a',
        size: 4096,
        basePointer: '0',
        owner: 'wal-writer@db1',
        createdAtMs: 1_750_000_000_000,
        lastOpenAtMs: 0,
        durable: false,
        durability: 'volatile',
        pages: 1,
        openCount: 0,
      },
    },
  },
  'volume-status': {
    request: { volume: 'vol0' },
    reply: {
      volume: 'vol0',
      volumeId: VOL_ID,
      state: 'degraded',
      pageSize: 4096,
      totalPages: 1000,
      usedPages: 10,
      regions: 3,
      primary: unitStatus(UNIT_A, 7470),
      mirror: { ...unitStatus(UNIT_B, 7480), available: false, sync: 'stale' },
      reason: 'the mirror missed updates',
      epoch: 7,
      generation: 12,
      resync: { half: 'mirror', done: 4096, total: 65536 },
    },
  },
  'volume-resync': { request: { volume: 'vol0' }, reply: { half: 'mirror', regions: 2, bytes: 8192 } },
  'volume-force': { request: { volume: 'vol0', half: 'primary' }, reply: { stale: 'mirror' } },
  'mark-stale': { request: { volume: 'vol0', half: 'mirror', reason: 'RDMA write failed' }, reply: {} },
  'create-volume': {
    request: { volume: 'vol0', primary: { host: '10.0.0.1', controlPort: 7470 }, mirror: { host: '::1', controlPort: 7480 } },
    reply: { volumeId: VOL_ID },
  },
};

const TYPES = Object.keys(MESSAGES) as MessageType[];
const req = (type: string, body: Record<string, unknown>, id = 5) => ({ ...body, v: 1, id, type });

// ---------------------------------------------------------------------------
// Helpers: servers and raw peers on 127.0.0.1
// ---------------------------------------------------------------------------

interface TestServer {
  port: number;
  conns: ServerConnection[];
  close(): Promise<void>;
}

async function startServer(handler: Handler, opts: ServeOptions = {}): Promise<TestServer> {
  const conns: ServerConnection[] = [];
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    conns.push(serve(sock, handler, opts));
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as net.AddressInfo).port;
  return {
    port,
    conns,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

/** A raw TCP peer that writes arbitrary bytes and reads frames. */
class Peer {
  sock: net.Socket;
  decoder = new FrameDecoder();
  frames: FrameResult[] = [];
  waiters: Array<() => void> = [];
  ended = false;
  closed: Promise<void>;

  constructor(sock: net.Socket) {
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('data', (c: Buffer) => {
      this.frames.push(...this.decoder.push(c));
      this.wake();
    });
    sock.on('error', () => {});
    this.closed = new Promise((r) =>
      sock.on('close', () => {
        this.ended = true;
        this.wake();
        r();
      }),
    );
  }

  static async connect(port: number): Promise<Peer> {
    const sock = net.connect({ host: '127.0.0.1', port });
    await once(sock, 'connect');
    return new Peer(sock);
  }

  wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The next frame, or undefined if the connection closes first. */
  async next(timeoutMs = 5000): Promise<Record<string, unknown> | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      if (this.ended) return undefined;
      if (Date.now() > deadline) throw new Error('timed out waiting for a frame');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const f = this.frames.shift()!;
    if (!f.ok) throw new Error(`peer got an unreadable frame: ${f.message}`);
    return f.msg;
  }

  send(msg: object): void {
    this.sock.write(encodeFrame(msg));
  }

  raw(bytes: Uint8Array): void {
    this.sock.write(bytes);
  }
}

function rawFrame(body: string | Buffer): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const h = Buffer.alloc(4);
  h.writeUInt32BE(b.length);
  return Buffer.concat([h, b]);
}

const echoExamples: Handler = (msg) => EXAMPLES[msg.type].reply;

// ---------------------------------------------------------------------------
// The table and the examples
// ---------------------------------------------------------------------------

t.test('every message type has an example, and every example validates', async (t) => {
  t.same(Object.keys(EXAMPLES).sort(), [...TYPES].sort());
  for (const type of TYPES) {
    const r = validateRequest(req(type, EXAMPLES[type].request));
    t.ok(r.ok, `${type} request: ${r.ok ? '' : r.message}`);
    const p = validateReply(type, { v: 1, id: 5, type: 'ok', ...EXAMPLES[type].reply });
    t.ok(p.ok, `${type} reply: ${p.ok ? '' : p.message}`);
  }
  t.same(typesServedBy('unit').sort(), ['claim', 'format-volume', 'hello', 'info', 'map', 'meta-read', 'meta-write', 'persist', 'persist-range', 'ping', 'revoke', 'sessions', 'set-usage', 'unmap']);
  t.same(typesServedBy('pmm').sort(), ['attach', 'close-region', 'create-region', 'create-volume', 'delete-region', 'list-regions', 'mark-stale', 'open-region', 'ping', 'read-attributes', 'volume-force', 'volume-resync', 'volume-status']);
  t.ok(Math.ceil(META_IO_MAX / 3) * 4 + 200 < MAX_FRAME, 'a full meta-read reply fits in a frame');
});

t.test('round trip of every message type over loopback TCP', async (t) => {
  const seen: Request[] = [];
  const srv = await startServer((msg) => {
    seen.push(msg);
    return EXAMPLES[msg.type].reply;
  });
  t.teardown(() => srv.close());
  const conn = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  t.teardown(() => conn.destroy());
  for (const type of TYPES) {
    const reply = await conn.request(type, EXAMPLES[type].request as never);
    t.same(reply, { ...EXAMPLES[type].reply, v: PROTOCOL_VERSION, id: reply.id, type: 'ok' }, type);
    t.same(seen.at(-1), { ...EXAMPLES[type].request, v: 1, id: reply.id, type }, `${type} arrived intact`);
  }
  t.equal(conn.pending, 0);
});

t.test('typed requests: bigint u64 and Uint8Array bytes are converted', async (t) => {
  let got: Request | undefined;
  const srv = await startServer((msg) => {
    got = msg;
    if (msg.type === 'map') return { rkey: 9, iova: 2n ** 64n - 1n, length: 4096 };
    if (msg.type === 'meta-read') return { data: Buffer.from([1, 2, 3]) };
    return {};
  });
  t.teardown(() => srv.close());
  const conn = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  t.teardown(() => conn.destroy());
  const m = await conn.request('map', { sessionId: 5n, mapId: 2n ** 63n, extents: [{ page: 0, pages: 1 }], iova: '0', access: 'ro' });
  t.equal(m.rkey, 9);
  t.equal(m.iova, '18446744073709551615');
  t.equal(parseU64(m.iova), 2n ** 64n - 1n);
  t.match(got, { type: 'map', sessionId: '5', mapId: '9223372036854775808' });
  const w = await conn.request('meta-write', { offset: 0, data: new Uint8Array([0xde, 0xad]), persist: false });
  t.equal(w.type, 'ok');
  t.match(got, { type: 'meta-write', data: '3q0=' });
  const r = await conn.request('meta-read', { offset: 0, length: 3 });
  t.same(decodeBytes(r.data), Buffer.from([1, 2, 3]));
});

// ---------------------------------------------------------------------------
// Validation, field by field
// ---------------------------------------------------------------------------

/** A value of the wrong type for a spec. */
function wrongValue(spec: FieldSpec): unknown {
  switch (spec.kind) {
    case 'string':
      return 12;
    case 'uint':
      return '12';
    case 'u64':
      return 12;
    case 'bool':
      return 'true';
    case 'enum':
      return 'no-such-value';
    case 'bytes':
      return '*not base64*';
    case 'array':
      return { length: 0 };
    case 'object':
      return [];
  }
}

interface Site {
  path: string;
  container: Record<string, unknown>;
  key: string;
  spec: FieldSpec;
}

/** Every field present in an example, with the object holding it (arrays: first element). */
function sites(spec: ObjectSpec, value: Record<string, unknown>, path = ''): Site[] {
  const out: Site[] = [];
  for (const [key, s] of Object.entries(spec.fields)) {
    if (!(key in value)) continue;
    const p = path === '' ? key : `${path}.${key}`;
    out.push({ path: p, container: value, key, spec: s });
    const v = value[key];
    if (s.kind === 'object') out.push(...sites(s, v as Record<string, unknown>, p));
    if (s.kind === 'array' && s.of.kind === 'object' && Array.isArray(v) && v.length > 0) {
      out.push(...sites(s.of, v[0] as Record<string, unknown>, `${p}[0]`));
    }
  }
  return out;
}

function objectPaths(spec: ObjectSpec, value: Record<string, unknown>, path = ''): Array<[string, (root: Record<string, unknown>) => Record<string, unknown>]> {
  const out: Array<[string, (root: Record<string, unknown>) => Record<string, unknown>]> = [[path, (r) => r]];
  for (const site of sites(spec, value, '')) {
    if (site.spec.kind === 'object') {
      const parts = site.path;
      out.push([parts, (r) => dig(r, parts) as Record<string, unknown>]);
    }
    if (site.spec.kind === 'array' && site.spec.of.kind === 'object' && (site.container[site.key] as unknown[]).length > 0) {
      const parts = `${site.path}[0]`;
      out.push([parts, (r) => dig(r, parts) as Record<string, unknown>]);
    }
  }
  return out;
}

function dig(root: unknown, path: string): unknown {
  let cur = root;
  for (const part of path.match(/[^.[\]]+/g) ?? []) cur = (cur as Record<string, unknown>)[part];
  return cur;
}

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

t.test('each field: wrong type, missing, unknown sibling — requests', async (t) => {
  let checked = 0;
  for (const type of TYPES) {
    const spec = MESSAGES[type].request;
    const example = EXAMPLES[type].request;
    for (const site of sites(spec, example)) {
      const bad = clone(example);
      const target = site.path.includes('.') || site.path.includes('[') ? (dig(bad, site.path.replace(/\.[^.]+$/, '')) as Record<string, unknown>) : bad;
      target[site.key] = wrongValue(site.spec);
      const r = validateRequest(req(type, bad, 77));
      t.match(r, { ok: false, code: 'ERR_NPMU_PROTO_INVALID', id: 77 }, `${type}.${site.path} wrong type`);
      if (!r.ok) t.ok(r.message.includes(site.path), `message names ${site.path}: ${r.message}`);
      if (!site.spec.optional) {
        const miss = clone(example);
        const holder = site.path.includes('.') || site.path.includes('[') ? (dig(miss, site.path.replace(/\.[^.]+$/, '')) as Record<string, unknown>) : miss;
        delete holder[site.key];
        const m = validateRequest(req(type, miss));
        t.match(m, { ok: false, code: 'ERR_NPMU_PROTO_INVALID', message: new RegExp(`${site.path.replace(/[[\]]/g, '\\$&')}: missing`) }, `${type}.${site.path} missing`);
      }
      checked++;
    }
    for (const [path, get] of objectPaths(spec, example)) {
      const extra = clone(example);
      get(extra).surprise = 1;
      const r = validateRequest(req(type, extra));
      const want = path === '' ? 'surprise' : `${path}.surprise`;
      t.match(r, { ok: false, code: 'ERR_NPMU_PROTO_INVALID', message: `${want}: unknown field` }, `${type} unknown field at ${want}`);
    }
  }
  t.ok(checked > 40, `${checked} fields checked`);
});

t.test('each field: wrong type, missing, unknown sibling — replies', async (t) => {
  for (const type of TYPES) {
    const spec = MESSAGES[type].reply;
    const example = EXAMPLES[type].reply;
    for (const site of sites(spec, example)) {
      const bad = clone(example);
      const holder = site.path.includes('.') || site.path.includes('[') ? (dig(bad, site.path.replace(/\.[^.]+$/, '')) as Record<string, unknown>) : bad;
      holder[site.key] = wrongValue(site.spec);
      const r = validateReply(type, { v: 1, id: 3, type: 'ok', ...bad });
      t.match(r, { ok: false, code: 'ERR_NPMU_PROTO_INVALID' }, `${type} reply ${site.path}`);
    }
    for (const [path, get] of objectPaths(spec, example)) {
      const extra = clone(example);
      get(extra).surprise = 1;
      t.match(validateReply(type, { v: 1, id: 3, type: 'ok', ...extra }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID' }, `${type} reply unknown at ${path || 'top'}`);
    }
  }
});

t.test('envelope checks', async (t) => {
  const ping = { v: 1, id: 9, type: 'ping' };
  t.match(validateRequest(ping), { ok: true });
  t.match(validateRequest({ id: 9, type: 'ping' }), { ok: false, code: 'ERR_NPMU_PROTO_VERSION', id: 9 });
  for (const v of [0, 2, '1', 1.0000001, null]) {
    t.match(validateRequest({ ...ping, v }), { ok: false, code: 'ERR_NPMU_PROTO_VERSION', id: 9 }, `v=${JSON.stringify(v)}`);
  }
  for (const id of [undefined, -1, 2 ** 32, 1.5, '9', null]) {
    t.match(validateRequest({ ...ping, id }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID', id: 0, message: /id/ }, `id=${JSON.stringify(id)}`);
  }
  t.match(validateRequest({ ...ping, id: 0 }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID', id: 0 });
  t.match(validateRequest({ ...ping, id: 2 ** 32 - 1 }), { ok: true });
  t.match(validateRequest({ v: 1, id: 9 }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID', message: /type/ });
  t.match(validateRequest({ ...ping, type: 7 }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID', message: /type/ });
  for (const type of ['nope', 'toString', '__proto__', 'constructor', 'ok', 'error', '']) {
    t.match(validateRequest({ ...ping, type }), { ok: false, code: 'ERR_NPMU_PROTO_UNKNOWN_TYPE', id: 9 }, `type ${type}`);
  }
  t.match(validateRequest({ ...ping, type: 'attach' }, { types: typesServedBy('unit') }), { ok: false, code: 'ERR_NPMU_PROTO_UNKNOWN_TYPE' });
  for (const m of [null, [], 'ping', 7]) t.match(validateRequest(m), { ok: false, code: 'ERR_NPMU_PROTO_MALFORMED', id: 0 });
  t.match(validateRequest(JSON.parse('{"v":1,"id":9,"type":"ping","__proto__":{"x":1}}')), {
    ok: false,
    code: 'ERR_NPMU_PROTO_INVALID',
    message: /__proto__.*unknown field/,
  });

  t.match(validateReply('ping', { v: 1, id: 4, type: 'ok' }), { ok: true });
  t.match(validateReply('ping', { v: 1, id: 4, type: 'error', code: 'ERR_NPMU_X', message: 'm' }), { ok: true, msg: { type: 'error' } });
  t.match(validateReply('ping', { v: 1, id: 4, type: 'error', code: 'lowercase', message: 'm' }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID' });
  t.match(validateReply('ping', { v: 1, id: 4, type: 'error', code: 'E' }), { ok: false, message: /message: missing/ });
  t.match(validateReply('ping', { v: 1, id: 4, type: 'maybe' }), { ok: false, code: 'ERR_NPMU_PROTO_INVALID' });
  t.match(validateReply('ping', { v: 2, id: 4, type: 'ok' }), { ok: false, code: 'ERR_NPMU_PROTO_VERSION' });
  t.match(validateReply('nope' as MessageType, { v: 1, id: 4, type: 'ok' }), { ok: false, code: 'ERR_NPMU_PROTO_UNKNOWN_TYPE' });
  t.match(validateReply('map', { v: 1, id: 4, type: 'ok', rkey: 1, iova: '1' }), { ok: false, message: /length: missing/ });
});

t.test('value checks at their edges', async (t) => {
  const ok = (spec: FieldSpec, v: unknown, name: string) => t.equal(checkValue(spec, v), undefined, `accepts ${name}`);
  const bad = (spec: FieldSpec, v: unknown, name: string) => t.type(checkValue(spec, v, 'f'), 'string', `rejects ${name}`);
  const u64 = schema.u64();
  ok(u64, '0', '0');
  ok(u64, '18446744073709551615', '2^64-1');
  for (const v of ['18446744073709551616', '99999999999999999999', '100000000000000000000', '01', '-1', '', ' 1', '1 ', '1e3', '0x10', '+1', '1.0']) bad(u64, v, `u64 ${JSON.stringify(v)}`);
  for (const v of [1, 1n, null, true]) bad(u64, v, `u64 ${typeof v}`);
  const uint = schema.uint();
  ok(uint, 0, '0');
  ok(uint, Number.MAX_SAFE_INTEGER, '2^53-1');
  for (const v of [-1, 1.5, 2 ** 53, Infinity, NaN, '1', null, true]) bad(uint, v, `uint ${String(v)}`);
  bad(schema.uint({ max: 10 }), 11, 'uint over max');
  bad(schema.uint({ min: 1 }), 0, 'uint under min');
  const name = MESSAGES['create-region'].request.fields.name;
  ok(name, 'é'.repeat(32), '64 UTF-8 bytes');
  bad(name, 'é'.repeat(32) + 'x', '65 UTF-8 bytes');
  bad(name, '', 'empty name');
  bad(name, 'a\0b', 'NUL');
  bad(name, 'a\ud800b', 'lone surrogate');
  ok(name, '😀', 'astral character');
  const vol = MESSAGES['create-region'].request.fields.volume;
  ok(vol, 'vol_0.a-b', 'volume name');
  for (const v of ['-vol', '.vol', 'vol/0', 'vol 0', 'x'.repeat(65)]) bad(vol, v, `volume ${v}`);
  const cred = MESSAGES.attach.request.fields.credential;
  ok(cred, Buffer.alloc(256).toString('base64'), '256 bytes');
  ok(cred, '', '0 bytes');
  bad(cred, Buffer.alloc(257).toString('base64'), '257 bytes');
  for (const v of ['abc', 'ab=c', 'a===', '@@@@', 'YQ', 'YQ==\n', ' YQ==']) bad(cred, v, `base64 ${JSON.stringify(v)}`);
  ok(cred, 'YQ==', 'padded 1 byte');
  ok(cred, 'YWI=', 'padded 2 bytes');
  bad(MESSAGES['meta-write'].request.fields.data, '', 'empty metadata write');
  const extents = MESSAGES.map.request.fields.extents;
  ok(extents, Array.from({ length: MAX_EXTENTS }, (_, i) => ({ page: i, pages: 1 })), `${MAX_EXTENTS} extents`);
  bad(extents, Array.from({ length: MAX_EXTENTS + 1 }, (_, i) => ({ page: i, pages: 1 })), `${MAX_EXTENTS + 1} extents`);
  bad(extents, [], 'no extents');
  t.match(checkValue(extents, [{ page: 1, pages: 1 }, { page: 2, pages: 0 }], 'extents'), /^extents\[1\]\.pages: 0 is out of range/);
  t.match(checkValue(schema.object({}), { 'we ird': 1 }), /\["we ird"\]: unknown field/);
  bad(MESSAGES['meta-read'].request.fields.length, META_IO_MAX + 1, 'meta-read over the limit');
  bad(schema.enum('a', 'b'), 'c', 'enum');
  bad(schema.bool(), 0, 'bool 0');
  t.throws(() => parseU64('01'), { code: 'ERR_INVALID_ARG_VALUE' });
});

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

t.test('encodeFrame', async (t) => {
  const f = encodeFrame({ v: 1, id: 1, type: 'ping' });
  t.equal(f.readUInt32BE(0), f.length - 4);
  t.same(JSON.parse(f.subarray(4).toString()), { v: 1, id: 1, type: 'ping' });
  t.same(JSON.parse(encodeFrame({ a: 2n ** 64n - 1n, b: Buffer.from('hi'), c: new Uint8Array([255]) }).subarray(4).toString()), {
    a: '18446744073709551615',
    b: 'aGk=',
    c: '/w==',
  });
  t.throws(() => encodeFrame({ big: 'x'.repeat(MAX_FRAME) }), { code: 'ERR_NPMU_PROTO_TOO_LARGE', name: 'NpmuError' });
  t.throws(() => encodeFrame([] as never), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => encodeFrame(null as never), { code: 'ERR_INVALID_ARG_TYPE' });
});

t.test('FrameDecoder: frames split at every byte boundary', async (t) => {
  const msgs = [{ v: 1, id: 1, type: 'ping' }, { v: 1, id: 2, type: 'info', note: 'ünïcødé ☕ 😀' }, { v: 1, id: 3, type: 'ping', pad: 'x'.repeat(300) }];
  const stream = Buffer.concat(msgs.map((m) => encodeFrame(m)));
  let bad = 0;
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new FrameDecoder();
    const out = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    if (JSON.stringify(out) !== JSON.stringify(msgs.map((msg) => ({ ok: true, msg })))) bad++;
    if (d.buffered !== 0) bad++;
  }
  t.equal(bad, 0, `all ${stream.length + 1} two-piece splits decode`);
  const d = new FrameDecoder();
  const out: FrameResult[] = [];
  for (let i = 0; i < stream.length; i++) out.push(...d.push(stream.subarray(i, i + 1)));
  t.same(out, msgs.map((msg) => ({ ok: true, msg })), 'one byte at a time');
  // Three-way splits around the second frame's prefix.
  const second = encodeFrame(msgs[0]!).length;
  for (let a = second - 3; a <= second + 5; a++) {
    for (let b = a; b <= second + 8; b++) {
      const dd = new FrameDecoder();
      const o = [...dd.push(stream.subarray(0, a)), ...dd.push(stream.subarray(a, b)), ...dd.push(stream.subarray(b))];
      if (o.length !== 3) t.fail(`split ${a}/${b}`);
    }
  }
  t.equal(new FrameDecoder().push(new Uint8Array(0)).length, 0, 'empty chunk');
});

t.test('FrameDecoder: a huge length prefix is refused before buffering', async (t) => {
  const d = new FrameDecoder();
  const out = d.push(Buffer.from([0xff, 0xff, 0xff, 0xff]));
  t.same(out, [{ ok: false, code: 'ERR_NPMU_PROTO_TOO_LARGE', message: out[0]!.ok ? '' : out[0]!.message, fatal: true }]);
  t.equal(d.failed, true);
  t.equal(d.buffered, 0, 'nothing kept');
  t.same(d.push(Buffer.alloc(1 << 16, 0x41)), [], 'later input is ignored');
  t.equal(d.buffered, 0);

  const small = new FrameDecoder({ maxFrame: 16 });
  t.same(small.push(rawFrame('{"a":"123456789"}'.slice(0, 16))).length, 1, 'exactly the limit decodes');
  const over = small.push(Buffer.from([0, 0, 0, 17]));
  t.match(over, [{ ok: false, code: 'ERR_NPMU_PROTO_TOO_LARGE', fatal: true }]);
  t.match(new FrameDecoder().push(Buffer.from([0, 0x10, 0, 1])), [{ ok: false, code: 'ERR_NPMU_PROTO_TOO_LARGE' }], 'MAX_FRAME + 1');
  t.throws(() => new FrameDecoder({ maxFrame: 0 }), { code: 'ERR_INVALID_ARG_VALUE' });
});

t.test('FrameDecoder: bad bodies are reported and the stream goes on', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['invalid UTF-8', rawFrame(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]))],
    ['overlong UTF-8', rawFrame(Buffer.from([0x22, 0xc0, 0xaf, 0x22]))],
    ['invalid JSON', rawFrame('{"v":1,')],
    ['empty body', rawFrame('')],
    ['BOM', rawFrame('\ufeff{"v":1}')],
    ['array', rawFrame('[1,2]')],
    ['null', rawFrame('null')],
    ['number', rawFrame('17')],
    ['string', rawFrame('"ping"')],
  ];
  const good = encodeFrame({ v: 1, id: 1, type: 'ping' });
  for (const [name, frame] of cases) {
    const d = new FrameDecoder();
    const out = d.push(Buffer.concat([frame, good]));
    t.match(out, [{ ok: false, code: 'ERR_NPMU_PROTO_MALFORMED', fatal: false }, { ok: true, msg: { type: 'ping' } }], name);
  }
  const deep = new FrameDecoder().push(rawFrame('['.repeat(200_000) + ']'.repeat(200_000)));
  t.match(deep, [{ ok: false, code: 'ERR_NPMU_PROTO_MALFORMED' }], 'deeply nested array: not an object, no crash');
  const deepObj = new FrameDecoder().push(rawFrame('{"v":1,"id":1,"type":"ping","x":' + '['.repeat(100_000) + ']'.repeat(100_000) + '}'));
  t.match(deepObj, [{ ok: true }]);
  t.match(validateRequest((deepObj[0] as { msg: unknown }).msg), { ok: false, message: /x: unknown field/ });
});

t.test('FrameDecoder: a maximal frame trickling in byte by byte stays linear', async (t) => {
  const body = JSON.stringify({ v: 1, id: 1, type: 'ping', pad: 'y'.repeat(MAX_FRAME - 100) });
  const frame = rawFrame(body);
  t.ok(frame.length - 4 <= MAX_FRAME);
  const d = new FrameDecoder();
  const out: FrameResult[] = [];
  const start = Date.now();
  for (let i = 0; i < frame.length; i++) {
    const r = d.push(frame.subarray(i, i + 1));
    if (r.length) out.push(...r);
  }
  t.equal(out.length, 1);
  t.match(out[0], { ok: true, msg: { type: 'ping' } });
  t.equal(d.buffered, 0);
  // Quadratic behaviour took minutes here; linear takes well under a second or two.
  t.ok(Date.now() - start < 20_000, `took ${Date.now() - start} ms`);
});

t.test('FrameDecoder: random chunking of a long stream', async (t) => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const msgs = Array.from({ length: 300 }, (_, i) => ({ v: 1, id: i + 1, type: 'ping', pad: 'z'.repeat(rnd(20_000)) }));
  const stream = Buffer.concat(msgs.map((m) => encodeFrame(m)));
  for (let round = 0; round < 5; round++) {
    const d = new FrameDecoder();
    const got: FrameResult[] = [];
    for (let off = 0; off < stream.length; ) {
      const size = [1, 2, 3, 5, 100, 4095, 4096, 5000, 65536, 70000][rnd(10)]!;
      got.push(...d.push(stream.subarray(off, off + size)));
      off += size;
    }
    const ids = got.map((g) => (g.ok ? g.msg.id : -1));
    t.same(ids, msgs.map((m) => m.id), `round ${round}: every frame, in order`);
    t.ok(got.every((g, i) => g.ok && g.msg.pad === msgs[i]!.pad), `round ${round}: intact`);
  }
});

// ---------------------------------------------------------------------------
// Server behaviour with raw peers
// ---------------------------------------------------------------------------

t.test('server: bad requests get error replies and the connection survives', async (t) => {
  const srv = await startServer(echoExamples);
  t.teardown(() => srv.close());
  const p = await Peer.connect(srv.port);
  t.teardown(() => p.sock.destroy());
  const expectReply = async (send: () => void, want: Record<string, unknown>, name: string) => {
    send();
    t.match(await p.next(), want, name);
  };
  await expectReply(() => p.send(req('ping', {}, 1)), { v: 1, id: 1, type: 'ok' }, 'ping');
  await expectReply(() => p.send(req('map', { ...EXAMPLES.map.request, iova: 5 }, 2)), { id: 2, type: 'error', code: 'ERR_NPMU_PROTO_INVALID', message: /iova/ }, 'wrong type');
  await expectReply(() => p.send(req('unmap', { sessionId: '1' }, 3)), { id: 3, type: 'error', code: 'ERR_NPMU_PROTO_INVALID', message: /mapId: missing/ }, 'missing field');
  await expectReply(() => p.send(req('ping', { extra: true }, 4)), { id: 4, type: 'error', code: 'ERR_NPMU_PROTO_INVALID', message: /extra: unknown field/ }, 'unknown field');
  await expectReply(() => p.send({ v: 2, id: 5, type: 'ping' }), { v: 1, id: 5, type: 'error', code: 'ERR_NPMU_PROTO_VERSION' }, 'unknown version');
  await expectReply(() => p.send({ v: 1, id: 6, type: 'fly' }), { id: 6, type: 'error', code: 'ERR_NPMU_PROTO_UNKNOWN_TYPE' }, 'unknown type');
  await expectReply(() => p.raw(rawFrame('{"v":1,"id":7,')), { id: 0, type: 'error', code: 'ERR_NPMU_PROTO_MALFORMED' }, 'invalid JSON');
  await expectReply(() => p.raw(rawFrame(Buffer.from([0xff]))), { id: 0, type: 'error', code: 'ERR_NPMU_PROTO_MALFORMED' }, 'invalid UTF-8');
  await expectReply(() => p.raw(rawFrame('[]')), { id: 0, type: 'error', code: 'ERR_NPMU_PROTO_MALFORMED' }, 'non-object');
  await expectReply(() => p.send({ v: 1, id: -3, type: 'ping' }), { id: 0, type: 'error', code: 'ERR_NPMU_PROTO_INVALID' }, 'bad id');
  await expectReply(() => p.send(req('ping', {}, 8)), { id: 8, type: 'ok' }, 'still serving');
  t.equal(p.ended, false, 'connection open');
});

t.test('server: requests split at every byte boundary over TCP', async (t) => {
  const srv = await startServer(echoExamples);
  t.teardown(() => srv.close());
  const p = await Peer.connect(srv.port);
  t.teardown(() => p.sock.destroy());
  const bytes = Buffer.concat([encodeFrame(req('ping', {}, 1)), encodeFrame(req('list-regions', EXAMPLES['list-regions'].request, 2))]);
  for (let i = 0; i < bytes.length; i++) {
    p.raw(bytes.subarray(i, i + 1));
    await new Promise((r) => setImmediate(r));
  }
  t.match(await p.next(), { id: 1, type: 'ok' });
  t.match(await p.next(), { id: 2, type: 'ok', count: 5 });
});

t.test('server: a huge length prefix gets an error reply, then the close', async (t) => {
  const srv = await startServer(echoExamples);
  t.teardown(() => srv.close());
  const before = process.memoryUsage().arrayBuffers;
  const p = await Peer.connect(srv.port);
  p.send(req('ping', {}, 1));
  p.raw(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
  t.match(await p.next(), { id: 1, type: 'ok' }, 'the request before it is answered');
  t.match(await p.next(), { v: 1, id: 0, type: 'error', code: 'ERR_NPMU_PROTO_TOO_LARGE' });
  p.raw(Buffer.alloc(64 * 1024, 7));
  t.equal(await p.next(), undefined, 'then the server closes');
  await p.closed;
  t.ok(process.memoryUsage().arrayBuffers - before < 64 * 1024 * 1024, 'the 4 GiB frame was never allocated');
  // and it keeps serving others
  const q = await Peer.connect(srv.port);
  t.teardown(() => q.sock.destroy());
  q.send(req('ping', {}, 2));
  t.match(await q.next(), { id: 2, type: 'ok' });
});

t.test('server: a frame just over the limit', async (t) => {
  const srv = await startServer(echoExamples);
  t.teardown(() => srv.close());
  const p = await Peer.connect(srv.port);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(MAX_FRAME + 1);
  p.raw(h);
  t.match(await p.next(), { id: 0, type: 'error', code: 'ERR_NPMU_PROTO_TOO_LARGE' });
  await p.closed;
});

t.test('server: truncated frames then close', async (t) => {
  const srv = await startServer(echoExamples);
  t.teardown(() => srv.close());
  const frame = encodeFrame(req('ping', {}, 1));
  for (const cut of [1, 3, 4, 5, frame.length - 1]) {
    const p = await Peer.connect(srv.port);
    p.raw(frame.subarray(0, cut));
    await new Promise((r) => setTimeout(r, 10));
    p.sock.end();
    t.equal(await p.next(), undefined, `cut at ${cut}: no reply, clean close`);
  }
  const closes = srv.conns.map((c) => (c.closed ? Promise.resolve() : once(c, 'close')));
  await Promise.all(closes);
  t.ok(srv.conns.every((c) => c.closed), 'every server connection emitted close');
  const q = await Peer.connect(srv.port);
  t.teardown(() => q.sock.destroy());
  q.send(req('ping', {}, 2));
  t.match(await q.next(), { id: 2, type: 'ok' }, 'server alive');
});

t.test('server: a throwing handler gets an error reply and other clients are served', async (t) => {
  const errors: unknown[] = [];
  const srv = await startServer(
    async (msg) => {
      if (msg.type === 'delete-region' && msg.name === 'exists-not') throw new NpmuError('ERR_NPMU_REGION_NOT_FOUND', 'no region "exists-not" in vol0');
      if (msg.type === 'delete-region' && msg.name === 'bug') throw new TypeError('secret internals at /srv/pmm.js:12');
      if (msg.type === 'delete-region' && msg.name === 'sync') (null as unknown as { x: number }).x = 1;
      if (msg.type === 'delete-region' && msg.name === 'string') throw 'a string';
      if (msg.type === 'delete-region' && msg.name === 'bad-code') throw new NpmuError('lower case code', 'm');
      if (msg.type === 'open-region') return { handleId: 1 }; // incomplete reply: a server bug
      if (msg.type === 'list-regions') return { names: [], count: 0, v: 9 };
      if (msg.type === 'read-attributes') return 'not an object';
      if (msg.type === 'meta-read') return { data: 'x'.repeat(MAX_FRAME) };
      return EXAMPLES[msg.type].reply;
    },
    { onError: (err) => errors.push(err) },
  );
  t.teardown(() => srv.close());
  const a = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  const b = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  t.teardown(() => (a.destroy(), b.destroy()));

  await t.rejects(a.request('delete-region', { volume: 'vol0', name: 'exists-not' }), {
    name: 'NpmuError',
    code: 'ERR_NPMU_REGION_NOT_FOUND',
    message: 'no region "exists-not" in vol0',
    remote: true,
  });
  const bug = await a.request('delete-region', { volume: 'vol0', name: 'bug' }).catch((e: NpmuError) => e);
  t.match(bug, { code: 'ERR_NPMU_INTERNAL', message: 'internal error' });
  t.notMatch(String((bug as Error).message), /secret/, 'no detail leaks');
  await t.rejects(a.request('delete-region', { volume: 'vol0', name: 'sync' }), { code: 'ERR_NPMU_INTERNAL' });
  await t.rejects(a.request('delete-region', { volume: 'vol0', name: 'string' }), { code: 'ERR_NPMU_INTERNAL' });
  await t.rejects(a.request('delete-region', { volume: 'vol0', name: 'bad-code' }), { code: 'ERR_NPMU_INTERNAL' });
  await t.rejects(a.request('open-region', { volume: 'vol0', name: 'x' }), { code: 'ERR_NPMU_INTERNAL' }, 'invalid reply');
  await t.rejects(a.request('list-regions', { volume: 'vol0', max: 1 }), { code: 'ERR_NPMU_INTERNAL' }, 'envelope field in result');
  await t.rejects(a.request('read-attributes', { volume: 'vol0', name: 'x' }), { code: 'ERR_NPMU_INTERNAL' }, 'non-object result');
  await t.rejects(a.request('meta-read', { offset: 0, length: 1 }), { code: 'ERR_NPMU_INTERNAL' }, 'oversized result');
  t.equal(errors.length, 8, 'every server bug reported to onError');
  t.type(errors[0], TypeError);
  t.same((await b.request('ping', {})).type, 'ok', 'the other client is served');
  t.same((await a.request('ping', {})).type, 'ok', 'and so is the first');
});

t.test('server: type restriction and pipelining with backpressure', async (t) => {
  let order: number[] = [];
  const srv = await startServer(
    async (msg) => {
      order.push(msg.id);
      await new Promise((r) => setImmediate(r));
      return {};
    },
    { types: typesServedBy('unit'), maxQueue: 8 },
  );
  t.teardown(() => srv.close());
  const conn = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  t.teardown(() => conn.destroy());
  await t.rejects(conn.request('attach', EXAMPLES.attach.request as never), { code: 'ERR_NPMU_PROTO_UNKNOWN_TYPE', remote: true });
  order = [];
  const replies = await Promise.all(Array.from({ length: 300 }, () => conn.request('ping', {})));
  t.equal(replies.length, 300);
  t.same(order, [...order].sort((x, y) => x - y), 'handled in order');
  const p = await Peer.connect(srv.port);
  t.teardown(() => p.sock.destroy());
  p.raw(Buffer.concat(Array.from({ length: 200 }, (_, i) => encodeFrame(req('ping', {}, i + 1)))));
  for (let i = 1; i <= 200; i++) {
    const m = await p.next();
    if (m?.id !== i) {
      t.fail(`reply ${i} out of order: ${JSON.stringify(m)}`);
      break;
    }
  }
  t.pass('200 pipelined replies in order');
});

// ---------------------------------------------------------------------------
// Client behaviour
// ---------------------------------------------------------------------------

t.test('client: timeout, late reply ignored, connection still usable', async (t) => {
  let slow = true;
  const srv = await startServer(async () => {
    if (slow) {
      slow = false;
      await new Promise((r) => setTimeout(r, 200));
    }
    return {};
  });
  t.teardown(() => srv.close());
  const conn = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  t.teardown(() => conn.destroy());
  await t.rejects(conn.request('ping', {}, { timeoutMs: 30 }), { code: 'ERR_NPMU_TIMEOUT', requestType: 'ping' });
  t.equal(conn.pending, 0);
  const r = await conn.request('ping', {});
  t.equal(r.type, 'ok');
  t.equal(conn.closed, false);
});

t.test('client: disconnect rejects everything pending', async (t) => {
  const srv = await startServer((_msg, c) => {
    setTimeout(() => c.destroy(), 20);
    return new Promise(() => {});
  });
  t.teardown(() => srv.close());
  const conn = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  const all = Promise.allSettled([conn.request('ping', {}), conn.request('info', {}), conn.request('sessions', {})]);
  const closed = once(conn, 'close');
  const results = await all;
  await closed;
  for (const r of results) t.match(r, { status: 'rejected', reason: { code: 'ERR_NPMU_DISCONNECTED', name: 'NpmuError' } });
  t.equal(conn.closed, true);
  await t.rejects(conn.request('ping', {}), { code: 'ERR_NPMU_DISCONNECTED' }, 'after close');
});

t.test('client: invalid requests are refused locally', async (t) => {
  let calls = 0;
  const srv = await startServer(() => {
    calls++;
    return {};
  });
  t.teardown(() => srv.close());
  const conn = await ControlConnection.connect({ host: '127.0.0.1', port: srv.port });
  t.teardown(() => conn.destroy());
  await t.rejects(conn.request('unmap', { sessionId: '1' } as never), { code: 'ERR_NPMU_PROTO_INVALID', message: /mapId: missing/ });
  await t.rejects(conn.request('nope' as never, {} as never), { code: 'ERR_NPMU_PROTO_UNKNOWN_TYPE' });
  await t.rejects(conn.request('ping', null as never), { code: 'ERR_NPMU_PROTO_INVALID' });
  await t.rejects(conn.request('meta-write', { offset: 0, data: Buffer.alloc(META_IO_MAX + 1), persist: false }), { code: 'ERR_NPMU_PROTO_INVALID' });
  await t.rejects(conn.request('ping', {}, { timeoutMs: -1 }), { code: 'ERR_INVALID_ARG_VALUE' });
  await conn.request('ping', {});
  t.equal(calls, 1, 'only the valid request reached the server');
});

t.test('client: connect failures', async (t) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  await t.rejects(ControlConnection.connect({ host: '127.0.0.1', port }), { code: 'ERR_NPMU_CONNECT_FAILED', errno: 'ECONNREFUSED', port });
});

/** A server that answers every frame with whatever `reply` returns (raw bytes). */
async function rawServer(reply: (msg: Record<string, unknown>) => Buffer | undefined): Promise<{ port: number; close(): Promise<void> }> {
  const socks = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on('error', () => {});
    const d = new FrameDecoder();
    sock.on('data', (c: Buffer) => {
      for (const f of d.push(c)) {
        if (!f.ok) continue;
        const out = reply(f.msg);
        if (out) sock.write(out);
      }
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return {
    port: (srv.address() as net.AddressInfo).port,
    close: async () => {
      for (const s of socks) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}

t.test('client: misbehaving servers', async (t) => {
  const srv = await rawServer((m) => {
    const id = m.id as number;
    switch (m.type) {
      case 'info': // a reply missing fields: that request fails, the connection stays
        return encodeFrame({ v: 1, id, type: 'ok', capacity: 1 });
      case 'sessions': // a reply for an unknown id is ignored; then the real one
        return Buffer.concat([encodeFrame({ v: 1, id: id + 1000, type: 'ok' }), encodeFrame({ v: 1, id, type: 'ok', sessions: [] })]);
      case 'hello': // garbage: everything pending fails, the connection closes
        return rawFrame('{not json');
      case 'set-usage':
        return encodeFrame({ v: 1, id: 0, type: 'error', code: 'ERR_NPMU_PROTO_MALFORMED', message: 'what was that' });
      case 'unmap':
        return Buffer.from([0xff, 0xff, 0xff, 0xff]);
      case 'persist':
        return encodeFrame({ v: 7, id, type: 'ok', method: 'none' });
      case 'format-volume':
        return encodeFrame({ v: 1, id: 'x', type: 'ok' });
      default:
        return encodeFrame({ v: 1, id, type: 'ok' });
    }
  });
  t.teardown(() => srv.close());
  const connect = () => ControlConnection.connect({ host: '127.0.0.1', port: srv.port });

  const c1 = await connect();
  t.teardown(() => c1.destroy());
  await t.rejects(c1.request('info', {}), { code: 'ERR_NPMU_PROTO_INVALID', message: /unitId: missing/ });
  t.same((await c1.request('sessions', {})).sessions, []);
  await t.rejects(c1.request('persist', { page: 0, offset: 0, length: 1 }), { code: 'ERR_NPMU_PROTO_VERSION' });
  t.equal((await c1.request('ping', {})).type, 'ok', 'still usable');

  const cases: Array<[MessageType, Record<string, unknown>, string]> = [
    ['hello', { ticket: TICKET }, 'ERR_NPMU_PROTO_MALFORMED'],
    ['set-usage', { usedPages: 1 }, 'ERR_NPMU_PROTO_MALFORMED'],
    ['unmap', { sessionId: '1', mapId: '1' }, 'ERR_NPMU_PROTO_TOO_LARGE'],
    ['format-volume', { volumeId: VOL_ID, role: 'primary', label: '' }, 'ERR_NPMU_PROTO_INVALID'],
  ];
  for (const [type, body, code] of cases) {
    const c = await connect();
    const other = c.request('ping', {}, { timeoutMs: 5000 });
    const bad = c.request(type, body as never);
    await t.rejects(bad, { code }, `${type} → ${code}`);
    await other.catch(() => {});
    t.equal(c.closed, true, `${type}: connection closed`);
  }
});

t.test('many clients at once', async (t) => {
  const srv = await startServer(echoExamples);
  t.teardown(() => srv.close());
  const conns = await Promise.all(Array.from({ length: 20 }, () => ControlConnection.connect({ host: '127.0.0.1', port: srv.port })));
  t.teardown(() => conns.forEach((c) => c.destroy()));
  const replies = await Promise.all(conns.flatMap((c) => TYPES.map((type) => c.request(type, EXAMPLES[type].request as never))));
  t.equal(replies.length, 20 * TYPES.length);
  t.ok(replies.every((r) => r.type === 'ok'));
});

t.test('the accept info (a unit names the connection fence word)', async (t) => {
  const { encodeAcceptInfo, decodeAcceptInfo, ACCEPT_INFO_SIZE } = await import('../../lib/protocol');
  const b = encodeAcceptInfo({ fenceAddr: 0x7f0000001008n, fenceRkey: 0xdeadbeef });
  t.equal(b.length, ACCEPT_INFO_SIZE);
  t.same(decodeAcceptInfo(b), { fenceAddr: 0x7f0000001008n, fenceRkey: 0xdeadbeef });
  const padded = Buffer.concat([b, Buffer.alloc(40)]); // rxe pads private data with zeros
  t.same(decodeAcceptInfo(padded), { fenceAddr: 0x7f0000001008n, fenceRkey: 0xdeadbeef });
  t.same(decodeAcceptInfo(padded.subarray(0, 40).subarray(0, 15)), undefined, 'too short');
  t.equal(decodeAcceptInfo(Buffer.alloc(56)), undefined, 'zeros: an older unit');
  t.equal(decodeAcceptInfo(null), undefined);
  const bad = Buffer.from(b);
  bad.writeBigUInt64LE(0x1003n, 8);
  t.equal(decodeAcceptInfo(bad), undefined, 'a misaligned word is not used');
  t.throws(() => encodeAcceptInfo({ fenceAddr: 3n, fenceRkey: 1 }), RangeError);
});

t.test('the accept info names the persist slots (persist over RDMA)', async (t) => {
  const { encodeAcceptInfo, decodeAcceptInfo, ACCEPT_INFO_SIZE, MAX_PERSIST_SLOTS } = await import('../../lib/protocol');
  const b = encodeAcceptInfo({ fenceAddr: 0x1000n, fenceRkey: 7, persistSlots: 16 });
  t.equal(b.length, ACCEPT_INFO_SIZE + 8);
  t.same(decodeAcceptInfo(Buffer.concat([b, Buffer.alloc(100)])), { fenceAddr: 0x1000n, fenceRkey: 7, persistSlots: 16 });
  const old = decodeAcceptInfo(Buffer.concat([b.subarray(0, ACCEPT_INFO_SIZE), Buffer.alloc(100)]));
  t.same(old, { fenceAddr: 0x1000n, fenceRkey: 7 }, 'an older unit: no persist slots');
  t.equal(old?.persistSlots, undefined);
  for (const bad of [0, MAX_PERSIST_SLOTS + 1, 0xffffffff]) {
    const x = Buffer.from(b);
    x.writeUInt32LE(bad, ACCEPT_INFO_SIZE + 4);
    t.equal(decodeAcceptInfo(x)?.persistSlots, undefined, `${bad} slots are not used`);
  }
  for (const bad of [0, -1, 1.5, MAX_PERSIST_SLOTS + 1]) t.throws(() => encodeAcceptInfo({ fenceAddr: 8n, fenceRkey: 1, persistSlots: bad }), RangeError);
});

t.test('persist requests and replies over RDMA: round trips and malformed bytes', async (t) => {
  const P = await import('../../lib/protocol');
  const b = Buffer.alloc(64, 0xee);
  const req = { seq: 0xfffffffe, mapId: 18446744073709551615n, offset: 4096n, length: 64n };
  P.encodePersistRequest(req, b, 8);
  t.same(P.decodePersistRequest(b, 8, P.PERSIST_REQUEST_SIZE), req);
  t.equal(P.decodePersistRequest(b, 8, P.PERSIST_REQUEST_SIZE - 1), undefined, 'short');
  t.equal(P.decodePersistRequest(b, 8, P.PERSIST_REQUEST_SIZE + 1), undefined, 'long');
  t.equal(P.decodePersistRequest(Buffer.alloc(32), 0, 32), undefined, 'no magic');
  for (const method of ['pmem', 'msync'] as const) {
    P.encodePersistReply({ seq: 9, status: 'ok', method }, b, 0);
    t.same(P.decodePersistReply(b, 0, P.PERSIST_REPLY_SIZE), { seq: 9, status: 'ok', method });
  }
  for (const status of P.PERSIST_STATUS.slice(1)) {
    P.encodePersistReply({ seq: 3, status }, b, 16);
    t.same(P.decodePersistReply(b, 16, P.PERSIST_REPLY_SIZE), { seq: 3, status });
  }
  const r = Buffer.alloc(16);
  P.encodePersistReply({ seq: 1, status: 'ok', method: 'pmem' }, r);
  const unknown = Buffer.from(r);
  unknown.writeUInt16LE(P.PERSIST_STATUS.length, 8);
  t.equal(P.decodePersistReply(unknown, 0, 16), undefined, 'an unknown status');
  const noMethod = Buffer.from(r);
  noMethod.writeUInt8(3, 10);
  t.equal(P.decodePersistReply(noMethod, 0, 16), undefined, 'success without a method');
  t.equal(P.decodePersistReply(r, 0, 15), undefined, 'short');
  t.equal(P.persistStatusOf(Object.assign(new Error('x'), { code: 'ERR_NPMU_BAD_RANGE' })), 'ERR_NPMU_BAD_RANGE');
  t.equal(P.persistStatusOf(Object.assign(new Error('x'), { code: 'EIO' })), 'ERR_NPMU_INTERNAL', 'codes outside the table');
  t.equal(P.persistStatusOf(Object.assign(new Error('x'), { code: 'ok' })), 'ERR_NPMU_INTERNAL', 'never success for an error');
  t.equal(P.persistStatusOf(null), 'ERR_NPMU_INTERNAL');
});
