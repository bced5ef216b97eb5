/**
 * Inside the VM for powercut/pmm-run.ts. Two units on the emulated NVDIMMs,
 * a PMM and a client, all in this process (the power cut takes them all).
 *
 *   burst SEED [shadow]
 *                 format both units (with shadow: in test-only shadow mode), create volume "pc", then create / write /
 *                 delete regions at random forever (replayable from SEED),
 *                 handing the volume to a new PMM now and then (it fences the
 *                 one before: the cut may land in a takeover), printing what
 *                 was acknowledged: "BEGIN op …" before an operation, "ACK op
 *                 …" once it returned (writes are durable, to both halves).
 *   check LOGFILE boot the same devices without formatting, let a PMM
 *                 recover the volume, and check it against the log: it opens
 *                 cleanly, both halves agree, no page is owned twice or
 *                 leaked, every acknowledged create/delete stands, and every
 *                 acknowledged write is on both halves. Prints CHECKED.
 */
import * as fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { usedExtents } from '../../pmm/metadata';
import { readRoot } from '../../pmm/volume';
import { NpmuClient, ReadFrom } from '../../lib/client';
import type { RegionHandle } from '../../lib/client';
import { rdmaAddress } from '../rdma/fixture';
import { guestSystem } from './guest-system';

const SECRET = 'powercut';
const sys = guestSystem({ keyByte: 7, client: 'pc', secret: SECRET, label: 'powercut' });
const units = sys.units;
const pmmOn = sys.pmmOn;
const SLOT = 64;
/**
 * The burst's first region is written as soon as it exists and never deleted,
 * so every round has acknowledged writes for the check to find (otherwise a
 * seed whose writes all land in regions deleted before the cut checks none).
 */
const KEEP = 'r1';

/** A seeded PRNG (mulberry32): a round is replayable from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function burst(seed: number, shadow: boolean): Promise<void> {
  const random = prng(seed);
  // shadow (on an ADR platform): the units serve RDMA from DRAM and copy to the NVDIMM only what is
  // persisted, so a flush missing anywhere (client writes, the PMM's zeroing) loses data at the cut.
  const u = await units(true, shadow);
  let pmm = await pmmOn(u);
  await sys.createVolume(pmm, u, 'pc');
  let c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pc', secret: SECRET, volume: 'pc' });
  const open = new Map<string, { h: RegionHandle; next: number }>();
  let seq = 0;
  /** A durable write of a fresh token to the region's next slot, to both halves. */
  const write = async (name: string): Promise<void> => {
    const o = open.get(name)!;
    const slot = o.next++;
    if ((slot + 1) * SLOT > o.h.size) return;
    const token = randomBytes(SLOT);
    const w = await c.writeRegion(o.h, token, SLOT, o.h.basePointer + BigInt(slot * SLOT));
    if (!w.durable) throw new Error(`a write was not durable: ${JSON.stringify(w)}`);
    console.log(`ACK write ${name} ${slot} ${token.toString('hex')}`);
  };
  console.log('READY');
  for (;;) {
    const r = random();
    if (r > 0.97) {
      // Fencing under power cuts: a new PMM takes the volume over; the client follows it.
      console.log('BEGIN takeover');
      const next = await pmmOn(u);
      const old = pmm;
      pmm = next;
      await c.close().catch(() => undefined);
      await old.close();
      c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pc', secret: SECRET, volume: 'pc' });
      for (const [name, o] of open) o.h = await c.openRegion(name);
      console.log(`ACK takeover epoch ${pmm.volumes.get('pc')!.epoch}`);
    } else if (open.size < 2 || (r < 0.15 && open.size < 6)) {
      const name = `r${++seq}`;
      const size = (1 + Math.floor(random() * 2)) * (2 << 20) - Math.floor(random() * 1000);
      console.log(`BEGIN create ${name} ${size}`);
      await c.createRegion(name, size, BigInt(seq) << 36n);
      console.log(`ACK create ${name}`);
      open.set(name, { h: await c.openRegion(name), next: 0 });
      if (name === KEEP) await write(name);
    } else if (r < 0.25) {
      // KEEP is never deleted (creates keep two or more regions open, so there is always another to pick).
      const others = [...open.keys()].filter((n) => n !== KEEP);
      const name = others[Math.floor(random() * others.length)]!;
      const o = open.get(name)!;
      open.delete(name);
      await c.closeRegion(o.h);
      console.log(`BEGIN delete ${name}`);
      await c.deleteRegion(name);
      console.log(`ACK delete ${name}`);
    } else {
      await write([...open.keys()][Math.floor(random() * open.size)]!);
    }
  }
}

