/**
 * The database commit experiment (issue 9): the KV store of examples/kv with
 * single-row update transactions from 1, 4 and 16 concurrent committers, on
 *   kv-file     FileWal: write + fdatasync per commit, commits in turn
 *   kv-group    GroupCommitWal: the same files, group commit
 *   kv-npmu     NpmuWal: the npmu log (lib/log.ts) on two devdax units over
 *               rxe, the client in event mode (needs NPMU_DAX_DEVICES and
 *               NPMU_RXE_ADDR; skipped, with a note, when this build has no
 *               lib/log.ts); kv-npmu-busy: the same in busy-poll mode
 * and beside it
 *   kv-sqlite   SQLite (better-sqlite3) in WAL mode with synchronous=FULL,
 *               one connection, an upsert per transaction
 * The file WALs and SQLite live in --dir (the bench mounts ext4 on the VM's
 * virtio-blk disk there, cache=none).
 *
 * A committer loops: t0, commit one row (a key among 1000, a 100-byte value),
 * t1 once it is durable. N committers run at once in this process (closed
 * loop: N commits outstanding). Before the timed commits, a warm-up of at
 * least --warmup commits and --warmup-ms (default 1000 ms), then a garbage
 * collection when run with --expose-gc (bench/run.ts does): the same for every
 * WAL (see drive()). The npmu log runs twice: kv-npmu with the client in event
 * mode, kv-npmu-busy in busy-poll mode (see kvModes()), the main thread pinned like the
 * other Node benchmarks (NPMU_BENCH_CPU); the two units and the PMM run in
 * this process (bench/system.ts), idle during the loop (one-sided RDMA).
 * better-sqlite3 is synchronous, so its committers take turns on the event loop: a committer's t0 is taken before it
 * waits for its turn, so its latency includes the commits ahead of it, as a
 * queued commit's does on the other WALs.
 *
 * After each file/npmu run the store is closed and recovered from its WAL, and
 * the result must equal the live store ("recovered": true).
 *
 * One JSON line per (impl, committers):
 *   {"impl":"kv-group","op":"commit","committers":4,"commits_per_s":..,"p50_us":..,"p99_us":..,"p999_us":..,...}
 * and an HdrHistogram log of each in --hdr-dir.
 *
 * usage: node --expose-gc dist/bench/kv.js --dir DIR [--commits N] [--warmup N] [--warmup-ms MS] [--committers 1,4,16]
 *          [--prewarm-ms MS (default NPMU_BENCH_KV_PREWARM_MS, else 20000)]
 *          [--impls file,group,npmu,sqlite (default NPMU_BENCH_KV_IMPLS, else all)] [--hdr-dir DIR] [--fs TEXT]
 */
import { placeSelf } from './verbs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { KvStore } from '../examples/kv/store';
import { FileWal, GroupCommitWal, NpmuWal, loadNpmuLog, type Wal } from '../examples/kv/wal';
import { argGetter, commonArgs, count } from './args';
import { newHistogram, summary, writeHlog } from './hist';
import { benchTarget, startSystem } from './system';

const log = (s: string): void => void process.stderr.write(`bench/kv: ${s}\n`);
const IMPLS = ['file', 'group', 'npmu', 'sqlite'] as const;
type Impl = (typeof IMPLS)[number];
const KEYS = 1000;
const VALUE = 100;

interface Options {
  dir: string;
  commits: number;
  warmup: number;
  warmupMs: number;
  /** untimed commits (4 committers) on a throwaway store before an impl's first timed run, ms */
  prewarmMs: number;
  committers: number[];
  impls: Impl[];
  hdrDir: string | undefined;
  fs: string;
}

function parseArgs(argv: string[]): Options {
  const get = argGetter(argv);
  const impls = (get('--impls') ?? (process.env.NPMU_BENCH_KV_IMPLS || IMPLS.join(','))).split(',').map((i) => {
    if (!(IMPLS as readonly string[]).includes(i)) throw new RangeError(`bad impl '${i}' (${IMPLS.join(', ')})`);
    return i as Impl;
  });
  return {
    ...commonArgs(get),
    commits: count(get('--commits') ?? process.env.NPMU_BENCH_ITERS, 1000, 16),
    warmup: count(get('--warmup') ?? process.env.NPMU_BENCH_WARMUP, 50, 0),
    warmupMs: count(get('--warmup-ms') ?? process.env.NPMU_BENCH_KV_WARMUP_MS, 1000, 0),
    prewarmMs: count(get('--prewarm-ms') ?? process.env.NPMU_BENCH_KV_PREWARM_MS, 20_000, 0),
    committers: (get('--committers') ?? '1,4,16').split(',').map((c) => count(c, 1, 1)),
    impls,
  };
}

