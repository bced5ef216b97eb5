/**
 * One mirrored volume ([0059]-[0062], [0075]): a primary and a mirror unit,
 * the metadata both of them hold, and the page allocators derived from it.
 *
 * One writer: a PMM takes a volume by claiming a fencing epoch on its units
 * (`claimUnits`) before it reads anything; a unit refuses state changes from
 * lower epochs, and a PMM that meets ERR_NPMU_FENCED stops serving the
 * volume at once (`fenced`, event 'fenced').
 *
 * One history: every change goes through `commit` (pmm/metadata.ts: table
 * pages, then the root, on the primary, then on the mirror). A half that
 * misses an update is recorded stale on the other half before the update
 * counts, and is never served (not mapped, not read, not written) until an
 * operator's `resyncStale` copies everything back; pmm/history.ts decides
 * at recovery, from the units alone, which half is the volume's history.
 *
 * The PMM keeps no state of its own: a Volume is rebuilt from the units'
 * metadata areas alone (`Volume.recover`). Allocation is derived from the
 * region table, so a crash can never leave a page owned twice or leaked.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { NpmuError } from '../lib/errors';
import { ControlConnection, META_IO_MAX } from '../lib/protocol';
import type { ReplyBody, RequestInput, OkReply, MessageType } from '../lib/protocol';
import { ANY_UNIT_ID, issueTicket } from '../lib/ticket';
import { PageAllocator, pagesFor } from './alloc';
import type { Extent } from './alloc';
import { MetaImage, ROOT_SLOT_SIZE, newId, newestRoot, rootSlotOffset, tablePageOffset } from './metadata';
import type { AreaWrite, Change, Half, RegionMeta, RootRecord, SyncState } from './metadata';
import { decide } from './history';
import type { HalfView } from './history';

export type { Half } from './metadata';
export type Durability = 'pmem' | 'msync' | 'volatile';
export type HelloInfo = ReplyBody<'hello'>;

/** Where a unit listens. `rdmaPort` comes from the unit's `hello` when it reports it. */
export interface UnitAddress {
  host: string;
  controlPort: number;
  rdmaPort?: number;
}

export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
}

export const silentLogger: Logger = { info: () => undefined, warn: () => undefined };

export const HALVES: readonly Half[] = ['primary', 'mirror'];
const DURABILITY_RANK: Record<Durability, number> = { volatile: 0, msync: 1, pmem: 2 };

/** The weaker of two durability modes (what a mirrored write can promise). */
export function weakest(a: Durability, b: Durability): Durability {
  return DURABILITY_RANK[a] <= DURABILITY_RANK[b] ? a : b;
}

export function formatAddress(a: UnitAddress): string {
  const h = a.host.includes(':') ? `[${a.host}]` : a.host;
  return `${h}:${a.controlPort}${a.rdmaPort ? `:${a.rdmaPort}` : ''}`;
}

/** Parses `host:controlPort[:rdmaPort]` (IPv6 hosts in brackets). */
export function parseAddress(s: string): UnitAddress {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})(?::(\d{1,5}))?$/.exec(s);
  const bad = (): NpmuError => new NpmuError('ERR_INVALID_ARG_VALUE', `unit address ${JSON.stringify(s)} must be host:controlPort[:rdmaPort]`);
  if (!m) throw bad();
  const controlPort = Number(m[3]);
  const rdmaPort = m[4] === undefined ? undefined : Number(m[4]);
  if (controlPort < 1 || controlPort > 65535 || (rdmaPort !== undefined && (rdmaPort < 1 || rdmaPort > 65535))) throw bad();
  return { host: (m[1] ?? m[2])!, controlPort, ...(rdmaPort ? { rdmaPort } : {}) };
}

// ---------------------------------------------------------------------------
// Control connection to one unit

/**
 * The PMM's control connection to one unit: connected, admitted with a
 * control ticket, `hello` done. Emits `'down'` once when the connection goes.
 */
export class UnitLink extends EventEmitter {
  readonly address: UnitAddress;
  readonly hello: HelloInfo;
  readonly #conn: ControlConnection;
  #up = true;

