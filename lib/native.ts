/**
 * The declared surface of the C++ addon (`native/`, built as `npmu_native.node`).
 *
 * This file is the contract between the thin, general C++ verbs binding and the
 * TypeScript that holds every nPMU policy. The addon validates every argument
 * itself (TypeError / RangeError with a Node-style `code`) before anything
 * reaches libibverbs, librdmacm or the kernel, so nothing passed here can crash
 * the process.
 *
 * Lifetimes: every object has an idempotent `close()`; a finalizer releases what
 * JS forgot; a dependent object (MR on a PD or a Mapping, Endpoint on a PD) keeps
 * its parent's native resource alive, so GC order never matters. Closing a parent
 * that still has live children is refused with `ERR_NPMU_BUSY`; deregistering an
 * MR that an in-flight work request uses is refused with `ERR_NPMU_BUSY`; closing an
 * Endpoint with work in flight is deferred: the QP is moved to the error state,
 * pending work flushes (promises reject with `IBV_WC_WR_FLUSH_ERR`), then the
 * resources go. At environment teardown (process exit, worker termination) a
 * per-environment reaper destroys everything still open.
 *
 * Errors: bad arguments throw synchronously (TypeError/RangeError, also from the
 * methods that return promises); failures of state or of a verb come as
 * VerbsError (thrown by synchronous calls, rejections of promises). `errno` is
 * the positive C errno, undefined where there is none (e.g. completion errors).
 */

/** Access flags for memory regions (values of enum ibv_access_flags). */
export const Access = {
  LOCAL_WRITE: 1,
  REMOTE_WRITE: 2,
  REMOTE_READ: 4,
  REMOTE_ATOMIC: 8,
} as const;

export interface NativeDeviceInfo {
  /** e.g. "rxe0" */
  name: string;
  /** node GUID as 16 hex digits */
  guid: string;
  /** ibv_node_type_str(), e.g. "InfiniBand channel adapter" */
  nodeType: string;
}

export interface NativeDeviceAttr {
  fwVer: string;
  vendorId: number;
  vendorPartId: number;
  maxQp: number;
  maxQpWr: number;
  maxSge: number;
  maxCq: number;
  maxCqe: number;
  maxMr: number;
  /** bigint: may exceed 2^53 */
  maxMrSize: bigint;
  maxPd: number;
  maxQpRdAtom: number;
  /** "none" | "hca" | "glob" */
  atomicCap: string;
  physPortCnt: number;
}

export interface NativePortAttr {
  /** numeric ibv_port_state */
  state: number;
  /** ibv_devinfo's name for the state: "PORT_DOWN", "PORT_INIT", "PORT_ARMED", "PORT_ACTIVE", …
   * (ibv_port_state_str() itself says "active") */
  stateName: string;
  activeMtu: number; // bytes (256..4096)
  maxMtu: number; // bytes
  gidTblLen: number;
  /** "Ethernet" | "InfiniBand" | "unknown" */
  linkLayer: string;
  lid: number;
}

/** An opened device. The handle is librdmacm's own context for the device, so a
 * PD made on it can carry QPs of rdma_cm connections. */
export interface NativeContext {
  readonly name: string;
  queryDevice(): NativeDeviceAttr;
  queryPort(port: number): NativePortAttr;
  /** GID as "fe80:0000:...": 8 groups of 4 hex digits. */
  queryGid(port: number, index: number): string;
  close(): void;
}

export interface NativeProtectionDomain {
  readonly context: NativeContext;
  /** ERR_NPMU_BUSY while MRs or endpoints made on it are open. Idempotent. */
  close(): void;
  readonly closed: boolean;
}

export type MappingKind = 'devdax' | 'tmpfs' | 'file';

