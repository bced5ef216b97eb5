/**
 * Helpers for the PMM and client tests on rxe: units (in this process, or as
 * unit daemons to kill), a PMM (in process, or as a daemon), clients files,
 * child processes. Nothing is mocked.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { UnitDevice } from '../../unit/device';
import { UnitServer } from '../../unit/server';
import { PmmServer } from '../../pmm/server';
import { ClientRegistry, clientLine, parseClients } from '../../pmm/credentials';
import type { UnitAddress } from '../../pmm/volume';
import { NpmuClient } from '../../lib/client';
import type { AttachOptions } from '../../lib/client';
import { ControlConnection } from '../../lib/protocol';
import { daxDevices, deviceName, noDaxMessage, rdmaAddress } from './fixture';
import { startUnitProcess, mountExt4 } from './unit-helpers';
import type { UnitProcess } from './unit-helpers';

export const MiB = 1024 * 1024;
export const KEY = randomBytes(32);
export const SECRETS: Record<string, string> = { alice: 'alice-secret', bob: 'bob-secret', carol: 'carol-secret', ops: 'ops-secret' };

export const dir = fs.mkdtempSync('/tmp/npmu-pmm-test-');
export const keyFile = path.join(dir, 'key');
fs.writeFileSync(keyFile, KEY.toString('hex') + '\n', { mode: 0o600 });
const clientsText = Object.entries(SECRETS)
  .map(([n, s]) => clientLine(n, s, { logN: 4, roles: n === 'ops' ? ['admin'] : ['user'] }))
  .join('\n');
export const clientsFile = path.join(dir, 'clients');
fs.writeFileSync(clientsFile, clientsText + '\n', { mode: 0o600 });
export const clients = new ClientRegistry({ entries: parseClients(clientsText) });

export interface TestUnit {
  unitId: string;
  address: UnitAddress;
  server?: UnitServer;
  proc?: UnitProcess;
  /** The process dies (SIGKILL) or the in-process server stops. */
  kill(): Promise<void>;
}

let shmSeq = 0;
/** A fresh tmpfs file path (volatile unit). */
export function shmPath(): string {
  return `/dev/shm/npmu-pmm-test-${process.pid}-${++shmSeq}`;
}

/** A unit served by this process on `device` (formatted afresh). */
export async function unitInProcess(device: string, size = 32 * MiB, extra: { persistSlots?: number } = {}): Promise<TestUnit> {
  const isDax = device.startsWith('/dev/dax');
  const dev = UnitDevice.open(device, { ...(isDax ? {} : { create: { size } }), format: { label: path.basename(device) }, force: true });
  const server = await UnitServer.start({ device: dev, key: KEY, host: rdmaAddress(), rdmaDevice: deviceName(), ...extra });
  return {
    unitId: server.unitId,
    address: { host: server.host, controlPort: server.controlPort, rdmaPort: server.rdmaPort },
    server,
    kill: () => server.close(),
  };
}

/** A unit daemon (dist/unit/main.js) as a child process on a new tmpfs file. */
export async function unitProcess(device = shmPath(), size = '32M', format = true): Promise<TestUnit> {
  const args = ['--device', device, '--key-file', keyFile, '--quiet'];
  if (format) args.push('--create-size', size, '--format', '--force');
  const proc = await startUnitProcess(args);
  return {
    unitId: proc.ready.unitId,
    address: { host: proc.ready.host, controlPort: proc.ready.controlPort, rdmaPort: proc.ready.rdmaPort },
    proc,
    kill: async () => {
      proc.child.kill('SIGKILL');
      await proc.exited;
    },
  };
}

let fileDirCache: string | undefined;
/**
 * A directory on an ordinary (non-tmpfs, non-DAX) file system, for msync
 * units: in the VM an ext4 on a loop device made for the purpose (the VM is
 * throwaway and has no disk), natively the project's .cache.
 */
export function fileDir(): string {
  if (fileDirCache) return fileDirCache;
  if (process.env.NPMU_IN_VM) {
    const mnt = path.join(dir, 'ext4');
    mountExt4(path.join(dir, 'ext4.img'), mnt, 128 * MiB); // the VM is throwaway: left mounted
    fileDirCache = mnt;
  } else {
    fileDirCache = fs.mkdtempSync(path.join(__dirname, '..', '..', '..', '.cache', 'npmu-msync-'));
  }
  return fileDirCache;
}

