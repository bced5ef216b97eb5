/**
 * A unit that speaks the unit side of lib/protocol.ts with an in-memory
 * device, for testing the PMM's logic natively (no RDMA). It checks tickets
 * with the real lib/ticket.ts and can be told to fail or die at chosen points:
 * that is how crash-at-any-point recovery is tested without a VM.
 */
import * as net from 'node:net';
import { randomBytes } from 'node:crypto';
import { NpmuError } from '../../lib/errors';
import { serve, typesServedBy, decodeBytes } from '../../lib/protocol';
import type { Request, ServerConnection } from '../../lib/protocol';
import { verifyTicket } from '../../lib/ticket';

export interface FakeUnitOptions {
  key: Uint8Array;
  metaLength?: number;
  pageSize?: number;
  dataPages?: number;
  durability?: 'pmem' | 'msync' | 'volatile';
  rdmaPort?: number;
}

export class FakeUnit {
  readonly unitId = randomBytes(16).toString('hex');
  readonly key: Uint8Array;
  meta: Buffer;
  /** What a power cut keeps: the metadata area as of the last persisted write (meta-write with persist). */
  durable: Buffer;
  pageSize: number;
  dataPages: number;
  durability: 'pmem' | 'msync' | 'volatile';
  volumeId = '0'.repeat(32);
  role: 'none' | 'primary' | 'mirror' = 'none';
  label = '';
  generation = 1;
  usedPages = 0;
  /** Fencing, as a real unit's superblock keeps it. */
  epoch = 0;
  holder = '0'.repeat(32);
  rdmaPort: number | undefined;
  /** sessionId → mapId → mapping */
  maps = new Map<string, Map<string, { extents: Array<{ page: number; pages: number }>; iova: string; rkey: number }>>();
  /** Called before a meta-write is applied; may throw, or return 'die' / 'torn'. */
  onMetaWrite: ((offset: number, data: Buffer) => void | 'die' | 'torn') | null = null;
  metaWrites = 0;
  server: net.Server | null = null;
  port = 0;
  #conns = new Set<ServerConnection>();

  constructor(o: FakeUnitOptions) {
    this.key = o.key;
    this.meta = Buffer.alloc(o.metaLength ?? 256 * 1024);
    this.durable = Buffer.alloc(this.meta.length);
    this.pageSize = o.pageSize ?? 4096;
    this.dataPages = o.dataPages ?? 1024;
    this.durability = o.durability ?? 'pmem';
    this.rdmaPort = o.rdmaPort;
  }

