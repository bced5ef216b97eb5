/**
 * Renders the verbs benchmark's results (JSON lines, one per impl/op/size) as
 * text tables: single WRITE/READ latency with the two target ratios; durable
 * and mirrored writes (c-peer, librpma: one row per impl and op); pipelined
 * bandwidth (c-peer's mirror-durable-bw, perftest's ib_write_bw: one row per
 * impl, op and depth). Pure: strings in, strings out; no I/O.
 *
 *   const { results, bandwidth, meta } = parseResultLines(fs.readFileSync(file, 'utf8'));
 *   process.stdout.write(renderTable(results, { meta: meta[0], bandwidth }));
 */

/** One measured (impl, op, size). Extra fields are kept and ignored. */
export interface LatencyRecord {
  impl: string;
  op: string;
  size: number;
  n?: number;
  p50_us: number;
  p99_us: number;
  avg_us?: number;
  [key: string]: unknown;
}

/**
 * One pipelined bandwidth measurement (impl, op, size, depth). MBps is 10^6
 * bytes per second of one stream's payload.
 */
export interface BandwidthRecord {
  impl: string;
  op: string;
  size: number;
  /** operations in flight (c-peer) */
  depth?: number;
  /** send-queue depth (perftest -t) */
  tx_depth?: number;
  MBps: number;
  ops_per_s?: number;
  p50_us?: number;
  p99_us?: number;
  [key: string]: unknown;
}

/** A line `{"meta": {...}}` describing the run (where, when, counts). */
export type RunMeta = Record<string, unknown>;

export interface ParsedResults {
  results: LatencyRecord[];
  /** lines with a bandwidth figure (MBps); not in `results` */
  bandwidth: BandwidthRecord[];
  meta: RunMeta[];
  /** lines that were neither: "line N: why" */
  errors: string[];
}

function isRecord(v: unknown): v is LatencyRecord {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o.impl === 'string' &&
    typeof o.op === 'string' &&
    typeof o.size === 'number' &&
    typeof o.p50_us === 'number' &&
    typeof o.p99_us === 'number'
  );
}

function isBandwidth(v: unknown): v is BandwidthRecord {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o.impl === 'string' && typeof o.op === 'string' && typeof o.size === 'number' && typeof o.MBps === 'number';
}

/** Parse a results file: JSON lines; blank lines are skipped, others reported in `errors`. */
export function parseResultLines(text: string): ParsedResults {
  const out: ParsedResults = { results: [], bandwidth: [], meta: [], errors: [] };
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      out.errors.push(`line ${i + 1}: not JSON`);
      return;
    }
    if (isBandwidth(v)) out.bandwidth.push(v);
    else if (isRecord(v)) out.results.push(v);
    else if (typeof v === 'object' && v !== null && typeof (v as { meta?: unknown }).meta === 'object') {
      out.meta.push((v as { meta: RunMeta }).meta);
    } else out.errors.push(`line ${i + 1}: not a result`);
  });
  return out;
}

/** Row order of the table; impls not listed come after, alphabetically. */
export const IMPL_ORDER = ['perftest', 'c-loop', 'node-busy', 'node-event', 'c-peer', 'librpma', 'npmu-busy', 'npmu-event', 'npmu-busy-adr', 'npmu-event-adr'] as const;

/** Ops of the first (single work request) table; all others go to the durable-write table. */
export const SINGLE_OPS = ['write', 'read'] as const;

/** Row order of the durable-write table; ops not listed come after, alphabetically. */
export const DURABLE_OP_ORDER = [
  'mirror-durable',
  'write-mirror-durable',
  'mirror',
  'write-mirror',
  'single-durable',
  'write-primary-durable',
  'write-flush',
  'batch16-mirror-durable',
  'read',
  'read-region',
] as const;

export interface Target {
  impl: string;
  /** ratio impl p50 / c-loop p50 at 64 B WRITE must be at most this */
  max: number;
}

export const TARGETS: readonly Target[] = [
  { impl: 'node-busy', max: 1.5 },
  { impl: 'node-event', max: 2.5 },
];

export interface Ratio {
  impl: string;
  baseline: 'c-loop';
  op: 'write';
  size: 64;
  /** impl's p50 / c-loop's p50, both 64 B WRITE; undefined if either is missing */
  value: number | undefined;
  max: number;
  met: boolean | undefined;
  p50_us: number | undefined;
  baseline_p50_us: number | undefined;
}

/** The last record for (impl, op, size), as a later run of the same cell wins. */
export function find(results: readonly LatencyRecord[], impl: string, op: string, size: number): LatencyRecord | undefined {
  for (let i = results.length - 1; i >= 0; i--) {
    const r = results[i] as LatencyRecord;
    if (r.impl === impl && r.op === op && r.size === size) return r;
  }
  return undefined;
}

