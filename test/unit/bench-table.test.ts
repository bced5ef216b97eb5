/** bench/table.ts: the data-path targets are computed from the right rows, and missing figures are n/a, not a pass. */
import t from 'tap';
import { dataPathTargets, parseResultLines, renderTable } from '../../bench/table';

const lines = [
  { impl: 'c-loop', op: 'read', size: 64, p50_us: 40, p99_us: 100 },
  { impl: 'c-peer', op: 'mirror-durable', size: 64, p50_us: 150, p99_us: 600 },
  { impl: 'c-peer', op: 'mirror-durable-faa', size: 64, p50_us: 100, p99_us: 400 },
  { impl: 'librpma', op: 'write-flush', size: 64, p50_us: 50, p99_us: 200, flush: 'persistent' },
  { impl: 'npmu-busy', op: 'write-mirror-durable', size: 64, p50_us: 140, p99_us: 1300 },
  { impl: 'npmu-busy', op: 'read-region', size: 64, p50_us: 100, p99_us: 300 },
  { impl: 'perftest', op: 'write-bw', size: 4096, MBps: 30, tx_depth: 128 },
  { impl: 'npmu-busy', op: 'mirror-durable-bw', size: 4096, depth: 32, MBps: 9, p50_us: 1, p99_us: 2 },
  { impl: 'c-peer', op: 'mirror-durable-faa-bw', size: 4096, depth: 32, MBps: 15, p50_us: 1, p99_us: 2 },
];
const parsed = parseResultLines(lines.map((l) => JSON.stringify(l)).join('\n'));

t.test('ratios against the C peer posting the same verbs, librpma, a C READ and ib_write_bw', async (t) => {
  const r = dataPathTargets(parsed.results, parsed.bandwidth, 'npmu-busy');
  t.match(r[0], { value: 1.4, kind: 'max', bound: 1.5 }, 'p50 against c-peer mirror-durable-faa (the same verbs)');
  t.match(r[0]!.what, /mirror-durable-faa/);
  t.match(r[1], { value: 2.8, bound: 1 });
  t.match(r[2], { value: 3.25, bound: 3 });
  t.match(r[3], { value: 2.5, bound: 2 });
  t.match(r[4], { value: 0.3, kind: 'min', bound: 0.7 });
  t.match(r[5], { value: 0.5 }, 'the C peer at the same depth, for reference');
});

t.test('a missing figure is n/a, never a pass', async (t) => {
  const r = dataPathTargets([], [], 'npmu-event');
  for (const x of r) t.equal(x.value, undefined);
  const text = renderTable(parsed.results, { bandwidth: parsed.bandwidth });
  t.match(text, /Data-path targets/);
  t.match(text, /= 1\.40 \(target <= 1\.5\) ✓/);
  t.match(text, /= 0\.30 \(target >= 0\.7\) ✗/);
});
