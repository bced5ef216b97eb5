/**
 * Driver of the verbs benchmark, run where the RDMA device is (inside the rxe
 * micro-VM, or natively): perftest, the C loop and the Node benchmark in
 * sequence, in this boot, each result appended as a JSON line to --out as soon
 * as it is measured; then the table on stdout. scripts/bench-verbs.sh runs it.
 * Parts (--only; default perftest,c-loop,node):
 *   perftest  ib_write_lat / ib_read_lat, 64 B and 4 KiB
 *   c-loop    bench/c/lat.c: one WRITE or READ, post to completion
 *   node      bench/verbs.ts: the same from Node through the addon
 *   c-peer    bench/c/peer.c: the mirrored durable write's verbs (two QPs, WRITE +
 *             8-byte READ each), single-durable, read, pipelined bandwidth; with two
 *             or more NPMU_DAX_DEVICES the first two are its targets (-f)
 *   rpma      bench/c/rpma.c: librpma write+flush, write, read; the first of
 *             NPMU_DAX_DEVICES, if any, is its target (-f)
 *   bw        ib_write_bw, 4 KiB and 64 KiB, perftest's default tx depth
 *   npmu      bench/client.ts: the same operations through NpmuClient (two units on
 *             the first two NPMU_DAX_DEVICES, a PMM, busy-poll and event mode,
 *             cpu_cache and memory_controller persistence), pipelined bandwidth
 *   disk      bench/disk.ts: write + fdatasync of 64 B / 4 KiB from Node, appending
 *             and overwriting a preallocated file, on ext4 made on the first of
 *             NPMU_DISKS (scripts/rxe-vm.sh --disk; natively: NPMU_BENCH_DISK_DIR)
 *   kv        bench/kv.ts: the KV store of examples/kv on FileWal, GroupCommitWal,
 *             NpmuWal (the npmu log on the two devdax units, if lib/log.ts is in
 *             this build) and SQLite WAL/FULL, 1/4/16 committers, on that disk
 * disk and kv write an HdrHistogram log per result into OUT's name less
 * ".json" plus "-hdr/"; bench/plot.ts draws them.
 *
 * usage: node dist/bench/run.js --out FILE [--iters N] [--warmup N]
 *          [--only perftest,c-loop,node,c-peer,rpma,bw,npmu,disk,kv]
 * env: NPMU_RXE_DEV, NPMU_RXE_ADDR (required), NPMU_BENCH_ITERS, NPMU_BENCH_WARMUP,
 *      NPMU_BENCH_LAT (the C loop binary; default .cache/bench/lat),
 *      NPMU_BENCH_PEER (default .cache/bench/peer), NPMU_BENCH_RPMA (default .cache/bench/rpma),
 *      NPMU_DAX_DEVICES (space-separated devdax devices, set by scripts/rxe-vm.sh --nvdimm),
 *      NPMU_BENCH_GID_INDEX (perftest -x, default 1), NPMU_BENCH_PERFTEST_PORT (default 18515),
 *      NPMU_DISKS (virtio disks, set by scripts/rxe-vm.sh --disk: the first is
 *      reformatted ext4 for disk and kv), NPMU_BENCH_DISK_DIR (where disk and kv
 *      write when there is no NPMU_DISKS; default the OS temp dir).
 * Progress goes to stderr. Exit status 1 if any part failed (the others still run).
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { runPerftest, runPerftestBw, type PerftestRun, type PerftestTool } from './perftest';
import { parseResultLines, renderTable } from './table';

const PARTS = ['perftest', 'c-loop', 'node', 'c-peer', 'rpma', 'bw', 'npmu', 'disk', 'kv'] as const;
type Part = (typeof PARTS)[number];
/** What runs without --only (the original verbs benchmark). */
const DEFAULT_PARTS: readonly Part[] = ['perftest', 'c-loop', 'node'];

interface Options {
  out: string;
  iters: number;
  warmup: number;
  only: Part[];
}

function parseArgs(argv: string[]): Options {
  const a = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i] as string);
    if (!m) throw new RangeError(`unexpected argument '${argv[i]}'`);
    const v = m[2] ?? argv[++i];
    if (v === undefined) throw new RangeError(`--${m[1]} needs a value`);
    a.set(m[1] as string, v);
  }
  for (const k of a.keys()) if (!['out', 'iters', 'warmup', 'only'].includes(k)) throw new RangeError(`unknown option --${k}`);
  const out = a.get('out');
  if (!out) throw new RangeError('--out FILE is required');
  const int = (v: string | undefined, d: number, min: number): number => {
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new RangeError(`bad count '${v}'`);
    return n;
  };
  const only = (a.get('only') ?? DEFAULT_PARTS.join(',')).split(',').map((p) => {
    if (!(PARTS as readonly string[]).includes(p)) throw new RangeError(`bad part '${p}' (${PARTS.join(', ')})`);
    return p as Part;
  });
  return {
    out,
    iters: int(a.get('iters') ?? process.env.NPMU_BENCH_ITERS, 2000, 5),
    warmup: int(a.get('warmup') ?? process.env.NPMU_BENCH_WARMUP, 100, 0),
    only,
  };
}