export interface MapOptions {
  /** byte offset into the file/device; must be a multiple of `pageSize` */
  offset?: number;
  /** bytes to map; default: the whole file/device past `offset`. Multiple of `pageSize`. */
  length?: number;
  /** create the file if missing (regular files only; O_CREAT 0600) */
  create?: boolean;
  /** ftruncate a regular file to this size first if it is smaller (never shrinks) */
  size?: number;
  /** open O_RDONLY; the file is never written through this mapping. Files and tmpfs
   * are mapped MAP_PRIVATE, so a stray store through buffer() stays private instead
   * of faulting; devdax (no private mappings) is PROT_READ and buffer() throws EACCES. */
  readOnly?: boolean;
}

export interface Extent {
  /** byte offset in the file/device, multiple of pageSize */
  offset: number;
  /** bytes, multiple of pageSize, > 0 */
  length: number;
}

/**
 * A MAP_SHARED mapping of a devdax character device, a file on tmpfs, or an
 * ordinary file. `pageSize` is the device alignment for devdax (2 MiB on our
 * emulated NVDIMMs, read from sysfs) and the system page size otherwise.
 * A stitched mapping is one contiguous virtual range (reserved PROT_NONE, aligned
 * to pageSize) into which several extents of the file are mapped with MAP_FIXED,
 * in the order given.
 */
export interface NativeMapping {
  readonly path: string;
  readonly kind: MappingKind;
  readonly pageSize: number;
  /** size of the whole file or device in bytes */
  readonly deviceSize: number;
  /** bytes mapped */
  readonly length: number;
  readonly readOnly: boolean;
  readonly closed: boolean;
  /**
   * The mapped bytes as an external ArrayBuffer (no copy). Every ArrayBuffer
   * handed out is detached when the mapping is closed, so a stale view reads as
   * length 0 instead of touching unmapped memory.
   */
  buffer(): ArrayBuffer;
  /**
   * Make [offset, offset+length) durable and say how: "pmem" (cache-line flush +
   * fence via libpmem's pmem_persist, used on devdax) or "msync" (msync MS_SYNC on
   * the covering pages, used on files and tmpfs — on tmpfs it is a no-op as far as
   * power loss goes; that policy is the caller's to report).
   */
  persist(offset: number, length: number): 'pmem' | 'msync';
  /** munmap. ERR_NPMU_BUSY while MRs registered over it are open. Idempotent. */
  close(): void;
}

export interface MrOptions {
  /** byte offset into the source; default 0 */
  offset?: number;
  /** bytes; default: rest of the source */
  length?: number;
  /** ibv_reg_mr_iova2's iova; default: the local virtual address. The kernel requires
   * iova ≡ address (mod page size), else ERR_NPMU_NOT_ALIGNED: Mappings are page-aligned,
   * JS Buffers usually are not (read the page offset from an MR made without iova). */
  iova?: bigint;
  /** bitwise OR of Access; default LOCAL_WRITE */
  access?: number;
}

export interface NativeMemoryRegion {
  readonly lkey: number;
  readonly rkey: number;
  /** the MR's iova (the remote address of its first byte) */
  readonly iova: bigint;
  readonly length: number;
  readonly access: number;
  readonly closed: boolean;
  /** ibv_dereg_mr: the rkey is dead at once. ERR_NPMU_BUSY while a posted work
   * request uses this MR as its local buffer. Idempotent. */
  close(): void;
}

/** A local buffer: bytes [offset, offset+length) of a registered MR. */
export interface LocalSlice {
  mr: NativeMemoryRegion;
  offset: number;
  length: number;
}

export type WorkRequest =
  | ({ op: 'write' | 'read'; remoteAddr: bigint; rkey: number } & LocalSlice)
  | ({ op: 'send' } & LocalSlice)
  | ({ op: 'recv' } & LocalSlice)
  // local slice must be exactly 8 bytes; remoteAddr 8-byte aligned
  | ({ op: 'cas'; remoteAddr: bigint; rkey: number; compare: bigint; swap: bigint } & LocalSlice)
  | ({ op: 'faa'; remoteAddr: bigint; rkey: number; add: bigint } & LocalSlice);

/** Outcome of one work request in a multi-request post. */
export type WorkResult =
  | { ok: true; byteLength?: number; value?: bigint }
  | { ok: false; error: Error };

