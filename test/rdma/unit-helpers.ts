/** Helpers for the unit's RDMA tests (and the unit power-cut guest): a test-only
 * mini PMM on the control protocol, clients that connect with tickets, and a
 * way to look at device bytes directly. Nothing is mocked. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, execFileSync, ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ControlConnection } from '../../lib/protocol';
import { issueTicket } from '../../lib/ticket';
import type { TicketKind } from '../../lib/ticket';
import { connect, mapFile } from '../../lib/verbs';
import type { Endpoint } from '../../lib/verbs';
import { rdmaAddress, deviceName } from './fixture';

export interface UnitAddress {
  unitId: string;
  host: string;
  rdmaPort: number;
  controlPort: number;
}

export function ticket(key: Buffer, unit: { unitId: string }, kind: TicketKind, sessionId: bigint | number = 0, ttlSec = 300): Buffer {
  return issueTicket({ key, kind, unitId: unit.unitId, sessionId, ttlSec });
}

/** The PMM id the tests' control connections claim units with. */
export const TEST_PMM = 'feed'.repeat(8);

/**
 * A control connection that said hello with a control ticket and claimed the
 * unit (fencing epoch) as TEST_PMM: the PMM's privileges. Every such
 * connection of a test shares one epoch; `claim: false` leaves it unclaimed.
 */
export async function pmm(key: Buffer, unit: UnitAddress, o: { claim?: boolean } = {}): Promise<ControlConnection> {
  const c = await ControlConnection.connect({ host: unit.host, port: unit.controlPort });
  const hello = await c.request('hello', { ticket: ticket(key, unit, 'control') });
  if (o.claim !== false) await c.request('claim', { epoch: hello.holder === TEST_PMM ? hello.epoch : hello.epoch + 1, pmmId: TEST_PMM });
  return c;
}

/** A client's RDMA connection to the unit with a client ticket for `sessionId`. */
export function client(key: Buffer, unit: UnitAddress, sessionId: bigint | number, privateData?: Uint8Array): Promise<Endpoint> {
  return connect({
    host: unit.host,
    port: unit.rdmaPort,
    privateData: privateData ?? ticket(key, unit, 'client', sessionId),
    timeoutMs: 20_000,
  });
}

/** The reason a unit gave when it rejected a connection (rdma_cm pads it with zeros). */
export function rejectReason(err: unknown): string {
  const pd = (err as { privateData?: Buffer }).privateData;
  return pd ? Buffer.from(pd).toString('latin1').replace(/\0+$/, '') : '';
}

let nextSession = BigInt(Date.now()) * 1000n;
/** A session id not used before in this process. */
export const newSession = (): bigint => ++nextSession;

/** Bytes of a device (devdax or file) read through a fresh mapping of its own. */
export function peek(devicePath: string, offset: number, length: number): Buffer {
  const m = mapFile(devicePath); // devdax has no read-only buffer(); nothing is stored through this one
  try {
    return Buffer.from(Buffer.from(m.buffer()).subarray(offset, offset + length));
  } finally {
    m.close();
  }
}

export const randomKey = (): Buffer => randomBytes(32);

export function writeKeyFile(dir: string, key: Buffer): string {
  const f = path.join(dir, `npmu-unit-test-${process.pid}-${randomBytes(4).toString('hex')}.key`);
  fs.writeFileSync(f, key.toString('hex') + '\n', { mode: 0o600 });
  return f;
}

export interface UnitProcess {
  child: ChildProcessWithoutNullStreams;
  ready: UnitAddress & { durability: string; formatted: boolean; pageSize: number; dataPages: number };
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts the unit daemon (the CLI, dist/unit/main.js) and waits for its ready line. */
export function startUnitProcess(args: string[], timeoutMs = 120_000): Promise<UnitProcess> {
  const main = path.join(__dirname, '..', '..', 'unit', 'main.js');
  const child = spawn(
    process.execPath,
    [main, '--host', rdmaAddress(), '--rdma-device', deviceName(), '--json', ...args],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`unit did not get ready in ${timeoutMs} ms: ${err}`));
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      try {
        resolve({ child, ready: JSON.parse(out.slice(0, nl)), stderr: () => err, exited });
      } catch (e) {
        reject(e);
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`unit exited (${code ?? signal}) before ready: ${err}`));
    });
  });
}

/** Resolves when `emitter` emits `event` with `value`, or rejects after `ms`. */
export function waitFor(emitter: NodeJS.EventEmitter, event: string, value?: unknown, ms = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`no ${event} ${String(value ?? '')} within ${ms} ms`));
    }, ms);
    const on = (v: unknown): void => {
      if (value !== undefined && v !== value) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve();
    };
    emitter.on(event, on);
  });
}

/**
 * An ext4 file system on a loop device, mounted at `mnt`: an ordinary (not
 * tmpfs, not DAX) file system for msync units inside the VM, which has no disk.
 * Returns the unmount.
 */
export function mountExt4(img: string, mnt: string, bytes: number): () => void {
  fs.mkdirSync(mnt, { recursive: true });
  execFileSync('modprobe', ['-a', 'loop', 'ext4']);
  fs.writeFileSync(img, '');
  fs.truncateSync(img, bytes);
  execFileSync('mkfs.ext4', ['-q', '-F', img]);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  return () => {
    execFileSync('umount', [mnt]);
    fs.rmSync(img, { force: true });
  };
}
