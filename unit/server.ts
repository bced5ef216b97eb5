/**
 * The unit daemon's server: what the spec's network interface does for one
 * persistent memory device — admit, translate, protect, persist — under the
 * PMM's direction ([0035], [0038]-[0046]). It holds no region policy: the PMM
 * says what to map, for whom, at which network virtual address.
 *
 * Two listeners on one host address:
 * - RDMA (rdma_cm): a client connects with its 52-byte *client* ticket as
 *   connect private data. A valid ticket for this unit admits the connection
 *   into a protection domain of its own, keyed by the ticket's session id
 *   ([0044]); anything else is rejected at connect time with the error code as
 *   reject private data (ASCII, zero padded by rdma_cm).
 * - TCP control (lib/protocol.ts): the first request must be `hello` with a
 *   ticket. A *control* ticket admits the PMM (every unit request); a *client*
 *   ticket admits that client for `persist-range` on its own session (and
 *   `ping`). Anything else first gets `ERR_NPMU_UNAUTHENTICATED` and the
 *   connection is closed.
 *
 * Translation ([0040], [0043]): `map` stitches data-page extents into one
 * contiguous virtual range (mapExtents) and registers it in the session's PD
 * at the iova the PMM names; the reply carries the rkey. `unmap`
 * deregisters at once (the rkey is dead). A session whose connection goes
 * (disconnect, or the client dies) loses all its mappings. A restarted unit
 * has none until the PMM programs it again.
 *
 * Persistence domain: the unit reports its platform's persistence domain
 * (`persistDomain` in `hello` and `info`): from sysfs for devdax (the nd
 * region's persistence_domain), 'none' for files; the `persistDomain`
 * option overrides it where sysfs is silent. Clients choose their durable
 * write method by it (lib/client.ts). The `shadow` option (TEST-ONLY,
 * unit/shadow.ts) serves RDMA from a DRAM shadow of the data pages and writes
 * a range to the device only when it is persisted; on a cpu_cache platform
 * the responder's placement is the persistence point, which a user-space
 * unit cannot observe, so there the unit serves the device even with `shadow`.
 *
 * Error codes replied (besides the protocol's and the device's):
 * `ERR_NPMU_UNAUTHENTICATED`, `ERR_NPMU_ALREADY_AUTHENTICATED`,
 * `ERR_NPMU_FORBIDDEN` (a client ticket asking for a PMM request, or for
 * another session), `ERR_NPMU_NO_SESSION`, `ERR_NPMU_NO_MAPPING`,
 * `ERR_NPMU_MAP_EXISTS`, `ERR_NPMU_BAD_IOVA`, `ERR_NPMU_TOO_MANY`,
 * `ERR_NPMU_UNIT_BOUND` (format-volume over another volume without force),
 * `ERR_NPMU_FENCED` (a state-changing request from a PMM that does not hold
 * the current fencing epoch, or a claim below it),
 * the ticket codes of lib/ticket.ts, and verbs errors (ENOMEM, …) unchanged.
 * RDMA reject reasons: the ticket codes, `ERR_NPMU_SESSION_BUSY`,
 * `ERR_NPMU_TOO_MANY`, `ERR_NPMU_SHUTTING_DOWN`.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { NpmuError, argTypeError, argValueError } from '../lib/errors';
import { Access, firstActiveDevice, listen, mapExtents, newProtectionDomain, openContext, registerMemory } from '../lib/verbs';
import type { ConnectionRequest, Context, Endpoint, Extent, Listener, Mapping, MemoryRegion, ProtectionDomainHandle } from '../lib/verbs';
import {
  MAX_LIST,
  MAX_PERSIST_SLOTS,
  PERSIST_REPLY_SIZE,
  PERSIST_REQUEST_SIZE,
  decodeBytes,
  decodePersistRequest,
  encodeAcceptInfo,
  encodePersistReply,
  parseU64,
  persistStatusOf,
  serve,
  typesServedBy,
} from '../lib/protocol';
import type { MessageType, PersistReply, ReplyInput, Request, RequestBody, ServerConnection } from '../lib/protocol';
import { KEY_SIZE, TICKET_SIZE, verifyTicket } from '../lib/ticket';
import type { TicketKind } from '../lib/ticket';
import { PERSIST_DOMAINS } from './device';
import type { PersistDomain, UnitDevice } from './device';
import { DataShadow } from './shadow';
import type { Durability } from './layout';

export interface UnitServerOptions {
  /** An open device; the server owns it from now on and closes it in {@link UnitServer.close}. */
  device: UnitDevice;
  /** The 32-byte key shared with the PMM (lib/ticket.ts). */
  key: Uint8Array;
  /** An IP address of the RDMA device: both listeners bind to it. */
  host: string;
  /** 0 (default) = any free port. */
  rdmaPort?: number;
  /** 0 (default) = any free port. */
  controlPort?: number;
  /** RDMA device name (e.g. rxe0); default: the first ACTIVE one. Must be the device `host` belongs to. */
  rdmaDevice?: string;
  /** A control connection must authenticate within this time. Default 10 000 ms. */
  helloTimeoutMs?: number;
  /** Clock skew tolerated on ticket expiry. Default 5 s. */
  ticketLeewaySec?: number;
  /**
   * The platform's persistence domain, overriding what sysfs says (devdax
   * only; for platforms whose sysfs is silent). Default: the device's.
   */
  persistDomain?: PersistDomain;
  /**
   * TEST-ONLY shadow mode (unit/shadow.ts): serve RDMA from a DRAM shadow of
   * the data pages, copy to the device only on persist. devdax only; ignored
   * (the device is served) when the persistence domain is cpu_cache.
   */
  shadow?: boolean;
  /** Directory of the shadow file. Default /dev/shm, else the temp dir. */
  shadowDir?: string;
  /**
   * Persist requests over each client's RDMA connection (lib/protocol.ts:
   * PersistRequest): this many receives posted per connection, the most a
   * client may have in flight. Default PERSIST_SLOTS (16); 0: none (clients
   * persist over the control connection, as with units before this option).
   */
  persistSlots?: number;
  /** Diagnostics (admissions, rejections, teardowns). Default: none. */
  log?: (line: string) => void;
}