/** The first RDMA device with an ACTIVE port 1, from sysfs (no addon needed). */
function activeDevice(): string | undefined {
  try {
    for (const d of fs.readdirSync('/sys/class/infiniband').sort()) {
      const st = fs.readFileSync(`/sys/class/infiniband/${d}/ports/1/state`, 'utf8');
      if (st.includes('ACTIVE')) return d;
    }
  } catch {
    /* no RDMA at all */
  }
  return undefined;
}

const log = (s: string): void => void process.stderr.write(`bench: ${s}\n`);

/**
 * Where the disk and kv parts write: ext4 made afresh on the first of
 * NPMU_DISKS (the VM's virtio-blk disk, cache=none), mounted on
 * /tmp/npmu-bench-disk; else NPMU_BENCH_DISK_DIR or the OS temp dir.
 */
function benchDisk(): { dir: string; fs: string; unmount?: () => void } {
  const disk = (process.env.NPMU_DISKS ?? '').split(/\s+/).filter(Boolean)[0];
  if (!disk) {
    const dir = process.env.NPMU_BENCH_DISK_DIR || path.join(os.tmpdir(), 'npmu-bench-disk');
    fs.mkdirSync(dir, { recursive: true });
    return { dir, fs: `${dir} (no NPMU_DISKS: not the VM's disk)` };
  }
  const mnt = '/tmp/npmu-bench-disk';
  fs.mkdirSync(mnt, { recursive: true });
  try {
    execFileSync('modprobe', ['ext4'], { stdio: 'ignore' });
  } catch {
    /* built in */
  }
  execFileSync('mkfs.ext4', ['-q', '-F', disk], { stdio: ['ignore', 'ignore', 'inherit'] });
  execFileSync('mount', ['-t', 'ext4', disk, mnt], { stdio: ['ignore', 'ignore', 'inherit'] });
  return {
    dir: mnt,
    fs: `ext4 on ${disk} (virtio-blk, cache=none)`,
    unmount: () => {
      try {
        execFileSync('umount', [mnt], { stdio: 'ignore' });
      } catch {
        /* best effort */
      }
    },
  };
}
const secs = (t0: number): number => Math.round((Date.now() - t0) / 100) / 10;

/** Run a command whose stdout is JSON lines; append each to `out`. stderr passes through. */
/**
 * perftest under TCG now and then ends a run without figures: it calibrates
 * its cycle counter against the clock first, and when the emulated CPU makes
 * that fit poor ("Correlation coefficient r^2: 0.85 < 0.9") it prints every
 * latency as "inf" (seen for `ib_read_lat -s 64`, and a CI run lost
 * `ib_write_lat -s 64`); `ib_write_bw` once reported 0 MiB/s. One more try,
 * on the next port, with the first failure logged; a second failure fails
 * the part.
 */
async function twice<T>(what: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    log(`  ${what}: failed once, trying again: ${e instanceof Error ? e.message : String(e)}`);
    return run();
  }
}

