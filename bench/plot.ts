/**
 * Plots and a summary of the disk and KV benchmark results (bench/disk.ts,
 * bench/kv.ts), rendered on the host after a run (vega-lite compiled to vega,
 * rendered headless to SVG; no browser, no canvas):
 *   kv-commits.svg       commits/s against committers, one line per WAL
 *   kv-latency-cdf.svg   commit latency CDFs from the HdrHistogram logs, one
 *                        panel per committer count (y in "nines": 90%, 99%, …)
 *   disk-latency-cdf.svg write + fdatasync latency CDFs (append, overwrite;
 *                        64 B, 4 KiB)
 * a text table of the same on stdout, and results-latest.json: every result
 * line of the input as one JSON document ({ meta, results }).
 *
 * usage: node dist/bench/plot.js [RESULTS.json ...] [--out-dir DIR]
 *   default input bench/results/verbs-latest.json; default DIR bench/results
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readHlog } from './hist';

interface Row {
  impl: string;
  op: string;
  size?: number;
  committers?: number;
  commits_per_s?: number;
  p50_us: number;
  p99_us: number;
  p999_us?: number;
  hlog?: string;
  [k: string]: unknown;
}

const log = (s: string): void => void process.stderr.write(`bench/plot: ${s}\n`);

/** Percentile points of a histogram: 0 … 99.99 with more of them in the tail. */
function cdfPoints(file: string): Array<{ us: number; pct: number; nines: number }> {
  const h = readHlog(file);
  if (!h || h.totalCount === 0) return [];
  const pts: Array<{ us: number; pct: number; nines: number }> = [];
  for (let k = 0; k <= 40; k++) {
    const q = 1 - Math.pow(10, -k / 10); // nines from 0 to 4 in tenths
    const pct = Math.min(100, q * 100);
    pts.push({ us: Math.max(0.001, h.getValueAtPercentile(pct) / 1000), pct, nines: k / 10 });
  }
  return pts;
}

const ninesAxis = {
  title: 'percentile',
  values: [0, 1, 2, 3, 4],
  labelExpr: "['0%', '90%', '99%', '99.9%', '99.99%'][datum.value]",
};

async function render(spec: object, file: string): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const vl = require('vega-lite') as { compile: (s: object) => { spec: object } };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const vega = require('vega') as {
    parse: (s: object) => unknown;
    View: new (rt: unknown, o: { renderer: string }) => { toSVG: () => Promise<string>; finalize: () => void };
  };
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  fs.writeFileSync(file, svg);
  log(`wrote ${file}`);
}

function resolveHlog(p: string, inputs: string[]): string | undefined {
  for (const c of [p, path.resolve(p), ...inputs.map((i) => path.join(path.dirname(i), path.basename(path.dirname(p)), path.basename(p)))]) {
    if (fs.existsSync(c)) return c;
  }
  return undefined;
}

