/**
 * Where the time of one client operation goes (`npm run bench:profile`): V8's
 * sampling profiler over N durable mirrored 64 B writeRegion calls and N 64 B
 * readRegion calls, through NpmuClient on two devdax units and a PMM in this
 * process (the units' and PMM's code is idle during the loop: the data path
 * is one-sided RDMA). Prints, per operation, p50/p99 and the share of samples
 * by stage:
 *   native     inside the addon: argument checks in C++, building work
 *              requests, ibv_post_send (the kernel's rxe requester and, on one
 *              host, its responder), polling the CQ, settling the promise
 *   client     lib/client.ts: argument checks, staging, result objects
 *   promises   microtasks: resuming the awaiting async functions
 *   gc         the garbage collector
 *   loop       the benchmark loop and timers, the rest
 * V8 attributes all native-addon time to one native frame; the kernel's share
 * of it is measured separately by the C peer (bench/c/peer.c) doing the same
 * verbs. Writes the raw .cpuprofile files to bench/results/.
 *
 * usage: node dist/bench/profile.js [--iters N]   (in the VM: scripts/bench.sh --profile)
 * env: NPMU_DAX_DEVICES (two devdax devices), NPMU_RXE_ADDR, NPMU_BENCH_CPU.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Session } from 'node:inspector';
import { summarize } from './stats';
import { benchTarget, startSystem } from './system';
import { placeSelf } from './verbs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Share of the profile's time by stage (see the file comment). */
export function stages(p: Profile): Record<string, number> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const t: Record<string, number> = { native: 0, client: 0, promises: 0, gc: 0, loop: 0 };
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = p.timeDeltas[i] ?? 0;
    const n = byId.get(id);
    if (!n) return;
    total += dt;
    const { functionName: f, url } = n.callFrame;
    let k: string;
    if (f === '(garbage collector)') k = 'gc';
    else if (f === 'runMicrotasks' || f === 'processTicksAndRejections') k = 'promises';
    else if (url === '' && f !== '(program)' && f !== '(idle)' && f !== '(root)' && !/^hrtime/.test(f)) k = 'native';
    else if (url.endsWith('/lib/client.js')) k = 'client';
    else k = 'loop';
    t[k]! += dt;
  });
  for (const k of Object.keys(t)) t[k] = total ? Math.round((1000 * t[k]!) / total) / 10 : 0;
  return t;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const iters = argv.includes('--iters') ? Number(argv[argv.indexOf('--iters') + 1]) : 3000;
  const placed = placeSelf();
  const sys = await startSystem({ ...benchTarget('run it through scripts/bench.sh --profile'), label: 'profile', volume: 'p' });
  const out = path.resolve(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  try {
    const session = new Session();
    session.connect();
    const post = <T>(m: string, p?: object): Promise<T> => new Promise((res, rej) => session.post(m, p ?? {}, (e, r) => (e ? rej(e) : res(r as T))));
    for (const busy of [false, true]) {
      const c = await sys.attach({ busyPoll: busy });
      if (!busy) await c.createRegion('r', 1 << 20, 0n, { durable: true });
      const h = await c.openRegion('r');
      const buf = Buffer.alloc(64, 7);
      const ops: Array<[string, () => Promise<unknown>]> = [
        ['write-mirror-durable', () => c.writeRegion(h, buf, 64, 0n)],
        ['read-region', () => c.readRegion(h, buf, 64, 0n)],
      ];
      for (const [op, fn] of ops) {
        for (let i = 0; i < 200; i++) await fn();
        (globalThis as { gc?: () => void }).gc?.();
        await post('Profiler.enable');
        await post('Profiler.setSamplingInterval', { interval: 250 }); // coarse: a finer one distorts the READ (signals under TCG)
        await post('Profiler.start');
        const s = new Float64Array(iters);
        for (let i = 0; i < iters; i++) {
          const t0 = process.hrtime.bigint();
          await fn();
          s[i] = Number(process.hrtime.bigint() - t0) / 1000;
        }
        const { profile } = await post<{ profile: Profile }>('Profiler.stop');
        const mode = busy ? 'busy' : 'event';
        fs.writeFileSync(path.join(out, `profile-${op}-${mode}.cpuprofile`), JSON.stringify(profile));
        const r = { impl: `npmu-${mode}`, op, size: 64, ...summarize(s), stages_pct: stages(profile) };
        process.stdout.write(JSON.stringify(r) + '\n');
        process.stderr.write(`bench/profile${placed}: ${mode} ${op}: p50 ${r.p50_us} us; ${JSON.stringify(r.stages_pct)}\n`);
      }
      await c.close();
    }
    session.disconnect();
  } finally {
    await sys.close();
  }
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench/profile: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
}