export interface EndpointOptions {
  /** PD for the QP; default: a PD owned (and closed) by the endpoint */
  pd?: NativeProtectionDomain;
  /** default 128 */
  sqDepth?: number;
  /** default 128 */
  rqDepth?: number;
  /** default 64 */
  maxInline?: number;
  /** start in busy-poll mode (see Endpoint.busyPoll) */
  busyPoll?: boolean;
  /** hybrid polling budget in event mode, µs, 0-1000000 (see Endpoint.spinUs); default 0 */
  spinUs?: number;
  /** RDMA READ/atomic depth both ways; default min(device max, 16) */
  responderResources?: number;
}

export interface ConnectOptions extends EndpointOptions {
  host: string;
  port: number;
  /** up to 56 bytes, delivered to the listener's request event */
  privateData?: Uint8Array;
  /** address + route resolution + connection; default 5000 */
  timeoutMs?: number;
}

export type EndpointEvent =
  | { type: 'disconnected' }
  | { type: 'error'; error: Error };

export interface NativeEndpoint {
  /** "connected" | "error" (a work request failed: QP in error state) |
   * "disconnected" | "closing" | "closed" */
  readonly state: string;
  readonly pd: NativeProtectionDomain;
  readonly localAddress: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** private data the peer sent with its accept (active side) or connect (passive side),
   * as the CM delivers it: zero-padded to the transport's size (196 bytes for an accept,
   * 56 for a connect on RoCE/IB), so a protocol must carry its own length */
  readonly peerPrivateData: Buffer;
  /** work requests posted and not yet completed */
  readonly inFlight: number;
  /** The QP's real queue capacities (the provider may round the requested
   * depths up), the CQ's size, and how many work requests wait for a credit:
   * posts beyond the capacity queue in FIFO order, they never fail for it. */
  readonly capacity: { maxSendWr: number; maxRecvWr: number; cqe: number; queued: number };
  /**
   * Busy-poll mode: a post spins on ibv_poll_cq until its own work requests have
   * completed (bounded by 1 s, after which it falls back to event mode), so the
   * returned promise is already settled. Recvs are not waited for (they complete
   * when the peer sends). The clock is read only after 1024 empty polls and
   * sched_yield() runs every 64, so the bound is approximate.
   * Event mode (default): right after posting, the CQ is polled once without
   * waiting (on soft-RoCE the round trip often completes inside ibv_post_send, and
   * the promise is then settled at once); anything still out is reported when the
   * completion channel's fd, on a uv_poll handle, is readable. The CQ is armed only
   * while work is out. An 'error' event found by that first poll is emitted from
   * the event loop, never from inside the posting call.
   */
  busyPoll: boolean;
  /**
   * Hybrid polling, for event mode: after a post, keep polling the CQ for up
   * to this many microseconds (an integer, 0-1000000) before arming it and
   * returning to the event loop. Work that completes within the budget
   * settles its promise at once, with no completion-channel wake-up; the
   * rest is reported through the channel as in event mode. 0 (default): one
   * poll. The clock is read every 64 empty polls, so the budget is
   * approximate. Ignored in busy-poll mode.
   */
  spinUs: number;
  /** events after establishment; set by the wrapper */
  onEvent: ((ev: EndpointEvent) => void) | null;

  write(mr: NativeMemoryRegion, offset: number, length: number, remoteAddr: bigint, rkey: number): Promise<void>;
  read(mr: NativeMemoryRegion, offset: number, length: number, remoteAddr: bigint, rkey: number): Promise<void>;
  /** waits for a recv posted by the peer (rnr_retry_count 7: no limit) */
  send(mr: NativeMemoryRegion, offset: number, length: number): Promise<void>;
  /** resolves with the number of bytes received */
  recv(mr: NativeMemoryRegion, offset: number, length: number): Promise<number>;
  /** resolves with the value the remote word had before (also left in the local slice) */
  compareSwap(mr: NativeMemoryRegion, offset: number, remoteAddr: bigint, rkey: number, compare: bigint, swap: bigint): Promise<bigint>;
  fetchAdd(mr: NativeMemoryRegion, offset: number, remoteAddr: bigint, rkey: number, add: bigint): Promise<bigint>;
  /**
   * Several work requests, one ibv_post_send (one ibv_post_recv for recvs) per
   * endpoint. Settles when every one has completed, with one result each, in order.
   */
  post(wrs: WorkRequest[]): Promise<WorkResult[]>;
  // (write/read/send/recv/compareSwap/fetchAdd/post reject with ERR_NPMU_ENDPOINT_STATE,
  // nothing posted, unless state is "connected"; postAll reports it per item instead)
  /** rdma_disconnect; pending work flushes. Idempotent. */
  disconnect(): void;
  /** Disconnect, wait for in-flight work to flush, destroy QP/CQ/channel/id (and
   * an owned PD). Idempotent; resolves when torn down. */
  close(): Promise<void>;
}

