/**
 * The npmu system the Node benchmarks run against, in their own process: two
 * units on the devdax devices of NPMU_DAX_DEVICES (formatted afresh), a PMM,
 * a volume mirrored across the two, and clients attached to it. The data
 * path is one-sided RDMA, so the units' and the PMM's code is idle while a
 * benchmark loop runs. Used by bench/client.ts, bench/kv.ts, bench/profile.ts
 * and bench/meta.ts.
 *
 * ```ts
 * const sys = await startSystem({ label: 'bench', persistDomain: 'cpu_cache' });
 * const c = await sys.attach({ busyPoll: true });
 * ...
 * await c.close();
 * await sys.close();
 * ```
 */
import { randomBytes } from 'node:crypto';
import { NpmuClient } from '../lib/client';
import { ControlConnection } from '../lib/protocol';
import { ClientRegistry, clientLine, parseClients } from '../pmm/credentials';
import { PmmServer } from '../pmm/server';
import { UnitDevice } from '../unit/device';
import type { PersistDomain } from '../unit/device';
import { UnitServer } from '../unit/server';

export const CLIENT = 'bench';
export const SECRET = 'bench-secret';

/** The registry of the one benchmark client (cheap scrypt). */
export const benchClients = (): ClientRegistry => new ClientRegistry({ entries: parseClients(clientLine(CLIENT, SECRET, { logN: 4 })) });

/** NPMU_RXE_ADDR and the first two of NPMU_DAX_DEVICES; throws, naming `how` to run, if either is missing. */
export function benchTarget(how = 'run it through scripts/bench.sh', env: NodeJS.ProcessEnv = process.env): { host: string; dax: string[] } {
  const dax = (env.NPMU_DAX_DEVICES ?? '').split(/\s+/).filter(Boolean).slice(0, 2);
  if (dax.length < 2) throw new Error(`needs two devdax devices (NPMU_DAX_DEVICES): ${how}`);
  const host = env.NPMU_RXE_ADDR;
  if (!host) throw new Error(`NPMU_RXE_ADDR is not set: ${how}`);
  return { host, dax };
}

export const unitAddr = (host: string, u: UnitServer): { host: string; controlPort: number; rdmaPort: number } => ({ host, controlPort: u.controlPort, rdmaPort: u.rdmaPort });

/** A unit server on each device, formatted afresh with `label`. */
export async function startUnits(dax: string[], host: string, key: Buffer, label: string, persistDomain?: PersistDomain): Promise<UnitServer[]> {
  const units: UnitServer[] = [];
  try {
    for (const d of dax) {
      const device = UnitDevice.open(d, { format: { label }, force: true });
      units.push(await UnitServer.start({ device, key, host, ...(persistDomain ? { persistDomain } : {}) }));
    }
  } catch (e) {
    for (const u of units) await u.close().catch(() => undefined);
    throw e;
  }
  return units;
}

/** create-volume `volume` through the PMM at `port`: units[0] the primary, units[1] the mirror. */
export async function createVolume(host: string, port: number, volume: string, units: UnitServer[]): Promise<void> {
  const ctl = await ControlConnection.connect({ host, port });
  try {
    await ctl.request('create-volume', { volume, primary: unitAddr(host, units[0]!), mirror: unitAddr(host, units[1]!), force: true }, { timeoutMs: 120_000 });
  } finally {
    ctl.close();
  }
}

export interface SystemOptions {
  /** the units' label (default 'bench') */
  label?: string;
  /** the units report this persistence domain (default: what sysfs says) */
  persistDomain?: PersistDomain;
  /** the volume's name (default 'bench') */
  volume?: string;
  /** default: benchTarget() */
  host?: string;
  dax?: string[];
}

export interface BenchSystem {
  readonly host: string;
  readonly units: UnitServer[];
  readonly pmm: PmmServer;
  readonly volume: string;
  /** A client attached to the volume (event mode unless busyPoll; spinUs: hybrid polling). */
  attach(opts?: { busyPoll?: boolean; spinUs?: number }): Promise<NpmuClient>;
  /** Closes the PMM and the units (clients first, by the caller). */
  close(): Promise<void>;
}

/** Units on both devices, a PMM, the volume across them. */
export async function startSystem(o: SystemOptions = {}): Promise<BenchSystem> {
  const t = o.host && o.dax ? { host: o.host, dax: o.dax } : benchTarget();
  const host = o.host ?? t.host;
  const volume = o.volume ?? 'bench';
  const key = randomBytes(32);
  const units = await startUnits(o.dax ?? t.dax, host, key, o.label ?? 'bench', o.persistDomain);
  let pmm: PmmServer | undefined;
  const closeAll = async (): Promise<void> => {
    await pmm?.close();
    for (const u of units) await u.close();
  };
  try {
    pmm = await PmmServer.start({ key, clients: benchClients(), host, port: 0, units: units.map((u) => unitAddr(host, u)) });
    await createVolume(host, pmm.port, volume, units);
  } catch (e) {
    await closeAll().catch(() => undefined);
    throw e;
  }
  const port = pmm.port;
  return {
    host,
    units,
    pmm,
    volume,
    attach: (a = {}) => NpmuClient.attach({ pmm: { host, port }, client: CLIENT, secret: SECRET, volume, busyPoll: a.busyPoll ?? false, spinUs: a.spinUs ?? 0 }),
    close: closeAll,
  };
}