  async start(port = this.port): Promise<this> {
    const srv = net.createServer((sock) => {
      const c = serve(sock, (m, conn) => this.#handle(m, conn), { types: typesServedBy('unit') });
      this.#conns.add(c);
      c.on('close', () => this.#conns.delete(c));
    });
    await new Promise<void>((r) => srv.listen(port, '127.0.0.1', () => r()));
    this.server = srv;
    this.port = (srv.address() as net.AddressInfo).port;
    return this;
  }

  get address(): { host: string; controlPort: number; rdmaPort?: number } {
    return { host: '127.0.0.1', controlPort: this.port, ...(this.rdmaPort ? { rdmaPort: this.rdmaPort } : {}) };
  }

  /** The process dies: every connection drops, the device (this.meta) stays, mappings go. */
  async kill(): Promise<void> {
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
    this.maps.clear();
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  /** Power loss: what was not persisted is gone, and the process with it. */
  async powerCut(): Promise<void> {
    this.durable.copy(this.meta);
    await this.kill();
  }

  /** Replaces the metadata area (as a new, empty device would be). */
  setMetaLength(n: number): void {
    this.meta = Buffer.alloc(n);
    this.durable = Buffer.alloc(n);
  }

  mappingCount(): number {
    let n = 0;
    for (const m of this.maps.values()) n += m.size;
    return n;
  }

  #handle(msg: Request, conn: ServerConnection): object | void {
    if (msg.type === 'hello') {
      const claims = verifyTicket(decodeBytes(msg.ticket), { key: this.key, unitId: this.unitId });
      conn.state.kind = claims.kind;
      conn.state.sessionId = claims.sessionId.toString();
      return {
        unitId: this.unitId,
        role: this.role,
        volumeId: this.volumeId,
        label: this.label,
        capacity: this.dataPages * this.pageSize + 1024 * 1024,
        pageSize: this.pageSize,
        dataPages: this.dataPages,
        metaLength: this.meta.length,
        durability: this.durability,
        layoutVersion: 2,
        generation: this.generation,
        ...(this.rdmaPort ? { rdmaPort: this.rdmaPort } : {}),
        epoch: this.epoch,
        holder: this.holder,
      };
    }
    if (msg.type === 'ping') return {};
    if (!conn.state.kind) throw new NpmuError('ERR_NPMU_NOT_ADMITTED', 'hello first');
    if (conn.state.kind === 'client' && msg.type !== 'persist-range') throw new NpmuError('ERR_NPMU_NOT_ADMITTED', 'client connections may only persist');
    if (['format-volume', 'meta-write', 'set-usage', 'map', 'unmap', 'persist', 'revoke'].includes(msg.type) && conn.state.epoch !== this.epoch) {
      throw new NpmuError('ERR_NPMU_FENCED', `${msg.type}: not the holder of epoch ${this.epoch}`, { epoch: this.epoch, holder: this.holder });
    }
    switch (msg.type) {
      case 'claim': {
        if (msg.epoch < this.epoch || (msg.epoch === this.epoch && msg.pmmId !== this.holder)) {
          throw new NpmuError('ERR_NPMU_FENCED', `claim of ${msg.epoch} refused: held at ${this.epoch}`, { epoch: this.epoch, holder: this.holder });
        }
        const previous = { previousEpoch: this.epoch, previousHolder: this.holder };
        this.epoch = msg.epoch;
        this.holder = msg.pmmId;
        conn.state.epoch = msg.epoch;
        for (const c of this.#conns) if (c !== conn && typeof c.state.epoch === 'number' && (c.state.epoch as number) < msg.epoch) c.destroy();
        return { epoch: msg.epoch, ...previous };
      }
      case 'revoke': {
        const n = this.mappingCount();
        this.maps.clear();
        return { mappings: n };
      }
      case 'format-volume':
        if (this.role !== 'none' && !msg.force) throw new NpmuError('ERR_NPMU_UNIT_BOUND', 'bound');
        this.volumeId = msg.volumeId;
        this.role = msg.role;
        this.label = msg.label;
        this.generation++;
        return { generation: this.generation };
      case 'meta-read':
        if (msg.offset + msg.length > this.meta.length) throw new NpmuError('ERR_OUT_OF_RANGE', 'outside the metadata area');
        return { data: this.meta.subarray(msg.offset, msg.offset + msg.length) };
      case 'meta-write': {
        const data = decodeBytes(msg.data);
        if (msg.offset + data.length > this.meta.length) throw new NpmuError('ERR_OUT_OF_RANGE', 'outside the metadata area');
        const what = this.onMetaWrite?.(msg.offset, data);
        if (what === 'torn') {
          data.subarray(0, Math.floor(data.length / 2)).copy(this.meta, msg.offset);
          this.meta.copy(this.durable); // the torn part reached the media
          void this.kill();
          return new Promise(() => undefined); // never answers: the unit died mid-write
        }
        if (what === 'die') {
          void this.kill();
          return new Promise(() => undefined);
        }
        data.copy(this.meta, msg.offset);
        if (msg.persist) this.meta.copy(this.durable, msg.offset, msg.offset, msg.offset + data.length);
        this.metaWrites++;
        return {};
      }
      case 'set-usage':
        this.usedPages = msg.usedPages;
        return {};
      case 'map': {
        let m = this.maps.get(msg.sessionId);
        if (!m) this.maps.set(msg.sessionId, (m = new Map()));
        if (m.has(msg.mapId)) throw new NpmuError('ERR_NPMU_MAP_EXISTS', 'mapId in use');
        for (const e of msg.extents) if (e.page + e.pages > this.dataPages) throw new NpmuError('ERR_OUT_OF_RANGE', 'extent outside');
        const rkey = randomBytes(4).readUInt32LE(0);
        m.set(msg.mapId, { extents: msg.extents, iova: msg.iova, rkey });
        return { rkey, iova: msg.iova, length: msg.extents.reduce((a, e) => a + e.pages, 0) * this.pageSize };
      }
      case 'unmap': {
        const m = this.maps.get(msg.sessionId);
        if (!m?.delete(msg.mapId)) throw new NpmuError('ERR_NPMU_NO_SUCH_MAPPING', 'no such mapping');
        if (m.size === 0) this.maps.delete(msg.sessionId);
        return {};
      }
      case 'persist':
        return { method: this.durability === 'volatile' ? 'none' : this.durability };
      case 'sessions':
        return {
          sessions: [...this.maps].map(([sessionId, m]) => ({ sessionId, remoteAddress: '127.0.0.1', connectedAtMs: 0, mapIds: [...m.keys()] })),
        };
      case 'info':
        return {
          unitId: this.unitId,
          capacity: this.dataPages * this.pageSize,
          pageSize: this.pageSize,
          dataPages: this.dataPages,
          usedPages: this.usedPages,
          durability: this.durability,
          connections: [],
          mappings: this.mappingCount(),
        };
      default:
        throw new NpmuError('ERR_NPMU_PROTO_UNKNOWN_TYPE', `fake unit does not do ${msg.type}`);
    }
  }
}

// tap runs every file of this folder: when run on its own, check the fake itself.
if (require.main === module) {
  void (async () => {
    const { default: t } = await import('tap');
    const { ControlConnection } = await import('../../lib/protocol');
    const { issueTicket, ANY_UNIT_ID } = await import('../../lib/ticket');
    t.test('the fake unit admits a control ticket for any unit, and not a client ticket for any unit', async (t) => {
      const key = randomBytes(32);
      const u = await new FakeUnit({ key }).start();
      const c = await ControlConnection.connect({ host: '127.0.0.1', port: u.port });
      const hello = await c.request('hello', { ticket: issueTicket({ key, kind: 'control', unitId: ANY_UNIT_ID, sessionId: 0, ttlSec: 60 }) });
      t.equal(hello.unitId, u.unitId);
      const c2 = await ControlConnection.connect({ host: '127.0.0.1', port: u.port });
      await t.rejects(c2.request('hello', { ticket: issueTicket({ key, kind: 'client', unitId: ANY_UNIT_ID, sessionId: 1, ttlSec: 60 }) }), {
        code: 'ERR_NPMU_TICKET_WRONG_UNIT',
      });
      c.close();
      c2.close();
      await u.kill();
    });
  })();
}
