/** Summary statistics shared by the Node benchmark (the C loop computes the same
 * figures the same way: nearest-rank percentiles over the timed iterations). */

/** The p-th percentile of ascending `sorted` by nearest rank: the smallest sample
 * with at least p% of the samples at or below it. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const rank = Math.min(n, Math.max(1, Math.ceil((p / 100) * n - 1e-9)));
  return sorted[rank - 1] as number;
}

export interface Summary {
  n: number;
  p50_us: number;
  p99_us: number;
  avg_us: number;
  min_us: number;
  max_us: number;
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

/** Summarise samples in microseconds (the array is sorted in place). */
export function summarize(samplesUs: Float64Array): Summary {
  samplesUs.sort();
  const n = samplesUs.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += samplesUs[i] as number;
  return {
    n,
    p50_us: r3(percentile(samplesUs, 50)),
    p99_us: r3(percentile(samplesUs, 99)),
    avg_us: r3(n ? sum / n : NaN),
    min_us: r3(n ? (samplesUs[0] as number) : NaN),
    max_us: r3(n ? (samplesUs[n - 1] as number) : NaN),
  };
}