  private constructor(address: UnitAddress, conn: ControlConnection, hello: HelloInfo) {
    super();
    this.address = { ...address, ...(hello.rdmaPort ? { rdmaPort: hello.rdmaPort } : {}) };
    this.#conn = conn;
    this.hello = hello;
    conn.on('close', () => {
      if (!this.#up) return;
      this.#up = false;
      this.emit('down');
    });
  }

  /**
   * Connects to a unit's control port and says hello with a control ticket.
   * The ticket names {@link ANY_UNIT_ID}: the PMM learns the unit's id from the reply.
   */
  static async open(address: UnitAddress, key: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<UnitLink> {
    const conn = await ControlConnection.connect({ host: address.host, port: address.controlPort, timeoutMs: opts.timeoutMs ?? 5000 });
    try {
      const ticket = issueTicket({ key, kind: 'control', unitId: ANY_UNIT_ID, sessionId: 0, ttlSec: 60 });
      const hello = await conn.request('hello', { ticket }, { timeoutMs: opts.timeoutMs ?? 5000 });
      const { v: _v, id: _id, type: _t, ...info } = hello;
      return new UnitLink(address, conn, info as HelloInfo);
    } catch (err) {
      conn.destroy();
      throw err;
    }
  }

  get up(): boolean {
    return this.#up && !this.#conn.closed;
  }

  get unitId(): string {
    return this.hello.unitId;
  }

  request<T extends MessageType>(type: T, body: RequestInput<T>, opts: { timeoutMs?: number } = {}): Promise<OkReply<T>> {
    return this.#conn.request(type, body, opts);
  }

  close(): void {
    this.#conn.destroy();
  }
}

// ---------------------------------------------------------------------------
// Metadata I/O (format: pmm/metadata.ts)

/** Reads [offset, offset + length) of a unit's metadata area, in protocol-sized pieces. */
export async function readArea(link: UnitLink, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let off = 0; off < length; ) {
    const n = Math.min(META_IO_MAX, length - off);
    parts.push(Buffer.from((await link.request('meta-read', { offset: offset + off, length: n })).data, 'base64'));
    off += n;
  }
  return Buffer.concat(parts);
}

/** Writes and persists each write in order (a write counts once the unit replied). */
export async function writeArea(link: UnitLink, writes: readonly AreaWrite[]): Promise<void> {
  for (const w of writes) {
    for (let off = 0; off < w.bytes.length; ) {
      const n = Math.min(META_IO_MAX, w.bytes.length - off);
      await link.request('meta-write', { offset: w.offset + off, data: w.bytes.subarray(off, off + n), persist: true }, { timeoutMs: 30_000 });
      off += n;
    }
  }
}

/** The newest valid root of a unit (null when it has none). */
export async function readRoot(link: UnitLink): Promise<RootRecord | null> {
  const s0 = await readArea(link, rootSlotOffset(0), Math.min(ROOT_SLOT_SIZE, link.hello.metaLength));
  const s1 = await readArea(link, rootSlotOffset(1), Math.min(ROOT_SLOT_SIZE, Math.max(0, link.hello.metaLength - ROOT_SLOT_SIZE)));
  return newestRoot(s0, s1).root;
}

/** Loads the whole image a root describes from one unit. */
export async function loadImage(link: UnitLink, root: RootRecord): Promise<MetaImage> {
  const pages = new Map<number, Uint8Array>();
  for (const ref of root.pages) pages.set(ref.index, await readArea(link, tablePageOffset(ref.index), ref.length));
  return MetaImage.load(root, pages, link.hello.metaLength);
}

// ---------------------------------------------------------------------------
// The volume

export interface HalfState {
  readonly half: Half;
  readonly unitId: string;
  /** The address the unit was last reached at (null if never, since this PMM started). */
  address: UnitAddress | null;
  link: UnitLink | null;
  /** What the unit said in its last hello. */
  hello: HelloInfo | null;
  alloc: PageAllocator;
  /** Why the half is down, when it is. */
  lastError: string | null;
}

/**
 * ok: both halves current and up. degraded: one current half serves (the
 * other is stale or down). offline: no current half is reachable. fenced:
 * another PMM took the volume over; this one serves it no more.
 */
export type VolumeState = 'ok' | 'degraded' | 'offline' | 'fenced';

export interface VolumeOptions {
  key: Uint8Array;
  /** This PMM's id: the holder name in the units' fences and the writer of its roots. */
  pmmId: string;
  log?: Logger;
  /**
   * Zero a new region's pages on both halves before its creation counts
   * (design.md: no region ever shows a deleted region's bytes). Needs RDMA
   * in the PMM process. Default true.
   */
  zeroNewRegions?: boolean;
  /** Last-open times are written back at most this often (ms). Default 5000. */
  touchFlushMs?: number;
  /**
   * How new pages are zeroed (default: by RDMA from this process, made
   * durable as each unit needs). Tests substitute their own.
   */
  zeroer?: (half: Half, extents: Extent[]) => Promise<void>;
}

/** Smallest and largest u64 mapId part reserved for the region id ([0084]: mappings are per open). */
export const MAP_SEQ_BITS = 24n;

/** A mapId that says which region it maps: regionId << 24 | seq. */
export function mapIdFor(regionId: number, seq: number): bigint {
  return (BigInt(regionId) << MAP_SEQ_BITS) | BigInt(seq & 0xffffff);
}

export function regionOfMapId(mapId: string | bigint): number {
  return Number(BigInt(mapId) >> MAP_SEQ_BITS);
}

/** A mapping found on a unit that no session of this PMM made (a client of an earlier PMM process). */
export interface OrphanMapping {
  half: Half;
  sessionId: string;
  mapId: string;
}

const other = (h: Half): Half => (h === 'primary' ? 'mirror' : 'primary');
const IN_SYNC: SyncState = { peerStale: false, staleSince: 0 };

function fencedError(volume: string, detail: string, props: Record<string, unknown> = {}): NpmuError {
  return new NpmuError('ERR_NPMU_FENCED', `volume ${volume}: another PMM holds it now (${detail}); this PMM no longer serves it`, { volume, ...props });
}

/** Takes the units for this PMM: a fencing epoch above every one they hold, claimed on each (primary first). */
export async function claimUnits(links: readonly UnitLink[], pmmId: string, epoch?: number): Promise<number> {
  let e = epoch ?? Math.max(0, ...links.map((l) => l.hello.epoch)) + 1;
  for (let attempt = 0; ; attempt++) {
    try {
      for (const l of links) {
        const r = await l.request('claim', { epoch: e, pmmId });
        Object.assign(l.hello, { epoch: r.epoch, holder: pmmId });
      }
      return e;
    } catch (err) {
      const held = (err as NpmuError).epoch;
      if ((err as NpmuError).code !== 'ERR_NPMU_FENCED' || epoch !== undefined || attempt >= 3 || typeof held !== 'number') throw err;
      e = held + 1; // another PMM claimed in between: take over above it
    }
  }
}

export class Volume extends EventEmitter {
  image: MetaImage;
  /** The fencing epoch this PMM holds the units at. */
  readonly epoch: number;
  readonly pmmId: string;
  readonly halves: Record<Half, HalfState>;
  /** Halves in sync with the volume's history (served when up). */
  readonly current = new Set<Half>();
  /** The half that missed updates, recorded stale on the current half; null when both are current. */
  stale: Half | null = null;
  /** Generation at which `stale` was recorded. */
  staleSince = 0;
  /** Set once another PMM has fenced this one off the volume. */
  fenced: NpmuError | null = null;
  /** A resync in progress. */
  resync: { half: Half; done: number; total: number } | null = null;
  readonly #opts: VolumeOptions;
  readonly #log: Logger;
  #lock: Promise<unknown> = Promise.resolve();
  #rdma: Partial<Record<Half, PmmRdma>> = {};
  /** Names of regions being created (pages zeroed outside the lock). */
  #creating = new Set<string>();
  /** regionId → last open time not yet written to the units. */
  #touched = new Map<number, number>();
  #touchTimer: NodeJS.Timeout | null = null;
  /** regionId → mappings on the units that this PMM did not make. */
  orphans = new Map<number, OrphanMapping[]>();
  #closed = false;