function runJsonLines(cmd: string, args: string[], out: string, env?: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], env: env ?? process.env });
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      const t = line.trim();
      if (t === '') return;
      try {
        JSON.parse(t);
      } catch {
        process.stderr.write(`${path.basename(cmd)}: ${line}\n`);
        return;
      }
      fs.appendFileSync(out, t + '\n');
      const r = JSON.parse(t) as { impl?: string; op?: string; size?: number; p50_us?: number; p99_us?: number; depth?: number; MBps?: number };
      const bw = r.MBps === undefined ? '' : ` depth ${r.depth}: ${r.MBps} MB/s,`;
      const k = r as { committers?: number; commits_per_s?: number };
      const what = k.committers === undefined ? `${r.size} B:` : `x${k.committers}: ${k.commits_per_s} commits/s,`;
      log(`  ${r.impl} ${r.op} ${what}${bw} p50 ${r.p50_us} us, p99 ${r.p99_us} us`);
    });
    child.on('error', (e) => {
      log(`${cmd}: ${String(e)}`);
      resolve(-1);
    });
    child.on('close', (code, signal) => {
      rl.close();
      resolve(code ?? (signal ? 128 : -1));
    });
  });
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const dev = (process.env.NPMU_RXE_DEV || activeDevice()) as string; // checked below when a part needs it
  const addr = process.env.NPMU_RXE_ADDR as string;
  const rdmaParts = o.only.filter((p) => p !== 'disk' && p !== 'kv');
  if (rdmaParts.length && !dev) throw new Error('no ACTIVE RDMA device here (scripts/bench-verbs.sh boots the rxe micro-VM)');
  if (rdmaParts.length && !addr) throw new Error('NPMU_RXE_ADDR (the IPv4 address of the RDMA device) is not set');
  const root = path.resolve(__dirname, '..', '..');
  const lat = process.env.NPMU_BENCH_LAT || path.join(root, '.cache', 'bench', 'lat');
  const peer = process.env.NPMU_BENCH_PEER || path.join(root, '.cache', 'bench', 'peer');
  const rpma = process.env.NPMU_BENCH_RPMA || path.join(root, '.cache', 'bench', 'rpma');
  const dax = (process.env.NPMU_DAX_DEVICES ?? '').split(/\s+/).filter((d) => d !== '');
  fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
  const append = (v: unknown): void => fs.appendFileSync(o.out, JSON.stringify(v) + '\n');
  const inVm = process.env.NPMU_IN_VM === '1';
  append({
    meta: {
      date: new Date().toISOString(),
      where: inVm ? 'rxe micro-VM (qemu TCG)' : `native host ${os.hostname()}`,
      device: dev,
      addr,
      kernel: os.release(),
      node: process.version,
      cpus: os.cpus().length,
      iters: o.iters,
      warmup: o.warmup,
      ...(dax.length ? { dax } : {}),
    },
  });
  let failed = 0;
  const seconds: Record<string, number> = {};
  const tAll = Date.now();

  /** One perftest run on this boot's device and address, on `port`. */
  const perftestRun = (tool: PerftestRun['tool'], size: number, port: number): PerftestRun => ({
    tool,
    size,
    iters: o.iters,
    dev,
    gidIndex: Number(process.env.NPMU_BENCH_GID_INDEX ?? 1),
    addr,
    port,
  });
  if (o.only.includes('perftest')) {
    const t0 = Date.now();
    log(`perftest (${o.iters} iterations, -x ${process.env.NPMU_BENCH_GID_INDEX ?? 1})`);
    let port = Number(process.env.NPMU_BENCH_PERFTEST_PORT ?? 18515);
    for (const tool of ['ib_write_lat', 'ib_read_lat'] as PerftestTool[]) {
      for (const size of [64, 4096]) {
        try {
          const r = await twice(`${tool} -s ${size}`, () => runPerftest(perftestRun(tool, size, port++)));
          append(r);
          log(`  ${tool} -s ${size}: t_typical ${r.p50_us} us, 99% ${r.p99_us} us (${r.measures})`);
        } catch (e) {
          failed++;
          log(`  ${tool} -s ${size} FAILED: ${e instanceof Error ? e.message : String(e)}`);
        }
      }
    }
    seconds.perftest = secs(t0);
  }

  if (o.only.includes('c-loop')) {
    const t0 = Date.now();
    log(`c-loop (${lat}, ${o.warmup} warm-up + ${o.iters} iterations)`);
    const code = await runJsonLines(lat, ['-a', addr, '-n', String(o.iters), '-w', String(o.warmup)], o.out);
    if (code !== 0) {
      failed++;
      log(`  c-loop FAILED (exit ${code})`);
    }
    seconds['c-loop'] = secs(t0);
  }

  if (o.only.includes('node')) {
    const t0 = Date.now();
    log(`node (busy-poll, then event mode; ${o.warmup} warm-up + ${o.iters} iterations)`);
    const code = await runJsonLines(
      process.execPath,
      ['--expose-gc', path.join(__dirname, 'verbs.js'), '--iters', String(o.iters), '--warmup', String(o.warmup), '--addr', addr, '--dev', dev],
      o.out,
    );
    if (code !== 0) {
      failed++;
      log(`  node FAILED (exit ${code})`);
    }
    seconds.node = secs(t0);
  }
  if (o.only.includes('c-peer')) {
    const t0 = Date.now();
    const args = ['-a', addr, '-n', String(o.iters), '-w', String(o.warmup)];
    if (dax.length >= 2) args.push('-f', `${dax[0]},${dax[1]}`);
    log(`c-peer (${peer}${dax.length >= 2 ? ` on ${dax[0]} + ${dax[1]}` : ', anonymous targets'}, ${o.warmup} warm-up + ${o.iters} iterations)`);
    const code = await runJsonLines(peer, args, o.out);
    if (code !== 0) {
      failed++;
      log(`  c-peer FAILED (exit ${code})`);
    }
    // The same with an ATOMIC fence word instead of the READ (what npmu posts when its units offer one).
    log('c-peer -F atomic (the fence is an 8-byte FETCH_AND_ADD of 0)');
    const code2 = await runJsonLines(peer, [...args, '-F', 'atomic', '-o', 'mirror-durable,single-durable,mirror-durable-bw'], o.out);
    if (code2 !== 0) {
      failed++;
      log(`  c-peer -F atomic FAILED (exit ${code2})`);
    }
    seconds['c-peer'] = secs(t0);
  }

  if (o.only.includes('rpma')) {
    const t0 = Date.now();
    const args = ['-a', addr, '-n', String(o.iters), '-w', String(o.warmup)];
    if (dax.length >= 1) args.push('-f', dax[0] as string);
    log(`rpma (${rpma}${dax.length ? ` on ${dax[0]}` : ', anonymous target'}, ${o.warmup} warm-up + ${o.iters} iterations)`);
    const code = await runJsonLines(rpma, args, o.out);
    if (code !== 0) {
      failed++;
      log(`  rpma FAILED (exit ${code})`);
    }
    seconds.rpma = secs(t0);
  }

  if (o.only.includes('bw')) {
    const t0 = Date.now();
    log(`bw: ib_write_bw (${o.iters} iterations, -x ${process.env.NPMU_BENCH_GID_INDEX ?? 1})`);
    let port = Number(process.env.NPMU_BENCH_PERFTEST_PORT ?? 18515) + 16;
    for (const size of [4096, 65536]) {
      try {
        const r = await twice(`ib_write_bw -s ${size}`, () => runPerftestBw(perftestRun('ib_write_bw', size, port++)));
        append(r);
        log(`  ib_write_bw -s ${size}: ${r.MiBps} MiB/s (${r.MBps} MB/s), ${r.ops_per_s} msg/s`);
      } catch (e) {
        failed++;
        log(`  ib_write_bw -s ${size} FAILED: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    seconds.bw = secs(t0);
  }

  if (o.only.includes('npmu')) {
    const t0 = Date.now();
    log(`npmu (NpmuClient on two devdax units: ${o.warmup} warm-up + ${o.iters} iterations per operation)`);
    const code = await runJsonLines(
      process.execPath,
      ['--expose-gc', path.join(__dirname, 'client.js'), '--iters', String(o.iters), '--warmup', String(o.warmup)],
      o.out,
    );
    if (code !== 0) {
      failed++;
      log(`  npmu FAILED (exit ${code})`);
    }
    seconds.npmu = secs(t0);
  }

  if (o.only.includes('disk') || o.only.includes('kv')) {
    const hdrDir = o.out.replace(/\.json$/, '') + '-hdr';
    let where: { dir: string; fs: string; unmount?: () => void };
    try {
      where = benchDisk();
    } catch (e) {
      failed++;
      log(`disk set-up FAILED: ${e instanceof Error ? e.message : String(e)}`);
      where = { dir: '', fs: '' };
    }
    if (where.dir && o.only.includes('disk')) {
      const t0 = Date.now();
      log(`disk (write + fdatasync on ${where.fs}: ${o.warmup} warm-up + ${o.iters} iterations each)`);
      const code = await runJsonLines(
        process.execPath,
        [path.join(__dirname, 'disk.js'), '--dir', path.join(where.dir, 'disk'), '--iters', String(o.iters), '--warmup', String(o.warmup), '--hdr-dir', hdrDir, '--fs', where.fs],
        o.out,
      );
      if (code !== 0) {
        failed++;
        log(`  disk FAILED (exit ${code})`);
      }
      seconds.disk = secs(t0);
    }
    if (where.dir && o.only.includes('kv')) {
      const t0 = Date.now();
      const commits = Math.max(16, o.iters);
      log(`kv (KV store commits on ${where.fs}: file, group, npmu, sqlite x 1/4/16 committers; ${Math.min(o.warmup, 50)} warm-up + ${commits} commits each)`);
      const code = await runJsonLines(
        process.execPath,
        [
          '--expose-gc', // kv.js collects garbage between warm-up and timed loop
          path.join(__dirname, 'kv.js'),
          '--dir',
          path.join(where.dir, 'kv'),
          '--commits',
          String(commits),
          '--warmup',
          String(Math.min(o.warmup, 50)),
          '--hdr-dir',
          hdrDir,
          '--fs',
          where.fs,
        ],
        o.out,
      );
      if (code !== 0) {
        failed++;
        log(`  kv FAILED (exit ${code})`);
      }
      seconds.kv = secs(t0);
    }
    where.unmount?.();
  }

  seconds.total = secs(tAll);
  append({ meta: { seconds } });

  const parsed = parseResultLines(fs.readFileSync(o.out, 'utf8'));
  process.stdout.write(
    '\n' + renderTable(parsed.results, { meta: Object.assign({}, ...parsed.meta) as Record<string, unknown>, bandwidth: parsed.bandwidth }),
  );
  if (failed) log(`${failed} part(s) failed; see above`);
  return failed ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    log(e instanceof Error ? e.message : String(e));
    process.exitCode = 2;
  },
);