export interface ConnectionRequest {
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** zero-padded to 56 bytes by the CM (see NativeEndpoint.peerPrivateData) */
  readonly privateData: Buffer;
  /** create the QP on `pd` (or an owned PD) and rdma_accept; resolves when ESTABLISHED.
   * privateData up to 196 bytes. */
  accept(opts?: EndpointOptions & { privateData?: Uint8Array }): Promise<NativeEndpoint>;
  /** rdma_reject; privateData up to 148 bytes reaches the connector's error. */
  reject(privateData?: Uint8Array): void;
}

export interface ListenOptions {
  /** IPv4/IPv6 literal; default "0.0.0.0" */
  host?: string;
  /** 0 = any; read the bound port from `port` */
  port?: number;
  /** default 64 */
  backlog?: number;
}

export interface NativeListener {
  readonly port: number;
  readonly host: string;
  /** a connection request; not accepted or rejected within 10 s => rejected */
  onRequest: ((req: ConnectionRequest) => void) | null;
  close(): void;
}

/** One leg of a Fanout: a connected endpoint and the remote window its writes may touch. */
export interface FanoutLeg {
  ep: NativeEndpoint;
  rkey: number;
  /** remote address of the window's first byte */
  remoteAddr: bigint;
  /** window length in bytes (number or bigint): every access must lie inside */
  length: number | bigint;
  /** >= 8 bytes, LOCAL_WRITE, on the endpoint's PD: where the fence READ (or atomic's result) lands */
  fence?: NativeMemoryRegion;
  /**
   * A fence word on the peer (8-byte aligned, REMOTE_ATOMIC, touched by nothing
   * but fences): the fence becomes an 8-byte ATOMIC FETCH_AND_ADD of 0 there
   * instead of a READ of the last bytes written. Needs `fence`.
   */
  fenceAddr?: bigint;
  fenceRkey?: number;
}

/**
 * Per-leg outcome of a Fanout operation: `undefined` when every work request
 * succeeded; otherwise one entry per leg, the first error of that leg
 * (undefined for legs that succeeded or were not selected). Resolves, never
 * rejects, for work that was posted; bad arguments throw synchronously.
 */
export type FanoutOutcome = undefined | Array<Error | undefined>;

/**
 * The lean path for one write to several targets (e.g. the two halves of a
 * mirror): ONE call posts an RDMA WRITE of the same local bytes on every
 * selected leg and, with `fence`, an RDMA READ of the last (up to) 8 bytes
 * written right behind it on each (on a reliable connection a READ completes
 * only after the responder executed the WRITEs before it) — or, on legs with
 * a fence word, an 8-byte ATOMIC FETCH_AND_ADD of 0 to it — posting every leg
 * before polling any, and settles ONE promise. No per-operation JS objects on
 * success. Bounds are checked natively against each leg's window.
 *
 * `src`: a MemoryRegion on every selected leg's PD, one MemoryRegion per leg,
 * or an ArrayBufferView whose bytes are copied into the work request (inline;
 * at most `maxInline` bytes per write, no registration needed).
 */