  private constructor(image: MetaImage, epoch: number, links: Partial<Record<Half, UnitLink>>, opts: VolumeOptions) {
    super();
    this.image = image;
    this.epoch = epoch;
    this.pmmId = opts.pmmId;
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
    const v = image.volume;
    const mk = (half: Half): HalfState => ({
      half,
      unitId: half === 'primary' ? v.primaryUnit : v.mirrorUnit,
      address: links[half]?.address ?? null,
      link: null,
      hello: links[half]?.hello ?? null,
      alloc: new PageAllocator(v.dataPages, image.usedExtents(half)),
      lastError: links[half] ? null : 'not connected since the PMM started',
    });
    this.halves = { primary: mk('primary'), mirror: mk('mirror') };
    for (const h of HALVES) {
      const l = links[h];
      if (l) this.#adopt(h, l);
    }
  }

  get name(): string {
    return this.image.volume.name;
  }

  get volumeId(): string {
    return this.image.volume.volumeId;
  }

  get generation(): number {
    return this.image.generation;
  }

  get state(): VolumeState {
    if (this.fenced) return 'fenced';
    const up = [...this.current].filter((h) => this.isUp(h)).length;
    return up === 2 ? 'ok' : up === 1 ? 'degraded' : 'offline';
  }

  /** Why the volume is not ok (for status). */
  get reason(): string | undefined {
    if (this.fenced) return this.fenced.message;
    if (this.stale) return `the ${this.stale} missed updates since generation ${this.staleSince}: it is not served until \`npmu volume resync ${this.name}\``;
    const down = HALVES.filter((h) => !this.isUp(h));
    if (down.length > 0) return down.map((h) => `${h}: ${this.halves[h].lastError ?? 'down'}`).join('; ');
    return undefined;
  }

  isUp(half: Half): boolean {
    return this.halves[half].link?.up === true;
  }

  /** A half that is current and reachable: reads, maps and commits go to it. */
  serves(half: Half): boolean {
    return !this.fenced && this.current.has(half) && this.isUp(half);
  }

  syncOf(half: Half): 'current' | 'stale' | 'unknown' {
    return this.current.has(half) ? 'current' : this.stale === half ? 'stale' : 'unknown';
  }

  /** The durability a half's device offers (from its hello; volatile if never seen). */
  durabilityOf(half: Half): Durability {
    return (this.halves[half].hello?.durability as Durability | undefined) ?? 'volatile';
  }

  /** What a write to both halves can promise. */
  get durability(): Durability {
    return weakest(this.durabilityOf('primary'), this.durabilityOf('mirror'));
  }

  get usedPages(): number {
    return Math.max(this.halves.primary.alloc.usedPages, this.halves.mirror.alloc.usedPages);
  }

  get freePages(): number {
    return Math.min(this.halves.primary.alloc.freePages, this.halves.mirror.alloc.freePages);
  }

  region(name: string): RegionMeta | undefined {
    return this.image.region(name);
  }

  /** The region with its last open time as this PMM knows it (written back lazily). */
  lastOpenAtMs(r: RegionMeta): number {
    return this.#touched.get(r.id) ?? r.lastOpenAtMs;
  }

  /** Runs `fn` with the volume to itself: every metadata change is serialised here. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(() => {
      if (this.fenced) throw this.fenced;
      return fn();
    });
    this.#lock = run.catch(() => undefined);
    return run;
  }

  #adopt(half: Half, link: UnitLink): void {
    const hs = this.halves[half];
    hs.link = link;
    hs.hello = link.hello;
    hs.address = link.address;
    hs.lastError = null;
    link.once('down', () => {
      if (hs.link !== link) return;
      this.#lost(half, 'control connection lost');
    });
  }

  /** A half went away: it is down, and it missed whatever comes next — record that on the other half now. */
  #lost(half: Half, why: string): void {
    const hs = this.halves[half];
    const link = hs.link;
    if (!link) return;
    hs.link = null;
    hs.lastError = why;
    link.close();
    void this.#rdma[half]?.close();
    delete this.#rdma[half];
    if (this.#closed || this.fenced) return;
    this.#log.warn(`volume ${this.name}: ${half} unit ${hs.unitId} is down (${why})`);
    this.emit('half-down', half);
    if (this.current.has(half)) {
      void this.exclusive(() => this.#markStale(half, why)).catch((e) => this.#log.warn(`volume ${this.name}: cannot record the ${half} stale: ${(e as Error).message}`));
    }
  }

  /** Another PMM holds the units now: serve nothing more. */
  #fence(err: NpmuError): never {
    if (!this.fenced) {
      this.fenced = fencedError(this.name, err.message, { epoch: err.epoch, holder: err.holder });
      this.#log.warn(this.fenced.message);
      this.emit('fenced', this.fenced);
      for (const h of HALVES) {
        this.halves[h].link?.close();
        void this.#rdma[h]?.close();
      }
      this.#rdma = {};
    }
    throw this.fenced;
  }

  /**
   * A request to a half's unit. A half that is down, or whose connection
   * fails under the request, is ERR_NPMU_HALF_UNAVAILABLE (and is marked
   * down); ERR_NPMU_FENCED fences this PMM off the volume. Other error
   * replies from a live unit pass through unchanged.
   */
  async unitRequest<T extends MessageType>(half: Half, type: T, body: RequestInput<T>, opts: { timeoutMs?: number } = {}): Promise<OkReply<T>> {
    if (this.fenced) throw this.fenced;
    const link = this.halves[half].link;
    if (!link?.up) throw unavailable(this.name, half, this.halves[half].lastError ?? 'down');
    try {
      return await link.request(type, body, opts);
    } catch (err) {
      this.#failed(half, type, err);
    }
  }

  #failed(half: Half, what: string, err: unknown): never {
    const code = (err as NpmuError).code;
    if (code === 'ERR_NPMU_FENCED') this.#fence(err as NpmuError);
    if (code === 'ERR_NPMU_DISCONNECTED' || code === 'ERR_NPMU_TIMEOUT') {
      this.#lost(half, `${what}: ${(err as Error).message}`);
      throw unavailable(this.name, half, (err as Error).message, err);
    }
    throw err;
  }

  // ---- recovery ------------------------------------------------------------

