/**
 * The persistent memory manager ([0037], [0056]-[0062], [0075]-[0099]): the
 * management verbs, over lib/protocol.ts, for one or more mirrored volumes.
 *
 * - Units: the PMM is given unit addresses. It keeps a control connection to
 *   each (reconnecting in the background), groups them by the volume their
 *   superblock names, and recovers each volume from its units' metadata
 *   (pmm/volume.ts). Nothing else is kept: a PMM started anywhere with the
 *   same addresses and key serves the same volumes.
 * - Clients: `attach` (name + secret, pmm/credentials.ts) opens a session and
 *   returns a client ticket for each unit; every other request needs it.
 *   The session ends with its TCP connection, and the PMM then closes the
 *   session's opens and unmaps them on the units ([0085]).
 * - Opens: `open-region` maps the region on both halves for the session
 *   (`map`, iova = the base pointer rounded down to a 4 KiB page: [0074]),
 *   and returns the handle; `close-region` unmaps.
 *
 * Every request is validated by lib/protocol.ts before a handler sees it;
 * a handler replies an NpmuError's code, or ERR_NPMU_INTERNAL for a bug.
 */
import * as net from 'node:net';
import { randomBytes } from 'node:crypto';
import { NpmuError } from '../lib/errors';
import { decodeBytes, serve, typesServedBy } from '../lib/protocol';
import type { Request, ServerConnection, RequestBody, ReplyInput } from '../lib/protocol';
import { issueTicket } from '../lib/ticket';
import { pagesFor } from './alloc';
import type { ClientRegistry, Role } from './credentials';
import { HALVES, UnitLink, Volume, formatAddress, mapIdFor, mapWithRetry, silentLogger } from './volume';
import type { Half, Logger, UnitAddress, VolumeOptions } from './volume';

export interface PmmOptions {
  /** The 32-byte key shared with the units (lib/ticket.ts). */
  key: Uint8Array;
  /** Who may attach. */
  clients: ClientRegistry;
  /** Address to listen on (default 0.0.0.0). */
  host?: string;
  /** TCP port (0 = any; read `port` after start). */
  port?: number;
  /** Units to reach; their volumes are recovered from their metadata. */
  units?: UnitAddress[];
  log?: Logger;
  /** Zero new regions' pages (needs RDMA in this process). Default true. */
  zeroNewRegions?: boolean;
  /** Retry period for units that are down, ms. Default 2000. */
  reconnectMs?: number;
  /** Lifetime of the unit tickets issued at attach, s. Default 3600. */
  ticketTtlSec?: number;
  /** 32 hex digits; default random per process. */
  pmmId?: string;
  /** Last-open times are written back to the units at most this often (ms). Default 5000. */
  touchFlushMs?: number;
  /** How new pages are zeroed (pmm/volume.ts VolumeOptions.zeroer); for tests. */
  zeroer?: VolumeOptions['zeroer'];
}

interface Session {
  id: bigint;
  client: string;
  roles: Role[];
  volume: Volume;
  conn: ServerConnection;
  opens: Set<number>;
  mapSeq: number;
}

interface Open {
  handleId: number;
  session: Session;
  volume: Volume;
  regionId: number;
  region: string;
  maps: Partial<Record<Half, string>>;
}

/** A volume found on the units that this PMM does not serve (yet), and why. */
interface Unserved {
  volumeId: string;
  name: string;
  state: 'waiting' | 'split-brain' | 'fenced';
  reason: string;
  links: Partial<Record<Half, UnitLink>>;
}

interface UnitEntry {
  address: UnitAddress;
  link: UnitLink | null;
  lastError: string | null;
  connecting: boolean;
}

const U64 = 1n << 64n;
const PAGE_4K = 4096n;

function err(code: string, message: string, props?: Record<string, unknown>): NpmuError {
  return new NpmuError(code, message, props);
}

function addrKey(a: { host: string; controlPort: number }): string {
  return `${a.host}|${a.controlPort}`;
}

function isLoopback(a: string): boolean {
  return a === '::1' || a.startsWith('127.') || a.startsWith('::ffff:127.');
}