const fmt = (x: number | undefined): string => (x === undefined ? '-' : x >= 100 ? String(Math.round(x)) : x.toFixed(1));
const mark = (ok: boolean): string => (ok ? '✓' : '✗');

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let outDir = 'bench/results';
  const inputs: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out-dir') outDir = argv[++i] ?? outDir;
    else inputs.push(argv[i]!);
  }
  if (inputs.length === 0) inputs.push('bench/results/verbs-latest.json');
  const rows: Row[] = [];
  const meta: Array<Record<string, unknown>> = [];
  for (const f of inputs) {
    for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
      if (line.trim() === '') continue;
      try {
        const v = JSON.parse(line) as Row & { meta?: Record<string, unknown> };
        if (v.meta) meta.push(v.meta);
        else rows.push(v);
      } catch {
        /* not a JSON line */
      }
    }
  }
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'results-latest.json'), JSON.stringify({ meta: Object.assign({}, ...meta), results: rows }, null, 1) + '\n');

  const kv = rows.filter((r) => r.op === 'commit' && typeof r.committers === 'number');
  const disk = rows.filter((r) => r.op === 'write-fdatasync');
  const npmuWrite = rows.filter((r) => r.op === 'write-mirror-durable' && r.impl === 'npmu-busy');

  // The text table.
  let out = '';
  if (disk.length) {
    out += '\nwrite + fdatasync from Node on the disk (µs)\n';
    out += 'impl              size   p50      p99      p99.9\n';
    for (const r of disk) out += `${r.impl.padEnd(16)} ${String(r.size).padStart(5)}  ${fmt(r.p50_us).padStart(7)}  ${fmt(r.p99_us).padStart(7)}  ${fmt(r.p999_us).padStart(7)}\n`;
    for (const size of [64, 4096]) {
      const best = disk.filter((r) => r.size === size).sort((a, b) => a.p50_us - b.p50_us)[0];
      const n = npmuWrite.find((r) => r.size === size);
      if (best && n) {
        const p50 = best.p50_us / n.p50_us;
        const p99 = best.p99_us / n.p99_us;
        const want = size === 64 ? ` (targets: p50 ≥ 15x ${mark(p50 >= 15)}, p99 ≥ 20x ${mark(p99 >= 20)})` : ` (target: p50 ≥ 10x ${mark(p50 >= 10)})`;
        out += `  ${size} B: fastest disk mode (${best.impl}) ÷ npmu durable mirrored write: p50 ${p50.toFixed(2)}x, p99 ${p99.toFixed(2)}x${want}\n`;
      }
    }
  }
  if (kv.length) {
    out += '\nKV store commits (single-row updates; latency µs)\n';
    out += 'impl          committers  commits/s   p50      p99      p99.9\n';
    const impls = [...new Set(kv.map((r) => r.impl))];
    for (const impl of impls) {
      for (const r of kv.filter((x) => x.impl === impl).sort((a, b) => a.committers! - b.committers!)) {
        out += `${impl.padEnd(13)} ${String(r.committers).padStart(10)}  ${String(r.commits_per_s).padStart(9)}  ${fmt(r.p50_us).padStart(7)}  ${fmt(r.p99_us).padStart(7)}  ${fmt(r.p999_us).padStart(7)}\n`;
      }
    }
    const at = (impl: string, n: number): Row | undefined => kv.find((r) => r.impl === impl && r.committers === n);
    const np1 = at('kv-npmu', 1);
    const f1 = at('kv-file', 1);
    const np16 = at('kv-npmu', 16);
    const g16 = at('kv-group', 16);
    if (np1 && f1) out += `  commit p50, 1 committer: kv-file ÷ kv-npmu = ${(f1.p50_us / np1.p50_us).toFixed(2)}x (target ≥ 10x ${mark(f1.p50_us / np1.p50_us >= 10)})\n`;
    if (np16 && g16) out += `  commits/s, 16 committers: kv-npmu ÷ kv-group = ${(np16.commits_per_s! / g16.commits_per_s!).toFixed(2)}x (target ≥ 5x ${mark(np16.commits_per_s! / g16.commits_per_s! >= 5)})\n`;
    const b1 = at('kv-npmu-busy', 1);
    const b16 = at('kv-npmu-busy', 16);
    const busy: string[] = [];
    if (b1 && f1) busy.push(`kv-file ÷ kv-npmu-busy = ${(f1.p50_us / b1.p50_us).toFixed(2)}x commit p50 at 1 committer`);
    if (b16 && g16) busy.push(`kv-npmu-busy ÷ kv-group = ${(b16.commits_per_s! / g16.commits_per_s!).toFixed(2)}x commits/s at 16`);
    if (busy.length) out += `  (busy-poll: ${busy.join(', ')})\n`;
    if (!np1) out += '  (no kv-npmu results: the npmu log, lib/log.ts, was not in this build)\n';
  }
  process.stdout.write(out);

  if (kv.length) {
    await render(
      {
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'KV store: commits/s against concurrent committers',
        width: 420,
        height: 280,
        data: { values: kv.map((r) => ({ impl: r.impl, committers: r.committers, commits_per_s: r.commits_per_s })) },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'committers', type: 'quantitative', scale: { type: 'log', base: 2 }, axis: { values: [1, 4, 16] } },
          y: { field: 'commits_per_s', type: 'quantitative', title: 'commits/s', scale: { type: 'log' } },
          color: { field: 'impl', type: 'nominal', title: 'WAL' },
        },
      },
      path.join(outDir, 'kv-commits.svg'),
    );
    const pts = kv.flatMap((r) => {
      const f = r.hlog && resolveHlog(r.hlog, inputs);
      return f ? cdfPoints(f).map((p) => ({ ...p, impl: r.impl, committers: `${r.committers} committer(s)` })) : [];
    });
    if (pts.length) {
      await render(
        {
          $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
          title: 'KV store: commit latency CDF',
          data: { values: pts },
          facet: { column: { field: 'committers', type: 'nominal', title: null, sort: ['1 committer(s)', '4 committer(s)', '16 committer(s)'] } },
          spec: {
            width: 260,
            height: 240,
            mark: { type: 'line', interpolate: 'step-after' },
            encoding: {
              x: { field: 'us', type: 'quantitative', title: 'commit latency (µs)', scale: { type: 'log' } },
              y: { field: 'nines', type: 'quantitative', axis: ninesAxis },
              color: { field: 'impl', type: 'nominal', title: 'WAL' },
            },
          },
        },
        path.join(outDir, 'kv-latency-cdf.svg'),
      );
    } else log('no HdrHistogram logs for the KV results: no latency CDF');
  }
  if (disk.length) {
    const pts = disk.flatMap((r) => {
      const f = r.hlog && resolveHlog(r.hlog, inputs);
      return f ? cdfPoints(f).map((p) => ({ ...p, series: `${r.impl} ${r.size === 4096 ? '4 KiB' : `${r.size} B`}` })) : [];
    });
    if (pts.length) {
      await render(
        {
          $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
          title: 'write + fdatasync from Node: latency CDF',
          width: 480,
          height: 300,
          data: { values: pts },
          mark: { type: 'line', interpolate: 'step-after' },
          encoding: {
            x: { field: 'us', type: 'quantitative', title: 'latency (µs)', scale: { type: 'log' } },
            y: { field: 'nines', type: 'quantitative', axis: ninesAxis },
            color: { field: 'series', type: 'nominal', title: null },
          },
        },
        path.join(outDir, 'disk-latency-cdf.svg'),
      );
    }
  }
}

main().catch((e: unknown) => {
  log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exitCode = 1;
});
