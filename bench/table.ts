/**
 * Renders the verbs benchmark's results (JSON lines, one per impl/op/size) as a
 * text table with the two target ratios. Pure: strings in, strings out; no I/O.
 *
 *   const { results, meta } = parseResultLines(fs.readFileSync(file, 'utf8'));
 *   process.stdout.write(renderTable(results, { meta: meta[0] }));
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

/** A line `{"meta": {...}}` describing the run (where, when, counts). */
export type RunMeta = Record<string, unknown>;

export interface ParsedResults {
  results: LatencyRecord[];
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

/** Parse a results file: JSON lines; blank lines are skipped, others reported in `errors`. */
export function parseResultLines(text: string): ParsedResults {
  const out: ParsedResults = { results: [], meta: [], errors: [] };
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
    if (isRecord(v)) out.results.push(v);
    else if (typeof v === 'object' && v !== null && typeof (v as { meta?: unknown }).meta === 'object') {
      out.meta.push((v as { meta: RunMeta }).meta);
    } else out.errors.push(`line ${i + 1}: not a result`);
  });
  return out;
}

/** Row order of the table; impls not listed come after, alphabetically. */
export const IMPL_ORDER = ['perftest', 'c-loop', 'node-busy', 'node-event'] as const;

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
}

/** The table as printed on stdout by the benchmark, ending in a newline. */
export function renderTable(results: readonly LatencyRecord[], opts: RenderOptions = {}): string {
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
  return out.join('\n') + '\n';
}
