/**
 * perftest's ib_write_lat / ib_read_lat as a reference row of the verbs
 * benchmark: run server + client on the same RDMA device and parse the figures
 * they print, without reinterpreting them (ib_write_lat reports half a round
 * trip, ib_read_lat a full one; the table's footnote says so). ib_write_bw
 * likewise gives the reference of the pipelined bandwidth rows (its "MB/sec"
 * is 2^20 bytes per second; the record carries both units).
 */
import * as os from 'node:os';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';

export interface PerftestFigures {
  bytes: number;
  iterations: number;
  t_min: number;
  t_max: number;
  t_typical: number;
  t_avg: number;
  t_stdev: number;
  /** "99% percentile[usec]" */
  t_99: number;
  /** "99.9% percentile[usec]" */
  t_99_9: number;
}

/**
 * The figures of a perftest latency run, from its output: the header line with
 * t_typical and the line of numbers after it. Columns are matched by name
 * ("99% percentile[usec]" counts as one column). Undefined if absent.
 */
export function parsePerftestOutput(text: string): PerftestFigures | undefined {
  const lines = text.split('\n');
  const h = lines.findIndex((l) => /#bytes/.test(l) && /t_typical/.test(l));
  if (h < 0) return undefined;
  const names = (lines[h] as string)
    .replace(/(\d+(?:\.\d+)?)%\s+percentile/g, 'p$1')
    .trim()
    .split(/\s+/)
    .map((n) => n.replace(/\[usec\]$/, ''));
  const valuesLine = lines.slice(h + 1).find((l) => /^\s*\d/.test(l));
  if (!valuesLine) return undefined;
  const values = valuesLine.trim().split(/\s+/).map(Number);
  if (values.length < names.length || values.some((v) => !Number.isFinite(v))) return undefined;
  const col = (name: string): number => {
    const i = names.indexOf(name);
    return i < 0 ? NaN : (values[i] as number);
  };
  const f: PerftestFigures = {
    bytes: col('#bytes'),
    iterations: col('#iterations'),
    t_min: col('t_min'),
    t_max: col('t_max'),
    t_typical: col('t_typical'),
    t_avg: col('t_avg'),
    t_stdev: col('t_stdev'),
    t_99: col('p99'),
    t_99_9: col('p99.9'),
  };
  if (!Number.isFinite(f.t_typical) || !Number.isFinite(f.t_99)) return undefined;
  return f;
}

export type PerftestTool = 'ib_write_lat' | 'ib_read_lat';
export type PerftestBwTool = 'ib_write_bw';

export interface PerftestBwFigures {
  bytes: number;
  iterations: number;
  /** "BW peak[MB/sec]": perftest's MB is 2^20 bytes (see --report_gbits in its help) */
  bw_peak_MiBps: number;
  /** "BW average[MB/sec]" */
  bw_avg_MiBps: number;
  /** "MsgRate[Mpps]" */
  msg_rate_Mpps: number;
}

/**
 * The figures of a perftest bandwidth run, from its output: the header line
 * with "BW average" and the line of numbers after it. Undefined if absent.
 */
export function parsePerftestBwOutput(text: string): PerftestBwFigures | undefined {
  const lines = text.split('\n');
  const h = lines.findIndex((l) => /#bytes/.test(l) && /BW average/.test(l));
  if (h < 0) return undefined;
  const names = (lines[h] as string)
    .replace(/BW peak/g, 'bw_peak')
    .replace(/BW average/g, 'bw_avg')
    .trim()
    .split(/\s+/)
    .map((n) => n.replace(/\[[^\]]*\]$/, ''));
  const valuesLine = lines.slice(h + 1).find((l) => /^\s*\d/.test(l));
  if (!valuesLine) return undefined;
  const values = valuesLine.trim().split(/\s+/).map(Number);
  if (values.length < names.length || values.some((v) => !Number.isFinite(v))) return undefined;
  const col = (name: string): number => {
    const i = names.indexOf(name);
    return i < 0 ? NaN : (values[i] as number);
  };
  const f: PerftestBwFigures = {
    bytes: col('#bytes'),
    iterations: col('#iterations'),
    bw_peak_MiBps: col('bw_peak'),
    bw_avg_MiBps: col('bw_avg'),
    msg_rate_Mpps: col('MsgRate'),
  };
  // 0 MiB/s is no measurement (seen under TCG, as the latency tools' "inf"): the caller tries again.
  if (!(f.bw_avg_MiBps > 0) || !Number.isFinite(f.bw_avg_MiBps) || !Number.isFinite(f.bytes)) return undefined;
  return f;
}

export interface PerftestRun {
  tool: PerftestTool | PerftestBwTool;
  size: number;
  iters: number;
  dev: string;
  /** GID index; 1 is the IPv4-mapped GID (RoCEv2) on rxe */
  gidIndex: number;
  addr: string;
  /** TCP port of perftest's out-of-band exchange */
  port: number;
  timeoutMs?: number;
}

/** The JSON line of a perftest result. */
export interface PerftestRecord {
  impl: 'perftest';
  tool: PerftestTool;
  op: 'write' | 'read';
  size: number;
  n: number;
  p50_us: number;
  p99_us: number;
  avg_us: number;
  min_us: number;
  max_us: number;
  p99_9_us: number;
  /** what perftest's figure measures */
  measures: 'half round trip (ping-pong / 2)' | 'round trip (post to completion)';
  args: string[];
}

/** The JSON line of an ib_write_bw result (a row of the bandwidth table). */
export interface PerftestBwRecord {
  impl: 'perftest';
  tool: PerftestBwTool;
  op: 'write-bw';
  size: number;
  n: number;
  /** perftest's send-queue depth (-t; its default 128) */
  tx_depth: number;
  /** average bandwidth, 10^6 bytes per second (perftest's figure x 1.048576) */
  MBps: number;
  /** average bandwidth as perftest prints it ("MB/sec" = 2^20 bytes per second) */
  MiBps: number;
  MiBps_peak: number;
  ops_per_s: number;
  args: string[];
}

export const PERFTEST_DEFAULT_TX_DEPTH = 128;

export function toBwRecord(f: PerftestBwFigures, args: string[], txDepth = PERFTEST_DEFAULT_TX_DEPTH): PerftestBwRecord {
  return {
    impl: 'perftest',
    tool: 'ib_write_bw',
    op: 'write-bw',
    size: f.bytes,
    n: f.iterations,
    tx_depth: txDepth,
    MBps: Math.round(f.bw_avg_MiBps * 1.048576 * 100) / 100,
    MiBps: f.bw_avg_MiBps,
    MiBps_peak: f.bw_peak_MiBps,
    ops_per_s: Math.round(f.msg_rate_Mpps * 1e6),
    args,
  };
}

export function toRecord(run: PerftestRun, f: PerftestFigures, args: string[]): PerftestRecord {
  const write = run.tool === 'ib_write_lat';
  return {
    impl: 'perftest',
    tool: run.tool as PerftestTool,
    op: write ? 'write' : 'read',
    size: f.bytes,
    n: f.iterations,
    p50_us: f.t_typical,
    p99_us: f.t_99,
    avg_us: f.t_avg,
    min_us: f.t_min,
    max_us: f.t_max,
    p99_9_us: f.t_99_9,
    measures: write ? 'half round trip (ping-pong / 2)' : 'round trip (post to completion)',
    args,
  };
}

/** Is something LISTENing on TCP `port` (any address, IPv4 or IPv6)? */
export function tcpListening(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // sl local_address rem_address st ...; st 0A = LISTEN
      if (cols.length > 3 && (cols[1] as string).endsWith(`:${hex}`) && cols[3] === '0A') return true;
    }
  }
  return false;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Proc {
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }>;
  kill(): void;
}