export function targetRatios(results: readonly LatencyRecord[], targets: readonly Target[] = TARGETS): Ratio[] {
  const base = find(results, 'c-loop', 'write', 64)?.p50_us;
  return targets.map((t) => {
    const p50 = find(results, t.impl, 'write', 64)?.p50_us;
    const value = p50 !== undefined && base !== undefined && base > 0 ? p50 / base : undefined;
    return {
      impl: t.impl,
      baseline: 'c-loop',
      op: 'write',
      size: 64,
      value,
      max: t.max,
      met: value === undefined ? undefined : value <= t.max,
      p50_us: p50,
      baseline_p50_us: base,
    };
  });
}

export function sizeLabel(size: number): string {
  if (size >= 1024 && size % 1024 === 0) return `${size / 1024} KiB`;
  return `${size} B`;
}

function fmt(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  return x >= 1000 ? x.toFixed(0) : x.toFixed(1);
}

const OP_ORDER = ['write', 'read'];

function columns(results: readonly LatencyRecord[]): Array<{ op: string; size: number }> {
  const seen = new Map<string, { op: string; size: number }>();
  for (const r of results) seen.set(`${r.op}/${r.size}`, { op: r.op, size: r.size });
  const rank = (op: string): number => (OP_ORDER.includes(op) ? OP_ORDER.indexOf(op) : OP_ORDER.length);
  return [...seen.values()].sort((a, b) => rank(a.op) - rank(b.op) || a.op.localeCompare(b.op) || a.size - b.size);
}

function rows(results: readonly LatencyRecord[]): string[] {
  const impls = new Set(results.map((r) => r.impl));
  const known = IMPL_ORDER.filter((i) => impls.has(i));
  const others = [...impls].filter((i) => !(IMPL_ORDER as readonly string[]).includes(i)).sort();
  return [...known, ...others];
}

function describeMeta(meta: RunMeta | undefined): string[] {
  if (!meta) return [];
  const parts: string[] = [];
  const s = (k: string): string | undefined => (meta[k] === undefined || meta[k] === null ? undefined : String(meta[k]));
  if (s('device')) parts.push(`${s('device')}${s('addr') ? ` at ${s('addr')}` : ''}`);
  if (s('where')) parts.push(s('where') as string);
  if (s('kernel')) parts.push(`kernel ${s('kernel')}`);
  if (s('node')) parts.push(`node ${s('node')}`);
  if (s('iters')) parts.push(`${s('iters')} timed iterations after ${s('warmup') ?? '?'} warm-up`);
  if (s('date')) parts.push(s('date') as string);
  const lines = parts.length ? [parts.join(', ')] : [];
  const sec = meta.seconds;
  if (typeof sec === 'object' && sec !== null) {
    const t = Object.entries(sec as Record<string, unknown>)
      .filter(([, v]) => typeof v === 'number')
      .map(([k, v]) => `${k} ${(v as number).toFixed(1)} s`);
    if (t.length) lines.push(`wall time: ${t.join(', ')}`);
  }
  return lines;
}

export interface RenderOptions {
  /** the run's meta line, printed under the title */
  meta?: RunMeta;
  targets?: readonly Target[];
  /** pipelined bandwidth rows (ParsedResults.bandwidth) */
  bandwidth?: readonly BandwidthRecord[];
}

/** Left column cells, then groups of right-aligned cells under spanning headers. */
function grid(left: string[][], leftHead: string[], groups: string[], sub: string[], cells: string[][][]): string[] {
  // cells[row][group][k]
  const nl = leftHead.length;
  const lw = leftHead.map((h, j) => Math.max(h.length, ...left.map((r) => (r[j] as string).length)));
  const cw = sub.map((h, k) => Math.max(h.length, ...cells.flatMap((r) => r.map((g) => (g[k] as string).length))));
  const gw = groups.map((g) => Math.max(g.length, cw.reduce((a, b) => a + b, 0) + 2 * (sub.length - 1)));
  // widen the last sub-column when a group title is wider than its columns
  const extra = gw.map((w) => w - (cw.reduce((a, b) => a + b, 0) + 2 * (sub.length - 1)));
  const leftPart = (r: string[]): string => r.map((c, j) => c.padEnd(lw[j] as number)).join('  ');
  const out: string[] = [];
  out.push((leftPart(new Array<string>(nl).fill('')) + groups.map((g, i) => '   ' + g.padEnd(gw[i] as number)).join('')).trimEnd());
  const row = (l: string[], gs: string[][]): string =>
    (
      leftPart(l) +
      gs
        .map((g, i) => '   ' + g.map((c, k) => c.padStart((cw[k] as number) + (k === g.length - 1 ? (extra[i] as number) : 0))).join('  '))
        .join('')
    ).trimEnd();
  const head = row(leftHead, groups.map(() => sub));
  out.push(head, '-'.repeat(head.length));
  left.forEach((l, i) => out.push(row(l, cells[i] as string[][])));
  return out;
}