export interface NativeFanout {
  readonly legs: number;
  /** the largest write the legs send inline (from an ArrayBufferView source) */
  readonly maxInline: number;
  /** legMask: bit i selects leg i (default: all) */
  write(src: NativeMemoryRegion | NativeMemoryRegion[] | ArrayBufferView, srcOffset: number, length: number, remoteOffset: number | bigint, legMask?: number, fence?: boolean): Promise<FanoutOutcome>;
  /** Many writes at once: `ops` holds [srcOffset, length, remoteOffset] triples; one post (a chain) per leg, one fence READ per leg after the last. */
  writev(src: NativeMemoryRegion | NativeMemoryRegion[] | ArrayBufferView, ops: Float64Array, legMask?: number, fence?: boolean): Promise<FanoutOutcome>;
  /** One RDMA READ from one leg's window into dst (LOCAL_WRITE, on that leg's PD). */
  read(dst: NativeMemoryRegion, dstOffset: number, length: number, remoteOffset: number | bigint, leg: number): Promise<FanoutOutcome>;
}

/** Error codes the addon produces, besides errno names (ENOMEM, EINVAL, …) and
 * work-completion status names (IBV_WC_REM_ACCESS_ERR, IBV_WC_WR_FLUSH_ERR, …). */
export type NativeErrorCode =
  | 'ERR_NPMU_CLOSED' // object already closed
  | 'ERR_NPMU_BUSY' // children or work in flight
  | 'ERR_NPMU_ENDPOINT_STATE' // post on an endpoint that is not connected
  | 'ERR_NPMU_REJECTED' // connect rejected by the peer (or no listener on that port); error.privateData has its reason
  | 'ERR_NPMU_TIMEOUT' // connect/resolve timed out
  | 'ERR_NPMU_UNREACHABLE' // address/route resolution failed, or peer unreachable
  | 'ERR_NPMU_NO_DEVICE' // no RDMA device of that name / none at all
  | 'ERR_NPMU_NOT_ALIGNED' // offset/length not a multiple of pageSize
  | 'ERR_INVALID_ARG_TYPE'
  | 'ERR_INVALID_ARG_VALUE'
  | 'ERR_OUT_OF_RANGE';

export interface NativeBinding {
  /** Hands the addon the error class it instantiates for verbs/system failures:
   * `new VerbsError(message, code, errno, syscall)`. Call once per environment. */
  init(
    errorClass: new (message: string, code: string, errno: number | undefined, syscall: string | undefined) => Error,
    markAsUntransferable?: (ab: ArrayBuffer) => void,
  ): void;
  listDevices(): NativeDeviceInfo[];
  /** ERR_NPMU_NO_DEVICE if absent. */
  openContext(name: string): NativeContext;
  ProtectionDomain: new (ctx: NativeContext) => NativeProtectionDomain;
  /** Map [offset, offset+length) of path. */
  mapFile(path: string, opts?: MapOptions): NativeMapping;
  /** One contiguous virtual range made of the given extents, in order. */
  mapExtents(path: string, extents: Extent[], opts?: { readOnly?: boolean }): NativeMapping;
  /** Register a Buffer/ArrayBuffer/TypedArray (pinned until close) or a Mapping. */
  MemoryRegion: new (pd: NativeProtectionDomain, source: ArrayBufferView | ArrayBuffer | NativeMapping, opts?: MrOptions) => NativeMemoryRegion;
  connect(opts: ConnectOptions): Promise<NativeEndpoint>;
  listen(opts?: ListenOptions): NativeListener;
  /** Post across endpoints: groups by endpoint, posts every group before any
   * completion is awaited (how a mirrored write reaches both halves at once). */
  postAll(items: Array<{ ep: NativeEndpoint } & WorkRequest>): Promise<WorkResult[]>;
  /** A fan-out write plan over 1-8 legs (see NativeFanout). */
  Fanout: new (legs: FanoutLeg[]) => NativeFanout;
  /** Event-loop turns so far (a uv_check handle counts them): tells whether the loop turned since a caller last looked. */
  loopTurn(): number;
  /** counts of live native objects in this environment, for leak tests */
  liveObjects(): { contexts: number; pds: number; mappings: number; mrs: number; endpoints: number; listeners: number };
}