/** A stream of (key, value) pairs, the same for every impl. */
function workload(): () => { key: string; value: Buffer } {
  const pool = randomBytes(VALUE * 64);
  let x = 0x2545f491;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const k = x % KEYS;
    const v = (x >>> 10) % 64;
    return { key: `key-${String(k).padStart(6, '0')}`, value: pool.subarray(v * VALUE, v * VALUE + VALUE) };
  };
}

interface RunResult {
  commits_per_s: number;
  h: ReturnType<typeof newHistogram>;
  t0ms: number;
  t1ms: number;
  /** commits done to warm up */
  warmed: number;
}

/** Most warm-up commits (the npmu log of a run, 16 MiB, holds ~110,000 of these records). */
const WARMUP_CAP = 50_000;

/**
 * `n` committers, `total` commits after the warm-up, each `commit()` timed.
 * The warm-up is at least `warmup` commits and at least `warmupMs` of them (up
 * to WARMUP_CAP): the first second after a WAL is opened is not steady state
 * (the JIT still compiles the commit path, and opening left garbage: the npmu
 * log's recovery reads and writes its whole data area, a file WAL zero-fills a
 * segment). Then garbage is collected, if --expose-gc allows, outside the
 * timed loop, as bench/verbs.ts does between runs. The same for every WAL.
 */
async function drive(n: number, total: number, warmup: number, warmupMs: number, commit: () => Promise<unknown>, before?: () => Promise<void>): Promise<RunResult> {
  let left = warmup;
  let warmed = 0;
  const until = performance.now() + warmupMs;
  const more = (): boolean => left > 0 || (warmed < WARMUP_CAP && performance.now() < until);
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (more()) {
        left--;
        warmed++;
        if (before) await before();
        await commit();
      }
    }),
  );
  (globalThis as { gc?: () => void }).gc?.();
  const h = newHistogram();
  left = total;
  const t0ms = Date.now();
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (left > 0) {
        left--;
        const a = process.hrtime.bigint();
        if (before) await before();
        await commit();
        h.recordValue(Number(process.hrtime.bigint() - a));
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return { commits_per_s: Math.round(total / secs), h, t0ms, t1ms: Date.now(), warmed };
}

const same = (a: KvStore, b: KvStore): boolean => {
  const x = a.entries();
  const y = b.entries();
  return x.length === y.length && x.every(([k, v], i) => y[i]![0] === k && y[i]![1].equals(v));
};

/**
 * Before an impl's first timed run: 4 committers for `prewarmMs` on a throwaway
 * store, untimed. Under TCG this process is not in steady state for its first
 * tens of seconds (the JIT's code is new to the emulator too): measured, the
 * 1-committer p50 of the npmu log fell from 2.5 ms to 0.3 ms over the first
 * ~20 s of one boot, whatever the completion mode, and the per-run warm-up of
 * one second (even five) did not hide that from whichever mode ran first.
 */
async function prewarm(o: Options, impl: string, commit: () => Promise<void>, before?: () => Promise<void>): Promise<void> {
  if (o.prewarmMs <= 0) return;
  log(`${impl}: pre-warm, ${o.prewarmMs} ms of untimed commits (4 committers)`);
  await drive(4, 0, 0, o.prewarmMs, commit, before);
}