function durableTable(results: readonly LatencyRecord[]): string[] {
  const recs = results.filter((r) => !(SINGLE_OPS as readonly string[]).includes(r.op));
  if (!recs.length) return [];
  const sizes = [...new Set(recs.map((r) => r.size))].sort((a, b) => a - b);
  const opRank = (op: string): number =>
    (DURABLE_OP_ORDER as readonly string[]).includes(op) ? (DURABLE_OP_ORDER as readonly string[]).indexOf(op) : DURABLE_OP_ORDER.length;
  const pairs = new Map<string, { impl: string; op: string }>();
  for (const r of recs) pairs.set(`${r.impl}\0${r.op}`, { impl: r.impl, op: r.op });
  const implRank = rows(recs);
  const ordered = [...pairs.values()].sort(
    (a, b) => implRank.indexOf(a.impl) - implRank.indexOf(b.impl) || opRank(a.op) - opRank(b.op) || a.op.localeCompare(b.op),
  );
  const left = ordered.map((p) => {
    const any = recs.find((r) => r.impl === p.impl && r.op === p.op);
    const flush = typeof any?.flush === 'string' ? ` (${any.flush})` : '';
    return [p.impl, p.op + flush];
  });
  const cells = ordered.map((p) =>
    sizes.map((s) => {
      const r = find(results, p.impl, p.op, s);
      return [fmt(r?.p50_us), fmt(r?.p99_us)];
    }),
  );
  const target = recs.find((r) => typeof r.target === 'string')?.target;
  return [
    '',
    'Durable and mirrored writes, post of the first work request to the last completion (us)',
    ...grid(left, ['impl', 'op'], sizes.map(sizeLabel), ['p50', 'p99'], cells),
    '',
    '  c-peer: two RC connections (halves A, B) to two targets' + (typeof target === 'string' ? ` (${target})` : '') + '.',
    '    mirror-durable = on A and on B a WRITE (inline if <= 64 B) + an 8-byte READ of its last 8 bytes, all posted',
    '    before polling, 4 completions (npmu\'s durable write on eADR); mirror = a WRITE on each; single-durable =',
    '    WRITE + READ on A; read (first table) = one READ on A.',
    '  librpma: write-flush = rpma_write (unsignaled) + rpma_flush, waiting for the flush\'s completion; on Linux',
    '    6.1 rxe its flush is an 8-byte RDMA READ (no native FLUSH): about single-durable, through the library.',
  ];
}

function bandwidthTable(bw: readonly BandwidthRecord[]): string[] {
  if (!bw.length) return [];
  const last = new Map<string, BandwidthRecord>();
  const key = (r: BandwidthRecord): string => `${r.impl}\0${r.op}\0${r.depth ?? ''}\0${r.tx_depth ?? ''}`;
  for (const r of bw) last.set(`${key(r)}\0${r.size}`, r);
  const sizes = [...new Set(bw.map((r) => r.size))].sort((a, b) => a - b);
  const rowKeys = new Map<string, BandwidthRecord>();
  for (const r of bw) if (!rowKeys.has(key(r))) rowKeys.set(key(r), r);
  const implRank = [...new Set(bw.map((r) => r.impl))].sort((a, b) => {
    const ra = a === 'c-peer' ? 0 : a === 'perftest' ? 2 : 1;
    const rb = b === 'c-peer' ? 0 : b === 'perftest' ? 2 : 1;
    return ra - rb || a.localeCompare(b);
  });
  const ordered = [...rowKeys.entries()].sort(
    ([, a], [, b]) =>
      implRank.indexOf(a.impl) - implRank.indexOf(b.impl) || a.op.localeCompare(b.op) || (a.depth ?? 0) - (b.depth ?? 0),
  );
  const left = ordered.map(([, r]) => [
    r.impl,
    r.op,
    r.depth !== undefined ? String(r.depth) : r.tx_depth !== undefined ? `tx ${r.tx_depth}` : '-',
  ]);
  const cells = ordered.map(([k]) =>
    sizes.map((s) => {
      const r = last.get(`${k}\0${s}`);
      const ops = r?.ops_per_s;
      return [fmt(r?.MBps), ops === undefined ? '-' : ops.toFixed(0), fmt(r?.p50_us), fmt(r?.p99_us)];
    }),
  );
  return [
    '',
    'Pipelined bandwidth: MB/s (10^6 bytes/s of one stream\'s payload), operations/s, op latency p50/p99 (us)',
    ...grid(left, ['impl', 'op', 'depth'], sizes.map(sizeLabel), ['MB/s', 'ops/s', 'p50', 'p99'], cells),
    '',
    '  c-peer mirror-durable-bw: DEPTH mirror-durable operations in flight (each: WRITE + 8-byte READ on both',
    '    connections); MB/s counts one half\'s data, the wire carries twice that. perftest ib_write_bw: one QP,',
    '    plain WRITEs, its default tx depth; its "MB/sec" (2^20 bytes) converted to 10^6 bytes.',
  ];
}

