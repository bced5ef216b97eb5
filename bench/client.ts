/**
 * The data-path benchmark through the application API (`NpmuClient`): what a
 * durable mirrored write, a read, a batch and pipelined writes cost from
 * Node, on two real units (the VM's emulated NVDIMMs, devdax) over rxe, with
 * a PMM in this process. The C peer (bench/c/peer.c) posts exactly the same
 * verbs: compare the two in one boot.
 *
 * For each persistence domain asked for (`--domains cpu_cache,memory_controller`;
 * the units report it, overriding sysfs where it differs, so both run in one
 * boot): format both units, create a volume and one region, attach a client
 * (busy-poll and event mode), then time, per iteration, t0 → await → t1 of:
 *   write-mirror-durable   writeRegion(BOTH, durable): WRITE + READ-after-WRITE
 *                          on each half (cpu_cache), or + persist-range on the
 *                          unit (memory_controller)
 *   write-mirror           writeRegion(BOTH, not durable): one WRITE per half
 *   read-region            readRegion(ANY): one READ from the primary
 *   batch16-mirror-durable writeRegionBatch of 16 × SIZE (one post per half)
 *   write-primary-durable  writeRegion(PRIMARY, durable) — last: it has the
 *                          PMM record the mirror stale
 * and pipelined durable mirrored writes (4 KiB and 64 KiB, 1/8/32 in flight):
 * ops/s and MB/s of client data.
 *
 * One JSON line per result on stdout, in bench/verbs.ts's format, with
 * impl "npmu-busy" / "npmu-event" (cpu_cache) or "npmu-busy-adr" /
 * "npmu-event-adr" (memory_controller) and the domain:
 *   {"impl":"npmu-busy","op":"write-mirror-durable","size":64,"domain":"cpu_cache","p50_us":..,...}
 *   {"impl":"npmu-busy","op":"mirror-durable-bw","size":4096,"depth":8,"ops_per_s":..,"MBps":..,...}
 *
 * usage: node dist/bench/client.js [--iters N] [--warmup N] [--modes busy,event]
 *          [--domains cpu_cache,memory_controller] [--no-bw] [--quick]
 * env: NPMU_DAX_DEVICES (two devdax devices), NPMU_RXE_ADDR, NPMU_BENCH_ITERS,
 *      NPMU_BENCH_WARMUP, NPMU_BENCH_CPU / NPMU_BENCH_SCHED (placement, as in
 *      bench/verbs.ts; scripts/bench-verbs.sh pins to CPU 0 by default).
 */
import { Mirror } from '../lib/client';
import type { NpmuClient, RegionHandle } from '../lib/client';
import type { PersistDomain } from '../unit/device';
import { summarize } from './stats';
import { benchTarget, startSystem } from './system';
import { placeSelf } from './verbs';

const log = (s: string): void => void process.stderr.write(`bench/client: ${s}\n`);

interface Options {
  iters: number;
  warmup: number;
  modes: Array<'busy' | 'event'>;
  domains: PersistDomain[];
  bw: boolean;
  host: string;
  dax: string[];
}

function parseArgs(argv: string[]): Options {
  const get = (k: string): string | undefined => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
  const quick = argv.includes('--quick');
  const int = (v: string | undefined, d: number): number => {
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`bad count '${v}'`);
    return n;
  };
  const iters = int(get('--iters') ?? process.env.NPMU_BENCH_ITERS, quick ? 100 : 1000);
  const warmup = int(get('--warmup') ?? process.env.NPMU_BENCH_WARMUP, quick ? 10 : 100);
  const modes = (get('--modes') ?? 'busy,event').split(',') as Options['modes'];
  for (const m of modes) if (m !== 'busy' && m !== 'event') throw new RangeError(`bad mode '${m}'`);
  const domains = (get('--domains') ?? 'cpu_cache,memory_controller').split(',') as PersistDomain[];
  for (const d of domains) if (d !== 'cpu_cache' && d !== 'memory_controller') throw new RangeError(`bad domain '${d}'`);
  const { host, dax } = benchTarget('run it through scripts/bench.sh');
  return { iters, warmup, modes, domains, bw: !argv.includes('--no-bw'), host, dax };
}

async function time(n: number, warmup: number, fn: () => Promise<unknown>): Promise<Float64Array> {
  const s = new Float64Array(n);
  for (let i = 0; i < warmup + n; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    const t1 = process.hrtime.bigint();
    if (i >= warmup) s[i - warmup] = Number(t1 - t0) / 1000;
  }
  return s;
}

const REGION = 8 << 20;

