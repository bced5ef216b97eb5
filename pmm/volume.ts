/**
 * One mirrored volume ([0059]-[0062], [0075]): a primary and a mirror unit,
 * the metadata both of them hold, and the page allocators derived from it.
 *
 * The PMM keeps no state of its own: a Volume is rebuilt from the units'
 * metadata areas alone (`Volume.recover`), and every change goes through
 * `commit`, which writes generation g+1 into slot (g+1) % 2 of the primary,
 * persisted, then of the mirror, persisted (pmm/metadata.ts `planWrite`);
 * only then is it the volume's state. A half that cannot be reached is
 * *down*: the volume runs degraded on the other half (commits go to it
 * alone) and the down half is brought up to the newest generation when it
 * returns (`attachHalf` → `chooseNewest` → lagging copies rewritten).
 *
 * Crash safety follows from the format: a torn slot write fails its CRC and
 * the older generation stands; allocation is derived from the region table,
 * so a crash can never leave a page owned twice or leaked for good.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { NpmuError } from '../lib/errors';
import { ControlConnection, META_IO_MAX } from '../lib/protocol';
import type { ReplyBody, RequestInput, OkReply, MessageType } from '../lib/protocol';
import { ANY_UNIT_ID, issueTicket } from '../lib/ticket';
import { PageAllocator } from './alloc';
import type { Extent } from './alloc';
import {
  META_HEADER_SIZE,
  chooseNewest,
  decodeSlot,
  encodeMeta,
  newId,
  planWrite,
  slotOffsets,
  slotSize,
  usedExtents,
} from './metadata';
import type { Half, RegionMeta, SlotCopy, VolumeMeta } from './metadata';

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
// Metadata I/O

/** Reads one metadata slot of a unit: the header, then as much payload as it claims (bounded by the slot). */
export async function readSlot(link: UnitLink, slot: 0 | 1): Promise<Buffer> {
  const areaLength = link.hello.metaLength;
  const size = slotSize(areaLength);
  const base = slotOffsets(areaLength)[slot];
  const first = Math.min(size, 4096);
  const head = Buffer.from((await link.request('meta-read', { offset: base, length: first })).data, 'base64');
  if (head.length < META_HEADER_SIZE || head.toString('ascii', 0, 8) !== 'NPMUMETA') return head;
  const total = Math.min(size, META_HEADER_SIZE + head.readUInt32LE(24));
  if (total <= head.length) return head;
  const parts = [head];
  for (let off = head.length; off < total; ) {
    const n = Math.min(META_IO_MAX, total - off);
    parts.push(Buffer.from((await link.request('meta-read', { offset: base + off, length: n })).data, 'base64'));
    off += n;
  }
  return Buffer.concat(parts);
}