export interface DataPathTarget {
  what: string;
  /** the measured ratio, undefined if a figure is missing */
  value: number | undefined;
  /** 'max': value <= bound; 'min': value >= bound */
  kind: 'max' | 'min';
  bound: number;
  detail: string;
}

/**
 * The data-path targets (issue 8), as ratios in one boot: npmu's durable
 * mirrored 64 B write against the C peer doing the same verbs and against
 * librpma's single-target write + flush; readRegion against a C READ; 4 KiB
 * durable mirrored writes at depth 32 against ib_write_bw.
 */
export function dataPathTargets(results: readonly LatencyRecord[], bandwidth: readonly BandwidthRecord[], impl = 'npmu-busy'): DataPathTarget[] {
  const out: DataPathTarget[] = [];
  const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined && b > 0 ? a / b : undefined);
  const w = find(results, impl, 'write-mirror-durable', 64);
  // The C peer posting the same verbs: with the atomic fence when npmu's units offer a fence word (they do).
  const peerOp = find(results, 'c-peer', 'mirror-durable-faa', 64) ? 'mirror-durable-faa' : 'mirror-durable';
  const peer = find(results, 'c-peer', peerOp, 64);
  const rpma = find(results, 'librpma', 'write-flush', 64);
  const rd = find(results, impl, 'read-region', 64);
  const cRead = find(results, 'c-loop', 'read', 64) ?? find(results, 'c-peer', 'read', 64);
  out.push({ what: `${impl} durable mirrored 64 B write p50 / c-peer ${peerOp} p50`, value: ratio(w?.p50_us, peer?.p50_us), kind: 'max', bound: 1.5, detail: `${fmt(w?.p50_us)} / ${fmt(peer?.p50_us)} us` });
  out.push({ what: `${impl} durable mirrored 64 B write p50 / librpma write-flush p50 (one target)`, value: ratio(w?.p50_us, rpma?.p50_us), kind: 'max', bound: 1, detail: `${fmt(w?.p50_us)} / ${fmt(rpma?.p50_us)} us` });
  out.push({ what: `${impl} durable mirrored 64 B write p99 / c-peer ${peerOp} p99`, value: ratio(w?.p99_us, peer?.p99_us), kind: 'max', bound: 3, detail: `${fmt(w?.p99_us)} / ${fmt(peer?.p99_us)} us` });
  out.push({ what: `${impl} readRegion 64 B p50 / C READ p50`, value: ratio(rd?.p50_us, cRead?.p50_us), kind: 'max', bound: 2, detail: `${fmt(rd?.p50_us)} / ${fmt(cRead?.p50_us)} us` });
  const bw = bandwidth.filter((r) => r.impl === impl && r.op === 'mirror-durable-bw' && r.size === 4096 && r.depth === 32).at(-1);
  const ib = bandwidth.filter((r) => r.impl === 'perftest' && r.size === 4096).at(-1);
  out.push({ what: `${impl} 4 KiB durable mirrored writes at depth 32 / ib_write_bw 4 KiB`, value: ratio(bw?.MBps, ib?.MBps), kind: 'min', bound: 0.7, detail: `${fmt(bw?.MBps)} / ${fmt(ib?.MBps)} MB/s` });
  const cbw = bandwidth.filter((r) => r.impl === 'c-peer' && r.op === 'mirror-durable-faa-bw' && r.size === 4096 && r.depth === 32).at(-1);
  if (cbw) out.push({ what: `  (the C peer, same verbs, depth 32 / ib_write_bw 4 KiB)`, value: ratio(cbw.MBps, ib?.MBps), kind: 'min', bound: 0.7, detail: `${fmt(cbw.MBps)} / ${fmt(ib?.MBps)} MB/s` });
  return out;
}