export class PmmServer {
  readonly pmmId: string;
  readonly volumes = new Map<string, Volume>();
  readonly #opts: PmmOptions;
  readonly #log: Logger;
  readonly #server: net.Server;
  readonly #units = new Map<string, UnitEntry>();
  readonly #sessions = new Map<string, Session>();
  readonly #opens = new Map<number, Open>();
  readonly #conns = new Set<ServerConnection>();
  /** volumeId → a volume seen on the units but not served: waiting, split-brain, or fenced (taken over by another PMM). */
  readonly #unserved = new Map<string, Unserved>();
  #nextHandle = 1;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  private constructor(opts: PmmOptions) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
    this.pmmId = opts.pmmId ?? randomBytes(16).toString('hex');
    this.#server = net.createServer((sock) => this.#accept(sock));
    for (const a of opts.units ?? []) this.#units.set(addrKey(a), { address: a, link: null, lastError: null, connecting: false });
  }

  /**
   * Starts a PMM: reaches every unit given (those that answer within a few
   * seconds), recovers their volumes, then listens for clients. Units that
   * are down are retried in the background; a volume of which one half is
   * reachable is served degraded.
   */
  static async start(opts: PmmOptions): Promise<PmmServer> {
    const s = new PmmServer(opts);
    await s.#pollUnits();
    await new Promise<void>((resolve, reject) => {
      s.#server.once('error', reject);
      s.#server.listen(opts.port ?? 0, opts.host ?? '0.0.0.0', () => {
        s.#server.removeListener('error', reject);
        resolve();
      });
    });
    s.#server.on('error', (e) => s.#log.warn(`listener: ${e.message}`));
    const period = opts.reconnectMs ?? 2000;
    s.#timer = setInterval(() => void s.#pollUnits(), period);
    s.#timer.unref();
    s.#log.info(`PMM ${s.pmmId} listening on ${s.host}:${s.port}; volumes: ${[...s.volumes.keys()].join(', ') || '(none)'}`);
    return s;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  get host(): string {
    return (this.#server.address() as net.AddressInfo).address;
  }

  /** Sessions attached now (for tests and status). */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  get openCount(): number {
    return this.#opens.size;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    for (const c of this.#conns) c.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
    for (const u of this.#units.values()) u.link?.close();
    await Promise.all([...this.volumes.values()].map((v) => v.close()));
  }

  // ---- units ------------------------------------------------------------------

  async #pollUnits(): Promise<void> {
    if (this.#closed) return;
    const todo = [...this.#units.values()].filter((u) => !u.link?.up && !u.connecting);
    const fresh: UnitLink[] = [];
    await Promise.all(
      todo.map(async (u) => {
        u.connecting = true;
        try {
          const link = await UnitLink.open(u.address, this.#opts.key, { timeoutMs: 3000 });
          if (this.#closed) {
            link.close();
            return;
          }
          u.link = link;
          u.address = link.address;
          u.lastError = null;
          link.once('down', () => {
            if (u.link === link) u.link = null;
          });
          fresh.push(link);
        } catch (e) {
          const msg = (e as Error).message;
          if (u.lastError !== msg) this.#log.warn(`unit ${formatAddress(u.address)}: ${msg}`);
          u.lastError = msg;
        } finally {
          u.connecting = false;
        }
      }),
    );
    if (fresh.length > 0) await this.#placeLinks(fresh);
  }

  /** Hands newly reached units to their volumes: an existing one (a returning half) or a new recovery. */
  async #placeLinks(links: UnitLink[]): Promise<void> {
    const byVolume = new Map<string, Partial<Record<Half, UnitLink>>>();
    for (const l of links) {
      const { role, volumeId } = l.hello;
      if (role === 'none') {
        this.#log.info(`unit ${l.unitId} at ${formatAddress(l.address)} belongs to no volume (free for create-volume)`);
        continue;
      }
      const served = [...this.volumes.values()].find((v) => v.volumeId === volumeId);
      if (served) {
        if (served.isUp(role)) {
          this.#log.warn(`unit ${l.unitId} at ${formatAddress(l.address)} claims to be the ${role} of ${served.name}, which is up elsewhere; ignored`);
          continue;
        }
        try {
          await served.attachHalf(l);
        } catch (e) {
          this.#log.warn(`volume ${served.name}: cannot take back unit ${l.unitId}: ${(e as Error).message}`);
          l.close();
        }
        continue;
      }
      const un = this.#unserved.get(volumeId);
      if (un?.state === 'fenced') {
        // Taken over by another PMM: never taken back behind its back (restart this PMM to take it back).
        l.close();
        continue;
      }
      const g = byVolume.get(volumeId) ?? { ...(un?.links ?? {}) };
      g[role] = l;
      byVolume.set(volumeId, g);
    }
    for (const [volumeId, g] of byVolume) await this.#recover(volumeId, g).catch(() => undefined);
  }

  /** Takes a volume from the units given (pmm/history.ts decides); a volume that must not be served yet is kept as unserved. */
  async #recover(volumeId: string, g: Partial<Record<Half, UnitLink>>, force?: Half): Promise<Volume> {
    try {
      const v = await Volume.recover(g, { ...this.#volumeOptions(), ...(force ? { force } : {}) });
      this.#unserved.delete(volumeId);
      const clash = this.volumes.get(v.name);
      if (clash) {
        this.#log.warn(`volume ${v.name} (${volumeId}) has the same name as served volume ${clash.volumeId}; not served`);
        await v.close();
        throw err('ERR_NPMU_VOLUME_EXISTS', `a volume named ${v.name} is already served`);
      }
      this.#serveVolume(v);
      return v;
    } catch (e) {
      const code = (e as NpmuError).code;
      if (code === 'ERR_NPMU_VOLUME_WAITING' || code === 'ERR_NPMU_SPLIT_BRAIN') {
        const name = ((e as NpmuError).volume as string | undefined) ?? volumeId;
        const state = code === 'ERR_NPMU_SPLIT_BRAIN' ? 'split-brain' : 'waiting';
        const prev = this.#unserved.get(volumeId);
        if (prev?.reason !== (e as Error).message) this.#log.warn(`volume ${name}: not served (${state}): ${(e as Error).message}`);
        this.#unserved.set(volumeId, { volumeId, name, state, reason: (e as Error).message, links: g });
        for (const h of HALVES) g[h]?.once('down', () => {
          const u = this.#unserved.get(volumeId);
          if (u && u.links[h] === g[h]) delete u.links[h];
        });
      } else {
        const why = code === 'ERR_NPMU_META_EMPTY' ? 'no metadata (creation interrupted? run create-volume again with force)' : (e as Error).message;
        this.#log.warn(`volume ${volumeId}: cannot recover: ${why}`);
      }
      throw e;
    }
  }

  #volumeOptions(): VolumeOptions {
    return {
      ...(this.#opts.zeroer ? { zeroer: this.#opts.zeroer } : {}),
      key: this.#opts.key,
      log: this.#log,
      zeroNewRegions: this.#opts.zeroNewRegions ?? true,
      pmmId: this.pmmId,
      ...(this.#opts.touchFlushMs !== undefined ? { touchFlushMs: this.#opts.touchFlushMs } : {}),
    };
  }

  #serveVolume(v: Volume): void {
    this.volumes.set(v.name, v);
    v.once('fenced', (e: NpmuError) => {
      // Another PMM took the volume: stop serving it now, and end the sessions on it.
      if (this.volumes.get(v.name) === v) this.volumes.delete(v.name);
      this.#unserved.set(v.volumeId, { volumeId: v.volumeId, name: v.name, state: 'fenced', reason: e.message, links: {} });
      for (const s of [...this.#sessions.values()]) if (s.volume === v) s.conn.destroy();
      for (const o of [...this.#opens.values()]) if (o.volume === v) this.#opens.delete(o.handleId);
      void v.close();
    });
  }

  // ---- connections ------------------------------------------------------------

  #accept(sock: net.Socket): void {
    const conn = serve(sock, (msg, c) => this.#handle(msg, c), {
      types: typesServedBy('pmm'),
      onError: (e, msg) => this.#log.warn(`internal error${msg ? ` in ${msg.type}` : ''}: ${(e as Error)?.stack ?? String(e)}`),
    });
    this.#conns.add(conn);
    conn.on('close', () => {
      this.#conns.delete(conn);
      const s = conn.state.session as Session | undefined;
      if (s) void this.#endSession(s);
    });
  }

  /** [0085]: a client that goes away has its opens closed for it. */
  async #endSession(s: Session): Promise<void> {
    this.#sessions.delete(s.id.toString());
    const opens = [...s.opens].map((h) => this.#opens.get(h)).filter((o): o is Open => o !== undefined);
    if (opens.length > 0) this.#log.info(`session ${s.id} (${s.client}) ended with ${opens.length} region(s) open: closing them`);
    for (const o of opens) await this.#closeOpen(o);
  }

  async #handle(msg: Request, conn: ServerConnection): Promise<object | void> {
    switch (msg.type) {
      case 'ping':
        return {};
      case 'attach':
        return this.#attach(msg, conn);
      case 'create-volume':
        return this.#createVolume(msg, conn);
      case 'volume-status':
        return this.#volumeStatus(msg, conn);
      case 'volume-resync':
        return this.#volumeResync(msg, conn);
      case 'volume-force':
        return this.#volumeForce(msg, conn);
      default:
        break;
    }
    const s = conn.state.session as Session | undefined;
    if (!s) throw err('ERR_NPMU_NOT_ATTACHED', `${msg.type}: attach first`);
    switch (msg.type) {
      case 'create-region':
        return this.#createRegion(s, msg);
      case 'delete-region':
        return this.#deleteRegion(s, msg);
      case 'open-region':
        return this.#openRegion(s, msg);
      case 'close-region':
        return this.#closeRegion(s, msg);
      case 'list-regions':
        return this.#listRegions(s, msg);
      case 'read-attributes':
        return this.#readAttributes(s, msg);
      case 'mark-stale':
        return this.#markStale(s, msg);
      default:
        throw err('ERR_NPMU_PROTO_UNKNOWN_TYPE', `${msg.type} is not served by a PMM`);
    }
  }

  #volumeOf(s: Session, name: string): Volume {
    if (name !== s.volume.name) throw err('ERR_NPMU_WRONG_VOLUME', `this session is attached to volume ${s.volume.name}, not ${name}`);
    if (this.volumes.get(name) !== s.volume) throw err('ERR_NPMU_NO_SUCH_VOLUME', `volume ${name} is no longer served`);
    return s.volume;
  }

  // ---- attach -------------------------------------------------------------------

  async #attach(msg: RequestBody<'attach'>, conn: ServerConnection): Promise<ReplyInput<'attach'>> {
    if (conn.state.session) throw err('ERR_NPMU_ALREADY_ATTACHED', 'this connection is already attached; open another for another session');
    const roles = this.#opts.clients.verify(msg.client, decodeBytes(msg.credential));
    const v = this.volumes.get(msg.volume);
    if (!v) {
      const u = this.#unservedNamed(msg.volume);
      if (u) throw err(u.state === 'fenced' ? 'ERR_NPMU_FENCED' : 'ERR_NPMU_VOLUME_UNAVAILABLE', `volume ${msg.volume} is not served here (${u.state}): ${u.reason}`, { volume: msg.volume, state: u.state });
      throw err('ERR_NPMU_NO_SUCH_VOLUME', `no volume named ${JSON.stringify(msg.volume)} is served here`, { volume: msg.volume });
    }
    if (conn.closed) throw err('ERR_NPMU_DISCONNECTED', 'gone');
    let id: bigint;
    do id = (randomBytes(8).readBigUInt64LE(0) >> 1n) | 1n;
    while (this.#sessions.has(id.toString()));
    const s: Session = { id, client: msg.client, roles, volume: v, conn, opens: new Set(), mapSeq: 0 };
    this.#sessions.set(id.toString(), s);
    conn.state.session = s;
    const ttlSec = this.#opts.ticketTtlSec ?? 3600;
    const unit = (h: Half) => {
      const hs = v.halves[h];
      const a = hs.address;
      return {
        host: a?.host ?? 'unknown',
        rdmaPort: a?.rdmaPort ?? 1,
        controlPort: a?.controlPort ?? 1,
        unitId: hs.unitId,
        available: v.serves(h) && a?.rdmaPort !== undefined,
      };
    };
    const ticket = (h: Half) => issueTicket({ key: this.#opts.key, kind: 'client', unitId: v.halves[h].unitId, sessionId: id, ttlSec });
    this.#log.info(`session ${id}: ${msg.client} attached to ${v.name} from ${conn.remoteAddress}`);
    return {
      sessionId: id,
      pmmId: this.pmmId,
      tickets: { primary: ticket('primary'), mirror: ticket('mirror') },
      units: { primary: unit('primary'), mirror: unit('mirror') },
    };
  }

  // ---- regions --------------------------------------------------------------------

  async #createRegion(s: Session, msg: RequestBody<'create-region'>): Promise<void> {
    const v = this.#volumeOf(s, msg.volume);
    const basePointer = BigInt(msg.basePointer);
    const pageSize = v.image.volume.pageSize;
    const pages = pagesFor(msg.size, pageSize);
    // [0069] pointers in [base, base + size) must not wrap; nor may the mapping
    const iova = basePointer - (basePointer % PAGE_4K);
    if (basePointer + BigInt(msg.size) > U64 || iova + BigInt(pages) * BigInt(pageSize) > U64) {
      throw err('ERR_OUT_OF_RANGE', `base pointer ${basePointer} + size ${msg.size} passes 2^64`, { basePointer: msg.basePointer, size: msg.size });
    }
    // design.md: zero the pages, then commit, then answer (the zeroing outside the volume lock)
    await v.createRegion(
      { name: msg.name, size: msg.size, basePointer, owner: s.client, createdAtMs: Date.now(), lastOpenAtMs: 0, durable: msg.durable ?? true },
      pages,
      () => {
        // [0079] names are unique in a volume
        if (v.region(msg.name)) throw err('ERR_NPMU_REGION_EXISTS', `region ${JSON.stringify(msg.name)} already exists in ${v.name}`, { region: msg.name });
        if (!HALVES.some((h) => v.serves(h))) throw err('ERR_NPMU_VOLUME_OFFLINE', `volume ${v.name} is ${v.state}: no current half is reachable`, { state: v.state });
        // [0078] any size up to the available space
        if (pages > v.freePages) {
          throw err('ERR_NPMU_NO_SPACE', `no space: ${msg.size} bytes need ${pages} pages of ${pageSize}, ${v.freePages} free`, {
            requested: pages,
            free: v.freePages,
          });
        }
      },
    );
    this.#log.info(`volume ${v.name}: ${s.client} created region ${JSON.stringify(msg.name)} (${msg.size} bytes, ${pages} pages, base ${basePointer})`);
  }

  async #deleteRegion(s: Session, msg: RequestBody<'delete-region'>): Promise<void> {
    const v = this.#volumeOf(s, msg.volume);
    await v.exclusive(async () => {
      const r = v.region(msg.name);
      if (!r) throw err('ERR_NPMU_NO_SUCH_REGION', `no region ${JSON.stringify(msg.name)} in ${v.name}`, { region: msg.name });
      // [0082] only an authorized client deletes: the owner
      if (r.owner !== s.client) {
        throw err('ERR_NPMU_NOT_AUTHORIZED', `region ${JSON.stringify(r.name)} belongs to ${JSON.stringify(r.owner)}; only its owner may delete it`, { region: r.name });
      }
      const opens = this.#opensOf(v, r.id);
      const others = opens.filter((o) => o.session !== s);
      if (others.length > 0) {
        throw err('ERR_NPMU_REGION_OPEN', `region ${JSON.stringify(r.name)} is open by ${others.length} other session(s)`, { region: r.name, opens: others.length });
      }
      if (v.orphans.has(r.id)) {
        await v.scanOrphans((id) => this.#sessions.has(id));
        if (v.orphans.has(r.id)) {
          throw err('ERR_NPMU_REGION_OPEN', `region ${JSON.stringify(r.name)} is still mapped by a client of an earlier PMM process`, { region: r.name });
        }
      }
      for (const o of opens) await this.#closeOpen(o);
      await v.deleteRegion(r);
      this.#log.info(`volume ${v.name}: ${s.client} deleted region ${JSON.stringify(r.name)}`);
    });
  }

  #opensOf(v: Volume, regionId: number): Open[] {
    return [...this.#opens.values()].filter((o) => o.volume === v && o.regionId === regionId);
  }

  async #openRegion(s: Session, msg: RequestBody<'open-region'>): Promise<ReplyInput<'open-region'>> {
    const v = this.#volumeOf(s, msg.volume);
    return v.exclusive(async () => {
      const r = v.region(msg.name);
      if (!r) throw err('ERR_NPMU_NO_SUCH_REGION', `no region ${JSON.stringify(msg.name)} in ${v.name}`, { region: msg.name });
      const iova = r.basePointer - (r.basePointer % PAGE_4K);
      const o: Open = { handleId: this.#allocHandle(), session: s, volume: v, regionId: r.id, region: r.name, maps: {} };
      this.#opens.set(o.handleId, o);
      s.opens.add(o.handleId);
      const halves: Record<Half, ReplyInput<'open-region'>['primary']> = {} as never;
      const failures: NpmuError[] = [];
      await Promise.all(
        HALVES.map(async (h) => {
          const off = { unitId: v.halves[h].unitId, mapId: '0', iova: '0', rkey: 0, durability: v.durabilityOf(h), available: false, stale: v.syncOf(h) === 'stale' };
          halves[h] = off;
          // A half that missed updates is never mapped: nothing reads it until it is resynced.
          if (!v.serves(h)) return;
          const mapId = mapIdFor(r.id, ++s.mapSeq);
          try {
            const m = await mapWithRetry(() =>
              v.unitRequest(h, 'map', {
                sessionId: s.id,
                mapId,
                extents: h === 'primary' ? r.primaryExtents : r.mirrorExtents,
                iova,
                access: 'rw',
              }),
            );
            o.maps[h] = mapId.toString();
            halves[h] = { ...off, mapId, iova: m.iova, rkey: m.rkey, available: true };
          } catch (e) {
            failures.push(e as NpmuError);
            this.#log.warn(`volume ${v.name}: cannot map ${JSON.stringify(r.name)} on the ${h} for session ${s.id}: ${(e as Error).message}`);
          }
        }),
      );
      if (!halves.primary.available && !halves.mirror.available) {
        await this.#closeOpen(o);
        const cause = failures[0];
        throw err('ERR_NPMU_HALF_UNAVAILABLE', `region ${JSON.stringify(r.name)} could be mapped on neither half${cause ? `: ${cause.message}` : ''}`, {
          region: r.name,
          cause,
        });
      }
      if (s.conn.closed) {
        await this.#closeOpen(o);
        throw err('ERR_NPMU_DISCONNECTED', 'the client went away');
      }
      // [0096] last open time is an attribute: written back to the units lazily (within seconds), not on the open's path
      v.touch(r.id, Date.now());
      return {
        handleId: o.handleId,
        name: r.name,
        size: r.size,
        basePointer: r.basePointer,
        pmmId: this.pmmId,
        durable: r.durable,
        primary: halves.primary,
        mirror: halves.mirror,
      };
    });
  }

  #allocHandle(): number {
    for (;;) {
      const h = this.#nextHandle;
      this.#nextHandle = h >= 0xffffffff ? 1 : h + 1;
      if (!this.#opens.has(h)) return h;
    }
  }

  async #closeRegion(s: Session, msg: RequestBody<'close-region'>): Promise<void> {
    const o = this.#opens.get(msg.handleId);
    if (!o) throw err('ERR_NPMU_BAD_HANDLE', `no open region has handle ${msg.handleId}`, { handleId: msg.handleId });
    // [0085] only the caller's own opens
    if (o.session !== s) throw err('ERR_NPMU_NOT_OWNER', `handle ${msg.handleId} belongs to another client's session`, { handleId: msg.handleId });
    await this.#closeOpen(o);
  }

  /** Forgets an open and unmaps it on both halves (the rkeys die at once). */
  async #closeOpen(o: Open): Promise<void> {
    if (this.#opens.get(o.handleId) !== o) return;
    this.#opens.delete(o.handleId);
    o.session.opens.delete(o.handleId);
    await Promise.all(
      HALVES.map(async (h) => {
        const mapId = o.maps[h];
        if (mapId === undefined) return;
        try {
          await o.volume.unitRequest(h, 'unmap', { sessionId: o.session.id, mapId });
        } catch (e) {
          // a unit that is down or already forgot the session (its connection dropped) holds nothing
          const code = (e as NpmuError).code;
          if (code !== 'ERR_NPMU_HALF_UNAVAILABLE') this.#log.info(`unmap ${mapId} on the ${h}: ${(e as Error).message}`);
        }
      }),
    );
  }

  #listRegions(s: Session, msg: RequestBody<'list-regions'>): ReplyInput<'list-regions'> {
    const v = this.#volumeOf(s, msg.volume);
    // [0095] the true count even when the list is cut short
    return { names: v.image.names(msg.max), count: v.image.regionCount };
  }

  #readAttributes(s: Session, msg: RequestBody<'read-attributes'>): ReplyInput<'read-attributes'> {
    const v = this.#volumeOf(s, msg.volume);
    const r = v.region(msg.name);
    if (!r) throw err('ERR_NPMU_NO_SUCH_REGION', `no region ${JSON.stringify(msg.name)} in ${v.name}`, { region: msg.name });
    return {
      attrs: {
        name: r.name,
        size: r.size,
        basePointer: r.basePointer,
        owner: r.owner,
        createdAtMs: r.createdAtMs,
        lastOpenAtMs: v.lastOpenAtMs(r),
        durable: r.durable,
        durability: v.durability,
        pages: pagesFor(r.size, v.image.volume.pageSize),
        openCount: this.#opensOf(v, r.id).length + (v.orphans.get(r.id)?.length ?? 0),
      },
    };
  }

  // ---- volumes ------------------------------------------------------------------------

  /** Admin requests: an attached admin client, or any connection from this host. */
  #isAdmin(conn: ServerConnection): boolean {
    const s = conn.state.session as Session | undefined;
    if (s) return s.roles.includes('admin');
    const local = conn.socket.localAddress ?? '';
    return isLoopback(conn.remoteAddress) || (conn.remoteAddress !== '' && conn.remoteAddress === local);
  }

  #volumeStatus(msg: RequestBody<'volume-status'>, conn: ServerConnection): ReplyInput<'volume-status'> {
    const s = conn.state.session as Session | undefined;
    if (!(s && s.volume.name === msg.volume) && !this.#isAdmin(conn)) {
      throw err(s ? 'ERR_NPMU_WRONG_VOLUME' : 'ERR_NPMU_NOT_ATTACHED', `volume-status: attach to ${msg.volume} first (or ask from the PMM's host)`);
    }
    const v = this.volumes.get(msg.volume);
    if (!v) {
      const u = this.#unservedNamed(msg.volume);
      if (!u) throw err('ERR_NPMU_NO_SUCH_VOLUME', `no volume named ${JSON.stringify(msg.volume)} is served here`, { volume: msg.volume });
      const unit = (h: Half) => {
        const l = u.links[h];
        return {
          unitId: l?.unitId ?? '0'.repeat(32),
          host: l?.address.host ?? 'unknown',
          controlPort: l?.address.controlPort ?? 1,
          available: l?.up === true,
          durability: (l?.hello.durability ?? 'volatile') as 'pmem' | 'msync' | 'volatile',
          sync: 'unknown' as const,
        };
      };
      return { volume: u.name, volumeId: u.volumeId, state: u.state, reason: u.reason.slice(0, 1024), pageSize: 4096, totalPages: 0, usedPages: 0, regions: 0, primary: unit('primary'), mirror: unit('mirror') };
    }
    const unit = (h: Half) => {
      const hs = v.halves[h];
      return {
        unitId: hs.unitId,
        host: hs.address?.host ?? 'unknown',
        controlPort: hs.address?.controlPort ?? 1,
        available: v.isUp(h), // reachable; whether it is served: sync
        durability: v.durabilityOf(h),
        sync: v.syncOf(h),
      };
    };
    const reason = v.reason;
    return {
      volume: v.name,
      volumeId: v.volumeId,
      state: v.state,
      ...(reason ? { reason: reason.slice(0, 1024) } : {}),
      epoch: v.epoch,
      generation: v.generation,
      ...(v.resync ? { resync: { ...v.resync } } : {}),
      pageSize: v.image.volume.pageSize,
      totalPages: v.image.volume.dataPages,
      usedPages: v.usedPages,
      regions: v.image.regionCount,
      primary: unit('primary'),
      mirror: unit('mirror'),
    };
  }

  #unservedNamed(name: string): Unserved | undefined {
    return [...this.#unserved.values()].find((u) => u.name === name);
  }

  /** Operator: full-copy resync of the stale half; refused while any region is open (clients write one-sided). */
  async #volumeResync(msg: RequestBody<'volume-resync'>, conn: ServerConnection): Promise<ReplyInput<'volume-resync'>> {
    if (!this.#isAdmin(conn)) throw err('ERR_NPMU_NOT_AUTHORIZED', 'volume-resync: only an admin client, or a connection from the PMM host');
    const v = this.volumes.get(msg.volume);
    if (!v) throw err('ERR_NPMU_NO_SUCH_VOLUME', `no volume named ${JSON.stringify(msg.volume)} is served here`, { volume: msg.volume });
    return v.exclusive(async () => {
      const opens = [...this.#opens.values()].filter((o) => o.volume === v).length;
      await v.scanOrphans((id) => this.#sessions.has(id));
      const orphans = [...v.orphans.values()].reduce((n, l) => n + l.length, 0);
      if (opens + orphans > 0) {
        throw err('ERR_NPMU_VOLUME_BUSY', `volume ${v.name}: ${opens + orphans} region open(s); a full-copy resync needs every region closed (writes are one-sided and cannot be seen by the copy)`, {
          opens: opens + orphans,
        });
      }
      return v.resyncStale();
    });
  }

  /** Operator: serve a waiting or split-brain volume from one half, the other marked stale. */
  async #volumeForce(msg: RequestBody<'volume-force'>, conn: ServerConnection): Promise<ReplyInput<'volume-force'>> {
    if (!this.#isAdmin(conn)) throw err('ERR_NPMU_NOT_AUTHORIZED', 'volume-force: only an admin client, or a connection from the PMM host');
    if (this.volumes.has(msg.volume)) throw err('ERR_NPMU_VOLUME_SERVED', `volume ${msg.volume} is served (${this.volumes.get(msg.volume)!.state}); force is for a waiting or split-brain volume`);
    const u = this.#unservedNamed(msg.volume);
    if (!u) throw err('ERR_NPMU_NO_SUCH_VOLUME', `no volume named ${JSON.stringify(msg.volume)} is known here`, { volume: msg.volume });
    if (u.state === 'fenced') throw err('ERR_NPMU_FENCED', `volume ${msg.volume} was taken over by another PMM; restart this PMM to take it back`);
    const links = Object.fromEntries(HALVES.filter((h) => u.links[h]?.up).map((h) => [h, u.links[h]!])) as Partial<Record<Half, UnitLink>>;
    if (!links[msg.half]) throw err('ERR_NPMU_HALF_UNAVAILABLE', `the ${msg.half} of ${msg.volume} is not reachable`, { half: msg.half });
    const v = await this.#recover(u.volumeId, links, msg.half);
    this.#log.warn(`volume ${v.name}: forced from the ${msg.half} by the operator; the ${v.stale ?? 'other half'} is stale`);
    return { stale: msg.half === 'primary' ? 'mirror' : 'primary' };
  }

  /** A client saw a half fail, or will acknowledge a write the other half lacks: record it stale first. */
  async #markStale(s: Session, msg: RequestBody<'mark-stale'>): Promise<void> {
    const v = this.#volumeOf(s, msg.volume);
    if (v.syncOf(msg.half) === 'stale') return;
    this.#log.warn(`volume ${v.name}: ${s.client} reports the ${msg.half} stale: ${msg.reason}`);
    await v.markStale(msg.half, `reported by ${s.client}: ${msg.reason}`);
    if (v.syncOf(msg.half) !== 'stale') throw err('ERR_NPMU_VOLUME_OFFLINE', `volume ${v.name}: the ${msg.half} could not be recorded stale`);
  }

  async #createVolume(msg: RequestBody<'create-volume'>, conn: ServerConnection): Promise<ReplyInput<'create-volume'>> {
    if (!this.#isAdmin(conn)) throw err('ERR_NPMU_NOT_AUTHORIZED', 'create-volume: only an admin client, or a connection from the PMM host, may create volumes');
    if (this.volumes.has(msg.volume)) throw err('ERR_NPMU_VOLUME_EXISTS', `volume ${JSON.stringify(msg.volume)} is already served`);
    const links: UnitLink[] = [];
    for (const a of [msg.primary, msg.mirror]) {
      const key = addrKey(a);
      let u = this.#units.get(key);
      if (!u) {
        u = { address: { host: a.host, controlPort: a.controlPort, ...(a.rdmaPort ? { rdmaPort: a.rdmaPort } : {}) }, link: null, lastError: null, connecting: false };
        this.#units.set(key, u);
      }
      if (!u.link?.up) {
        const link = await UnitLink.open(u.address, this.#opts.key);
        const entry = u;
        entry.link = link;
        entry.address = link.address;
        link.once('down', () => {
          if (entry.link === link) entry.link = null;
        });
      }
      const link = u.link!;
      const inUse = [...this.volumes.values()].find((v) => HALVES.some((h) => v.halves[h].unitId === link.unitId));
      if (inUse) throw err('ERR_NPMU_UNIT_BOUND', `unit ${link.unitId} is part of served volume ${inUse.name}`, { unitId: link.unitId });
      links.push(link);
    }
    const v = await Volume.create(msg.volume, links[0]!, links[1]!, { ...this.#volumeOptions(), force: msg.force ?? false });
    this.#serveVolume(v);
    return { volumeId: v.volumeId };
  }
}
