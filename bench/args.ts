/**
 * Argument parsing shared by the disk and KV benchmarks (bench/disk.ts,
 * bench/kv.ts): `--key value` options and counts.
 */

/** A lookup of `--key value` in argv (undefined if the key is absent). */
export function argGetter(argv: string[]): (key: string) => string | undefined {
  return (k) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
}

/** An integer ≥ min from `v`, or `dflt` when v is undefined or empty; RangeError otherwise. */
export function count(v: string | undefined, dflt: number, min: number): number {
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new RangeError(`bad count '${v}'`);
  return n;
}

/** The options the disk and KV benchmarks share: --dir (required), --hdr-dir, --fs. */
export function commonArgs(get: (key: string) => string | undefined): { dir: string; hdrDir: string | undefined; fs: string } {
  const dir = get('--dir');
  if (!dir) throw new Error('--dir DIR is required');
  return { dir, hdrDir: get('--hdr-dir'), fs: get('--fs') ?? 'local file system' };
}
