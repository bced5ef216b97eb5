/**
 * Where the tail of a durable mirrored write comes from (`npm run bench --
 * --tail`): N durable mirrored writes of 64 B and of 4 KiB through NpmuClient
 * on two devdax units (eADR), in busy-poll and event mode, with the latency
 * ladder p50/p90/p95/p98/p99/p99.9/max (hdr-histogram-js) and V8's garbage
 * collections in the timed stretch (node:perf_hooks 'gc' entries): how many,
 * how long, and how many of the writes above p99 overlapped one. A write
 * slower than p99 that overlapped no collection was held up by something else
 * (the emulator, the host's scheduler, the guest's timer tick).
 *
 * usage: node --expose-gc dist/bench/tail.js [--iters N]   (in the VM: scripts/bench.sh --tail)
 * env: NPMU_DAX_DEVICES (two devdax devices), NPMU_RXE_ADDR, NPMU_BENCH_CPU.
 */
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { newHistogram } from './hist';
import { benchTarget, startSystem } from './system';
import { placeSelf } from './verbs';

const WARMUP = 200;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const iters = argv.includes('--iters') ? Number(argv[argv.indexOf('--iters') + 1]) : 3000;
  if (!Number.isInteger(iters) || iters < 100) throw new RangeError(`bad --iters (an integer >= 100)`);
  const placed = placeSelf();
  const gcs: Array<{ start: number; end: number }> = [];
  const obs = new PerformanceObserver((l) => {
    for (const e of l.getEntries()) gcs.push({ start: e.startTime, end: e.startTime + e.duration });
  });
  obs.observe({ entryTypes: ['gc'] });
  const sys = await startSystem({ ...benchTarget('run it through scripts/bench.sh --tail'), label: 'tail', volume: 't', persistDomain: 'cpu_cache' });
  try {
    const setup = await sys.attach();
    await setup.createRegion('r', 1 << 20, 0n, { durable: true });
    await setup.close();
    for (const mode of ['busy', 'event'] as const) {
      const c = await sys.attach({ busyPoll: mode === 'busy' });
      const h = await c.openRegion('r');
      for (const size of [64, 4096]) {
        const buf = Buffer.alloc(size, 0x5a);
        const start = new Float64Array(iters);
        const lat = new Float64Array(iters);
        for (let i = 0; i < WARMUP; i++) await c.writeRegion(h, buf, size, 0n, { durable: true });
        (globalThis as { gc?: () => void }).gc?.();
        await new Promise((r) => setImmediate(r)); // let the observer take the warm-up's entries
        const from = gcs.length;
        for (let i = 0; i < iters; i++) {
          const t0 = performance.now();
          await c.writeRegion(h, buf, size, 0n, { durable: true });
          const t1 = performance.now();
          start[i] = t0;
          lat[i] = t1 - t0;
        }
        await new Promise((r) => setImmediate(r));
        const during = gcs.slice(from).filter((g) => g.end >= start[0]! && g.start <= start[iters - 1]! + lat[iters - 1]!);
        const hist = newHistogram();
        for (let i = 0; i < iters; i++) hist.recordValue(Math.round(lat[i]! * 1e6)); // ns
        const at = (p: number): number => Math.round(hist.getValueAtPercentile(p) / 100) / 10; // µs, 0.1
        const p99ms = hist.getValueAtPercentile(99) / 1e6;
        let slow = 0;
        let slowGc = 0;
        for (let i = 0; i < iters; i++) {
          if (lat[i]! <= p99ms) continue;
          slow++;
          const a = start[i]!;
          const b = a + lat[i]!;
          if (during.some((g) => g.start < b && g.end > a)) slowGc++;
        }
        const gcMs = during.map((g) => g.end - g.start);
        const r = {
          impl: `npmu-${mode}`,
          op: 'write-mirror-durable-tail',
          size,
          n: iters,
          p50_us: at(50),
          p90_us: at(90),
          p95_us: at(95),
          p98_us: at(98),
          p99_us: at(99),
          p999_us: at(99.9),
          max_us: Math.round(hist.maxValue / 100) / 10,
          gc_count: during.length,
          gc_total_ms: Math.round(gcMs.reduce((x, y) => x + y, 0) * 10) / 10,
          gc_max_ms: Math.round(Math.max(0, ...gcMs) * 10) / 10,
          above_p99: slow,
          above_p99_in_gc: slowGc,
        };
        process.stdout.write(JSON.stringify(r) + '\n');
        process.stderr.write(
          `bench/tail: ${mode} ${size} B: p50 ${r.p50_us} p90 ${r.p90_us} p95 ${r.p95_us} p98 ${r.p98_us} p99 ${r.p99_us} p99.9 ${r.p999_us} max ${r.max_us} us; ` +
            `${r.gc_count} GCs (${r.gc_total_ms} ms, longest ${r.gc_max_ms} ms); ${slowGc} of the ${slow} writes above p99 overlapped a GC\n`,
        );
      }
      await c.closeRegion(h);
      await c.close();
    }
  } finally {
    obs.disconnect();
    await sys.close();
  }
  process.stderr.write(`bench/tail: done${placed}\n`);
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench/tail: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
}
