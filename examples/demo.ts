/**
 * `npm run demo`: a complete local npmu — two units, a PMM, clients — and a
 * short tour of the verbs, printing what it does. scripts/demo.sh runs it in
 * the rxe micro-VM (units on emulated NVDIMMs, devdax: pmem durability) or
 * natively where this host has an ACTIVE RDMA device (units on tmpfs files:
 * volatile, and the demo says so).
 *
 * Processes: the two units and the PMM are daemons started by this driver
 * (so they can be killed and restarted), the client is this process, and
 * one short-lived reader process follows a linked list.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { NpmuClient, ReadFrom } from '../lib/client';
import { firstActiveDevice } from '../lib/verbs';
import { ControlConnection } from '../lib/protocol';
import { clientLine, newSecret } from '../pmm/credentials';
import { writeList } from './linked-list';
import { hexdump, volumeStatusText } from '../cli/npmu';

const root = path.resolve(__dirname, '..', '..');
const dist = path.join(root, 'dist');
const t0 = Date.now();
const say = (s = ''): void => console.log(s);
const step = (s: string): void => console.log(`\n== ${s}  [${((Date.now() - t0) / 1000).toFixed(1)} s]`);
const hex = (p: bigint | number): string => `0x${p.toString(16)}`;

function rdmaAddress(dev: string): string {
  if (process.env.NPMU_RXE_ADDR) return process.env.NPMU_RXE_ADDR;
  const netdev = fs.readdirSync(`/sys/class/infiniband/${dev}/device/net`)[0];
  const a = netdev ? os.networkInterfaces()[netdev]?.find((x) => x.family === 'IPv4')?.address : undefined;
  if (!a) throw new Error(`cannot find the IPv4 address of ${dev}; set NPMU_RXE_ADDR`);
  return a;
}

interface Daemon {
  proc: ChildProcess;
  ready: Record<string, unknown>;
  kill(sig?: NodeJS.Signals): Promise<void>;
}

/** Starts a daemon that prints one JSON ready line. */
function daemon(script: string, args: string[]): Promise<Daemon> {
  const proc = spawn(process.execPath, [path.join(dist, script), ...args, '--json', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        resolve({
          proc,
          ready: JSON.parse(out.slice(0, nl)) as Record<string, unknown>,
          kill: async (sig = 'SIGTERM') => {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
            await exited;
          },
        });
      }
    });
    proc.once('exit', (code) => reject(new Error(`${script} exited (${code}) before it was ready:\n${err}`)));
  });
}

