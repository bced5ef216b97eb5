/**
 * The Node side of the verbs benchmark: post-to-completion latency of one RDMA
 * WRITE / READ through the addon, the same measurement bench/c/lat.c makes in C.
 *
 * One process holds both ends (a listener + accepted endpoint as the "server",
 * a connected endpoint as the client), both on the RDMA device at
 * NPMU_RXE_ADDR, like the C loop. For each mode (busy: endpoint.busyPoll = true;
 * event: completions via the completion channel's fd on the event loop), op and
 * size: WARMUP + N iterations of
 *   t0 = process.hrtime.bigint(); await ep.write(...) (or read); t1 = ...
 * and one JSON line on stdout per (mode, op, size):
 *   {"impl":"node-busy","op":"write","size":64,"n":2000,"p50_us":..,"p99_us":..,"avg_us":..,...}
 *
 * usage: node dist/bench/verbs.js [--iters N] [--warmup N] [--sizes 64,4096]
 *          [--ops write,read] [--modes busy,event] [--addr A] [--dev rxe0]
 * env: NPMU_BENCH_ITERS, NPMU_BENCH_WARMUP (defaults for --iters / --warmup),
 *      NPMU_RXE_ADDR, NPMU_RXE_DEV,
 *      NPMU_BENCH_CPU (pin this process, all its threads, to that CPU: taskset),
 *      NPMU_BENCH_SCHED=fifo (main thread SCHED_FIFO 1: chrt; a ksoftirqd woken
 *      by rxe's READ path then cannot preempt the poster, docs/perf-read.md).
 *      bench/c/lat.c honours the same two.
 * Run with --expose-gc to collect garbage between runs (not inside them).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { Access, connect, firstActiveDevice, listen, newProtectionDomain, openContext, registerMemory } from '../lib/verbs';
import type { Endpoint, MemoryRegion } from '../lib/verbs';
import { summarize } from './stats';

export type Mode = 'busy' | 'event';
export type Op = 'write' | 'read';

export interface VerbsBenchOptions {
  iters: number;
  warmup: number;
  sizes: number[];
  ops: Op[];
  modes: Mode[];
  addr: string;
  dev: string;
}

const BUF_SIZE = 1 << 20;

function intList(v: string, what: string): number[] {
  return v.split(',').map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1 || n > BUF_SIZE) throw new RangeError(`bad ${what} '${s}'`);
    return n;
  });
}

function oneOf<T extends string>(v: string, allowed: readonly T[], what: string): T[] {
  return v.split(',').map((s) => {
    if (!(allowed as readonly string[]).includes(s)) throw new RangeError(`bad ${what} '${s}' (one of ${allowed.join(', ')})`);
    return s as T;
  });
}

function posInt(v: string | undefined, dflt: number, what: string, min = 1): number {
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new RangeError(`bad ${what} '${v}'`);
  return n;
}

/** The IPv4 address of an rxe device's netdev on a native host (no VM). */
function addressOf(dev: string): string | undefined {
  try {
    const netdevs = fs.readdirSync(`/sys/class/infiniband/${dev}/device/net`);
    for (const nd of netdevs) {
      const a = os.networkInterfaces()[nd]?.find((x) => x.family === 'IPv4');
      if (a) return a.address;
    }
  } catch {
    /* rxe devices may have no device/net link: NPMU_RXE_ADDR it is */
  }
  return undefined;
}

export function parseArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): VerbsBenchOptions {
  const a = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new RangeError(`unexpected argument '${arg}'`);
    const key = m[1] as string;
    const val = m[2] ?? argv[++i];
    if (val === undefined) throw new RangeError(`--${key} needs a value`);
    a.set(key, val);
  }
  const known = new Set(['iters', 'warmup', 'sizes', 'ops', 'modes', 'addr', 'dev']);
  for (const k of a.keys()) if (!known.has(k)) throw new RangeError(`unknown option --${k}`);
  const dev = a.get('dev') ?? env.NPMU_RXE_DEV ?? firstActiveDevice();
  if (!dev) throw new Error('no ACTIVE RDMA device (run through scripts/bench-verbs.sh, which boots the rxe micro-VM)');
  const addr = a.get('addr') ?? env.NPMU_RXE_ADDR ?? addressOf(dev);
  if (!addr) throw new Error(`cannot tell the IPv4 address of ${dev}: set NPMU_RXE_ADDR or pass --addr`);
  return {
    iters: posInt(a.get('iters') ?? env.NPMU_BENCH_ITERS, 2000, 'iteration count'),
    warmup: posInt(a.get('warmup') ?? env.NPMU_BENCH_WARMUP, 100, 'warm-up count', 0),
    sizes: intList(a.get('sizes') ?? '64,4096', 'size'),
    ops: oneOf(a.get('ops') ?? 'write,read', ['write', 'read'] as const, 'op'),
    modes: oneOf(a.get('modes') ?? 'busy,event', ['busy', 'event'] as const, 'mode'),
    addr,
    dev,
  };
}

