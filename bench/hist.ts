/**
 * Latency histograms for the disk and KV benchmarks (hdr-histogram-js):
 * values recorded in nanoseconds, 3 significant digits, summarised in
 * microseconds, and written as HdrHistogram interval logs (one histogram per
 * file, tagged) that bench/plot.ts reads back for the latency CDFs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { build, HistogramLogReader, HistogramLogWriter, type Histogram } from 'hdr-histogram-js';

export function newHistogram(): Histogram {
  return build({ bitBucketSize: 64, autoResize: true, lowestDiscernibleValue: 1, numberOfSignificantValueDigits: 3, useWebAssembly: false });
}

const us = (ns: number): number => Math.round(ns) / 1000;

/** p50/p99/p99.9, mean, min, max in µs, and the count. */
export function summary(h: Histogram): { n: number; p50_us: number; p99_us: number; p999_us: number; avg_us: number; min_us: number; max_us: number } {
  return {
    n: h.totalCount,
    p50_us: us(h.getValueAtPercentile(50)),
    p99_us: us(h.getValueAtPercentile(99)),
    p999_us: us(h.getValueAtPercentile(99.9)),
    avg_us: us(h.mean),
    min_us: us(h.minNonZeroValue),
    max_us: us(h.maxValue),
  };
}

/**
 * Write `h` as an HdrHistogram log (values in ns; the max column in µs) to
 * `dir/<tag>.hlog`; returns the file's path.
 */
export function writeHlog(dir: string, tag: string, h: Histogram, startMs: number, endMs: number): string {
  fs.mkdirSync(dir, { recursive: true });
  let text = '';
  const w = new HistogramLogWriter((s) => {
    text += s;
  });
  h.tag = tag;
  w.outputComment(`npmu bench: ${tag}; values in nanoseconds`);
  w.outputLogFormatVersion();
  w.outputStartTime(startMs);
  w.outputLegend();
  w.outputIntervalHistogram(h, startMs / 1000, endMs / 1000, 1000);
  const file = path.join(dir, `${tag.replace(/[^A-Za-z0-9._-]/g, '_')}.hlog`);
  fs.writeFileSync(file, text);
  return file;
}

/** The first histogram of an HdrHistogram log. */
export function readHlog(file: string): Histogram | null {
  const r = new HistogramLogReader(fs.readFileSync(file, 'utf8'), 64, false);
  return r.nextIntervalHistogram();
}