  /**
   * Takes a volume from its units alone ([0062]): fences every other PMM off
   * them (claim), reads each half's root, and decides by pmm/history.ts
   * which half is the volume's history. Throws ERR_NPMU_VOLUME_WAITING /
   * ERR_NPMU_SPLIT_BRAIN (with `volume`, `volumeId`) when it must not serve;
   * `force` is an operator's choice of half in those cases.
   */
  static async recover(links: Partial<Record<Half, UnitLink>>, opts: VolumeOptions & { force?: Half }): Promise<Volume> {
    const log = opts.log ?? silentLogger;
    const present = HALVES.filter((h) => links[h]);
    if (present.length === 0) throw new NpmuError('ERR_INVALID_ARG_VALUE', 'recover needs at least one unit');
    const volumeId = links[present[0]!]!.hello.volumeId;
    for (const h of present) {
      const l = links[h]!;
      if (l.hello.volumeId !== volumeId || l.hello.role !== h) {
        throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `unit ${l.unitId} is ${l.hello.role} of volume ${l.hello.volumeId}, not ${h} of ${volumeId}`);
      }
    }
    // Fence first: nothing read below can change behind our back.
    const epoch = await claimUnits(present.map((h) => links[h]!), opts.pmmId);
    const views = {} as Record<Half, HalfView>;
    const roots: Partial<Record<Half, RootRecord>> = {};
    for (const h of HALVES) {
      const l = links[h];
      if (!l) {
        views[h] = { state: 'unreachable' };
        continue;
      }
      const root = await readRoot(l);
      if (root && root.volume.volumeId !== volumeId) throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `unit ${l.unitId} holds metadata of volume ${root.volume.volumeId}, not ${volumeId}`);
      if (root) roots[h] = root;
      views[h] = root ? { state: 'root', root } : { state: 'empty' };
    }
    const d = decide(views, opts.force);
    const name = roots.primary?.volume.name ?? roots.mirror?.volume.name ?? volumeId;
    if (d.kind !== 'serve') throw new NpmuError(d.code, `volume ${name}: ${d.reason}`, { volume: name, volumeId, state: d.kind });
    const src = roots[d.source]!;
    for (const h of present) {
      const want = h === 'primary' ? src.volume.primaryUnit : src.volume.mirrorUnit;
      if (links[h]!.unitId !== want) throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `volume ${name}: the ${h} should be unit ${want}, found ${links[h]!.unitId}`);
    }
    const image = await loadImage(links[d.source]!, src);
    const v = new Volume(image, epoch, links, opts);
    for (const h of d.current) v.current.add(h);
    if (d.stale && !d.markStale) {
      v.stale = d.stale;
      v.staleSince = src.sync.staleSince;
      // A stale half's mappings die before anything else happens on it.
      if (links[d.stale]) await v.#revoke(d.stale, 'the half missed updates');
    }
    if (d.rollForward && links[d.rollForward]) {
      log.info(`volume ${name}: the ${d.rollForward} is one update behind; rolling it forward to generation ${image.generation}`);
      const img = image.fullImage({ epoch, writer: opts.pmmId }, IN_SYNC);
      await writeArea(links[d.rollForward]!, [...img.pageWrites, { offset: img.rootOffset, bytes: img.rootBytes }]);
    }
    // Recorded on the source before anything is served (revoking the stale half's mappings if it is here).
    if (d.markStale && d.stale) await v.#markStale(d.stale, opts.force ? 'forced by the operator' : 'its metadata is gone');
    log.info(
      `volume ${name} (${volumeId}) taken at epoch ${epoch}, generation ${image.generation} from the ${d.source}: ` +
        `${image.regionCount} regions, ${v.usedPages}/${image.volume.dataPages} pages used, state ${v.state}${v.stale ? `, ${v.stale} stale` : ''}`,
    );
    await v.#publishUsage();
    await v.scanOrphans();
    return v;
  }

  /**
   * A unit of this volume came back (or was reached for the first time):
   * reclaim it at our epoch (a higher epoch on it means we were fenced), and
   * revoke its mappings if it missed updates. It is served again only if it
   * is current; a stale half waits for `resync`.
   */
  async attachHalf(link: UnitLink): Promise<void> {
    await this.exclusive(async () => {
      const h = link.hello.role as Half;
      const want = h === 'primary' ? this.image.volume.primaryUnit : this.image.volume.mirrorUnit;
      if (link.hello.volumeId !== this.volumeId || (h !== 'primary' && h !== 'mirror') || link.unitId !== want) {
        throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `unit ${link.unitId} (${link.hello.role} of ${link.hello.volumeId}) is not the ${h} of volume ${this.name}`);
      }
      if (link.hello.epoch > this.epoch || (link.hello.epoch === this.epoch && link.hello.holder !== this.pmmId)) {
        link.close();
        this.#fence(new NpmuError('ERR_NPMU_FENCED', `the ${h} is held at epoch ${link.hello.epoch} by PMM ${link.hello.holder}`, { epoch: link.hello.epoch, holder: link.hello.holder }));
      }
      try {
        await claimUnits([link], this.pmmId, this.epoch);
      } catch (e) {
        link.close();
        if ((e as NpmuError).code === 'ERR_NPMU_FENCED') this.#fence(e as NpmuError);
        throw e;
      }
      const wasCurrent = this.current.has(h);
      if (!wasCurrent) {
        // Before anything else: nothing mapped on a half that missed updates survives.
        const n = (await link.request('revoke', {})).mappings;
        this.#adopt(h, link);
        this.#log.info(`volume ${this.name}: ${h} unit ${link.unitId} is back but stale (${n} old mapping(s) revoked); \`npmu volume resync ${this.name}\` brings it up to date`);
        this.emit('half-up', h);
        return;
      }
      // A current half that we lost while the other was down too (offline): it holds our state or one update less.
      const root = await readRoot(link);
      if (!root || root.generation < this.generation - 1 || root.generation > this.generation) {
        await link.request('revoke', {});
        this.current.delete(h);
        this.#adopt(h, link);
        this.#log.warn(`volume ${this.name}: ${h} came back at generation ${root?.generation ?? 'none'}, expected ${this.generation}: treated as stale`);
        if ([...this.current].some((x) => this.isUp(x))) await this.#markStale(h, 'unexpected generation');
        return;
      }
      if (root.generation < this.generation) {
        const img = this.image.fullImage({ epoch: this.epoch, writer: this.pmmId }, IN_SYNC);
        await writeArea(link, [...img.pageWrites, { offset: img.rootOffset, bytes: img.rootBytes }]);
      }
      this.#adopt(h, link);
      this.#log.info(`volume ${this.name}: ${h} unit ${link.unitId} is back; state ${this.state}`);
      this.emit('half-up', h);
      await this.#publishUsage();
    });
  }

  /**
   * Creates a volume from two units that belong to no volume ([0059]):
   * claims both, formats both with one new volume id, clears their root
   * slots and commits generation 1 (no regions). Units bound to a volume are
   * refused unless `force`. An interrupted creation leaves units that recover
   * as "no metadata": run it again with `force`.
   */
  static async create(name: string, primary: UnitLink, mirror: UnitLink, opts: VolumeOptions & { force?: boolean }): Promise<Volume> {
    if (primary.unitId === mirror.unitId) throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', 'primary and mirror are the same unit');
    for (const l of [primary, mirror]) {
      if (l.hello.role !== 'none' && !opts.force) {
        throw new NpmuError('ERR_NPMU_UNIT_BOUND', `unit ${l.unitId} at ${formatAddress(l.address)} already belongs to volume ${l.hello.volumeId} (use force to rebind)`, {
          unitId: l.unitId,
        });
      }
    }
    if (primary.hello.pageSize !== mirror.hello.pageSize) {
      throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `the units' page sizes differ (${primary.hello.pageSize} and ${mirror.hello.pageSize})`);
    }
    const epoch = await claimUnits([primary, mirror], opts.pmmId);
    const volumeId = newId();
    const label = cutUtf8(name, 32);
    for (const [l, role] of [[primary, 'primary'], [mirror, 'mirror']] as const) {
      await l.request('format-volume', { volumeId, role, label, force: opts.force ?? false });
      Object.assign(l.hello, { volumeId, role, label });
      // Old metadata (another volume's) must never be read as this one's.
      await writeArea(l, [
        { offset: rootSlotOffset(0), bytes: Buffer.alloc(64) },
        { offset: rootSlotOffset(1), bytes: Buffer.alloc(64) },
      ]);
    }
    const image = MetaImage.create(
      {
        volumeId,
        name,
        primaryUnit: primary.unitId,
        mirrorUnit: mirror.unitId,
        pageSize: primary.hello.pageSize,
        dataPages: Math.min(primary.hello.dataPages, mirror.hello.dataPages),
        createdAtMs: Date.now(),
        nextRegionId: 1,
      },
      Math.min(primary.hello.metaLength, mirror.hello.metaLength),
    );
    const v = new Volume(image, epoch, { primary, mirror }, opts);
    v.current.add('primary');
    v.current.add('mirror');
    await v.commit({});
    (opts.log ?? silentLogger).info(`volume ${name} (${volumeId}) created at epoch ${epoch}: ${image.volume.dataPages} pages of ${image.volume.pageSize} bytes per half`);
    return v;
  }

  // ---- updates ---------------------------------------------------------------

  #syncFor(half: Half, written: ReadonlySet<Half>): SyncState {
    const peer = other(half);
    if (this.current.has(peer) && (this.isUp(peer) || written.has(peer))) return IN_SYNC;
    return { peerStale: true, staleSince: this.stale === peer ? this.staleSince : this.image.generation + 1 };
  }

  /**
   * Makes `change` the volume's state (pmm/metadata.ts: pages, then the
   * root, on the primary, then on the mirror). It counts once every current
   * half that is up holds it, or, if one of them failed under it, once the
   * survivor has also recorded the failed half stale; if no half took it,
   * ERR_NPMU_VOLUME_OFFLINE and nothing changed. Call inside `exclusive`.
   */
  async commit(change: Change): Promise<void> {
    if (this.fenced) throw this.fenced;
    const plan = this.image.plan(change, { epoch: this.epoch, writer: this.pmmId });
    const targets = HALVES.filter((h) => this.serves(h));
    const wrote = new Set<Half>();
    const failed: Half[] = [];
    for (const h of targets) {
      try {
        const link = this.halves[h].link!;
        const sync = this.#syncFor(h, wrote);
        await writeArea(link, [...plan.pageWrites, { offset: plan.rootOffset, bytes: plan.rootBytes(sync) }]);
        wrote.add(h);
      } catch (err) {
        if ((err as NpmuError).code === 'ERR_NPMU_FENCED') this.#fence(err as NpmuError);
        failed.push(h);
        this.halves[h].lastError = `metadata write failed: ${(err as Error).message}`;
      }
    }
    if (wrote.size === 0) {
      for (const h of failed) this.#lost(h, this.halves[h].lastError ?? 'metadata write failed');
      throw new NpmuError('ERR_NPMU_VOLUME_OFFLINE', `volume ${this.name}: no unit could take the metadata update`, { volume: this.name });
    }
    this.image.apply(plan);
    for (const h of failed) {
      // The survivor wrote "in sync" before its peer failed: record the peer stale before this counts.
      const link = this.halves[h].link;
      this.halves[h].link = null;
      link?.close();
      this.current.delete(h);
      this.stale = h;
      this.staleSince = this.image.generation;
      await this.commit({});
      this.emit('half-down', h);
    }
  }

  /**
   * Records `half` stale on the current half that is up (a root-only update),
   * then revokes its mappings if it can be reached. From then on it is not
   * served until resynced. Call inside `exclusive`.
   */
  async #markStale(half: Half, why: string): Promise<void> {
    if (this.stale === half && !this.current.has(half)) return;
    if (this.stale && this.stale !== half) {
      throw new NpmuError('ERR_NPMU_VOLUME_OFFLINE', `volume ${this.name}: the ${this.stale} is already stale; the ${half} cannot be too`, { volume: this.name });
    }
    const survivor = other(half);
    this.current.delete(half);
    this.stale = half;
    this.staleSince = this.image.generation + 1;
    if (!this.serves(survivor)) {
      this.#log.warn(`volume ${this.name}: the ${half} is stale (${why}) and the ${survivor} is down: offline`);
      return;
    }
    await this.commit({});
    this.#log.warn(`volume ${this.name}: the ${half} is stale from generation ${this.staleSince} (${why}); served from the ${survivor} alone`);
    if (this.isUp(half)) await this.#revoke(half, why);
  }

  /** The client-facing form of markStale (mark-stale request). */
  markStale(half: Half, why: string): Promise<void> {
    return this.exclusive(() => this.#markStale(half, why));
  }

  async #revoke(half: Half, why: string): Promise<void> {
    try {
      const n = (await this.halves[half].link!.request('revoke', {})).mappings;
      if (n > 0) this.#log.info(`volume ${this.name}: ${n} mapping(s) on the ${half} revoked (${why})`);
    } catch (err) {
      if ((err as NpmuError).code === 'ERR_NPMU_FENCED') this.#fence(err as NpmuError);
      this.#log.warn(`volume ${this.name}: revoke on the ${half} failed: ${(err as Error).message}`);
    }
  }

  /** Remembers a region's last open time; written back with the next update or within touchFlushMs. */
  touch(regionId: number, atMs: number): void {
    this.#touched.set(regionId, atMs);
    if (this.#touchTimer || this.#closed) return;
    this.#touchTimer = setTimeout(() => {
      this.#touchTimer = null;
      void this.exclusive(() => this.#flushTouched()).catch((e) => this.#log.warn(`volume ${this.name}: last-open times not written: ${(e as Error).message}`));
    }, this.#opts.touchFlushMs ?? 5000);
    this.#touchTimer.unref();
  }

  async #flushTouched(): Promise<void> {
    if (this.#touched.size === 0) return;
    const pending = new Map(this.#touched);
    const update: RegionMeta[] = [];
    for (const [id, at] of pending) {
      const r = this.image.regionById(id);
      if (r) update.push({ ...r, lastOpenAtMs: at });
      else this.#touched.delete(id);
    }
    if (update.length > 0) await this.commit({ update });
    // Forgotten only once written (a failed write keeps them for the next one); a newer open stays pending.
    for (const [id, at] of pending) if (this.#touched.get(id) === at) this.#touched.delete(id);
  }

  async #publishUsage(): Promise<void> {
    await Promise.all(
      HALVES.map(async (h) => {
        const link = this.halves[h].link;
        if (!link?.up) return;
        try {
          await link.request('set-usage', { usedPages: this.halves[h].alloc.usedPages });
        } catch {
          // statistics only
        }
      }),
    );
  }

  /**
   * Finds mappings on the units that belong to no session of this PMM
   * (clients of an earlier PMM process, still connected): a region they map
   * counts as open until their connection goes ([0082]).
   */
  async scanOrphans(known: (sessionId: string) => boolean = () => false): Promise<void> {
    const found = new Map<number, OrphanMapping[]>();
    for (const h of HALVES) {
      if (!this.serves(h)) continue;
      try {
        const r = await this.unitRequest(h, 'sessions', {});
        for (const s of r.sessions) {
          if (known(s.sessionId) || s.sessionId === PMM_SESSION.toString()) continue;
          for (const m of s.mapIds) {
            const id = regionOfMapId(m);
            if (!this.image.regionById(id)) {
              // A mapping of a region that does not exist (here): its pages may go to another region. Removed at once.
              await this.unitRequest(h, 'unmap', { sessionId: s.sessionId, mapId: m }).catch(() => undefined);
              this.#log.warn(`volume ${this.name}: removed a mapping of unknown region ${id} on the ${h} (session ${s.sessionId})`);
              continue;
            }
            const list = found.get(id) ?? [];
            list.push({ half: h, sessionId: s.sessionId, mapId: m });
            found.set(id, list);
          }
        }
      } catch (err) {
        this.#log.warn(`volume ${this.name}: cannot list the ${h}'s sessions: ${(err as Error).message}`);
      }
    }
    this.orphans = found;
  }

  // ---- regions -----------------------------------------------------------------

  /**
   * Creates a region in three steps, so that zeroing a large region never
   * holds the volume lock: (1) under the lock, `check` (the caller's rules),
   * reserve the name and allocate on both halves; (2) outside it, zero the
   * new pages on every half served, durably as each device allows; (3) under
   * the lock, commit. A stale half gets its pages allocated too (resync copies
   * them). Nothing is visible before the commit; a failure frees the pages.
   */
  async createRegion(fields: Omit<RegionMeta, 'id' | 'primaryExtents' | 'mirrorExtents'>, pages: number, check: () => void = () => undefined): Promise<RegionMeta> {
    const allocated: Partial<Record<Half, Extent[]>> = {};
    const free = (): void => {
      for (const h of HALVES) if (allocated[h]) this.halves[h].alloc.free(allocated[h]!);
    };
    await this.exclusive(async () => {
      check();
      if (this.#creating.has(fields.name)) {
        throw new NpmuError('ERR_NPMU_REGION_EXISTS', `region ${JSON.stringify(fields.name)} is being created in ${this.name}`, { region: fields.name });
      }
      try {
        for (const h of HALVES) allocated[h] = this.halves[h].alloc.allocate(pages);
        // Refuses (ERR_NPMU_META_TOO_LARGE) before any page is touched.
        this.image.plan({ add: this.#regionFor(fields, allocated) }, { epoch: this.epoch, writer: this.pmmId });
      } catch (e) {
        free();
        throw e;
      }
      this.#creating.add(fields.name);
    });
    try {
      await this.zeroPages(0, { primary: allocated.primary!, mirror: allocated.mirror! });
      return await this.exclusive(async () => {
        const region = this.#regionFor(fields, allocated);
        await this.commit({ add: region });
        void this.#publishUsage();
        return region;
      });
    } catch (e) {
      free();
      throw e;
    } finally {
      this.#creating.delete(fields.name);
    }
  }

  #regionFor(fields: Omit<RegionMeta, 'id' | 'primaryExtents' | 'mirrorExtents'>, allocated: Partial<Record<Half, Extent[]>>): RegionMeta {
    return { ...fields, id: this.image.volume.nextRegionId, primaryExtents: allocated.primary!, mirrorExtents: allocated.mirror! };
  }

  /** Creates whose pages are being zeroed now (outside the volume lock). */
  get creating(): number {
    return this.#creating.size;
  }

  /** Deletes a region: commits the table without it, then frees its pages. Call inside `exclusive`. */
  async deleteRegion(r: RegionMeta): Promise<void> {
    await this.commit({ remove: r.id });
    this.#touched.delete(r.id);
    this.halves.primary.alloc.free(r.primaryExtents);
    this.halves.mirror.alloc.free(r.mirrorExtents);
    void this.#publishUsage();
  }

  #rdmaFor(h: Half): PmmRdma {
    let z = this.#rdma[h];
    if (!z) z = this.#rdma[h] = new PmmRdma(this, h, this.#opts.key);
    return z;
  }

  /**
   * Zeroes a new region's pages on every half served, durably as far as each
   * unit's device allows, before the region's creation is committed.
   */
  async zeroPages(regionId: number, extents: Record<Half, Extent[]>): Promise<void> {
    if (this.#opts.zeroNewRegions === false) return;
    await Promise.all(
      HALVES.map(async (h) => {
        if (!this.serves(h)) return;
        if (this.#opts.zeroer) return this.#opts.zeroer(h, extents[h]);
        const z = this.#rdmaFor(h);
        try {
          await z.zero(regionId, extents[h]);
        } catch (err) {
          void z.close();
          if (this.#rdma[h] === z) delete this.#rdma[h];
          throw err;
        }
      }),
    );
  }

  /**
   * Operator: brings the stale half up to date by a full copy (every region's
   * bytes, then the whole metadata image), then records both halves in sync.
   * The caller makes sure no region is open. Call inside `exclusive`.
   */
  async resyncStale(): Promise<{ half: Half; regions: number; bytes: number }> {
    const target = this.stale;
    if (this.#creating.size > 0) throw new NpmuError('ERR_NPMU_VOLUME_BUSY', `volume ${this.name}: ${this.#creating.size} region(s) being created; try again`, { volume: this.name });
    if (!target) throw new NpmuError('ERR_NPMU_NOT_STALE', `volume ${this.name}: both halves are current; nothing to resync`, { volume: this.name });
    const source = other(target);
    if (!this.serves(source)) throw unavailable(this.name, source, 'the current half is down');
    if (!this.isUp(target)) throw unavailable(this.name, target, this.halves[target].lastError ?? 'down');
    const pageSize = this.image.volume.pageSize;
    const regions = [...this.image.regions()];
    const total = regions.reduce((n, r) => n + pagesFor(r.size, pageSize) * pageSize, 0);
    this.resync = { half: target, done: 0, total };
    try {
      await this.#revoke(target, 'resync');
      const from = this.#rdmaFor(source);
      const to = this.#rdmaFor(target);
      for (const r of regions) {
        await copyRegion(from, to, r, source, target, (n) => {
          this.resync!.done += n;
          this.emit('resync-progress', this.resync);
        });
      }
      const img = this.image.fullImage({ epoch: this.epoch, writer: this.pmmId }, IN_SYNC);
      await writeArea(this.halves[target].link!, [...img.pageWrites, { offset: img.rootOffset, bytes: img.rootBytes }]);
      this.current.add(target);
      this.stale = null;
      this.staleSince = 0;
      await this.commit({}); // both roots now say "in sync"
      this.#log.info(`volume ${this.name}: the ${target} is current again (${regions.length} regions, ${total} bytes copied)`);
      void this.#publishUsage();
      return { half: target, regions: regions.length, bytes: total };
    } finally {
      this.resync = null;
    }
  }

  /** Writes back pending last-open times, then closes the unit connections (and the PMM's own RDMA connections, awaited). */
  async close(): Promise<void> {
    if (this.#touchTimer) clearTimeout(this.#touchTimer);
    this.#touchTimer = null;
    if (!this.#closed && !this.fenced && this.#touched.size > 0) {
      await this.exclusive(() => this.#flushTouched()).catch(() => undefined);
    }
    this.#closed = true;
    const zs = Object.values(this.#rdma);
    this.#rdma = {};
    for (const h of HALVES) this.halves[h].link?.close();
    await Promise.all(zs.map((z) => z.close()));
  }
}

function unavailable(volume: string, half: Half, why: string, cause?: unknown): NpmuError {
  return new NpmuError('ERR_NPMU_HALF_UNAVAILABLE', `volume ${volume}: the ${half} unit is unavailable (${why})`, { half, volume, cause });
}

function cutUtf8(s: string, max: number): string {
  let out = '';
  for (const ch of s) {
    if (Buffer.byteLength(out + ch, 'utf8') > max) break;
    out += ch;
  }
  return out;
}

// ---------------------------------------------------------------------------
// The PMM's own RDMA session with a unit: zeroing new pages, resync copies

/** The PMM's own session id, per process. */
const PMM_SESSION = (randomBytes(8).readBigUInt64LE(0) >> 1n) | 1n;
const CHUNK = 1 << 20;
const PMM_IOVA = 1n << 40n;
let mapSeq = 0;

type Verbs = typeof import('../lib/verbs');

interface PmmMapping {
  iova: bigint;
  rkey: number;
  length: number;
}

/**
 * One RDMA connection from the PMM to a unit, under the PMM's own session:
 * zeroes new pages by RDMA WRITE from a registered zero buffer, and reads or
 * writes a region's pages for a resync, each through a mapping the unit makes
 * for this session, then makes what it wrote durable as the unit's device
 * and platform require: a READ after the WRITEs where CPU caches are
 * persistent (pmem on cpu_cache), `persist` of each extent otherwise (pmem
 * on a memory-controller platform, msync units), nothing on volatile units.
 */
class PmmRdma {
  #vol: Volume;
  #half: Half;
  #key: Uint8Array;
  #verbs: Verbs | null = null;
  #ep: import('../lib/verbs').Endpoint | null = null;
  #zeroMr: import('../lib/verbs').MemoryRegion | null = null;
  #scratch: import('../lib/verbs').MemoryRegion | null = null;
  #bufs = new Map<Buffer, import('../lib/verbs').MemoryRegion>();

  constructor(vol: Volume, half: Half, key: Uint8Array) {
    this.#vol = vol;
    this.#half = half;
    this.#key = key;
  }

  async #connect(): Promise<import('../lib/verbs').Endpoint> {
    if (this.#ep && this.#ep.state === 'connected') return this.#ep;
    await this.close();
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const verbs = (this.#verbs = require('../lib/verbs') as Verbs);
    const hs = this.#vol.halves[this.#half];
    const addr = hs.address;
    if (!addr?.rdmaPort) throw new NpmuError('ERR_NPMU_UNIT_ADDRESS', `the ${this.#half} unit's RDMA port is unknown (give host:controlPort:rdmaPort)`);
    const ticket = issueTicket({ key: this.#key, kind: 'client', unitId: hs.unitId, sessionId: PMM_SESSION, ttlSec: 60 });
    const ep = await verbs.connect({ host: addr.host, port: addr.rdmaPort, privateData: ticket, timeoutMs: 10_000 });
    this.#ep = ep;
    this.#zeroMr = verbs.registerMemory(ep.pd, Buffer.alloc(CHUNK), { access: verbs.Access.LOCAL_WRITE });
    this.#scratch = verbs.registerMemory(ep.pd, Buffer.alloc(64), { access: verbs.Access.LOCAL_WRITE });
    return ep;
  }

  /** A local buffer registered in this connection's PD (cached). */
  mr(buf: Buffer): import('../lib/verbs').MemoryRegion {
    let mr = this.#bufs.get(buf);
    if (!mr) {
      mr = this.#verbs!.registerMemory(this.#ep!.pd, buf, { access: this.#verbs!.Access.LOCAL_WRITE });
      this.#bufs.set(buf, mr);
    }
    return mr;
  }

  /** Maps extents for the PMM's session, runs fn, unmaps. */
  async withMapping<T>(regionId: number, extents: Extent[], fn: (m: PmmMapping) => Promise<T>): Promise<T> {
    await this.#connect();
    const mapId = mapIdFor(regionId, ++mapSeq);
    const sessionId = PMM_SESSION.toString();
    const m = await mapWithRetry(() =>
      this.#vol.unitRequest(this.#half, 'map', { sessionId, mapId, extents, iova: PMM_IOVA, access: 'rw' }, { timeoutMs: 30_000 }),
    );
    try {
      return await fn({ iova: BigInt(m.iova), rkey: m.rkey, length: m.length });
    } finally {
      await this.#vol.unitRequest(this.#half, 'unmap', { sessionId, mapId }).catch(() => undefined);
    }
  }

  async #post(wrs: import('../lib/verbs').WorkRequest[]): Promise<void> {
    const res = await this.#ep!.post(wrs);
    const bad = res.find((r) => !r.ok);
    if (bad && !bad.ok) throw bad.error;
  }

  /** Where a READ-after-WRITE is the persistence point (eADR); elsewhere the unit persists. */
  #readAfterWriteSuffices(): boolean {
    const hello = this.#vol.halves[this.#half].hello as (HelloInfo & { persistDomain?: string }) | null;
    return this.#vol.durabilityOf(this.#half) === 'pmem' && hello?.persistDomain === 'cpu_cache';
  }

  /** Makes [0, length) of a mapping of `extents` durable, as this unit needs. */
  async durable(m: PmmMapping, extents: Extent[]): Promise<void> {
    const durability = this.#vol.durabilityOf(this.#half);
    if (durability === 'volatile') return;
    if (durability === 'pmem') {
      // read-after-write: completes only after every WRITE before it on this QP has been placed
      await this.#post([{ op: 'read', mr: this.#scratch!, offset: 0, length: 8, remoteAddr: m.iova + BigInt(m.length - 8), rkey: m.rkey }]);
      if (this.#readAfterWriteSuffices()) return;
    }
    const pageSize = this.#vol.image.volume.pageSize;
    for (const e of extents) await this.#vol.unitRequest(this.#half, 'persist', { page: e.page, offset: 0, length: e.pages * pageSize }, { timeoutMs: 60_000 });
  }

  #serial: Promise<unknown> = Promise.resolve();

  /** Zeroes extents (one at a time per connection: creates zero concurrently, outside the volume lock). */
  zero(regionId: number, extents: Extent[]): Promise<void> {
    const run = this.#serial.then(() => this.#zero(regionId, extents));
    this.#serial = run.catch(() => undefined);
    return run;
  }

  async #zero(regionId: number, extents: Extent[]): Promise<void> {
    await this.withMapping(regionId, extents, async (m) => {
      const wrs: import('../lib/verbs').WorkRequest[] = [];
      for (let off = 0; off < m.length; off += CHUNK) {
        wrs.push({ op: 'write', mr: this.#zeroMr!, offset: 0, length: Math.min(CHUNK, m.length - off), remoteAddr: m.iova + BigInt(off), rkey: m.rkey });
      }
      for (let i = 0; i < wrs.length; i += 32) await this.#post(wrs.slice(i, i + 32));
      await this.durable(m, extents);
    });
  }

  async read(buf: Buffer, length: number, m: PmmMapping, off: number): Promise<void> {
    await this.#post([{ op: 'read', mr: this.mr(buf), offset: 0, length, remoteAddr: m.iova + BigInt(off), rkey: m.rkey }]);
  }

  async write(buf: Buffer, length: number, m: PmmMapping, off: number): Promise<void> {
    await this.#post([{ op: 'write', mr: this.mr(buf), offset: 0, length, remoteAddr: m.iova + BigInt(off), rkey: m.rkey }]);
  }

  async close(): Promise<void> {
    const ep = this.#ep;
    const mrs = [this.#zeroMr, this.#scratch, ...this.#bufs.values()];
    this.#ep = this.#zeroMr = this.#scratch = null;
    this.#bufs.clear();
    if (!ep) return;
    await ep.close().catch(() => undefined);
    for (const mr of mrs) {
      try {
        mr?.close();
      } catch {
        // released with the endpoint's PD
      }
    }
  }
}

/** Copies a region's bytes from one half to the other by RDMA, through the PMM (resync), durably. */
async function copyRegion(from: PmmRdma, to: PmmRdma, r: RegionMeta, source: Half, target: Half, progress: (bytes: number) => void): Promise<void> {
  const ext = (h: Half) => (h === 'primary' ? r.primaryExtents : r.mirrorExtents);
  const buf = Buffer.alloc(CHUNK);
  await from.withMapping(r.id, ext(source), (src) =>
    to.withMapping(r.id, ext(target), async (dst) => {
      for (let off = 0; off < src.length; off += CHUNK) {
        const n = Math.min(CHUNK, src.length - off);
        await from.read(buf, n, src, off);
        await to.write(buf, n, dst, off);
        progress(n);
      }
      await to.durable(dst, ext(target));
    }),
  );
}

/**
 * `map` for a session whose RDMA connection the unit may still be
 * accepting: a few retries on a "no such session" answer.
 */
export async function mapWithRetry<T>(fn: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch (err) {
      const code = (err as NpmuError).code ?? '';
      if (i >= 20 || !/SESSION|NOT_CONNECTED/.test(code)) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
