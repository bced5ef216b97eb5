/**
 * Inside the VM for powercut/disk-run: a unit on a file of an ext4 file system
 * on the VM's virtio disk (msync durability), a test-only PMM and a client,
 * in one process.
 *   write A B C  mkfs.ext4 the disk, mount it, format a unit file on it;
 *                RDMA WRITE A across the seam of a stitched mapping,
 *                persist-range; then `sync`, so writeback has cleaned those
 *                pages; RDMA WRITE B into the same pages (two places, one
 *                persist-range over both) and C (persisted by the PMM's
 *                `persist` of a data page); report and wait for the power cut.
 *   check A B C  mount the disk, open the unit file read-only and find every
 *                persisted byte at its device offset.
 * An RDMA WRITE does not mark a page dirty: a persist that relied on msync
 * would lose B and C here (writeback had cleaned their pages).
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ControlConnection } from '../../lib/protocol';
import { UnitDevice } from '../../unit/device';
import { UnitServer } from '../../unit/server';
import { deviceName, rdmaAddress, regAll } from '../rdma/fixture';
import { client, pmm, ticket } from '../rdma/unit-helpers';

const [mode, a, b, c] = process.argv.slice(2);
const IOVA = 0x7f0000000000n;
const EXTENTS = [
  { page: 3, pages: 1 },
  { page: 1, pages: 1 },
];
const MNT = '/tmp/npmu-disk';
const FILE = `${MNT}/unit.img`;
const key = Buffer.alloc(32, 0x5c);

/** Where each string goes, as an offset into the two-page mapping (page 3, then page 1). */
function places(ps: number): Array<{ name: string; text: string; at: number }> {
  return [
    { name: 'A', text: a!, at: ps - 8 }, // 8 bytes in page 3, the rest in page 1
    { name: 'B1', text: `${b}-1`, at: 64 }, // page 3 again
    { name: 'B2', text: `${b}-2`, at: ps + 512 }, // page 1 again
    { name: 'C', text: c!, at: 2048 }, // page 3, persisted by the PMM's `persist`
  ];
}

async function write(disk: string): Promise<void> {
  execFileSync('mkfs.ext4', ['-q', '-F', disk]);
  execFileSync('mount', ['-t', 'ext4', disk, MNT]);
  const device = UnitDevice.open(FILE, { create: { size: 8 << 20 }, format: { label: 'disk-powercut' } });
  const unit = await UnitServer.start({ device, key, host: rdmaAddress(), rdmaDevice: deviceName() });
  const ps = device.pageSize;
  const ctl = await pmm(key, unit);
  const sessionId = BigInt(`0x${randomBytes(6).toString('hex')}`);
  const ep = await client(key, unit, sessionId);
  const buf = Buffer.alloc(ps);
  const mr = regAll(ep.pd, buf);
  console.log(`durability: ${(await ctl.request('info', {})).durability}`);
  const { rkey } = await ctl.request('map', { sessionId, mapId: '1', extents: EXTENTS, iova: IOVA, access: 'rw' });
  const cc = await ControlConnection.connect({ host: unit.host, port: unit.controlPort });
  await cc.request('hello', { ticket: ticket(key, unit, 'client', sessionId) });
  const rdmaWrite = async (text: string, at: number): Promise<void> => {
    buf.write(text, 'latin1');
    await ep.write(mr, 0, text.length, IOVA + BigInt(at), rkey);
    await ep.read(mr, 0, 8, IOVA + BigInt(at), rkey); // read-after-write: the WRITE has landed
  };
  const [pa, pb1, pb2, pc] = places(ps);

  await rdmaWrite(pa!.text, pa!.at);
  console.log(`persist-range A: ${(await cc.request('persist-range', { sessionId, mapId: '1', offset: pa!.at, length: pa!.text.length })).method}`);
  // Writeback cleans the pages (and the PTEs); the pages stay pinned by the MR.
  execFileSync('sync');
  await rdmaWrite(pb1!.text, pb1!.at);
  await rdmaWrite(pb2!.text, pb2!.at);
  const span = pb2!.at + pb2!.text.length - pb1!.at;
  console.log(`persist-range B: ${(await cc.request('persist-range', { sessionId, mapId: '1', offset: pb1!.at, length: span })).method}`);
  await rdmaWrite(pc!.text, pc!.at);
  console.log(`persist C: ${(await ctl.request('persist', { page: EXTENTS[0]!.page, offset: pc!.at, length: pc!.text.length })).method}`);
  console.log(`PERSISTED ${a} ${b} ${c}`);
  setInterval(() => undefined, 1000); // wait for the power cut
}

function check(disk: string): void {
  execFileSync('mount', ['-t', 'ext4', disk, MNT]);
  const device = UnitDevice.open(FILE, { readOnly: true });
  const ranges = device.extentRanges(EXTENTS);
  const file = fs.readFileSync(FILE);
  const toDevice = (v: number): number => (v < ranges[0]!.length ? ranges[0]!.offset + v : ranges[1]!.offset + v - ranges[0]!.length);
  const lost: string[] = [];
  for (const p of places(device.pageSize)) {
    const got = Buffer.alloc(p.text.length);
    for (let i = 0; i < p.text.length; i++) got[i] = file[toDevice(p.at + i)]!;
    if (got.toString('latin1') !== p.text) lost.push(`${p.name} (found ${JSON.stringify(got.toString('latin1'))})`);
    else console.log(`found ${p.name}`);
  }
  device.close();
  execFileSync('umount', [MNT]);
  if (lost.length) throw new Error(`persisted bytes lost: ${lost.join(', ')}`);
  console.log(`FOUND ${a} ${b} ${c}`);
}

async function main(): Promise<void> {
  const disk = (process.env.NPMU_DISKS ?? '').split(/\s+/).filter(Boolean)[0];
  if (!disk || !a || !b || !c) throw new Error('need NPMU_DISKS and A B C');
  fs.mkdirSync(MNT, { recursive: true });
  execFileSync('modprobe', ['ext4']);
  if (mode === 'write') await write(disk);
  else check(disk);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
