/** Shared set-up for the RDMA tests: the rxe device, its address, devdax devices,
 * and connected endpoint pairs over real rdma_cm. Nothing here is mocked. */
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Access, firstActiveDevice, listen, connect, openContext, newProtectionDomain, registerMemory } from '../../lib/verbs';
import type { Endpoint, ProtectionDomainHandle, MemoryRegion, Context } from '../../lib/verbs';

export const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;

export function deviceName(): string {
  const d = process.env.NPMU_RXE_DEV ?? firstActiveDevice();
  if (!d) throw new Error('no ACTIVE RDMA device: RDMA tests must run on rxe (npm test boots the micro-VM)');
  return d;
}

/** IPv4 address the rxe device is bound to. */
export function rdmaAddress(): string {
  if (process.env.NPMU_RXE_ADDR) return process.env.NPMU_RXE_ADDR;
  // A native rxe host: the address of the netdev the device sits on.
  const dev = deviceName();
  const netdev = fs.readdirSync(`/sys/class/infiniband/${dev}/device/net`, { withFileTypes: true })[0]?.name;
  const addr = netdev ? os.networkInterfaces()[netdev]?.find((a) => a.family === 'IPv4')?.address : undefined;
  if (!addr) throw new Error(`cannot find the IPv4 address of ${dev}; set NPMU_RXE_ADDR`);
  return addr;
}

export function daxDevices(): string[] {
  return (process.env.NPMU_DAX_DEVICES ?? '').split(/\s+/).filter(Boolean);
}

/** Why a devdax test cannot run: NVDIMMs are required, never optional. */
export function noDaxMessage(count: number): string {
  const have = daxDevices().length;
  return `NVDIMMs are required: this test needs ${count} devdax device(s) in NPMU_DAX_DEVICES, found ${have}. ` +
    (process.env.NPMU_IN_VM
      ? 'Boot the micro-VM with --nvdimm FILE:SIZE (npm test gives it two).'
      : 'This host has no emulated NVDIMMs: run the RDMA tests in the micro-VM (scripts/rxe-vm.sh --nvdimm …), or list real devdax devices in NPMU_DAX_DEVICES.');
}

/**
 * The devdax devices, at least `count` of them; otherwise the test FAILS with
 * a message saying NVDIMMs are required (no devdax test is ever skipped) and
 * this returns undefined: the caller returns.
 */
export function requireDax(t: { fail(message: string): unknown }, count = 1): string[] | undefined {
  const d = daxDevices();
  if (d.length >= count) return d;
  t.fail(noDaxMessage(count));
  return undefined;
}

/** A devdax device's mapping alignment, from sysfs (4 KiB in the micro-VM's namespaces). */
export function daxAlignment(dev: string): number {
  return Number(fs.readFileSync(`/sys/bus/dax/devices/${path.basename(dev)}/align`, 'utf8').trim());
}

export function describeEnvironment(): string {
  const where = process.env.NPMU_IN_VM ? 'the rxe micro-VM' : 'this host';
  let dev = '(none)';
  try {
    dev = deviceName();
  } catch {
    /* reported by the tests themselves */
  }
  return `device ${dev} at ${process.env.NPMU_RXE_ADDR ?? '?'} in ${where}, kernel ${os.release()}, devdax: ${daxDevices().join(' ') || 'none'}`;
}

/** A scratch file on tmpfs (/dev/shm), removed by the returned cleanup. */
export function tmpfsFile(size: number): { path: string; remove: () => void } {
  const p = path.join('/dev/shm', `npmu-test-${process.pid}-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(p, Buffer.alloc(0));
  fs.truncateSync(p, size);
  return { path: p, remove: () => fs.rmSync(p, { force: true }) };
}

export interface Pair {
  ctx: Context;
  server: Endpoint;
  client: Endpoint;
  serverPd: ProtectionDomainHandle;
  close(): Promise<void>;
}

/** A listener and a connection to it in this process, both on the rxe device. */
export async function connectedPair(opts: { serverPd?: ProtectionDomainHandle; privateData?: Uint8Array } = {}): Promise<Pair> {
  const ctx = openContext(deviceName());
  const serverPd = opts.serverPd ?? newProtectionDomain(ctx);
  const listener = listen({ host: rdmaAddress(), port: 0 });
  const accepted = new Promise<Endpoint>((resolve, reject) => {
    listener.onRequest = (req) => {
      req.accept({ pd: serverPd, privateData: Buffer.from('welcome') }).then(resolve, reject);
    };
  });
  const client = await connect({ host: rdmaAddress(), port: listener.port, privateData: opts.privateData ?? Buffer.from('hello') });
  const server = await accepted;
  listener.close();
  return {
    ctx,
    server,
    client,
    serverPd,
    async close() {
      await client.close();
      await server.close();
      if (!opts.serverPd) serverPd.close();
      ctx.close();
    },
  };
}

/**
 * Register `buf` on `pd` with every access right, at an optional iova. The
 * kernel wants an iova with the same offset within a page as the buffer's
 * address, so the iova given is moved up by that offset: address buf[i]
 * remotely as `mr.iova + i`.
 */
export function regAll(pd: ProtectionDomainHandle, buf: Buffer | ArrayBuffer, iova?: bigint): MemoryRegion {
  if (iova === undefined) return registerMemory(pd, buf, { access: ALL });
  const probe = registerMemory(pd, buf, { access: ALL });
  const inPage = probe.iova & 0xfffn;
  probe.close();
  return registerMemory(pd, buf, { access: ALL, iova: iova + inPage });
}