/** Time WARMUP + N posts of one op; resolves with the samples of the last N, in µs. */
async function timeOp(
  ep: Endpoint,
  op: Op,
  mr: MemoryRegion,
  size: number,
  remoteAddr: bigint,
  rkey: number,
  warmup: number,
  n: number,
): Promise<Float64Array> {
  const samples = new Float64Array(n);
  const total = warmup + n;
  if (op === 'write') {
    for (let i = 0; i < total; i++) {
      const t0 = process.hrtime.bigint();
      await ep.write(mr, 0, size, remoteAddr, rkey);
      const t1 = process.hrtime.bigint();
      if (i >= warmup) samples[i - warmup] = Number(t1 - t0) / 1000;
    }
  } else {
    for (let i = 0; i < total; i++) {
      const t0 = process.hrtime.bigint();
      await ep.read(mr, 0, size, remoteAddr, rkey);
      const t1 = process.hrtime.bigint();
      if (i >= warmup) samples[i - warmup] = Number(t1 - t0) / 1000;
    }
  }
  return samples;
}

export interface NodeResult {
  impl: string;
  mode: Mode;
  op: Op;
  size: number;
  n: number;
  warmup: number;
  p50_us: number;
  p99_us: number;
  avg_us: number;
  min_us: number;
  max_us: number;
  node: string;
}

/** Run the whole matrix; `emit` gets each result as soon as it is measured. */
export async function runVerbsBench(o: VerbsBenchOptions, emit: (r: NodeResult) => void): Promise<NodeResult[]> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const ctx = openContext(o.dev);
  const serverPd = newProtectionDomain(ctx);
  const serverBuf = Buffer.alloc(BUF_SIZE, 0xab);
  const serverMr = registerMemory(serverPd, serverBuf, {
    access: Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ,
  });
  const listener = listen({ host: o.addr, port: 0 });
  const accepted = new Promise<Endpoint>((resolve, reject) => {
    listener.onRequest = (req) => {
      req.accept({ pd: serverPd }).then(resolve, reject);
    };
  });
  let client: Endpoint | undefined;
  let server: Endpoint | undefined;
  let clientMr: MemoryRegion | undefined;
  const out: NodeResult[] = [];
  try {
    client = await connect({ host: o.addr, port: listener.port });
    server = await accepted;
    listener.close();
    const clientBuf = Buffer.alloc(BUF_SIZE, 0x5a);
    clientMr = registerMemory(client.pd, clientBuf, { access: Access.LOCAL_WRITE });
    for (const mode of o.modes) {
      client.busyPoll = mode === 'busy';
      for (const op of o.ops) {
        for (const size of o.sizes) {
          gc?.();
          const samples = await timeOp(client, op, clientMr, size, serverMr.iova, serverMr.rkey, o.warmup, o.iters);
          const r: NodeResult = {
            impl: `node-${mode}`,
            mode,
            op,
            size,
            warmup: o.warmup,
            ...summarize(samples),
            node: process.version,
          };
          out.push(r);
          emit(r);
        }
      }
    }
  } finally {
    listener.close();
    clientMr?.close();
    await client?.close();
    await server?.close();
    serverMr.close();
    serverPd.close();
    ctx.close();
  }
  return out;
}

/** NPMU_BENCH_CPU / NPMU_BENCH_SCHED: place this process; a description for the log. */
export function placeSelf(env: NodeJS.ProcessEnv = process.env): string {
  const run = (cmd: string, args: string[]): void => {
    const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? `status ${r.status}`})`);
  };
  const parts: string[] = [];
  const cpu = env.NPMU_BENCH_CPU;
  if (cpu !== undefined && cpu !== '') {
    if (!/^\d+$/.test(cpu)) throw new RangeError(`bad NPMU_BENCH_CPU '${cpu}'`);
    // The main thread only (its tid is the pid): V8's GC helpers and libuv's
    // pool stay free to run elsewhere instead of preempting the poster.
    run('taskset', ['-p', '-c', cpu, String(process.pid)]);
    parts.push(`main thread pinned to CPU ${cpu}`);
  }
  const sched = env.NPMU_BENCH_SCHED;
  if (sched === 'fifo') {
    run('chrt', ['-f', '-p', '1', String(process.pid)]);
    parts.push('SCHED_FIFO 1');
  } else if (sched !== undefined && sched !== '' && sched !== 'other') {
    throw new RangeError(`bad NPMU_BENCH_SCHED '${sched}' (fifo or other)`);
  }
  return parts.length ? `, ${parts.join(', ')}` : ', not pinned';
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const placed = placeSelf();
  const t0 = Date.now();
  process.stderr.write(
    `bench/verbs: ${o.dev} at ${o.addr}, modes ${o.modes.join(',')}, ops ${o.ops.join(',')}, sizes ${o.sizes.join(',')}, ` +
      `${o.warmup} warm-up + ${o.iters} timed iterations each${placed}${(globalThis as { gc?: unknown }).gc ? '' : ' (no --expose-gc)'}\n`,
  );
  await runVerbsBench(o, (r) => process.stdout.write(JSON.stringify(r) + '\n'));
  process.stderr.write(`bench/verbs: done in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench/verbs: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
}
