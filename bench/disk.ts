/**
 * What a durable write costs on disk from Node: a write of SIZE bytes then
 * fdatasync, timed t0 → both awaited → t1 (fs/promises, as a Node server
 * would do it), in two modes:
 *   append     the file grows with each write: the fdatasync also commits the
 *              inode's new size (an ext4 journal commit) each time
 *   overwrite  the file was preallocated and zero-filled (and fsynced) first,
 *              as PostgreSQL keeps its WAL segments: the writes go to
 *              consecutive offsets inside it, the fdatasync writes data only
 * for 64 B and 4 KiB. Run it on the file system of the disk under test (the
 * bench mounts ext4 on the VM's virtio-blk disk, cache=none).
 *
 * One JSON line per result, bench/verbs.ts's format:
 *   {"impl":"disk-append","op":"write-fdatasync","size":64,"p50_us":..,"p99_us":..,"p999_us":..,...}
 * and an HdrHistogram log of each in --hdr-dir.
 *
 * usage: node dist/bench/disk.js --dir DIR [--iters N] [--warmup N] [--hdr-dir DIR]
 */
import { placeSelf } from './verbs';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { argGetter, commonArgs, count } from './args';
import { newHistogram, summary, writeHlog } from './hist';

const relHlog = (...a: Parameters<typeof writeHlog>): string => path.relative(process.cwd(), writeHlog(...a));

const log = (s: string): void => void process.stderr.write(`bench/disk: ${s}\n`);

function args(argv: string[]): { dir: string; iters: number; warmup: number; hdrDir: string | undefined; fs: string } {
  const get = argGetter(argv);
  return {
    ...commonArgs(get),
    iters: count(get('--iters') ?? process.env.NPMU_BENCH_ITERS, 1000, 5),
    warmup: count(get('--warmup') ?? process.env.NPMU_BENCH_WARMUP, 50, 0),
  };
}

async function main(): Promise<void> {
  const o = args(process.argv.slice(2));
  // As the other Node benchmarks: the main thread on NPMU_BENCH_CPU (a floating one migrates between the
  // emulated CPUs and doubles an npmu commit's p50 under TCG).
  const placed = placeSelf();
  process.stderr.write(`${path.basename(__filename, '.js')}: ${placed.replace(/^, /, '')}\n`);
  fs.mkdirSync(o.dir, { recursive: true });
  for (const mode of ['append', 'overwrite'] as const) {
    for (const size of [64, 4096]) {
      const file = path.join(o.dir, `disk-${mode}-${size}`);
      fs.rmSync(file, { force: true });
      const total = o.warmup + o.iters;
      const fh = await fsp.open(file, 'w+');
      try {
        if (mode === 'overwrite') {
          const zeros = Buffer.alloc(1 << 20);
          const bytes = Math.ceil((total * size) / 4096) * 4096 + 4096;
          for (let off = 0; off < bytes; off += zeros.length) await fh.write(zeros, 0, Math.min(zeros.length, bytes - off), off);
          await fh.sync();
        } else {
          await fh.sync();
        }
        const buf = Buffer.alloc(size, 0x42);
        const h = newHistogram();
        let t0ms = Date.now();
        for (let i = 0; i < total; i++) {
          if (i === o.warmup) t0ms = Date.now();
          const a = process.hrtime.bigint();
          await fh.write(buf, 0, size, i * size);
          await fh.datasync();
          const ns = Number(process.hrtime.bigint() - a);
          if (i >= o.warmup) h.recordValue(ns);
        }
        const impl = `disk-${mode}`;
        const hlog = o.hdrDir ? relHlog(o.hdrDir, `${impl}-write-fdatasync-${size}`, h, t0ms, Date.now()) : undefined;
        const r = { impl, op: 'write-fdatasync', size, fs: o.fs, warmup: o.warmup, ...summary(h), ...(hlog ? { hlog } : {}) };
        process.stdout.write(JSON.stringify(r) + '\n');
        log(`${impl} ${size} B: p50 ${r.p50_us} us, p99 ${r.p99_us} us`);
      } finally {
        await fh.close();
        fs.rmSync(file, { force: true });
      }
    }
  }
}

main().catch((e: unknown) => {
  log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exitCode = 1;
});
