/**
 * The metadata benchmark (`npm run bench:meta`): what create, open + close,
 * list and read-attributes cost as a volume grows to 10, 1,000 and 10,000
 * regions, with real units (the VM's emulated NVDIMMs, devdax, 4 KiB pages)
 * and a PMM in this process. Every create zeroes its page by RDMA and writes
 * one table page and one root on each half (metadata format 2); opens write
 * nothing. Run inside the rxe micro-VM by scripts/bench-meta.sh.
 *
 * usage: node dist/bench/meta.js [--quick] [--out FILE]
 *   --quick   checkpoints 10 and 1,000 only
 */
import * as fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { ControlConnection } from '../lib/protocol';
import { NpmuClient } from '../lib/client';
import { ClientRegistry, clientLine, parseClients } from '../pmm/credentials';
import { PmmServer } from '../pmm/server';
import { UnitDevice } from '../unit/device';
import { UnitServer } from '../unit/server';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const out = args.includes('--out') ? args[args.indexOf('--out') + 1]! : null;
const CHECKPOINTS = quick ? [10, 1_000] : [10, 1_000, 10_000];
const SAMPLES = 50;
const KEY = randomBytes(32);
const host = process.env.NPMU_RXE_ADDR ?? '10.77.0.1';

const stats = (xs: number[]): { p50: number; p99: number } => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: s[Math.floor(s.length / 2)]!, p99: s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)]! };
};
const ms = async (fn: () => Promise<unknown>): Promise<number> => {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
};

async function main(): Promise<void> {
  const dax = (process.env.NPMU_DAX_DEVICES ?? '').split(' ').filter(Boolean);
  if (dax.length < 2) throw new Error('needs two devdax devices (NPMU_DAX_DEVICES): run through scripts/bench-meta.sh');
  const units: UnitServer[] = [];
  for (const d of dax.slice(0, 2)) {
    const device = UnitDevice.open(d, { format: { label: 'bench-meta' }, force: true });
    units.push(await UnitServer.start({ device, key: KEY, host }));
  }
  const clients = new ClientRegistry({ entries: parseClients(clientLine('bench', 'bench-secret', { logN: 4 })) });
  const pmm = await PmmServer.start({ key: KEY, clients, host, port: 0, units: units.map((u) => ({ host, controlPort: u.controlPort, rdmaPort: u.rdmaPort })) });
  const ctl = await ControlConnection.connect({ host, port: pmm.port });
  await ctl.request('create-volume', { volume: 'bench', primary: { host, controlPort: units[0]!.controlPort, rdmaPort: units[0]!.rdmaPort }, mirror: { host, controlPort: units[1]!.controlPort, rdmaPort: units[1]!.rdmaPort }, force: true }, { timeoutMs: 120_000 });
  ctl.close();
  const c = await NpmuClient.attach({ pmm: { host, port: pmm.port }, client: 'bench', secret: 'bench-secret', volume: 'bench' });
  const st = await c.volumeStatus();
  process.stderr.write(`bench-meta: units ${st.primary.durability}/${st.mirror.durability}, ${st.totalPages} pages of ${st.pageSize} B, checkpoints ${CHECKPOINTS.join(', ')}\n`);
  const rows: Array<Record<string, unknown>> = [];
  let n = 0;
  const name = (i: number) => `region-${String(i).padStart(5, '0')}`;
  for (const target of CHECKPOINTS) {
    const creates: number[] = [];
    const t0 = Date.now();
    while (n < target) {
      const d = await ms(() => c.createRegion(name(n), 4096, BigInt(n) << 16n));
      if (target - n <= SAMPLES) creates.push(d);
      n++;
      if (n % 500 === 0) process.stderr.write(`bench-meta: ${n} regions (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    }
    const opens: number[] = [];
    const lists: number[] = [];
    const attrs: number[] = [];
    for (let k = 0; k < SAMPLES; k++) {
      const nm = name(Math.floor((k * 7919) % n));
      opens.push(await ms(async () => c.closeRegion(await c.openRegion(nm))));
      lists.push(await ms(() => c.listRegions(4096)));
      attrs.push(await ms(() => c.readAttributes(nm)));
    }
    const deletes: number[] = [];
    for (let k = 0; k < 10; k++) {
      const nm = `extra-${target}-${k}`;
      await c.createRegion(nm, 4096, 0n);
      deletes.push(await ms(() => c.deleteRegion(nm)));
    }
    const row = { regions: n, create: stats(creates), openClose: stats(opens), list4096: stats(lists), attributes: stats(attrs), delete: stats(deletes) };
    rows.push(row);
    process.stderr.write(`bench-meta: at ${n} regions: ${JSON.stringify(row)}\n`);
  }
  await c.close();
  await pmm.close();
  for (const u of units) await u.close();
  const f = (x: { p50: number; p99: number }) => `${x.p50.toFixed(1)} / ${x.p99.toFixed(1)}`;
  const lines = [
    '| regions | create | open + close | list (4096 names) | read-attributes | delete |',
    '| ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.regions} | ${f(r.create as never)} | ${f(r.openClose as never)} | ${f(r.list4096 as never)} | ${f(r.attributes as never)} | ${f(r.delete as never)} |`),
  ];
  process.stdout.write(`metadata cost, ms p50 / p99 (${SAMPLES} samples; create: the last ${SAMPLES} before the count; delete: 10)\n${lines.join('\n')}\n`);
  if (out) fs.writeFileSync(out, rows.map((r) => JSON.stringify({ bench: 'meta', ...r })).join('\n') + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