/** The KV store on one WAL kind, for each committer count. */
async function runWal(o: Options, impl: string, openWal: (run: string) => Promise<Wal>, emit: (r: object) => void, extra: object = {}): Promise<void> {
  {
    const store = await KvStore.open(await openWal(`${impl}-prewarm`));
    const next = workload();
    await prewarm(o, impl, async () => {
      const { key, value } = next();
      await store.put(key, value);
    });
    await store.close();
  }
  for (const n of o.committers) {
    log(`${impl}: ${n} committer(s), ${o.warmup} warm-up (and ${o.warmupMs} ms) + ${o.commits} commits`);
    const run = `${impl}-${n}`;
    const store = await KvStore.open(await openWal(run));
    const next = workload();
    const r = await drive(n, o.commits, o.warmup, o.warmupMs, () => {
      const { key, value } = next();
      return store.put(key, value);
    });
    await store.close();
    let recovered = false;
    try {
      const again = await KvStore.open(await openWal(run));
      recovered = same(store, again) && again.lastLsn === store.lastLsn;
      await again.close();
    } catch (e) {
      log(`${impl}: recovery FAILED: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (!recovered) process.exitCode = 1;
    emitResult(o, impl, n, r, emit, { recovered, ...extra });
  }
}

function emitResult(o: Options, impl: string, n: number, r: RunResult, emit: (x: object) => void, extra: object): void {
  const tag = `${impl}-commit-${n}`;
  const hlog = o.hdrDir ? path.relative(process.cwd(), writeHlog(o.hdrDir, tag, r.h, r.t0ms, r.t1ms)) : undefined;
  const s = summary(r.h);
  emit({ impl, op: 'commit', committers: n, commits_per_s: r.commits_per_s, ...s, warmup_commits: r.warmed, value_bytes: VALUE, keys: KEYS, fs: o.fs, ...extra, ...(hlog ? { hlog } : {}) });
  log(`  ${impl} x${n}: ${r.commits_per_s} commits/s, p50 ${s.p50_us} us, p99 ${s.p99_us} us, p99.9 ${s.p999_us} us`);
}

async function runSqlite(o: Options, emit: (r: object) => void): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const Database = require('better-sqlite3') as SqliteCtor;
  const open = (run: string): { db: SqliteDb; upsert: ReturnType<SqliteDb['prepare']>; dir: string } => {
    const dir = path.join(o.dir, `kv-sqlite-${run}`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const db = new Database(path.join(dir, 'kv.db'));
    db.pragma('journal_mode = WAL', { simple: true });
    db.pragma('synchronous = FULL');
    db.exec('CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID');
    return { db, upsert: db.prepare('INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v'), dir };
  };
  const turn = (): Promise<void> => new Promise<void>((res) => setImmediate(res)); // wait for this committer's turn
  {
    const w = open('prewarm');
    const next = workload();
    await prewarm(
      o,
      'kv-sqlite',
      async () => {
        const { key, value } = next();
        w.upsert.run(key, value);
      },
      turn,
    );
    w.db.close();
    fs.rmSync(w.dir, { recursive: true, force: true });
  }
  for (const n of o.committers) {
    log(`kv-sqlite: ${n} committer(s), ${o.warmup} warm-up (and ${o.warmupMs} ms) + ${o.commits} commits`);
    const { db, upsert } = open(String(n));
    const mode = db.pragma('journal_mode', { simple: true });
    const sync = db.pragma('synchronous', { simple: true });
    const next = workload();
    const r = await drive(
      n,
      o.commits,
      o.warmup,
      o.warmupMs,
      async () => {
        const { key, value } = next();
        upsert.run(key, value); // autocommit: one transaction, durable (WAL fsync) when it returns
      },
      turn,
    );
    const rows = (db.prepare('SELECT count(*) AS c FROM kv').get() as { c: number }).c;
    db.close();
    emitResult(o, 'kv-sqlite', n, r, emit, { journal_mode: mode, synchronous: sync === 2 ? 'FULL' : sync, rows, sqlite: sqliteVersion(Database) });
  }
}

/** The slice of better-sqlite3's API used here (it ships no types; @types/better-sqlite3 not needed for this). */
interface SqliteDb {
  pragma(src: string, opts?: { simple?: boolean }): unknown;
  exec(sql: string): void;
  prepare(sql: string): { run(...a: unknown[]): unknown; get(...a: unknown[]): unknown };
  close(): void;
}
type SqliteCtor = new (file: string) => SqliteDb;

function sqliteVersion(Database: SqliteCtor): string {
  const d = new Database(':memory:');
  const v = (d.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
  d.close();
  return v;
}

/** Two devdax units, a PMM and a client in this process (as bench/client.ts), then the KV store on the npmu log. */
async function runNpmu(o: Options, emit: (r: object) => void): Promise<void> {
  const NpmuLog = loadNpmuLog();
  if (!NpmuLog) {
    log('kv-npmu: SKIPPED: this build has no lib/log.ts (the npmu log)');
    return;
  }
  let target: { host: string; dax: string[] };
  try {
    target = benchTarget('run it through scripts/bench.sh');
  } catch (e) {
    log(`kv-npmu: SKIPPED: ${(e as Error).message}`);
    process.exitCode = 1;
    return;
  }
  const sys = await startSystem({ ...target, label: 'bench-kv', persistDomain: 'cpu_cache' });
  try {
    for (const mode of kvModes()) {
      const busyPoll = mode === 'busy';
      const client = await sys.attach({ busyPoll, spinUs: mode === 'hybrid' ? spinUs() : 0 });
      try {
        const impl = mode === 'event' ? 'kv-npmu' : `kv-npmu-${mode}`;
        await runWal(o, impl, (run) => NpmuWal.open(client, run, { size: 16 << 20 }), emit, { domain: 'cpu_cache', mode, ...(mode === 'hybrid' ? { spinUs: spinUs() } : {}) });
      } finally {
        await client.close();
      }
    }
  } finally {
    await sys.close();
  }
}

/**
 * The npmu client's completion modes to run, in order (NPMU_BENCH_KV_MODE: a comma list of event, hybrid, busy;
 * default event,busy). Event mode is the figure the targets are judged on (kv-npmu): a database server does not
 * give its event loop to spinning. Busy-poll (kv-npmu-busy) is shown beside it; on this test bed neither is reliably
 * the faster. Hybrid (kv-npmu-hybrid) is event mode with the client's spinUs budget (NPMU_BENCH_SPIN_US).
 */
function kvModes(): KvMode[] {
  const modes = (process.env.NPMU_BENCH_KV_MODE || 'event,busy').split(',');
  for (const m of modes) if (!KV_MODES.includes(m as KvMode)) throw new RangeError(`NPMU_BENCH_KV_MODE: bad mode '${m}' (${KV_MODES.join(', ')})`);
  return modes as KvMode[]; // a mode named twice runs twice (to see drift within a boot)
}
const KV_MODES = ['event', 'hybrid', 'busy'] as const;
type KvMode = (typeof KV_MODES)[number];

/** The hybrid mode's polling budget, µs (NPMU_BENCH_SPIN_US; default 200). */
function spinUs(): number {
  const v = Number(process.env.NPMU_BENCH_SPIN_US || 200);
  if (!Number.isSafeInteger(v) || v < 0 || v > 1_000_000) throw new RangeError(`NPMU_BENCH_SPIN_US: bad budget '${process.env.NPMU_BENCH_SPIN_US}' (0-1000000 µs)`);
  return v;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  // As the other Node benchmarks: the main thread on NPMU_BENCH_CPU (a floating one migrates between the
  // emulated CPUs and doubles an npmu commit's p50 under TCG).
  const placed = placeSelf();
  process.stderr.write(`${path.basename(__filename, '.js')}: ${placed.replace(/^, /, '')}\n`);
  fs.mkdirSync(o.dir, { recursive: true });
  const emit = (r: object): void => void process.stdout.write(JSON.stringify(r) + '\n');
  const fresh = (run: string): string => {
    const d = path.join(o.dir, run);
    return d;
  };
  const t0 = Date.now();
  for (const impl of o.impls) {
    if (impl === 'file' || impl === 'group') {
      const Kind = impl === 'file' ? FileWal : GroupCommitWal;
      const name = `kv-${impl}`;
      for (const n of [...o.committers, 'prewarm']) fs.rmSync(fresh(`${name}-${n}`), { recursive: true, force: true });
      await runWal(o, name, (run) => Kind.open(fresh(run)), emit);
      for (const n of [...o.committers, 'prewarm']) fs.rmSync(fresh(`${name}-${n}`), { recursive: true, force: true });
    } else if (impl === 'sqlite') await runSqlite(o, emit);
    else await runNpmu(o, emit);
  }
  log(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

main().catch((e: unknown) => {
  log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exitCode = 1;
});