function targetLines(results: readonly LatencyRecord[], bandwidth: readonly BandwidthRecord[]): string[] {
  if (!results.some((r) => r.impl.startsWith('npmu-'))) return [];
  const lines = ['', 'Data-path targets (ratios in this boot)'];
  for (const impl of ['npmu-busy', 'npmu-event']) {
    if (!results.some((r) => r.impl === impl)) continue;
    for (const t of dataPathTargets(results, bandwidth, impl)) {
      const bound = `${t.kind === 'max' ? '<=' : '>='} ${t.bound}`;
      if (t.value === undefined) lines.push(`  ${t.what}: n/a (target ${bound})`);
      else {
        const met = t.kind === 'max' ? t.value <= t.bound : t.value >= t.bound;
        lines.push(`  ${t.what}: ${t.detail} = ${t.value.toFixed(2)} (target ${bound}) ${met ? '✓' : '✗'}`);
      }
    }
  }
  return lines;
}

/** The table as printed on stdout by the benchmark, ending in a newline. */
export function renderTable(allResults: readonly LatencyRecord[], opts: RenderOptions = {}): string {
  const results = allResults.filter((r) => (SINGLE_OPS as readonly string[]).includes(r.op));
  const cols = columns(results);
  const impls = rows(results);
  const hasPerftest = impls.includes('perftest');
  const label = (impl: string): string => (impl === 'perftest' ? 'perftest (1)' : impl);

  const header1 = ['', ...cols.flatMap((c) => [`${c.op} ${sizeLabel(c.size)}`, ''])];
  const header2 = ['impl', ...cols.flatMap(() => ['p50', 'p99'])];
  const body = impls.map((impl) => [
    label(impl),
    ...cols.flatMap((c) => {
      const r = find(results, impl, c.op, c.size);
      return [fmt(r?.p50_us), fmt(r?.p99_us)];
    }),
  ]);
  const all = [header2, ...body];
  const width = header2.map((_, j) => Math.max(...all.map((row) => (row[j] as string).length)));
  // A group header spans its p50 and p99 columns.
  for (let j = 1; j < header1.length; j += 2) {
    const need = (header1[j] as string).length - ((width[j] as number) + 2 + (width[j + 1] as number));
    if (need > 0) width[j + 1] = (width[j + 1] as number) + need;
  }
  const line = (cells: string[], groupRow = false): string => {
    let s = (cells[0] as string).padEnd(width[0] as number);
    for (let j = 1; j < cells.length; j += 2) {
      const w1 = width[j] as number;
      const w2 = width[j + 1] as number;
      if (groupRow) s += '   ' + (cells[j] as string).padEnd(w1 + 2 + w2);
      else s += '   ' + (cells[j] as string).padStart(w1) + '  ' + (cells[j + 1] as string).padStart(w2);
    }
    return s.trimEnd();
  };

  const out: string[] = [];
  out.push('RDMA verbs latency, one signaled work request, post to completion (us)');
  out.push(...describeMeta(opts.meta));
  out.push('');
  out.push(line(header1, true));
  out.push(line(header2));
  out.push('-'.repeat(line(header2).length));
  for (const row of body) out.push(line(row));
  out.push('');
  for (const r of targetRatios(results, opts.targets)) {
    const what = `${r.impl} / c-loop, 64 B WRITE p50`;
    if (r.value === undefined) {
      out.push(`${what}: n/a (target <= ${r.max}x)`);
    } else {
      const mark = r.met ? '✓' : '✗';
      out.push(`${what}: ${fmt(r.p50_us)} / ${fmt(r.baseline_p50_us)} = ${r.value.toFixed(2)}x (target <= ${r.max}x) ${mark}`);
    }
  }
  if (hasPerftest) {
    out.push('');
    out.push(
      '(1) perftest figures exactly as it prints them: p50 = t_typical, p99 = its "99% percentile", same boot and',
      '    iteration count. ib_write_lat is a ping-pong and reports HALF a round trip; ib_read_lat reports one READ,',
      '    post to completion (a full round trip). The c-loop and node rows time one signaled WR from post to its',
      '    completion: for a WRITE that is about a full round trip (the responder\'s ACK), so compare their WRITE',
      '    figures with about twice perftest\'s; READ figures compare directly. perftest disables inline data on rxe;',
      '    c-loop sends WRITEs of up to 64 B inline, as the addon does with its default maxInline (64).',
    );
  }
  out.push(...durableTable(allResults));
  out.push(...bandwidthTable(opts.bandwidth ?? []));
  out.push(...targetLines(allResults, opts.bandwidth ?? []));
  return out.join('\n') + '\n';
}
