/**
 * The metadata benchmark (`npm run bench:meta`): what create, open + close,
 * list, read-attributes and delete cost in a volume of 10, 1,000 and 10,000
 * regions, with real units (the VM's emulated NVDIMMs, devdax, 4 KiB pages)
 * and a PMM in this process. Every measured create zeroes its page by RDMA
 * and writes one table page and one root on each half (metadata format 2);
 * opens write nothing.
 *
 * Filling a volume with 10,000 regions through the PMM would take hours under
 * TCG, and how a volume got its regions does not change what the next
 * operation costs: so for each size the benchmark builds the metadata image
 * of that many regions (pmm/metadata.ts, the same code a PMM runs), writes it
 * to both units' metadata areas, and starts a PMM that recovers the volume
 * from the units — then measures real operations through it.
 *
 * usage: node dist/bench/meta.js [--quick] [--out FILE]
 *   --quick   sizes 10 and 1,000 only, fewer samples
 */
import * as fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { NpmuClient } from '../lib/client';
import { MetaImage } from '../pmm/metadata';
import type { RegionMeta } from '../pmm/metadata';
import { PmmServer } from '../pmm/server';
import type { UnitServer } from '../unit/server';
import { benchClients, createVolume, startUnits, unitAddr } from './system';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const out = args.includes('--out') ? args[args.indexOf('--out') + 1]! : null;
const SIZES = quick ? [10, 1_000] : [10, 1_000, 10_000];
const SAMPLES = quick ? 10 : 30;
const KEY = randomBytes(32);
const host = process.env.NPMU_RXE_ADDR ?? '10.77.0.1';
const clients = benchClients();

type Stats = { p50: number; p99: number };
const stats = (xs: number[]): Stats => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: s[Math.floor(s.length / 2)]!, p99: s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)]! };
};
const ms = async (fn: () => Promise<unknown>): Promise<number> => {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
};
const name = (i: number) => `region-${String(i).padStart(5, '0')}`;
const log = (s: string) => process.stderr.write(`bench-meta: ${s}\n`);

async function measureAt(n: number, dax: string[]): Promise<Record<string, unknown>> {
  // Fresh units and a volume on them.
  const units = await startUnits(dax, host, KEY, 'bench-meta');
  const addr = (u: UnitServer) => unitAddr(host, u);
  let pmm = await PmmServer.start({ key: KEY, clients, host, port: 0, units: units.map(addr) });
  await createVolume(host, pmm.port, 'bench', units);
  const v0 = pmm.volumes.get('bench')!;
  const volume = v0.image.volume;
  const epoch = v0.epoch;
  await pmm.close();
  // The metadata image of n regions of one page each, written to both halves.
  const t0 = Date.now();
  const image = MetaImage.create(volume, Math.min(...units.map((u) => u.device.metaLength)));
  for (let i = 0; i < n; i++) {
    const r: RegionMeta = {
      id: image.volume.nextRegionId,
      name: name(i),
      size: 4096,
      basePointer: BigInt(i) << 16n,
      owner: 'bench',
      createdAtMs: Date.now(),
      lastOpenAtMs: 0,
      durable: true,
      primaryExtents: [{ page: i, pages: 1 }],
      mirrorExtents: [{ page: i, pages: 1 }],
    };
    image.apply(image.plan({ add: r }, { epoch, writer: '0'.repeat(31) + '1' }));
  }
  const img = image.fullImage({ epoch, writer: '0'.repeat(31) + '1' }, { peerStale: false, staleSince: 0 });
  for (const u of units) {
    for (const w of [...img.pageWrites, { offset: img.rootOffset, bytes: img.rootBytes }]) u.device.writeMeta(w.offset, w.bytes, true);
  }
  log(`${n} regions written in ${((Date.now() - t0) / 1000).toFixed(1)} s (${image.pagesInUse} table pages in use)`);
  // A PMM recovers the volume from the units; measure real operations through it.
  const t1 = Date.now();
  pmm = await PmmServer.start({ key: KEY, clients, host, port: 0, units: units.map(addr) });
  const recoverMs = Date.now() - t1;
  const c = await NpmuClient.attach({ pmm: { host, port: pmm.port }, client: 'bench', secret: 'bench-secret', volume: 'bench' });
  const count = (await c.listRegions(0)).count;
  if (count !== n) throw new Error(`recovered ${count} regions, expected ${n}`);
  const creates: number[] = [];
  const deletes: number[] = [];
  const opens: number[] = [];
  const lists: number[] = [];
  const attrs: number[] = [];
  for (let k = 0; k < SAMPLES; k++) {
    creates.push(await ms(() => c.createRegion(`new-${k}`, 4096, 0n)));
    const nm = name(Math.floor((k * 7919) % n));
    opens.push(await ms(async () => c.closeRegion(await c.openRegion(nm))));
    lists.push(await ms(() => c.listRegions(4096)));
    attrs.push(await ms(() => c.readAttributes(nm)));
  }
  for (let k = 0; k < SAMPLES; k++) deletes.push(await ms(() => c.deleteRegion(`new-${k}`)));
  await c.close();
  await pmm.close();
  for (const u of units) await u.close();
  const row = { regions: n, recoverMs, create: stats(creates), openClose: stats(opens), list4096: stats(lists), attributes: stats(attrs), delete: stats(deletes) };
  log(`at ${n} regions: ${JSON.stringify(row)}`);
  return row;
}

async function main(): Promise<void> {
  const dax = (process.env.NPMU_DAX_DEVICES ?? '').split(' ').filter(Boolean).slice(0, 2);
  if (dax.length < 2) throw new Error('needs two devdax devices (NPMU_DAX_DEVICES): run through scripts/bench-meta.sh');
  log(`sizes ${SIZES.join(', ')}; ${SAMPLES} samples of each operation`);
  const rows: Array<Record<string, unknown>> = [];
  for (const n of SIZES) rows.push(await measureAt(n, dax));
  const f = (x: Stats) => `${x.p50.toFixed(1)} / ${x.p99.toFixed(1)}`;
  const lines = [
    '| regions | create | delete | open + close | list (4096 names) | read-attributes | PMM recovery |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.regions} | ${f(r.create as Stats)} | ${f(r.delete as Stats)} | ${f(r.openClose as Stats)} | ${f(r.list4096 as Stats)} | ${f(r.attributes as Stats)} | ${r.recoverMs} |`,
    ),
  ];
  process.stdout.write(`metadata cost in ms, p50 / p99 of ${SAMPLES} (PMM recovery: one run), two devdax units, rxe, TCG\n${lines.join('\n')}\n`);
  if (out) fs.writeFileSync(out, rows.map((r) => JSON.stringify({ bench: 'meta', ...r })).join('\n') + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