interface UnitMapping {
  mapId: string;
  mapping: Mapping;
  /** The device byte ranges the mapping is made of, in order (persist-range goes through them). */
  ranges: Extent[];
  mr: MemoryRegion;
  access: 'ro' | 'rw';
}

/** One admitted client connection: its PD, endpoint and mappings. */
interface Session {
  sessionId: string;
  pd: ProtectionDomainHandle;
  ep: Endpoint | undefined;
  state: 'accepting' | 'connected' | 'closed';
  /** Settles when the accept has (ep set) or has failed. */
  settled: Promise<void>;
  remoteAddress: string;
  connectedAtMs: number;
  mappings: Map<string, UnitMapping>;
  /** The connection's fence word (lib/protocol.ts: AcceptInfo), in its PD only. */
  fence: MemoryRegion | undefined;
  /** Persist requests over RDMA (lib/protocol.ts: PersistRequest): PERSIST_SLOTS requests, then as many replies. */
  persistBuf: Buffer;
  persistMr: MemoryRegion | undefined;
}

/** Receives a unit keeps posted on each client connection for persist requests, by default (AcceptInfo.persistSlots). */
export const PERSIST_SLOTS = 16;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** What `info` returns (the protocol's info reply). */
export type UnitInfo = ReplyInput<'info'> & { durability: Durability; persistDomain: PersistDomain; shadow: boolean };

type Peer = { kind: TicketKind; sessionId: string; /** the fencing epoch this connection claimed */ epoch?: number };

const CLIENT_TYPES: ReadonlySet<MessageType> = new Set(['hello', 'ping', 'persist-range']);
/** PMM requests that change the unit's state: only from a connection holding the current epoch. */
const FENCED_TYPES: ReadonlySet<MessageType> = new Set(['format-volume', 'meta-write', 'set-usage', 'map', 'unmap', 'persist', 'revoke']);
const ZERO_ID = '0'.repeat(32);
const SYS_PAGE = 4096n;
const U64_END = 2n ** 64n;

function errorCode(err: unknown): string {
  const c = (err as { code?: unknown })?.code;
  return typeof c === 'string' && /^[A-Z][A-Z0-9_]*$/.test(c) ? c : 'ERR_NPMU_INTERNAL';
}

export class UnitServer extends EventEmitter {
  readonly device: UnitDevice;
  readonly host: string;
  readonly unitId: string;
  /** The platform's persistence domain the unit reports (option, else sysfs). */
  readonly persistDomain: PersistDomain;
  #shadow: DataShadow | undefined;
  #key: Buffer;
  #ctx: Context;
  #listener: Listener;
  #tcp: net.Server;
  #opts: UnitServerOptions;
  #sessions = new Map<string, Session>();
  #controls = new Set<ServerConnection>();
  #usedPages = 0;
  #persistServed = 0;
  #persistSlots: number;
  #closing: Promise<void> | undefined;

  private constructor(opts: UnitServerOptions, ctx: Context, listener: Listener, tcp: net.Server, shadow: DataShadow | undefined) {
    super();
    this.#opts = opts;
    this.#persistSlots = opts.persistSlots ?? PERSIST_SLOTS;
    this.device = opts.device;
    this.persistDomain = opts.persistDomain ?? opts.device.persistDomain;
    this.#shadow = shadow;
    this.unitId = opts.device.unitId;
    this.host = opts.host;
    this.#key = Buffer.from(opts.key);
    this.#ctx = ctx;
    this.#listener = listener;
    this.#tcp = tcp;
    listener.onRequest = (req) => this.#onRequest(req);
    tcp.on('connection', (sock) => this.#onControl(sock));
  }

  /** Starts serving `device`: the RDMA listener, then the control port. */
  static async start(opts: UnitServerOptions): Promise<UnitServer> {
    if (typeof opts !== 'object' || opts === null) throw argTypeError('opts', 'an object', opts);
    const { device, key, host } = opts;
    if (typeof device !== 'object' || device === null || typeof device.extentRanges !== 'function') throw argTypeError('device', 'a UnitDevice', device);
    if (device.closed) throw new NpmuError('ERR_NPMU_CLOSED', 'the unit device is closed');
    if (!(key instanceof Uint8Array) || key.length !== KEY_SIZE) throw argValueError('key', `must be ${KEY_SIZE} bytes`, key);
    if (typeof host !== 'string' || net.isIP(host) === 0) throw argValueError('host', 'must be an IP address literal', host);
    for (const k of ['rdmaPort', 'controlPort'] as const) {
      const p = opts[k];
      if (p !== undefined && (!Number.isSafeInteger(p) || p < 0 || p > 65535)) throw argValueError(k, 'must be a port number (0 = any)', p);
    }
    if (opts.persistDomain !== undefined) {
      if (!PERSIST_DOMAINS.includes(opts.persistDomain)) {
        throw argValueError('persistDomain', `must be one of ${PERSIST_DOMAINS.map((d) => `'${d}'`).join(', ')}`, opts.persistDomain);
      }
      if (device.kind !== 'devdax') throw argValueError('persistDomain', `applies to devdax devices only, not a ${device.kind} device`, opts.persistDomain);
    }
    if (opts.shadow !== undefined && typeof opts.shadow !== 'boolean') throw argTypeError('shadow', 'of type boolean', opts.shadow);
    if (opts.shadow && device.kind !== 'devdax') throw argValueError('shadow', `applies to devdax devices only, not a ${device.kind} device`, opts.shadow);
    if (opts.shadowDir !== undefined && (typeof opts.shadowDir !== 'string' || opts.shadowDir === '')) throw argTypeError('shadowDir', 'a non-empty string', opts.shadowDir);
    const ps = opts.persistSlots;
    if (ps !== undefined && (!Number.isInteger(ps) || ps < 0 || ps > MAX_PERSIST_SLOTS)) {
      throw argValueError('persistSlots', `must be an integer in [0, ${MAX_PERSIST_SLOTS}]`, ps);
    }
    const domain = opts.persistDomain ?? device.persistDomain;
    if (opts.shadow && domain === 'cpu_cache') opts.log?.('shadow: not used on a cpu_cache platform (placement is persistence): serving the device');
    const name = opts.rdmaDevice ?? firstActiveDevice();
    if (!name) throw new NpmuError('ERR_NPMU_NO_DEVICE', 'no ACTIVE RDMA device: a unit needs one (rxe or a real RNIC)');
    const ctx = openContext(name);
    let listener: Listener | undefined;
    let shadow: DataShadow | undefined;
    try {
      if (opts.shadow && domain !== 'cpu_cache') {
        shadow = DataShadow.create(device, opts.shadowDir);
        opts.log?.(`shadow: TEST-ONLY, data pages served from ${shadow.path}, written to the device on persist`);
      }
      listener = listen({ host, port: opts.rdmaPort ?? 0 });
      const tcp = net.createServer();
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen({ host, port: opts.controlPort ?? 0 }, () => {
          tcp.removeListener('error', reject);
          resolve();
        });
      });
      tcp.on('error', (err) => opts.log?.(`control listener error: ${err.message}`));
      return new UnitServer(opts, ctx, listener, tcp, shadow);
    } catch (err) {
      listener?.close();
      shadow?.close();
      ctx.close();
      throw err;
    }
  }

  get rdmaPort(): number {
    return this.#listener.port;
  }

  get controlPort(): number {
    return (this.#tcp.address() as net.AddressInfo | null)?.port ?? 0;
  }

  get durability(): Durability {
    return this.device.durability;
  }

  /** True when RDMA is served from a DRAM shadow (test-only shadow mode, and not cpu_cache). */
  get shadow(): boolean {
    return this.#shadow !== undefined;
  }

  #log(line: string): void {
    this.#opts.log?.(line);
  }

  // ---- RDMA admission ([0038], [0044]) ------------------------------------

  #onRequest(req: ConnectionRequest): void {
    // Never throws: a throw here would be a fatal exception in the addon's callback.
    let reason = 'ERR_NPMU_INTERNAL';
    try {
      if (this.#closing) {
        reason = 'ERR_NPMU_SHUTTING_DOWN';
      } else {
        const claims = verifyTicket(req.privateData.subarray(0, TICKET_SIZE), {
          key: this.#key,
          unitId: this.unitId,
          kind: 'client',
          leewaySec: this.#opts.ticketLeewaySec ?? 5,
        });
        const sessionId = claims.sessionId.toString();
        const old = this.#sessions.get(sessionId);
        if (old && (old.state === 'accepting' || old.ep?.state === 'connected')) {
          reason = 'ERR_NPMU_SESSION_BUSY';
        } else if (!old && this.#sessions.size >= MAX_LIST) {
          reason = 'ERR_NPMU_TOO_MANY';
        } else {
          if (old) void this.#teardown(old, 'replaced by a new connection');
          this.#admit(req, sessionId);
          return;
        }
      }
    } catch (err) {
      reason = errorCode(err);
    }
    this.#log(`rejected RDMA connection from ${req.remoteAddress}: ${reason}`);
    try {
      req.reject(Buffer.from(reason, 'latin1'));
    } catch {
      // already timed out or gone
    }
  }

  #admit(req: ConnectionRequest, sessionId: string): void {
    // One PD per connection: an rkey of this session is useless on any other ([0044]).
    const pd = newProtectionDomain(this.#ctx);
    const s: Session = {
      sessionId,
      pd,
      ep: undefined,
      state: 'accepting',
      settled: Promise.resolve(),
      remoteAddress: req.remoteAddress.slice(0, 64),
      connectedAtMs: Date.now(),
      mappings: new Map(),
      fence: undefined,
      persistBuf: Buffer.alloc(this.#persistSlots * (PERSIST_REQUEST_SIZE + PERSIST_REPLY_SIZE)),
      persistMr: undefined,
    };
    let accepted: Promise<Endpoint>;
    try {
      // The fence word: atomics of this connection only (it is in this PD alone), never data.
      s.fence = registerMemory(pd, Buffer.alloc(64), { access: Access.LOCAL_WRITE | Access.REMOTE_ATOMIC });
      const fenceAddr = (s.fence.iova + 7n) & ~7n;
      const slots = this.#persistSlots;
      // Persist requests land here (local access only: the client SENDs, it cannot WRITE them).
      if (slots > 0) s.persistMr = registerMemory(pd, s.persistBuf, { access: Access.LOCAL_WRITE });
      accepted = req.accept({
        pd,
        sqDepth: Math.max(4, slots),
        rqDepth: Math.max(4, slots),
        privateData: encodeAcceptInfo({ fenceAddr, fenceRkey: s.fence.rkey, ...(slots > 0 ? { persistSlots: slots } : {}) }),
      });
    } catch (err) {
      this.#closePd(s);
      throw err;
    }
    // Registered before the accept completes, so a `map` racing the client's
    // own "connected" is not refused.
    this.#sessions.set(sessionId, s);
    s.settled = accepted.then(
      (ep) => {
        s.ep = ep; // a teardown already under way closes it
        if (s.state === 'closed') return;
        s.state = 'connected';
        ep.onEvent = (ev) => {
          void this.#teardown(s, ev.type === 'disconnected' ? 'client disconnected' : `endpoint error: ${ev.error.message}`);
        };
        // A disconnect before onEvent was set is not reported again.
        if (ep.state !== 'connected') {
          void this.#teardown(s, `connection ${ep.state} at once`);
          return;
        }
        for (let slot = 0; slot < this.#persistSlots; slot++) this.#awaitPersist(s, slot);
        this.#log(`session ${sessionId} connected from ${s.remoteAddress}`);
        this.emit('session', sessionId);
      },
      (err: Error) => {
        void this.#teardown(s, `accept failed: ${err.message}`);
      },
    );
  }

  // ---- persist requests over RDMA (lib/protocol.ts: PersistRequest) -------

  /** Posts the receive of `slot`; its request is answered, then the receive posted again. */
  #awaitPersist(s: Session, slot: number): void {
    const ep = s.ep;
    if (!ep || !s.persistMr || s.state !== 'connected') return;
    ep.recv(s.persistMr, slot * PERSIST_REQUEST_SIZE, PERSIST_REQUEST_SIZE).then(
      (n) =>
        this.#answerPersist(s, slot, n).catch((err: unknown) => {
          this.#log(`session ${s.sessionId}: persist reply: ${(err as Error).message}`);
        }),
      () => undefined, // flushed: the connection is going
    );
  }

  async #answerPersist(s: Session, slot: number, n: number): Promise<void> {
    const b = s.persistBuf;
    const at = slot * PERSIST_REQUEST_SIZE;
    const req = decodePersistRequest(b, at, n);
    let reply: PersistReply;
    if (!req) {
      reply = { seq: n >= 8 ? b.readUInt32LE(at + 4) : 0, status: 'ERR_NPMU_PROTO_MALFORMED' };
    } else {
      try {
        if (req.length === 0n || req.offset > MAX_SAFE || req.length > MAX_SAFE) {
          throw new NpmuError('ERR_NPMU_BAD_RANGE', `[${req.offset}, +${req.length}) is not a range to persist`);
        }
        const method = this.persistRange(s.sessionId, req.mapId.toString(), Number(req.offset), Number(req.length));
        reply = { seq: req.seq, status: 'ok', method };
      } catch (err) {
        reply = { seq: req.seq, status: persistStatusOf(err) };
        if (reply.status === 'ERR_NPMU_INTERNAL') this.#log(`session ${s.sessionId}: persist over RDMA failed: ${(err as Error).message}`);
      }
    }
    const ep = s.ep;
    if (!ep || !s.persistMr || s.state !== 'connected') return;
    const rat = this.#persistSlots * PERSIST_REQUEST_SIZE + slot * PERSIST_REPLY_SIZE;
    encodePersistReply(reply, b, rat);
    try {
      await ep.send(s.persistMr, rat, PERSIST_REPLY_SIZE);
    } catch {
      return; // the connection is going: no more requests on it
    }
    this.#persistServed++;
    this.#awaitPersist(s, slot);
  }

  /** Removes every mapping of the session at once (rkeys dead), then the endpoint and the PD. */
  async #teardown(s: Session, why: string): Promise<void> {
    if (s.state === 'closed') return;
    s.state = 'closed';
    if (this.#sessions.get(s.sessionId) === s) this.#sessions.delete(s.sessionId);
    for (const m of s.mappings.values()) this.#release(m);
    s.mappings.clear();
    this.#log(`session ${s.sessionId} closed: ${why}`);
    await s.settled; // an accept in flight has resolved (s.ep set) or failed
    if (s.ep) {
      s.ep.onEvent = null;
      try {
        await s.ep.close();
      } catch (err) {
        this.#log(`session ${s.sessionId}: endpoint close: ${(err as Error).message}`);
      }
    }
    this.#closePd(s);
    this.emit('session-closed', s.sessionId);
  }

  #closePd(s: Session): void {
    try {
      s.persistMr?.close();
    } catch (err) {
      this.#log(`session ${s.sessionId}: persist buffer close: ${(err as Error).message}`);
    }
    try {
      s.fence?.close();
    } catch (err) {
      this.#log(`session ${s.sessionId}: fence close: ${(err as Error).message}`);
    }
    try {
      s.pd.close();
    } catch (err) {
      this.#log(`session ${s.sessionId}: PD close: ${(err as Error).message}`);
    }
  }

  /** Deregisters and unmaps; on a teardown path, where nothing may throw. */
  #release(m: UnitMapping): void {
    try {
      m.mr.close();
      m.mapping.close();
    } catch (err) {
      this.#log(`mapping ${m.mapId}: release failed: ${(err as Error).message}`);
    }
  }

  // ---- control connections ---------------------------------------------

  #onControl(sock: net.Socket): void {
    if (this.#closing) {
      sock.destroy();
      return;
    }
    const conn = serve(sock, (msg, c) => this.#handle(msg, c), {
      types: typesServedBy('unit'),
      onError: (err, msg) => this.#log(`internal error on ${msg?.type ?? 'a reply'}: ${(err as Error)?.stack ?? String(err)}`),
    });
    this.#controls.add(conn);
    const timer = setTimeout(() => {
      if (!conn.state.peer) conn.destroy();
    }, this.#opts.helloTimeoutMs ?? 10_000);
    timer.unref();
    conn.once('close', () => {
      clearTimeout(timer);
      this.#controls.delete(conn);
    });
  }

  #handle(msg: Request, conn: ServerConnection): object | void {
    const peer = conn.state.peer as Peer | undefined;
    if (msg.type === 'hello') {
      if (peer) throw new NpmuError('ERR_NPMU_ALREADY_AUTHENTICATED', 'hello was already accepted on this connection');
      let claims;
      try {
        claims = verifyTicket(decodeBytes(msg.ticket), { key: this.#key, unitId: this.unitId, leewaySec: this.#opts.ticketLeewaySec ?? 5 });
      } catch (err) {
        closeSoon(conn);
        throw err;
      }
      conn.state.peer = { kind: claims.kind, sessionId: claims.sessionId.toString() } satisfies Peer;
      const sb = this.device.superblock;
      return {
        unitId: sb.unitId,
        role: sb.role,
        volumeId: sb.volumeId,
        label: sb.label,
        capacity: sb.capacity,
        pageSize: sb.pageSize,
        dataPages: sb.dataPages,
        metaLength: sb.metaLength,
        durability: this.durability,
        layoutVersion: sb.layoutVersion,
        generation: sb.generation,
        rdmaPort: this.rdmaPort,
        epoch: sb.epoch,
        holder: sb.holder,
        persistDomain: this.persistDomain,
      } satisfies ReplyInput<'hello'>;
    }
    if (!peer) {
      closeSoon(conn);
      throw new NpmuError('ERR_NPMU_UNAUTHENTICATED', `${msg.type} before hello: send hello with a ticket first`);
    }
    if (peer.kind === 'client' && !CLIENT_TYPES.has(msg.type)) {
      throw new NpmuError('ERR_NPMU_FORBIDDEN', `${msg.type} needs a control (PMM) ticket`);
    }
    if (peer.kind === 'control' && FENCED_TYPES.has(msg.type)) this.#checkEpoch(peer, msg.type);
    switch (msg.type) {
      case 'claim':
        return this.#claim(msg, conn, peer);
      case 'revoke':
        return { mappings: this.revokeAll('revoked by the PMM') };
      case 'ping':
        return {};
      case 'info':
        return this.info();
      case 'sessions':
        return { sessions: this.sessions() };
      case 'format-volume':
        return this.#formatVolume(msg);
      case 'meta-read':
        return { data: this.device.readMeta(msg.offset, msg.length) };
      case 'meta-write':
        this.device.writeMeta(msg.offset, decodeBytes(msg.data), msg.persist);
        return {};
      case 'set-usage':
        if (msg.usedPages > this.device.dataPages) {
          throw new NpmuError('ERR_NPMU_BAD_RANGE', `usedPages ${msg.usedPages} exceeds the ${this.device.dataPages} data pages`);
        }
        this.#usedPages = msg.usedPages;
        return {};
      case 'map':
        return this.map(msg);
      case 'unmap':
        this.unmap(msg.sessionId, msg.mapId);
        return {};
      case 'persist':
        return { method: this.device.persistData(msg.page, msg.offset, msg.length, this.#shadow?.view) };
      case 'persist-range':
        if (peer.kind === 'client' && peer.sessionId !== msg.sessionId) {
          throw new NpmuError('ERR_NPMU_FORBIDDEN', `this connection's ticket is for session ${peer.sessionId}, not ${msg.sessionId}`);
        }
        return { method: this.persistRange(msg.sessionId, msg.mapId, msg.offset, msg.length) };
      default:
        throw new NpmuError('ERR_NPMU_PROTO_UNKNOWN_TYPE', `a unit does not serve ${msg.type}`);
    }
  }

  // ---- fencing: one PMM at a time -----------------------------------------

  #checkEpoch(peer: Peer, type: string): void {
    const sb = this.device.superblock;
    if (peer.epoch !== undefined && peer.epoch === sb.epoch) return;
    const why = peer.epoch === undefined ? 'this connection has not claimed the unit' : `this connection claimed epoch ${peer.epoch}`;
    throw new NpmuError('ERR_NPMU_FENCED', `${type} refused: ${why}; the unit is held at epoch ${sb.epoch} by PMM ${sb.holder}`, {
      epoch: sb.epoch,
      holder: sb.holder,
    });
  }

  #claim(msg: RequestBody<'claim'>, conn: ServerConnection, peer: Peer): ReplyInput<'claim'> {
    const sb = this.device.superblock;
    if (msg.pmmId === ZERO_ID) throw new NpmuError('ERR_NPMU_BAD_VOLUME', 'pmmId must not be all zero');
    const previous = { previousEpoch: sb.epoch, previousHolder: sb.holder };
    if (msg.epoch < sb.epoch || (msg.epoch === sb.epoch && msg.pmmId !== sb.holder)) {
      throw new NpmuError('ERR_NPMU_FENCED', `claim of epoch ${msg.epoch} refused: the unit is held at epoch ${sb.epoch} by PMM ${sb.holder}`, {
        epoch: sb.epoch,
        holder: sb.holder,
      });
    }
    if (msg.epoch > sb.epoch) this.device.updateSuperblock({ epoch: msg.epoch, holder: msg.pmmId }); // persisted before it counts
    peer.epoch = msg.epoch;
    // The fenced PMM stops the moment its connections go.
    for (const c of this.#controls) {
      const p = c.state.peer as Peer | undefined;
      if (c !== conn && p?.kind === 'control' && p.epoch !== undefined && p.epoch < msg.epoch) {
        this.#log(`control connection of epoch ${p.epoch} dropped: fenced by epoch ${msg.epoch} (PMM ${msg.pmmId})`);
        c.destroy();
      }
    }
    if (msg.epoch > previous.previousEpoch) this.#log(`claimed by PMM ${msg.pmmId} at epoch ${msg.epoch} (was ${previous.previousEpoch}, PMM ${previous.previousHolder})`);
    return { epoch: msg.epoch, ...previous };
  }

  /** Drops every mapping of every session at once (rkeys dead); returns how many. */
  revokeAll(why: string): number {
    let n = 0;
    for (const s of this.#sessions.values()) {
      for (const m of s.mappings.values()) this.#release(m);
      n += s.mappings.size;
      s.mappings.clear();
    }
    if (n > 0) this.#log(`${n} mapping(s) revoked: ${why}`);
    return n;
  }

  #formatVolume(msg: RequestBody<'format-volume'>): ReplyInput<'format-volume'> {
    const sb = this.device.superblock;
    const zero = '0'.repeat(32);
    if (sb.volumeId !== zero && sb.volumeId !== msg.volumeId && !msg.force) {
      throw new NpmuError('ERR_NPMU_UNIT_BOUND', `unit ${sb.unitId} belongs to volume ${sb.volumeId} (${sb.role}); pass force to rebind`, {
        volumeId: sb.volumeId,
      });
    }
    if (msg.volumeId === zero) throw new NpmuError('ERR_NPMU_BAD_VOLUME', 'volumeId must not be all zero');
    const next = this.device.updateSuperblock({ volumeId: msg.volumeId, role: msg.role, label: msg.label });
    return { generation: next.generation };
  }

  // ---- translation and protection ([0040]-[0046]) -------------------------

  /** Maps extents for a session at `iova` (the PMM's `map`); returns the rkey. */
  map(req: RequestBody<'map'>): ReplyInput<'map'> {
    const s = this.#session(req.sessionId);
    if (s.mappings.has(req.mapId)) throw new NpmuError('ERR_NPMU_MAP_EXISTS', `session ${req.sessionId} already has mapping ${req.mapId}`);
    if (s.mappings.size >= MAX_LIST) throw new NpmuError('ERR_NPMU_TOO_MANY', `session ${req.sessionId} has ${MAX_LIST} mappings`);
    const ranges = this.device.extentRanges(req.extents);
    const length = ranges.reduce((n, r) => n + r.length, 0);
    const iova = parseU64(req.iova);
    // ibv_reg_mr_iova2: iova ≡ address (mod page); our ranges are page-aligned.
    if (iova % SYS_PAGE !== 0n || iova + BigInt(length) > U64_END) {
      throw new NpmuError('ERR_NPMU_BAD_IOVA', `iova ${req.iova} must be a multiple of ${SYS_PAGE} and leave room for ${length} bytes below 2^64`);
    }
    const access =
      req.access === 'rw' ? Access.LOCAL_WRITE | Access.REMOTE_READ | Access.REMOTE_WRITE | Access.REMOTE_ATOMIC : Access.REMOTE_READ;
    this.#shadow?.fill(ranges);
    const mapping = mapExtents(this.#shadow?.path ?? this.device.path, ranges);
    let mr: MemoryRegion;
    try {
      mr = registerMemory(s.pd, mapping, { iova, access });
    } catch (err) {
      mapping.close();
      throw err;
    }
    s.mappings.set(req.mapId, { mapId: req.mapId, mapping, ranges, mr, access: req.access });
    return { rkey: mr.rkey, iova: req.iova, length };
  }

  /** Deregisters a mapping: its rkey is dead when this returns. */
  unmap(sessionId: string, mapId: string): void {
    const s = this.#session(sessionId);
    const m = s.mappings.get(mapId);
    if (!m) throw new NpmuError('ERR_NPMU_NO_MAPPING', `session ${sessionId} has no mapping ${mapId}`);
    m.mr.close(); // throws (and the mapping stays) unless the rkey is really dead
    s.mappings.delete(mapId);
    this.#release(m);
  }

  /** Persists bytes [offset, offset+length) of a mapping. */
  persistRange(sessionId: string, mapId: string, offset: number, length: number): 'pmem' | 'msync' {
    const s = this.#session(sessionId);
    const m = s.mappings.get(mapId);
    if (!m) throw new NpmuError('ERR_NPMU_NO_MAPPING', `session ${sessionId} has no mapping ${mapId}`);
    if (offset + length > m.mapping.length) {
      throw new NpmuError('ERR_NPMU_BAD_RANGE', `[${offset}, ${offset + length}) is outside mapping ${mapId} of ${m.mapping.length} bytes`);
    }
    // Shadow mode: copy the mapping's bytes through its extents to the device, then persist there.
    if (this.#shadow) {
      let method: 'pmem' | 'msync' = 'pmem';
      let at = 0;
      for (const r of m.ranges) {
        const from = Math.max(offset, at);
        const to = Math.min(offset + length, at + r.length);
        if (from < to) method = this.device.persistDeviceRange(r.offset + (from - at), to - from, this.#shadow.view);
        at += r.length;
      }
      return method;
    }
    // An ordinary file is written back through the device's file descriptor
    // (msync would miss RDMA-written bytes in pages writeback already cleaned).
    if (this.device.kind === 'file') return this.device.persistMapped(m.ranges, offset, length);
    return m.mapping.persist(offset, length);
  }

  #session(sessionId: string): Session {
    const s = this.#sessions.get(sessionId);
    if (!s || s.state === 'closed') throw new NpmuError('ERR_NPMU_NO_SESSION', `session ${sessionId} has no connection to this unit`);
    return s;
  }

  // ---- observability ----------------------------------------------------

  /** Capacity, usage as the PMM last set it, durability, connections and mappings. */
  info(): UnitInfo {
    const sb = this.device.superblock;
    const connections = [...this.#sessions.values()].map((s) => ({ sessionId: s.sessionId, remoteAddress: s.remoteAddress, mappings: s.mappings.size }));
    return {
      unitId: sb.unitId,
      capacity: sb.capacity,
      pageSize: sb.pageSize,
      dataPages: sb.dataPages,
      usedPages: this.#usedPages,
      durability: this.durability,
      persistDomain: this.persistDomain,
      shadow: this.shadow,
      connections,
      mappings: connections.reduce((n, c) => n + c.mappings, 0),
    };
  }

  sessions(): ReplyInput<'sessions'>['sessions'] {
    return [...this.#sessions.values()].map((s) => ({
      sessionId: s.sessionId,
      remoteAddress: s.remoteAddress,
      connectedAtMs: s.connectedAtMs,
      mapIds: [...s.mappings.keys()],
    }));
  }

  /** Persist requests answered over RDMA (SEND / RECV) since the unit started, errors included. */
  get persistServed(): number {
    return this.#persistServed;
  }

  /** Control connections open now (authenticated or not). */
  get controlConnections(): number {
    return this.#controls.size;
  }

  // ---- life cycle -----------------------------------------------------------

  /** Stops listening, drops every connection and mapping, closes the device. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#listener.close();
      const tcpClosed = new Promise<void>((resolve) => this.#tcp.close(() => resolve()));
      for (const c of this.#controls) c.destroy();
      await Promise.all([...this.#sessions.values()].map((s) => this.#teardown(s, 'unit shutting down')));
      await tcpClosed;
      try {
        this.#ctx.close();
      } catch (err) {
        this.#log(`context close: ${(err as Error).message}`);
      }
      this.device.close();
      this.#shadow?.close();
    })();
    return this.#closing;
  }
}

/** Ends the connection once the reply being sent has been written. */
function closeSoon(conn: ServerConnection): void {
  setImmediate(() => conn.close());
}
