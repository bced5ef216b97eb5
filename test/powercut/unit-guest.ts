/**
 * Inside the VM for powercut/unit-run: a unit on devdax, a test-only PMM and a
 * client, in one process.
 *   write META DATA  format the device, write META into the metadata area and
 *                    DATA by RDMA WRITE across a seam of a stitched mapping,
 *                    make both durable (persist-range: pmem), report, and wait
 *                    for the power cut.
 *   check META DATA UNITID  the unit comes back from the device alone: same
 *                    unit, metadata and data intact, no mapping alive.
 */
import { randomBytes } from 'node:crypto';
import { ControlConnection } from '../../lib/protocol';
import { UnitDevice } from '../../unit/device';
import { UnitServer } from '../../unit/server';
import { daxDevices, deviceName, rdmaAddress, regAll } from '../rdma/fixture';
import { client, pmm, ticket } from '../rdma/unit-helpers';

const [mode, meta, data, unitId] = process.argv.slice(2);
const IOVA = 0x7f0000000000n;
const EXTENTS = [
  { page: 3, pages: 1 },
  { page: 1, pages: 1 },
];
// The shared key would be a 0600 file; one fixed for both boots is enough here.
const key = Buffer.alloc(32, 0x5c);

async function main(): Promise<void> {
  const dax = daxDevices()[0];
  if (!dax || !meta || !data) throw new Error('need NPMU_DAX_DEVICES, META and DATA');
  const device = UnitDevice.open(dax, mode === 'write' ? { format: { label: 'powercut' }, force: true } : {});
  const unit = await UnitServer.start({ device, key, host: rdmaAddress(), rdmaDevice: deviceName() });
  const ps = device.pageSize;
  const ctl = await pmm(key, unit);
  const sessionId = BigInt(`0x${randomBytes(6).toString('hex')}`);
  const ep = await client(key, unit, sessionId);
  const buf = Buffer.alloc(data.length);
  const mr = regAll(ep.pd, buf);
  const at = IOVA + BigInt(ps - 8); // 8 bytes in device page 3, the rest in page 1

  if (mode === 'write') {
    console.log(`durability: ${(await ctl.request('info', {})).durability}`);
    await ctl.request('meta-write', { offset: 0, data: Buffer.from(meta), persist: true });
    const { rkey } = await ctl.request('map', { sessionId, mapId: '1', extents: EXTENTS, iova: IOVA, access: 'rw' });
    buf.write(data);
    await ep.write(mr, 0, buf.length, at, rkey);
    await ep.read(mr, 0, 8, at, rkey); // read-after-write: the WRITE has landed in the device
    const cc = await ControlConnection.connect({ host: unit.host, port: unit.controlPort });
    await cc.request('hello', { ticket: ticket(key, unit, 'client', sessionId) });
    const { method } = await cc.request('persist-range', { sessionId, mapId: '1', offset: ps - 8, length: data.length });
    console.log(`persist-range: ${method}`);
    console.log(`UNIT ${unit.unitId}`);
    console.log(`WRITTEN ${data}`);
    setInterval(() => undefined, 1000); // wait for the power cut
    return;
  }

  if (unit.unitId !== unitId) throw new Error(`a different unit: ${unit.unitId}, expected ${unitId}`);
  const sessions = (await ctl.request('sessions', {})).sessions;
  if (sessions.some((s) => s.mapIds.length > 0)) throw new Error('a mapping survived the power cut');
  const got = Buffer.from((await ctl.request('meta-read', { offset: 0, length: meta.length })).data, 'base64').toString();
  if (got !== meta) throw new Error(`metadata lost: found ${JSON.stringify(got)}`);
  const { rkey } = await ctl.request('map', { sessionId, mapId: '1', extents: EXTENTS, iova: IOVA, access: 'ro' });
  await ep.read(mr, 0, buf.length, at, rkey);
  if (buf.toString() !== data) throw new Error(`data lost: found ${JSON.stringify(buf.toString())}`);
  console.log(`FOUND ${meta} ${data}`);
  mr.close();
  await ep.close();
  ctl.close();
  await unit.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
