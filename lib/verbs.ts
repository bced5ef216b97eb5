/**
 * The verbs layer as the rest of npmu sees it: the native addon, loaded once per
 * environment (main thread or worker) and handed the error class it throws.
 * Everything here is general RDMA; nPMU policy lives in unit/, pmm/ and lib/client.
 */
import { markAsUntransferable } from 'node:worker_threads';
import { VerbsError } from './errors';
import type * as N from './native';

export { Access } from './native';
export type {
  NativeContext as Context,
  NativeProtectionDomain as ProtectionDomainHandle,
  NativeMapping as Mapping,
  NativeMemoryRegion as MemoryRegion,
  NativeEndpoint as Endpoint,
  NativeListener as Listener,
  ConnectionRequest,
  ConnectOptions,
  EndpointOptions,
  ListenOptions,
  MapOptions,
  MrOptions,
  Extent,
  WorkRequest,
  WorkResult,
  MappingKind,
  NativeFanout as Fanout,
  FanoutLeg,
  FanoutOutcome,
} from './native';

let binding: N.NativeBinding | undefined;

/** The addon, initialised for this environment. */
export function native(): N.NativeBinding {
  if (binding === undefined) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const b = require('bindings')('npmu_native') as N.NativeBinding;
    // Buffers over registered or mapped memory must never be transferred away
    // (their memory would outlive, or be freed under, the registration).
    b.init(VerbsError, markAsUntransferable);
    binding = b;
  }
  return binding;
}

export const listDevices = (): N.NativeDeviceInfo[] => native().listDevices();
export const openContext = (name: string): N.NativeContext => native().openContext(name);
export const mapFile = (path: string, opts?: N.MapOptions): N.NativeMapping => native().mapFile(path, opts);
export const mapExtents = (path: string, extents: N.Extent[], opts?: { readOnly?: boolean }): N.NativeMapping =>
  native().mapExtents(path, extents, opts);
export const connect = (opts: N.ConnectOptions): Promise<N.NativeEndpoint> => native().connect(opts);
export const listen = (opts?: N.ListenOptions): N.NativeListener => native().listen(opts);
export const postAll = (items: Array<{ ep: N.NativeEndpoint } & N.WorkRequest>): Promise<N.WorkResult[]> =>
  native().postAll(items);

/** A fan-out write plan over 1-8 legs (lib/native.ts: NativeFanout). */
export function newFanout(legs: N.FanoutLeg[]): N.NativeFanout {
  return new (native().Fanout)(legs);
}

export function newProtectionDomain(ctx: N.NativeContext): N.NativeProtectionDomain {
  return new (native().ProtectionDomain)(ctx);
}

export function registerMemory(
  pd: N.NativeProtectionDomain,
  source: ArrayBufferView | ArrayBuffer | N.NativeMapping,
  opts?: N.MrOptions,
): N.NativeMemoryRegion {
  return new (native().MemoryRegion)(pd, source, opts);
}

/** The first RDMA device whose port 1 is ACTIVE, or undefined. */
export function firstActiveDevice(): string | undefined {
  for (const d of listDevices()) {
    const ctx = openContext(d.name);
    try {
      if (ctx.queryPort(1).stateName === 'PORT_ACTIVE') return d.name;
    } finally {
      ctx.close();
    }
  }
  return undefined;
}
