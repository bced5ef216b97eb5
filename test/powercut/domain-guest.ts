/**
 * Inside the VM for powercut/domain-run.ts: two devdax units in TEST-ONLY
 * shadow mode (unit/shadow.ts), a PMM and a client, in one process.
 *
 *   write DOMAIN TOKEN  check the platform's persistence domain (sysfs and the
 *                       units' hello) is DOMAIN, format both units, create a
 *                       volume and a region, then write N records: even slots
 *                       durable (each must report the method the domain calls
 *                       for), odd slots not durable; print WRITTEN and wait
 *                       for the power cut.
 *   check TOKEN         boot the same devices, let a PMM recover the volume,
 *                       and report, per half, how many durable and how many
 *                       non-durable records are on the device:
 *                       "HALF <half> durable F/N nondurable F/N".
 */
import * as fs from 'node:fs';
import { UnitServer } from '../../unit/server';
import { NpmuClient, ReadFrom } from '../../lib/client';
import { rdmaAddress } from '../rdma/fixture';
import { guestSystem } from './guest-system';

const SECRET = 'domain';
const sys = guestSystem({ keyByte: 9, client: 'pd', secret: SECRET, label: 'domain' });
const RECORDS = 16; // 8 durable, 8 not
const SLOT = 4096; // records far apart: a flush of one must not carry its neighbour
const LEN = 64;
const TIMED = 100;

function record(token: string, slot: number): Buffer {
  const b = Buffer.alloc(LEN, '.');
  b.write(`${slot % 2 === 0 ? 'D' : 'N'}${slot} ${token}`);
  return b;
}

const units = (format: boolean): Promise<UnitServer[]> => sys.units(format, true);
const pmmOn = sys.pmmOn;

async function write(domain: string, token: string): Promise<void> {
  for (const r of fs.readdirSync('/sys/bus/nd/devices').filter((d) => /^region[0-9]+$/.test(d))) {
    let v = '(absent)';
    try {
      v = fs.readFileSync(`/sys/bus/nd/devices/${r}/persistence_domain`, 'utf8').trim();
    } catch {
      // not listed
    }
    console.log(`SYSFS ${r} persistence_domain ${v}`);
  }
  const u = await units(true);
  for (const x of u) console.log(`UNIT ${x.unitId} persistDomain ${x.info().persistDomain} shadow ${x.info().shadow}`);
  const pmm = await pmmOn(u);
  await sys.createVolume(pmm, u, 'pd');
  const c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pd', secret: SECRET, volume: 'pd' });
  for (const h of ['primary', 'mirror'] as const) {
    if (c.persistDomain(h) !== domain) throw new Error(`the ${h} unit reports ${c.persistDomain(h)}, expected ${domain}`);
  }
  await c.createRegion('r', 2 * RECORDS * SLOT, 0n); // the second half for timing
  const h = await c.openRegion('r');
  const want = domain === 'cpu_cache' ? 'read-after-write' : 'unit-flush';
  for (let slot = 0; slot < RECORDS; slot++) {
    const durable = slot % 2 === 0;
    const w = await c.writeRegion(h, record(token, slot), LEN, BigInt(slot * SLOT), { durable });
    const ok = durable ? w.durable && w.methods.primary === want && w.methods.mirror === want : !w.durable && w.methods.primary === 'none';
    if (!ok) throw new Error(`slot ${slot}: unexpected result ${JSON.stringify(w)}`);
  }
  // On ADR every durable write asked each half's unit to persist over RDMA (lib/persist.ts), not over TCP.
  const served = u.reduce((n, x) => n + x.persistServed, 0);
  const expected = domain === 'cpu_cache' ? 0 : RECORDS; // RECORDS / 2 durable writes, two halves each
  if (served !== expected) throw new Error(`the units answered ${served} persist requests over RDMA, expected ${expected}`);
  console.log(`METHOD ${want} PERSIST_OVER_RDMA ${served}`);
  // A figure, not a check: 64-byte writes to both halves, durable (by the domain's method) and not.
  const p50 = async (durable: boolean): Promise<number> => {
    const us: number[] = [];
    for (let i = 0; i < TIMED; i++) {
      const t0 = process.hrtime.bigint();
      await c.writeRegion(h, Buffer.alloc(LEN, i), LEN, BigInt(RECORDS * SLOT + (i % 64) * LEN), { durable });
      us.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    return us.sort((x, y) => x - y)[us.length >> 1]!;
  };
  const plain = await p50(false);
  const dur = await p50(true);
  console.log(`TIMING 64 B to both halves, p50 of ${TIMED}: not durable ${plain.toFixed(0)} us, durable (${want}) ${dur.toFixed(0)} us`);
  console.log(`WRITTEN ${token}`);
  setInterval(() => undefined, 1000); // wait for the power cut
}

async function check(token: string): Promise<void> {
  const u = await units(false);
  const pmm = await pmmOn(u);
  const c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pd', secret: SECRET, volume: 'pd' });
  const h = await c.openRegion('r');
  for (const mirror of [ReadFrom.PRIMARY, ReadFrom.MIRROR]) {
    const found = { durable: 0, nondurable: 0 };
    for (let slot = 0; slot < RECORDS; slot++) {
      const b = Buffer.alloc(LEN);
      await c.readRegion(h, b, LEN, BigInt(slot * SLOT), { mirror });
      if (b.equals(record(token, slot))) found[slot % 2 === 0 ? 'durable' : 'nondurable']++;
    }
    console.log(`HALF ${mirror} durable ${found.durable}/${RECORDS / 2} nondurable ${found.nondurable}/${RECORDS / 2}`);
  }
  await c.closeRegion(h);
  await c.close();
  await pmm.close();
  for (const x of u) await x.close();
  console.log('CHECKED');
}

const [mode, a, b] = process.argv.slice(2);
(mode === 'write' && a && b ? write(a, b) : mode === 'check' && a ? check(a) : Promise.reject(new Error('usage: domain-guest.js write DOMAIN TOKEN | check TOKEN'))).catch((e) => {
  console.error(e);
  process.exit(1);
});
