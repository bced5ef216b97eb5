import t from 'tap';
import { PageAllocator, pagesFor, type Extent } from '../../pmm/alloc';

/** Small deterministic PRNG (mulberry32), so a failing seed can be replayed. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return (((x ^ (x >>> 14)) >>> 0) % n);
  };
}

/** The reference model: one boolean per page, the policy spelled out over free runs. */
class Naive {
  used: boolean[];
  constructor(n: number) {
    this.used = new Array<boolean>(n).fill(false);
  }
  runs(): Extent[] {
    const out: Extent[] = [];
    for (let i = 0; i < this.used.length; ) {
      if (this.used[i]) {
        i++;
        continue;
      }
      let j = i;
      while (j < this.used.length && !this.used[j]) j++;
      out.push({ page: i, pages: j - i });
      i = j;
    }
    return out;
  }
  freeCount(): number {
    return this.used.filter((u) => !u).length;
  }
  allocate(pages: number, maxExtents: number): Extent[] | 'full' | 'fragmented' {
    if (pages > this.freeCount()) return 'full';
    const runs = this.runs();
    let best: Extent | undefined;
    for (const r of runs) if (r.pages >= pages && (!best || r.pages < best.pages)) best = r;
    let picked: Extent[];
    if (best) {
      picked = [{ page: best.page, pages }];
    } else {
      let chosen: Extent[] = [];
      let need = pages;
      for (const r of runs) {
        if (need <= 0) break;
        chosen.push(r);
        need -= r.pages;
      }
      if (chosen.length > maxExtents) {
        const bySize = [...runs].sort((a, b) => b.pages - a.pages || a.page - b.page);
        chosen = [];
        need = pages;
        for (const r of bySize) {
          if (need <= 0 || chosen.length === maxExtents) break;
          chosen.push(r);
          need -= r.pages;
        }
        if (need > 0) return 'fragmented';
        chosen.sort((a, b) => a.page - b.page);
      }
      picked = [];
      let left = pages;
      for (const r of chosen) {
        const n = Math.min(left, r.pages);
        if (n > 0) picked.push({ page: r.page, pages: n });
        left -= n;
      }
    }
    for (const e of picked) for (let p = e.page; p < e.page + e.pages; p++) this.used[p] = true;
    return picked;
  }
  free(extents: Extent[]): void {
    for (const e of extents) for (let p = e.page; p < e.page + e.pages; p++) this.used[p] = false;
  }
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

t.test('pagesFor', async (t) => {
  t.equal(pagesFor(1, 4096), 1);
  t.equal(pagesFor(4096, 4096), 1);
  t.equal(pagesFor(4097, 4096), 2);
  t.equal(pagesFor(3 * 2 ** 21, 2 ** 21), 3);
  t.equal(pagesFor(Number.MAX_SAFE_INTEGER, 2 ** 21), 2 ** 32, 'exact near 2^53');
  t.equal(pagesFor(10, 3), 4, 'any page size');
  t.throws(() => pagesFor(0, 4096), { code: 'ERR_INVALID_ARG_VALUE' }, 'size 0 rejected');
  t.throws(() => pagesFor(-1, 4096), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => pagesFor(1.5, 4096), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => pagesFor('1' as unknown as number, 4096), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => pagesFor(1, 0), { code: 'ERR_INVALID_ARG_VALUE' });
});

t.test('empty allocator and exact fill', async (t) => {
  const a = new PageAllocator(100);
  t.equal(a.freePages, 100);
  t.equal(a.usedPages, 0);
  t.equal(a.largestFree, 100);
  t.same(a.allocate(40), [{ page: 0, pages: 40 }]);
  t.same(a.allocate(60), [{ page: 40, pages: 60 }], 'exactly what is left');
  t.equal(a.freePages, 0);
  t.equal(a.largestFree, 0);
  t.same(a.freeExtents(), []);
  const err = (() => {
    try {
      a.allocate(1);
    } catch (e) {
      return e as Record<string, unknown>;
    }
  })();
  t.equal(err?.name, 'NpmuError');
  t.match(err, { code: 'ERR_NPMU_NO_SPACE', free: 0, requested: 1, reason: 'full' });
  a.free([{ page: 0, pages: 40 }, { page: 40, pages: 60 }]);
  t.same(a.freeExtents(), [{ page: 0, pages: 100 }], 'coalesced back to one run');

  const zero = new PageAllocator(0);
  t.equal(zero.freePages, 0);
  t.throws(() => zero.allocate(1), { code: 'ERR_NPMU_NO_SPACE' });
});

t.test('built from used extents', async (t) => {
  const a = new PageAllocator(20, [
    { page: 10, pages: 5 },
    { page: 0, pages: 2 },
    { page: 15, pages: 1 },
  ]);
  t.same(a.freeExtents(), [
    { page: 2, pages: 8 },
    { page: 16, pages: 4 },
  ]);
  t.equal(a.usedPages, 8);
  t.throws(() => new PageAllocator(10, [{ page: 5, pages: 6 }]), { code: 'ERR_NPMU_META_CORRUPT' }, 'out of range');
  t.throws(
    () => new PageAllocator(10, [{ page: 0, pages: 3 }, { page: 2, pages: 2 }]),
    { code: 'ERR_NPMU_META_CORRUPT' },
    'overlap',
  );
  t.throws(() => new PageAllocator(10, [{ page: 0, pages: 0 }]), { code: 'ERR_NPMU_META_CORRUPT' }, 'empty extent');
  t.throws(() => new PageAllocator(-1), { code: 'ERR_OUT_OF_RANGE' });
});

t.test('best fit prefers the smallest hole that fits whole, lowest on ties', async (t) => {
  // holes: [0,5) [6,9) [10,13) [14,30)
  const used = [
    { page: 5, pages: 1 },
    { page: 9, pages: 1 },
    { page: 13, pages: 1 },
  ];
  const a = new PageAllocator(30, used);
  t.same(a.allocate(3), [{ page: 6, pages: 3 }], 'the 3-page hole, not the first hole');
  t.same(a.allocate(3), [{ page: 10, pages: 3 }], 'the next 3-page hole');
  t.same(a.allocate(4), [{ page: 0, pages: 4 }], 'the 5-page hole beats the 16-page one');
  t.same(a.allocate(10), [{ page: 14, pages: 10 }]);
});

t.test('fragmentation: gathers lowest first, then largest, then refuses', async (t) => {
  // Checkerboard of 100 pages: 50 one-page holes.
  const used: Extent[] = [];
  for (let p = 1; p < 100; p += 2) used.push({ page: p, pages: 1 });
  const a = new PageAllocator(100, used);
  t.equal(a.largestFree, 1);
  const got = a.allocate(4);
  t.same(got, [0, 2, 4, 6].map((page) => ({ page, pages: 1 })), 'lowest first');
  t.throws(() => a.allocate(10, { maxExtents: 9 }), { code: 'ERR_NPMU_NO_SPACE', reason: 'fragmented', free: 46, requested: 10 });
  t.equal(a.freePages, 46, 'a failed allocation changes nothing');
  t.equal(a.allocate(10, { maxExtents: 10 }).length, 10);

  // Holes of 1,1,1,1,8 pages: lowest-first needs 5 extents for 9 pages, largest-first 2.
  const b = new PageAllocator(16, [
    { page: 1, pages: 1 },
    { page: 3, pages: 1 },
    { page: 5, pages: 1 },
    { page: 7, pages: 1 },
  ]);
  t.same(b.allocate(9, { maxExtents: 2 }), [
    { page: 0, pages: 1 },
    { page: 8, pages: 8 },
  ]);
  t.throws(() => b.allocate(2, { maxExtents: 1 }), { code: 'ERR_NPMU_NO_SPACE', reason: 'fragmented' });
  t.same(b.allocate(2, { maxExtents: 2 }), [
    { page: 2, pages: 1 },
    { page: 4, pages: 1 },
  ]);
  t.same(b.freeExtents(), [{ page: 6, pages: 1 }]);
});

t.test('free: errors are atomic', async (t) => {
  const a = new PageAllocator(50);
  const x = a.allocate(10);
  const y = a.allocate(10);
  a.free(x);
  t.throws(() => a.free(x), { code: 'ERR_NPMU_META_CORRUPT' }, 'double free');
  t.throws(() => a.free([{ page: 5, pages: 10 }]), { code: 'ERR_NPMU_META_CORRUPT' }, 'partly free');
  t.throws(() => a.free([{ page: 45, pages: 10 }]), { code: 'ERR_NPMU_META_CORRUPT' }, 'out of range');
  t.throws(() => a.free([{ page: -1, pages: 1 }]), { code: 'ERR_NPMU_META_CORRUPT' }, 'negative');
  t.throws(
    () => a.free([{ page: 10, pages: 5 }, { page: 14, pages: 2 }]),
    { code: 'ERR_NPMU_META_CORRUPT' },
    'overlapping within one call',
  );
  t.throws(() => a.free([y[0], { page: 0, pages: 1 }]), { code: 'ERR_NPMU_META_CORRUPT' }, 'one bad extent');
  t.equal(a.freePages, 40, 'nothing was freed by the failed calls');
  a.free(y);
  t.same(a.freeExtents(), [{ page: 0, pages: 50 }]);
  t.throws(() => a.free({} as unknown as Extent[]), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => a.allocate(0), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => a.allocate(1, { maxExtents: 0 }), { code: 'ERR_INVALID_ARG_VALUE' });
});

t.test('random sequences match the bitmap model', async (t) => {
  for (const [seed, n] of [
    [1, 16],
    [2, 64],
    [3, 64],
    [4, 200],
    [5, 1000],
  ] as const) {
    const r = rng(seed);
    const a = new PageAllocator(n);
    const m = new Naive(n);
    const live: Extent[][] = [];
    let mismatches = 0;
    for (let op = 0; op < 1000; op++) {
      if (live.length > 0 && r(100) < 45) {
        const got = live.splice(r(live.length), 1)[0];
        // Free sometimes in pieces, in a shuffled order.
        const pieces = r(2) === 0 ? [got] : got.map((e) => [e]).sort(() => r(3) - 1);
        for (const p of pieces) {
          a.free(p);
          m.free(p);
        }
      } else {
        const want = 1 + r(Math.max(1, n >> (1 + r(4))));
        const maxExtents = 1 + r(8);
        const expected = m.allocate(want, maxExtents);
        let got: Extent[] | string;
        try {
          got = a.allocate(want, { maxExtents });
        } catch (e) {
          got = (e as { reason: string }).reason;
        }
        if (JSON.stringify(got) !== JSON.stringify(expected)) mismatches++;
        if (typeof got !== 'string') live.push(got);
      }
      if (a.freePages !== m.freeCount() || JSON.stringify(a.freeExtents()) !== JSON.stringify(m.runs())) mismatches++;
      const runs = m.runs();
      if (a.largestFree !== runs.reduce((x, e) => Math.max(x, e.pages), 0)) mismatches++;
    }
    t.equal(mismatches, 0, `seed ${seed}, ${n} pages: 1000 ops agree with the model`);
  }
});

t.test('exhaustive: every request size on every 8-page layout', async (t) => {
  let checked = 0;
  let bad = 0;
  for (let mask = 0; mask < 256; mask++) {
    const used: Extent[] = [];
    for (let p = 0; p < 8; p++) if (mask & (1 << p)) used.push({ page: p, pages: 1 });
    for (let want = 1; want <= 8; want++) {
      for (const maxExtents of [1, 2, 3, 8]) {
        const a = new PageAllocator(8, used);
        const m = new Naive(8);
        for (const e of used) m.used[e.page] = true;
        const expected = m.allocate(want, maxExtents);
        let got: Extent[] | string;
        try {
          got = a.allocate(want, { maxExtents });
        } catch (e) {
          got = (e as { reason: string }).reason;
        }
        checked++;
        if (JSON.stringify(got) !== JSON.stringify(expected)) bad++;
        if (Array.isArray(got)) {
          const total = got.reduce((s, e) => s + e.pages, 0);
          const clash = got.some((e) => mask & (((1 << e.pages) - 1) << e.page));
          if (total !== want || got.length > maxExtents || clash) bad++;
        }
      }
    }
  }
  t.equal(bad, 0, `${checked} cases agree with the model`);
});

t.test('a million pages stays fast', async (t) => {
  const n = 1_000_000;
  const r = rng(42);
  const start = Date.now();
  const a = new PageAllocator(n);
  const live: Extent[][] = [];
  for (let i = 0; i < 20000; i++) {
    if (live.length > 0 && r(3) === 0) a.free(live.splice(r(live.length), 1)[0]);
    else {
      try {
        live.push(a.allocate(1 + r(200), { maxExtents: 64 }));
      } catch (e) {
        if ((e as { code?: string }).code !== 'ERR_NPMU_NO_SPACE') throw e;
      }
    }
  }
  for (const x of live) a.free(x);
  t.same(a.freeExtents(), [{ page: 0, pages: n }], 'everything comes back');
  const ms = Date.now() - start;
  t.ok(ms < 20000, `20000 operations on 1e6 pages in ${ms} ms`);
  t.equal(code(() => a.allocate(n + 1)), 'ERR_NPMU_NO_SPACE');
});