/** Writes `bytes` at the start of a slot and persists it (in META_IO_MAX pieces). */
export async function writeSlot(link: UnitLink, slot: 0 | 1, bytes: Uint8Array): Promise<void> {
  const base = slotOffsets(link.hello.metaLength)[slot];
  for (let off = 0; off < bytes.length; ) {
    const n = Math.min(META_IO_MAX, bytes.length - off);
    await link.request('meta-write', { offset: base + off, data: bytes.subarray(off, off + n), persist: true }, { timeoutMs: 30_000 });
    off += n;
  }
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

export type VolumeState = 'ok' | 'degraded' | 'offline';

export interface VolumeOptions {
  key: Uint8Array;
  log?: Logger;
  /**
   * Zero a new region's pages on both halves before its creation counts
   * (design.md: no region ever shows a deleted region's bytes). Needs RDMA
   * in the PMM process. Default true.
   */
  zeroNewRegions?: boolean;
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

export class Volume extends EventEmitter {
  meta: VolumeMeta;
  generation: number;
  readonly halves: Record<Half, HalfState>;
  readonly #opts: VolumeOptions;
  readonly #log: Logger;
  #lock: Promise<unknown> = Promise.resolve();
  #zeroers: Partial<Record<Half, Zeroer>> = {};
  /** regionId → mappings on the units that this PMM did not make. */
  orphans = new Map<number, OrphanMapping[]>();
  /** True once close() ran. */
  #closed = false;

  private constructor(meta: VolumeMeta, generation: number, links: Partial<Record<Half, UnitLink>>, opts: VolumeOptions) {
    super();
    this.meta = meta;
    this.generation = generation;
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
    const mk = (half: Half): HalfState => ({
      half,
      unitId: half === 'primary' ? meta.primaryUnit : meta.mirrorUnit,
      address: links[half]?.address ?? null,
      link: null,
      hello: links[half]?.hello ?? null,
      alloc: new PageAllocator(meta.dataPages, usedExtents(meta, half)),
      lastError: links[half] ? null : 'not connected since the PMM started',
    });
    this.halves = { primary: mk('primary'), mirror: mk('mirror') };
    for (const h of HALVES) {
      const l = links[h];
      if (l) this.#adopt(h, l);
    }
  }

  get name(): string {
    return this.meta.name;
  }

  get volumeId(): string {
    return this.meta.volumeId;
  }

  get state(): VolumeState {
    const up = HALVES.filter((h) => this.halves[h].link?.up).length;
    return up === 2 ? 'ok' : up === 1 ? 'degraded' : 'offline';
  }

  isUp(half: Half): boolean {
    return this.halves[half].link?.up === true;
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
    return this.meta.regions.find((r) => r.name === name);
  }

  /** Runs `fn` with the volume to itself: every metadata change is serialised here. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
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
      hs.link = null;
      hs.lastError = 'control connection lost';
      void this.#zeroers[half]?.close();
      delete this.#zeroers[half];
      if (!this.#closed) {
        this.#log.warn(`volume ${this.name}: ${half} unit ${hs.unitId} is down; running degraded`);
        this.emit('half-down', half);
      }
    });
  }

  #markDown(half: Half, why: string): void {
    const hs = this.halves[half];
    const link = hs.link;
    if (!link) return;
    hs.link = null;
    hs.lastError = why;
    link.close();
    void this.#zeroers[half]?.close();
    delete this.#zeroers[half];
    this.#log.warn(`volume ${this.name}: ${half} unit ${hs.unitId} marked down (${why}); running degraded`);
    this.emit('half-down', half);
  }

  /**
   * A request to a half's unit. A half that is down, or whose connection
   * fails under the request, is ERR_NPMU_HALF_UNAVAILABLE (and is marked down).
   * Error replies from a live unit pass through unchanged.
   */
  async unitRequest<T extends MessageType>(half: Half, type: T, body: RequestInput<T>, opts: { timeoutMs?: number } = {}): Promise<OkReply<T>> {
    const link = this.halves[half].link;
    if (!link?.up) throw unavailable(this.name, half, this.halves[half].lastError ?? 'down');
    try {
      return await link.request(type, body, opts);
    } catch (err) {
      const code = (err as NpmuError).code;
      if (code === 'ERR_NPMU_DISCONNECTED' || code === 'ERR_NPMU_TIMEOUT') {
        this.#markDown(half, `${type}: ${(err as Error).message}`);
        throw unavailable(this.name, half, (err as Error).message, err);
      }
      throw err;
    }
  }

  // ---- recovery ------------------------------------------------------------

  /**
   * Rebuilds a volume from its units' metadata alone ([0062]): reads the two
   * slots of every half given, takes the newest valid generation
   * (`chooseNewest`) and writes it to a half that lags. One half is enough
   * (the volume then runs degraded). Copies written for another volume id (a
   * unit re-formatted with `force`) are ignored.
   */
  static async recover(links: Partial<Record<Half, UnitLink>>, opts: VolumeOptions): Promise<Volume> {
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
    const copies: SlotCopy[] = [];
    for (const h of present) {
      for (const slot of [0, 1] as const) copies.push({ unit: h, slot, bytes: foreignToEmpty(await readSlot(links[h]!, slot), volumeId) });
    }
    const rec = chooseNewest(copies);
    const meta = rec.meta;
    for (const h of present) {
      const want = h === 'primary' ? meta.primaryUnit : meta.mirrorUnit;
      if (links[h]!.unitId !== want) {
        throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `volume ${meta.name}: the ${h} should be unit ${want}, found ${links[h]!.unitId}`);
      }
    }
    if (rec.diverged) log.warn(`volume ${meta.name}: ${rec.diverged.message}`);
    for (const lag of rec.lagging) {
      log.info(`volume ${meta.name}: ${lag.unit} lags (${lag.reason}, generation ${lag.generation ?? 'none'}); writing generation ${rec.generation}`);
      await writeSlot(links[lag.unit]!, lag.slot, rec.bytes);
    }
    const v = new Volume(meta, rec.generation, links, opts);
    log.info(
      `volume ${meta.name} (${meta.volumeId}) recovered at generation ${rec.generation} from ${rec.from.unit} slot ${rec.from.slot}: ` +
        `${meta.regions.length} regions, ${v.usedPages}/${meta.dataPages} pages used, state ${v.state}`,
    );
    await v.#publishUsage();
    await v.scanOrphans();
    return v;
  }

  /**
   * A unit of this volume came back (or was reached for the first time):
   * read all copies again, take the newest, bring the lagging half up to it.
   */
  async attachHalf(link: UnitLink): Promise<void> {
    await this.exclusive(async () => {
      const h = link.hello.role as Half;
      const want = h === 'primary' ? this.meta.primaryUnit : this.meta.mirrorUnit;
      if (link.hello.volumeId !== this.volumeId || (h !== 'primary' && h !== 'mirror') || link.unitId !== want) {
        throw new NpmuError('ERR_NPMU_UNIT_MISMATCH', `unit ${link.unitId} (${link.hello.role} of ${link.hello.volumeId}) is not the ${h} of volume ${this.name}`);
      }
      const other: Half = h === 'primary' ? 'mirror' : 'primary';
      const copies: SlotCopy[] = [];
      for (const half of [h, other]) {
        const l = half === h ? link : this.halves[other].link;
        if (!l?.up) continue;
        for (const slot of [0, 1] as const) copies.push({ unit: half, slot, bytes: foreignToEmpty(await readSlot(l, slot), this.volumeId) });
      }
      const rec = chooseNewest(copies);
      if (rec.generation < this.generation) {
        // The other half vanished under us; what we hold is still the newest state.
        const plan = { generation: this.generation, slot: (this.generation % 2) as 0 | 1 };
        await writeSlot(link, plan.slot, encodeMeta(this.meta, this.generation, this.#slotBytes(link)));
      } else {
        if (rec.generation > this.generation) this.#log.warn(`volume ${this.name}: ${h} holds generation ${rec.generation} > ${this.generation}; adopting it`);
        for (const lag of rec.lagging) {
          const l = lag.unit === h ? link : this.halves[other].link!;
          this.#log.info(`volume ${this.name}: ${lag.unit} lags (${lag.reason}); writing generation ${rec.generation}`);
          await writeSlot(l, lag.slot, rec.bytes);
        }
        this.#setMeta(rec.meta, rec.generation);
      }
      this.#adopt(h, link);
      this.#log.info(`volume ${this.name}: ${h} unit ${link.unitId} is back; state ${this.state}`);
      this.emit('half-up', h);
      await this.#publishUsage();
    });
  }

  /**
   * Creates a volume from two units that belong to no volume ([0059]):
   * formats both with one new volume id, clears their metadata areas' slot
   * headers and commits generation 1 (no regions). Units bound to a volume
   * are refused unless `force`. An interrupted creation leaves units that
   * recover as "no metadata": run it again with `force`.
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
    const volumeId = newId();
    const label = cutUtf8(name, 32);
    for (const [l, role] of [[primary, 'primary'], [mirror, 'mirror']] as const) {
      await l.request('format-volume', { volumeId, role, label, force: opts.force ?? false });
      Object.assign(l.hello, { volumeId, role, label });
      // Old metadata (another volume's) must never be read as this one's.
      const [s0, s1] = slotOffsets(l.hello.metaLength);
      await l.request('meta-write', { offset: s0, data: Buffer.alloc(META_HEADER_SIZE), persist: true });
      await l.request('meta-write', { offset: s1, data: Buffer.alloc(META_HEADER_SIZE), persist: true });
    }
    const meta: VolumeMeta = {
      volumeId,
      name,
      primaryUnit: primary.unitId,
      mirrorUnit: mirror.unitId,
      pageSize: primary.hello.pageSize,
      dataPages: Math.min(primary.hello.dataPages, mirror.hello.dataPages),
      createdAtMs: Date.now(),
      nextRegionId: 1,
      regions: [],
    };
    const v = new Volume(meta, 0, { primary, mirror }, opts);
    await v.commit(meta);
    (opts.log ?? silentLogger).info(`volume ${name} (${volumeId}) created: ${meta.dataPages} pages of ${meta.pageSize} bytes per half`);
    return v;
  }

  // ---- updates ---------------------------------------------------------------

  #slotBytes(only?: UnitLink): number {
    const sizes: number[] = [];
    if (only) sizes.push(slotSize(only.hello.metaLength));
    for (const h of HALVES) {
      const hello = this.halves[h].hello;
      if (hello) sizes.push(slotSize(hello.metaLength));
    }
    return Math.min(...sizes);
  }

  #setMeta(meta: VolumeMeta, generation: number): void {
    this.meta = meta;
    this.generation = generation;
    for (const h of HALVES) this.halves[h].alloc = new PageAllocator(meta.dataPages, usedExtents(meta, h));
  }

  /** Throws away allocations made on the in-memory allocators since the last commit. */
  resetAllocators(): void {
    for (const h of HALVES) this.halves[h].alloc = new PageAllocator(this.meta.dataPages, usedExtents(this.meta, h));
  }

  /**
   * Makes `next` the volume's state: encode as generation g+1, write and
   * persist it on the primary, then the mirror; a half that fails is marked
   * down (degraded). Counts once at least one half holds it; if none does,
   * ERR_NPMU_VOLUME_OFFLINE and nothing changed. Call inside `exclusive`.
   */
  async commit(next: VolumeMeta): Promise<void> {
    const plan = planWrite(this.generation);
    const bytes = encodeMeta(next, plan.generation, this.#slotBytes());
    const wrote: Half[] = [];
    for (const h of plan.order) {
      const link = this.halves[h].link;
      if (!link?.up) continue;
      try {
        await writeSlot(link, plan.slot, bytes);
        wrote.push(h);
      } catch (err) {
        this.#markDown(h, `metadata write failed: ${(err as Error).message}`);
      }
    }
    if (wrote.length === 0) {
      this.resetAllocators();
      throw new NpmuError('ERR_NPMU_VOLUME_OFFLINE', `volume ${this.name}: no unit could take the metadata update`, { volume: this.name });
    }
    this.#setMeta(next, plan.generation);
    void this.#publishUsage();
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
      if (!this.isUp(h)) continue;
      try {
        const r = await this.unitRequest(h, 'sessions', {});
        for (const s of r.sessions) {
          if (known(s.sessionId)) continue;
          for (const m of s.mapIds) {
            const id = regionOfMapId(m);
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

  // ---- region pages ------------------------------------------------------------

  /**
   * Zeroes a new region's pages on every half that is up, durably as far as
   * each unit's device allows, before the region's creation is committed.
   */
  async zeroPages(regionId: number, extents: Record<Half, Extent[]>): Promise<void> {
    if (this.#opts.zeroNewRegions === false) return;
    await Promise.all(
      HALVES.map(async (h) => {
        if (!this.isUp(h)) return;
        let z = this.#zeroers[h];
        if (!z) z = this.#zeroers[h] = new Zeroer(this, h, this.#opts.key);
        try {
          await z.zero(regionId, extents[h]);
        } catch (err) {
          void z.close();
          if (this.#zeroers[h] === z) delete this.#zeroers[h];
          throw err;
        }
      }),
    );
  }

  /** Closes the unit connections (and the PMM's own RDMA connections, awaited). */
  async close(): Promise<void> {
    this.#closed = true;
    const zs = Object.values(this.#zeroers);
    this.#zeroers = {};
    for (const h of HALVES) this.halves[h].link?.close();
    await Promise.all(zs.map((z) => z.close()));
  }
}

function unavailable(volume: string, half: Half, why: string, cause?: unknown): NpmuError {
  return new NpmuError('ERR_NPMU_HALF_UNAVAILABLE', `volume ${volume}: the ${half} unit is unavailable (${why})`, { half, volume, cause });
}

/** A copy that decodes but names another volume reads as empty. */
function foreignToEmpty(bytes: Buffer, volumeId: string): Buffer {
  try {
    if (decodeSlot(bytes).meta.volumeId !== volumeId) return Buffer.alloc(0);
  } catch {
    // empty or corrupt: chooseNewest judges it
  }
  return bytes;
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
// Zeroing new pages (the PMM's own RDMA session with a unit)

/** The PMM's own session id for zeroing, per process. */
const PMM_SESSION = (randomBytes(8).readBigUInt64LE(0) >> 1n) | 1n;
const ZERO_CHUNK = 1 << 20;
const ZERO_IOVA = 1n << 40n;
let zeroSeq = 0;

/**
 * Zeroes data pages of one unit by RDMA WRITE from a registered zero buffer,
 * through a mapping the unit makes for the PMM's own session, then makes the
 * zeros durable: a READ after the WRITEs (pmem), `persist` of each extent
 * (msync), nothing (volatile). The connection is kept for the next region.
 */
class Zeroer {
  #vol: Volume;
  #half: Half;
  #key: Uint8Array;
  #ep: import('../lib/verbs').Endpoint | null = null;
  #zeroMr: import('../lib/verbs').MemoryRegion | null = null;
  #scratch: import('../lib/verbs').MemoryRegion | null = null;

  constructor(vol: Volume, half: Half, key: Uint8Array) {
    this.#vol = vol;
    this.#half = half;
    this.#key = key;
  }

  async #connect(): Promise<import('../lib/verbs').Endpoint> {
    if (this.#ep && this.#ep.state === 'connected') return this.#ep;
    await this.close();
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const verbs = require('../lib/verbs') as typeof import('../lib/verbs');
    const hs = this.#vol.halves[this.#half];
    const addr = hs.address;
    if (!addr?.rdmaPort) throw new NpmuError('ERR_NPMU_UNIT_ADDRESS', `the ${this.#half} unit's RDMA port is unknown (give host:controlPort:rdmaPort)`);
    const ticket = issueTicket({ key: this.#key, kind: 'client', unitId: hs.unitId, sessionId: PMM_SESSION, ttlSec: 60 });
    const ep = await verbs.connect({ host: addr.host, port: addr.rdmaPort, privateData: ticket, timeoutMs: 10_000 });
    this.#ep = ep;
    this.#zeroMr = verbs.registerMemory(ep.pd, Buffer.alloc(ZERO_CHUNK), { access: verbs.Access.LOCAL_WRITE });
    this.#scratch = verbs.registerMemory(ep.pd, Buffer.alloc(64), { access: verbs.Access.LOCAL_WRITE });
    return ep;
  }

  async zero(regionId: number, extents: Extent[]): Promise<void> {
    const ep = await this.#connect();
    const pageSize = this.#vol.meta.pageSize;
    const mapId = mapIdFor(regionId, ++zeroSeq);
    const sessionId = PMM_SESSION.toString();
    const m = await mapWithRetry(() =>
      this.#vol.unitRequest(this.#half, 'map', { sessionId, mapId, extents, iova: ZERO_IOVA, access: 'rw' }, { timeoutMs: 30_000 }),
    );
    try {
      const base = BigInt(m.iova);
      const total = m.length;
      const wrs: import('../lib/verbs').WorkRequest[] = [];
      for (let off = 0; off < total; off += ZERO_CHUNK) {
        wrs.push({ op: 'write', mr: this.#zeroMr!, offset: 0, length: Math.min(ZERO_CHUNK, total - off), remoteAddr: base + BigInt(off), rkey: m.rkey });
      }
      const durability = this.#vol.durabilityOf(this.#half);
      for (let i = 0; i < wrs.length; i += 32) {
        const batch = wrs.slice(i, i + 32);
        if (i + 32 >= wrs.length && durability === 'pmem') {
          // read-after-write: the READ completes only after every WRITE before it on this QP has landed
          batch.push({ op: 'read', mr: this.#scratch!, offset: 0, length: 8, remoteAddr: base + BigInt(total - 8), rkey: m.rkey });
        }
        const res = await ep.post(batch);
        const bad = res.find((r) => !r.ok);
        if (bad && !bad.ok) throw bad.error;
      }
      if (durability === 'msync') {
        for (const e of extents) await this.#vol.unitRequest(this.#half, 'persist', { page: e.page, offset: 0, length: e.pages * pageSize }, { timeoutMs: 60_000 });
      }
    } finally {
      await this.#vol.unitRequest(this.#half, 'unmap', { sessionId, mapId }).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    const ep = this.#ep;
    const mrs = [this.#zeroMr, this.#scratch];
    this.#ep = this.#zeroMr = this.#scratch = null;
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
