/**
 * Smoke test of the benchmark command (`npm run bench -- --quick`): one boot of
 * the micro-VM runs every part, the tables, targets and plots come out, and
 * every part produced results. No timing is asserted (timings belong in the
 * benchmark's figures, not in pass/fail tests).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

const root = path.resolve(__dirname, '..', '..', '..');
t.setTimeout(40 * 60_000);

t.test('npm run bench -- --quick: every part runs, tables and plots come out', async (t) => {
  const results = path.join(root, 'bench', 'results');
  const plots = ['kv-commits.svg', 'kv-latency-cdf.svg', 'disk-latency-cdf.svg'].map((f) => path.join(results, f));
  for (const f of plots) fs.rmSync(f, { force: true });
  const started = Date.now();
  const { code, out } = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn('bash', ['scripts/bench.sh', '--quick'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('close', (c) => resolve({ code: c, out }));
  });
  t.comment(`bench --quick took ${Math.round((Date.now() - started) / 1000)} s`);
  t.equal(code, 0, 'scripts/bench.sh --quick exited 0');
  if (code !== 0) t.comment(out.slice(-4000));
  for (const title of ['RDMA verbs latency', 'Durable and mirrored writes', 'Pipelined bandwidth', 'Data-path targets']) {
    t.match(out, title, `the table "${title}" was printed`);
  }
  const lines = fs
    .readFileSync(path.join(results, 'verbs-latest.json'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { impl?: string; op?: string });
  const impls = new Set(lines.map((l) => l.impl).filter(Boolean));
  for (const impl of ['perftest', 'c-loop', 'node-busy', 'node-event', 'c-peer', 'librpma', 'npmu-busy', 'npmu-event', 'npmu-busy-adr']) {
    t.ok(impls.has(impl), `results of ${impl}`);
  }
  t.ok([...impls].some((i) => i?.startsWith('disk')), 'results of the disk part');
  for (const w of ['kv-file', 'kv-group', 'kv-sqlite', 'kv-npmu', 'kv-npmu-busy']) t.ok(impls.has(w), `results of ${w}`);
  for (const f of plots) {
    const ok = fs.existsSync(f) && fs.readFileSync(f, 'utf8').includes('<svg');
    t.ok(ok, `plot ${path.basename(f)} written`);
  }
});