async function main(): Promise<void> {
  const dev = process.env.NPMU_RXE_DEV ?? firstActiveDevice();
  if (!dev) throw new Error('no ACTIVE RDMA device (scripts/demo.sh runs this inside the rxe micro-VM)');
  const host = rdmaAddress(dev);
  const dax = (process.env.NPMU_DAX_DEVICES ?? '').split(/\s+/).filter(Boolean);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-demo-'));
  const keyFile = path.join(work, 'key');
  const clientsFile = path.join(work, 'clients');
  const secret = newSecret();
  fs.writeFileSync(clientsFile, `${clientLine('alice', secret, { logN: 10 })}\n${clientLine('bob', secret, { logN: 10 })}\n`, { mode: 0o600 });
  const devices = dax.length >= 2 ? dax.slice(0, 2) : [path.join('/dev/shm', `npmu-demo-${process.pid}-p`), path.join('/dev/shm', `npmu-demo-${process.pid}-m`)];
  const daemons: Daemon[] = [];

  say(`npmu demo on ${dev} at ${host}${process.env.NPMU_IN_VM ? ' (inside the rxe micro-VM)' : ''}`);
  say(`devices: ${devices.join(', ')}${dax.length >= 2 ? ' (emulated NVDIMMs, devdax)' : ' (tmpfs files: volatile, lost at power off)'}`);

  step('start two units (the nPMUs) and a PMM');
  const unitArgs = (d: string, first: boolean, ports?: { rdmaPort: number; controlPort: number }): string[] => [
    ...(ports ? ['--rdma-port', String(ports.rdmaPort), '--control-port', String(ports.controlPort)] : []),
    '--device',
    d,
    '--host',
    host,
    '--rdma-device',
    dev,
    '--key-file',
    keyFile,
    ...(first ? ['--format', '--force', ...(d.startsWith('/dev/shm') ? ['--create-size', '64M'] : [])] : []),
  ];
  // the first start creates the key file; start the second after it
  const primary = await daemon('unit/main.js', unitArgs(devices[0]!, true));
  const mirror = await daemon('unit/main.js', unitArgs(devices[1]!, true));
  daemons.push(primary, mirror);
  const units = [primary, mirror].map((u) => u.ready as { unitId: string; rdmaPort: number; controlPort: number; durability: string; pageSize: number; dataPages: number; pid: number });
  for (const [i, u] of units.entries()) {
    say(
      `  ${i === 0 ? 'primary' : 'mirror '} unit ${u.unitId}  pid ${u.pid}  ${devices[i]}  ${u.durability}, ${u.dataPages} pages of ${u.pageSize >> 10} KiB` +
        `  (control ${host}:${u.controlPort}, rdma ${u.rdmaPort})`,
    );
  }
  const addr = (u: (typeof units)[number]): string => `${host}:${u.controlPort}:${u.rdmaPort}`;
  const startPmm = (): Promise<Daemon> =>
    daemon('pmm/main.js', ['--key-file', keyFile, '--clients-file', clientsFile, '--unit', addr(units[0]!), '--unit', addr(units[1]!), '--host', host, '--port', '0']);
  let pmm = await startPmm();
  daemons.push(pmm);
  say(`  PMM ${pmm.ready.pmmId}  pid ${pmm.proc.pid}  on ${host}:${pmm.ready.port}`);

  step('create_volume "demo": format both units with one volume identity');
  const admin = await ControlConnection.connect({ host, port: pmm.ready.port as number });
  const vol = await admin.request('create-volume', {
    volume: 'demo',
    primary: { host, controlPort: units[0]!.controlPort, rdmaPort: units[0]!.rdmaPort },
    mirror: { host, controlPort: units[1]!.controlPort, rdmaPort: units[1]!.rdmaPort },
    force: true,
  });
  admin.close();
  say(`  volume demo: id ${vol.volumeId}, metadata generation 1 written and persisted on both halves`);

  step('attach: client alice authenticates; the PMM hands out a ticket per unit');
  let alice = await NpmuClient.attach({ pmm: { host, port: pmm.ready.port as number }, client: 'alice', secret, volume: 'demo' });
  say(`  session ${alice.sessionId}; RDMA connections to both units (one protection domain each)`);

  step('create_region + open_region');
  const BASE = 0x7f0000000000n;
  await alice.createRegion('greeting', 4 << 20, BASE);
  await alice.createRegion('scratch', 64 << 10, 0n, { durable: false });
  let h = await alice.openRegion('greeting');
  say(`  region greeting: ${h.size} bytes, base pointer ${hex(h.basePointer)} (new pages zeroed on both halves first)`);
  say(`  handle ${h.handleId}: primary unit ${h.primary.unitId.slice(0, 8)}… base NVA ${hex(h.primary.baseNva)} rkey ${hex(h.primary.rkey)}`);
  say(`              mirror  unit ${h.mirror.unitId.slice(0, 8)}… base NVA ${hex(h.mirror.baseNva)} rkey ${hex(h.mirror.rkey)}`);

  step('write_region (PM_BOTH, durable) and read_region from each half');
  const msg = Buffer.from('hello, persistent world: written by one-sided RDMA');
  const at = BASE + 0x100n;
  let t1 = process.hrtime.bigint();
  const w = await alice.writeRegion(h, msg, msg.length, at);
  const us = Number(process.hrtime.bigint() - t1) / 1000;
  say(`  ${w.bytes} bytes at pointer ${hex(at)} -> ${w.halves.join(' + ')}: durable=${w.durable} (${w.durability}) in ${us.toFixed(0)} us`);
  if (w.durability === 'pmem') say('    (each half: WRITE and a READ of its last bytes posted together; the READ returns once the bytes are in pmem)');
  if (w.durability === 'volatile') say('    (tmpfs units: the data survives a unit crash, not a power cut; npmu does not claim otherwise)');
  const lat: number[] = [];
  for (let i = 0; i < 20; i++) {
    t1 = process.hrtime.bigint();
    await alice.writeRegion(h, msg, msg.length, at);
    lat.push(Number(process.hrtime.bigint() - t1) / 1000);
  }
  lat.sort((x, y) => x - y);
  say(`  20 more such writes: median ${lat[10]!.toFixed(0)} us, best ${lat[0]!.toFixed(0)} us (both halves, durable; times under emulation)`);
  for (const mirror of [ReadFrom.PRIMARY, ReadFrom.MIRROR]) {
    const b = Buffer.alloc(msg.length);
    t1 = process.hrtime.bigint();
    await alice.readRegion(h, b, b.length, at, { mirror });
    say(`  read ${mirror.padEnd(7)} "${b.toString()}" (${(Number(process.hrtime.bigint() - t1) / 1000).toFixed(0)} us)`);
  }
  try {
    await alice.writeRegion(h, msg, msg.length, h.end - 10n);
  } catch (e) {
    say(`  a write past the end: ${(e as { code: string }).code}`);
  }

  step('list_regions and read_attributes');
  const l = await alice.listRegions(1);
  say(`  list_regions(max 1): [${l.names.join(', ')}], region count ${l.count}`);
  const a = await alice.readAttributes('greeting');
  say(
    `  greeting: size ${a.getAttrNumber('size')}, base ${hex(a.getAttrU64('basePointer'))}, owner ${a.getAttrString('owner')}, ` +
      `durability ${a.getAttrString('durability')}, created ${a.getAttrDate('createdAtMs').toISOString()}, last open ${a.getAttrDate('lastOpenAtMs').toISOString()}`,
  );
  try {
    a.getAttrNumber('owner');
  } catch (e) {
    say(`  get_attr with the wrong type: ${(e as { code: string }).code}`);
  }
  alice.freeRegionAttrs(a);

  step('pointer-stable region: a linked list written here, followed by another process');
  await writeList(alice, 'list', ['apple', 'banana', 'cherry', 'damson'], (s) => say(s));
  const reader = spawn(
    process.execPath,
    [path.join(dist, 'examples', 'linked-list.js'), 'read', '--pmm', `${host}:${pmm.ready.port}`, '--client', 'bob', '--secret', secret, '--volume', 'demo', '--region', 'list'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let rout = '';
  reader.stdout.on('data', (d: Buffer) => (rout += d));
  await new Promise((r) => reader.once('exit', r));
  for (const line of rout.trim().split('\n')) say(`  | ${line}`);

  step('lose the primary unit: kill -9 its process while reading with PM_ANY');
  await primary.kill('SIGKILL');
  const b = Buffer.alloc(msg.length);
  const r = await alice.readRegion(h, b, b.length, at);
  say(`  read PM_ANY -> from the ${r.half}${r.failedOver ? ' (failed over transparently)' : ''}: "${b.toString().slice(0, 24)}…"`);
  try {
    await alice.readRegion(h, b, b.length, at, { mirror: ReadFrom.PRIMARY });
  } catch (e) {
    say(`  read PM_PRIMARY -> ${(e as { code: string }).code}`);
  }
  await new Promise((res) => setTimeout(res, 300));
  say(volumeStatusText(await alice.volumeStatus()).replace(/^/gm, '  '));

  step('the primary comes back stale: it missed what the mirror took alone, so nothing reads it until a full-copy resync');
  const primary2 = await daemon('unit/main.js', unitArgs(devices[0]!, false, units[0])); // same ports: the PMM knows this address
  daemons.push(primary2);
  units[0] = primary2.ready as (typeof units)[number];
  for (let i = 0; i < 100 && !(await alice.volumeStatus()).primary.available; i++) await new Promise((res) => setTimeout(res, 200));
  say(volumeStatusText(await alice.volumeStatus()).replace(/^/gm, '  '));
  await alice.closeRegion(h); // a full-copy resync needs every region closed
  say(`  $ npmu volume resync demo --pmm ${host}:${pmm.ready.port}`);
  const resync = spawn(process.execPath, [path.join(dist, 'cli', 'npmu.js'), 'volume', 'resync', 'demo', '--pmm', `${host}:${pmm.ready.port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let rs = '';
  resync.stdout.on('data', (d: Buffer) => (rs += d));
  resync.stderr.on('data', (d: Buffer) => (rs += d));
  await new Promise((r) => resync.once('exit', r));
  for (const line of rs.trim().split(/[\r\n]+/).filter((l) => l.trim() !== '').slice(-3)) say(`  | ${line.trim()}`);
  say(volumeStatusText(await alice.volumeStatus()).replace(/^/gm, '  '));
  await alice.close(); // its RDMA connection to the old primary is gone: attach again
  alice = await NpmuClient.attach({ pmm: { host, port: pmm.ready.port as number }, client: 'alice', secret, volume: 'demo' });
  h = await alice.openRegion('greeting');

  step('lose the PMM: kill -9; the data path does not need it');
  await pmm.kill('SIGKILL');
  const late = Buffer.from('written while no PMM was running');
  const w2 = await alice.writeRegion(h, late, late.length, BASE + 0x1000n);
  say(`  write_region with the PMM dead: ${w2.bytes} bytes to ${w2.halves.join(' + ')}, durable=${w2.durable}`);
  try {
    await alice.listRegions();
  } catch (e) {
    say(`  list_regions with the PMM dead: ${(e as { code: string }).code}`);
  }
  pmm = await startPmm();
  daemons.push(pmm);
  say(`  a new PMM (pid ${pmm.proc.pid}) recovered volume demo from the units' metadata alone`);
  const bob = await NpmuClient.attach({ pmm: { host, port: pmm.ready.port as number }, client: 'bob', secret, volume: 'demo' });
  const l2 = await bob.listRegions();
  say(`  bob attaches to it: regions [${l2.names.join(', ')}]`);
  const hb = await bob.openRegion('greeting');
  const dump = Buffer.alloc(64);
  await bob.readRegion(hb, dump, 64, BASE + 0x1000n - 16n);
  say(hexdump(dump, BASE + 0x1000n - 16n).replace(/^/gm, '  '));

  step('delete_region: only the owner, and not while another client has it open');
  await alice.close(); // attached to the dead PMM: attach again
  alice = await NpmuClient.attach({ pmm: { host, port: pmm.ready.port as number }, client: 'alice', secret, volume: 'demo' });
  for (const [who, c, name] of [['bob', bob, 'scratch'], ['alice', alice, 'greeting']] as const) {
    try {
      await c.deleteRegion(name);
    } catch (e) {
      say(`  ${who} deletes ${name}: ${(e as { code: string }).code}`);
    }
  }
  await bob.closeRegion(hb);
  await alice.deleteRegion('scratch');
  say(`  alice deletes scratch: done; regions now [${(await alice.listRegions()).names.join(', ')}]`);
  await bob.close();
  await alice.close();
  for (const d of daemons.reverse()) await d.kill();
  for (const d of devices) if (d.startsWith('/dev/shm/')) fs.rmSync(d, { force: true });
  fs.rmSync(work, { recursive: true, force: true });
  say(`\ndemo finished in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

main().catch((e: Error & { code?: string }) => {
  console.error(`demo failed: ${e.code ? `${e.code}: ` : ''}${e.stack ?? e.message}`);
  process.exit(1);
});