async function check(logFile: string): Promise<void> {
  const log = fs.readFileSync(logFile, 'utf8').split('\n');
  const began = new Set<string>();
  const created = new Set<string>();
  const deleting = new Set<string>();
  const deleted = new Set<string>();
  const writes: Array<{ name: string; slot: number; token: string }> = [];
  for (const l of log) {
    const f = l.trim().split(' ');
    if (f[0] === 'BEGIN' && f[1] === 'create') began.add(f[2]!);
    if (f[0] === 'ACK' && f[1] === 'create') created.add(f[2]!);
    if (f[0] === 'BEGIN' && f[1] === 'delete') deleting.add(f[2]!);
    if (f[0] === 'ACK' && f[1] === 'delete') deleted.add(f[2]!);
    if (f[0] === 'ACK' && f[1] === 'write') writes.push({ name: f[2]!, slot: Number(f[3]), token: f[4]! });
  }
  console.log(`log: ${began.size} creates begun, ${created.size} acknowledged, ${deleted.size} deletes acknowledged, ${writes.length} writes acknowledged`);
  const u = await units(false);
  const pmm = await pmmOn(u);
  const v = pmm.volumes.get('pc');
  const fail = (m: string): never => {
    throw new Error(`CHECK FAILED: ${m}`);
  };
  if (!v) fail('volume pc was not recovered');
  if (v!.state !== 'ok') fail(`volume state ${v!.state}`);
  const meta = v!.image.toMeta();
  console.log(`recovered volume pc at generation ${v!.generation}: ${meta.regions.map((r) => r.name).join(' ') || '(no regions)'}`);
  // Both halves hold the winning generation, in sync (recovery rolled a lagging one forward).
  for (const h of ['primary', 'mirror'] as const) {
    const mine = await readRoot(v!.halves[h].link!);
    if (mine?.generation !== v!.generation) fail(`the ${h} holds generation ${mine?.generation}, the volume ${v!.generation}`);
    if (mine!.sync.peerStale) fail(`the ${h} records its peer stale`);
  }
  const c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pc', secret: SECRET, volume: 'pc' });
  const names = new Set((await c.listRegions()).names);
  for (const n of names) if (!began.has(n)) fail(`region ${n} was never created`);
  for (const n of created) if (!deleting.has(n) && !names.has(n)) fail(`acknowledged region ${n} is missing`);
  for (const n of deleted) if (names.has(n)) fail(`region ${n} was deleted (acknowledged) but is there`);
  // Allocation = the region table: nothing owned twice (validateMeta on load), nothing leaked.
  for (const h of ['primary', 'mirror'] as const) {
    const pages = usedExtents(meta, h).reduce((a, e) => a + e.pages, 0);
    if (pages !== v!.halves[h].alloc.usedPages) fail(`${h}: ${v!.halves[h].alloc.usedPages} pages in use, the regions own ${pages}`);
  }
  let checked = 0;
  const handles = new Map<string, RegionHandle>();
  for (const w of writes) {
    if (!names.has(w.name)) continue; // deleted later
    let h = handles.get(w.name);
    if (!h) handles.set(w.name, (h = await c.openRegion(w.name)));
    for (const mirror of [ReadFrom.PRIMARY, ReadFrom.MIRROR]) {
      const b = Buffer.alloc(SLOT);
      await c.readRegion(h, b, SLOT, h.basePointer + BigInt(w.slot * SLOT), { mirror });
      if (b.toString('hex') !== w.token) fail(`write ${w.slot} of ${w.name} is not on the ${mirror}`);
    }
    checked++;
  }
  console.log(`${checked} acknowledged writes found on both halves`);
  for (const h of handles.values()) await c.closeRegion(h);
  await c.close();
  await pmm.close();
  for (const x of u) await x.close();
  console.log('CHECKED');
}

if (require.main === module) {
  const [mode, arg] = process.argv.slice(2);
  (mode === 'burst' ? burst(Number(arg ?? 1), process.argv[4] === 'shadow') : mode === 'check' ? check(arg!) : Promise.reject(new Error('usage: pmm-guest.js burst SEED | check LOGFILE'))).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