async function measureDomain(o: Options, domain: PersistDomain, emit: (r: object) => void): Promise<void> {
  const sys = await startSystem({ host: o.host, dax: o.dax, label: 'bench', persistDomain: domain });
  try {
    const setup = await sys.attach();
    await setup.createRegion('r', REGION, 0n, { durable: true });
    await setup.close();
    for (const mode of o.modes) {
      const c = await sys.attach({ busyPoll: mode === 'busy' });
      const h = await c.openRegion('r');
      const impl = `npmu-${mode}${domain === 'memory_controller' ? '-adr' : ''}`;
      const out = (op: string, size: number, s: Float64Array, extra: object = {}): void =>
        emit({ impl, op, size, domain, mode, warmup: o.warmup, ...summarize(s), ...extra });
      const wr = (await c.writeRegion(h, Buffer.alloc(64), 64, 0n)).methods;
      log(`${domain}, ${mode}: durable write methods ${JSON.stringify(wr)}`);
      for (const size of [64, 4096]) {
        const buf = Buffer.alloc(size, 0x42);
        out('write-mirror-durable', size, await time(o.iters, o.warmup, () => c.writeRegion(h, buf, size, 0n, { durable: true })));
        out('write-mirror', size, await time(o.iters, o.warmup, () => c.writeRegion(h, buf, size, 0n, { durable: false })));
        out('read-region', size, await time(o.iters, o.warmup, () => c.readRegion(h, buf, size, 0n)));
        const items = Array.from({ length: 16 }, (_, i) => ({ buf, pointer: BigInt(i * size) }));
        out('batch16-mirror-durable', size, await time(Math.max(10, o.iters >> 2), o.warmup >> 2, () => c.writeRegionBatch(h, items, { durable: true })), { items: 16 });
      }
      if (o.bw && domain === o.domains[0]) await pipelined(c, h, o, impl, domain, emit);
      await c.closeRegion(h);
      await c.close();
    }
    // Last: a single-half write has the PMM record the other half stale.
    const c = await sys.attach({ busyPoll: true });
    const h = await c.openRegion('r');
    const buf = Buffer.alloc(64, 0x17);
    const s = await time(o.iters, o.warmup, () => c.writeRegion(h, buf, 64, 0n, { durable: true, mirror: Mirror.PRIMARY }));
    emit({ impl: domain === 'memory_controller' ? 'npmu-busy-adr' : 'npmu-busy', op: 'write-primary-durable', size: 64, domain, mode: 'busy', warmup: o.warmup, ...summarize(s) });
    await c.close();
  } finally {
    await sys.close();
  }
}

/** DEPTH durable mirrored writes in flight, for a fixed number of operations. */
async function pipelined(c: NpmuClient, h: RegionHandle, o: Options, impl: string, domain: PersistDomain, emit: (r: object) => void): Promise<void> {
  for (const size of [4096, 65536]) {
    const big = Buffer.alloc(64 * size, 0x33); // 64 distinct sources (one registration)
    for (const depth of [1, 8, 32]) {
      const total = Math.max(depth * 4, Math.min(o.iters, Math.floor((o.iters * 4096) / size) * 4));
      const lat = new Float64Array(total);
      let next = 0;
      const t0 = process.hrtime.bigint();
      const worker = async (): Promise<void> => {
        while (next < total) {
          const i = next++;
          const src = big.subarray((i % 64) * size, (i % 64) * size + size);
          const a = process.hrtime.bigint();
          await c.writeRegion(h, src, size, BigInt((i % (REGION / size)) * size), { durable: true });
          lat[i] = Number(process.hrtime.bigint() - a) / 1000;
        }
      };
      await Promise.all(Array.from({ length: depth }, worker));
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      emit({
        impl,
        op: 'mirror-durable-bw',
        size,
        depth,
        domain,
        ...summarize(lat),
        ops_per_s: Math.round(total / secs),
        MBps: Math.round(((total * size) / secs / 1e6) * 100) / 100,
      });
    }
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const placed = placeSelf(); // as the Node verbs benchmark: NPMU_BENCH_CPU, NPMU_BENCH_SCHED
  const t0 = Date.now();
  log(`${o.dax.join(', ')} at ${o.host}${placed}; domains ${o.domains.join(', ')}; modes ${o.modes.join(', ')}; ${o.warmup} warm-up + ${o.iters} iterations`);
  for (const d of o.domains) await measureDomain(o, d, (r) => process.stdout.write(JSON.stringify(r) + '\n'));
  log(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

main().catch((e: unknown) => {
  log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exitCode = 1;
});