/**
 * With NPMU_BENCH_CPU set (the benchmark scripts pin by default), perftest's
 * client runs on that CPU and its server on the next one: two busy-polling
 * processes left to share one CPU take turns at the scheduler tick (4 ms).
 */
function start(cmd: string, args: string[], role: 'server' | 'client' = 'client'): Proc {
  const pin = process.env.NPMU_BENCH_CPU;
  const ncpu = os.cpus().length;
  const cpu = pin !== undefined && /^\d+$/.test(pin) && ncpu > 1 ? (Number(pin) + (role === 'server' ? 1 : 0)) % ncpu : undefined;
  const child =
    cpu === undefined
      ? spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('taskset', ['-c', String(cpu), cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }>((resolve) => {
    child.on('error', (e) => {
      out += `\n${String(e)}\n`;
      resolve({ code: -1, signal: null, out });
    });
    child.on('close', (code, signal) => resolve({ code, signal, out }));
  });
  return {
    done,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Run a perftest server, then its client once the server listens; the client's output. */
async function runPair(run: PerftestRun): Promise<{ out: string; clientArgs: string[] }> {
  const timeoutMs = run.timeoutMs ?? 120_000;
  const common = ['-d', run.dev, '-x', String(run.gidIndex), '-F', '-s', String(run.size), '-n', String(run.iters), '-p', String(run.port)];
  if (tcpListening(run.port)) throw new Error(`${run.tool}: TCP port ${run.port} is already in use`);
  const server = start(run.tool, common, 'server');
  let client: Proc | undefined;
  const timer = setTimeout(() => {
    server.kill();
    client?.kill();
  }, timeoutMs);
  try {
    const t0 = Date.now();
    let serverExit: { code: number | null; out: string } | undefined;
    void server.done.then((r) => (serverExit = r));
    while (!tcpListening(run.port)) {
      if (serverExit) throw new Error(`${run.tool} server exited (${serverExit.code}) before listening:\n${serverExit.out}`);
      if (Date.now() - t0 > timeoutMs) throw new Error(`${run.tool} server not listening on ${run.port} after ${timeoutMs} ms`);
      await sleep(20);
    }
    const clientArgs = [...common, run.addr];
    client = start(run.tool, clientArgs);
    const c = await client.done;
    // The server ends with the client; give it a moment, then it is killed below.
    const s = await Promise.race([server.done, sleep(10_000).then(() => ({ out: '(server still running)' }))]);
    if (c.code !== 0) throw new Error(`${run.tool} client exited with ${c.code ?? c.signal}:\n${c.out}\n-- server:\n${s.out}`);
    return { out: c.out, clientArgs };
  } finally {
    clearTimeout(timer);
    server.kill();
    client?.kill();
  }
}

/** Run one perftest latency test (server, then client once the server listens). */
export async function runPerftest(run: PerftestRun): Promise<PerftestRecord> {
  const { out, clientArgs } = await runPair(run);
  const f = parsePerftestOutput(out);
  if (!f) throw new Error(`${run.tool}: no latency figures in its output:\n${out}`);
  return toRecord(run, f, [run.tool, ...clientArgs]);
}

/** Run one ib_write_bw test (default tx depth, one QP). */
export async function runPerftestBw(run: PerftestRun): Promise<PerftestBwRecord> {
  const { out, clientArgs } = await runPair(run);
  const f = parsePerftestBwOutput(out);
  if (!f) throw new Error(`${run.tool}: no bandwidth figures in its output:\n${out}`);
  return toBwRecord(f, [run.tool, ...clientArgs]);
}