/** The two emulated NVDIMMs of the VM (pmem durability). NVDIMMs are required:
 * without two, this throws (a test asking for tmpfs says so with devices: 'tmpfs'). */
export function pmemDevices(): [string, string] {
  const d = daxDevices();
  if (d.length < 2) throw new Error(noDaxMessage(2));
  return [d[0]!, d[1]!];
}

export interface System {
  primary: TestUnit;
  mirror: TestUnit;
  pmm: PmmServer;
  volume: string;
  attach(client: string, o?: Partial<AttachOptions>): Promise<NpmuClient>;
  close(): Promise<void>;
}

let volSeq = 0;
/** Two units, a PMM in this process and a new volume on them. */
export async function startSystem(o: { primary?: TestUnit; mirror?: TestUnit; devices?: 'pmem' | 'tmpfs' } = {}): Promise<System> {
  const pm = o.devices === 'tmpfs' ? null : pmemDevices();
  const primary = o.primary ?? (await unitInProcess(pm ? pm[0] : shmPath()));
  const mirror = o.mirror ?? (await unitInProcess(pm ? pm[1] : shmPath()));
  const pmm = await PmmServer.start({ key: KEY, clients, host: rdmaAddress(), port: 0, units: [primary.address, mirror.address], reconnectMs: 500 });
  const volume = `vol${++volSeq}`;
  const c = await ControlConnection.connect({ host: rdmaAddress(), port: pmm.port });
  await c.request('create-volume', { volume, primary: primary.address, mirror: mirror.address, force: true }, { timeoutMs: 60_000 });
  c.close();
  const attached: NpmuClient[] = [];
  return {
    primary,
    mirror,
    pmm,
    volume,
    async attach(client, extra = {}) {
      const x = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client, secret: SECRETS[client]!, volume, ...extra });
      attached.push(x);
      return x;
    },
    async close() {
      for (const x of attached) await x.close();
      await pmm.close();
      await primary.kill();
      await mirror.kill();
    },
  };
}

/** Runs a node script of this test directory as a child; resolves with the child and a line reader. */
export function child(script: string, args: string[]): {
  proc: ChildProcessWithoutNullStreams;
  line: (re: RegExp, ms?: number) => Promise<string>;
  output: () => string;
  exited: Promise<number | null>;
} {
  const proc = spawn(process.execPath, [script, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
  let out = '';
  const waiters: Array<{ re: RegExp; resolve: (s: string) => void }> = [];
  const check = (): void => {
    for (const w of [...waiters]) {
      const m = out.split('\n').find((l) => w.re.test(l));
      if (m !== undefined) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  proc.stdout.on('data', (d: Buffer) => {
    out += d;
    check();
  });
  proc.stderr.on('data', (d: Buffer) => (out += d));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  return {
    proc,
    output: () => out,
    exited,
    line: (re, ms = 120_000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${ms} ms; output:\n${out}`)), ms);
        const w = {
          re,
          resolve: (s: string) => {
            clearTimeout(timer);
            resolve(s);
          },
        };
        waiters.push(w);
        void exited.then(() => {
          setTimeout(() => {
            if (waiters.includes(w)) {
              clearTimeout(timer);
              waiters.splice(waiters.indexOf(w), 1);
              reject(new Error(`exited before a line matching ${re}; output:\n${out}`));
            }
          }, 50);
        });
        check();
      }),
  };
}

/** A PMM daemon (dist/pmm/main.js) as a child process. */
export async function pmmProcess(units: UnitAddress[]): Promise<{ port: number; kill: () => Promise<void>; stop: () => Promise<void> }> {
  const main = path.join(__dirname, '..', '..', 'pmm', 'main.js');
  const args = ['--key-file', keyFile, '--clients-file', clientsFile, '--host', rdmaAddress(), '--port', '0', '--json', '--quiet'];
  for (const u of units) args.push('--unit', `${u.host}:${u.controlPort}:${u.rdmaPort}`);
  const c = child(main, args);
  const ready = JSON.parse(await c.line(/"event":"ready"/)) as { port: number };
  return {
    port: ready.port,
    kill: async () => {
      c.proc.kill('SIGKILL');
      await c.exited;
    },
    stop: async () => {
      c.proc.kill('SIGTERM');
      await c.exited;
    },
  };
}

export const until = async (cond: () => boolean | Promise<boolean>, ms = 30_000, what = 'condition'): Promise<void> => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};
