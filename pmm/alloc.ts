/**
 * Page allocation for one half (unit) of a volume.
 *
 * The allocator is rebuilt from the metadata every time the PMM recovers a
 * volume: the used pages are exactly the union of the region extents recorded
 * for that half (see pmm/metadata.ts), so there is no separate allocation map
 * that could disagree with the region table. It holds only a sorted list of
 * free extents, coalesced, so its cost depends on fragmentation, not on the
 * number of pages (a 1e6-page device with a few regions is a handful of
 * entries).
 *
 * Policy (create_region, [0081]; regions may be discontiguous in the device,
 * [0076], the unit maps them into one contiguous network-virtual range):
 * 1. one contiguous extent if any hole is big enough: best fit (the smallest
 *    such hole, lowest address on ties), taken from the hole's start;
 * 2. otherwise whole holes gathered lowest address first, the last one cut;
 * 3. if that needs more than `maxExtents` extents, the largest holes instead
 *    (returned in address order), so "too fragmented" is only reported when
 *    no choice of `maxExtents` holes can satisfy the request.
 * A failed allocation changes nothing.
 */
import { NpmuError, argRangeError, argTypeError, argValueError } from '../lib/errors';

/** A run of `pages` pages starting at page `page` (both safe integers). */
export interface Extent {
  page: number;
  pages: number;
}

export interface AllocateOptions {
  /** Most extents one allocation may return (the unit maps each one separately). Default 64. */
  maxExtents?: number;
}

/** Pages needed for `size` bytes: ceil(size / pageSize). A size of 0 is rejected. */
export function pagesFor(size: number, pageSize: number): number {
  checkPositiveInt('size', size);
  checkPositiveInt('pageSize', pageSize);
  // BigInt keeps this exact near 2^53, where float division can round.
  return Number((BigInt(size) + BigInt(pageSize) - 1n) / BigInt(pageSize));
}

export class PageAllocator {
  readonly dataPages: number;
  /** Free extents, sorted by page, non-empty, never touching (always coalesced). */
  #free: Extent[] = [];
  #freePages = 0;

  /**
   * @param dataPages pages on this half, numbered 0..dataPages-1
   * @param used extents already owned by regions (any order); an extent out of
   *   range or overlapping another is 'ERR_NPMU_META_CORRUPT'
   */
  constructor(dataPages: number, used: readonly Extent[] = []) {
    if (!Number.isSafeInteger(dataPages) || dataPages < 0) {
      throw argRangeError('dataPages', 'a non-negative safe integer', dataPages);
    }
    if (!Array.isArray(used)) throw argTypeError('used', 'an array of extents', used);
    this.dataPages = dataPages;
    const sorted = used.map((e, i) => checkExtent(e, dataPages, `used[${i}]`)).sort((a, b) => a.page - b.page);
    let cursor = 0;
    for (const e of sorted) {
      if (e.page < cursor) {
        throw new NpmuError('ERR_NPMU_META_CORRUPT', `used extent ${fmt(e)} overlaps another used extent`, { extent: e });
      }
      if (e.page > cursor) this.#pushFree(cursor, e.page - cursor);
      cursor = e.page + e.pages;
    }
    if (cursor < dataPages) this.#pushFree(cursor, dataPages - cursor);
  }

  get freePages(): number {
    return this.#freePages;
  }

  get usedPages(): number {
    return this.dataPages - this.#freePages;
  }

  /** The longest run of free pages (0 when full). */
  get largestFree(): number {
    let max = 0;
    for (const e of this.#free) if (e.pages > max) max = e.pages;
    return max;
  }

  /** A copy of the free extents in page order (for diagnostics and tests). */
  freeExtents(): Extent[] {
    return this.#free.map((e) => ({ page: e.page, pages: e.pages }));
  }

  /**
   * Allocates `pages` pages as at most `maxExtents` extents, in the order the
   * region's bytes are laid out. Throws 'ERR_NPMU_NO_SPACE' (properties
   * `free`, `requested`, `largestFree`, `maxExtents`, `reason`: 'full' or
   * 'fragmented') and changes nothing if that is impossible.
   */
  allocate(pages: number, options: AllocateOptions = {}): Extent[] {
    checkPositiveInt('pages', pages);
    if (options === null || typeof options !== 'object') throw argTypeError('options', 'an object', options);
    const maxExtents = options.maxExtents ?? 64;
    checkPositiveInt('options.maxExtents', maxExtents);

    if (pages > this.#freePages) throw this.#noSpace(pages, maxExtents, 'full');

    // 1. best fit: the smallest hole that holds it whole.
    let best = -1;
    for (let i = 0; i < this.#free.length; i++) {
      const p = this.#free[i].pages;
      if (p >= pages && (best < 0 || p < this.#free[best].pages)) {
        best = i;
        if (p === pages) break; // exact fit cannot be beaten, and it is the lowest such
      }
    }
    if (best >= 0) {
      const hole = this.#free[best];
      const out = { page: hole.page, pages };
      this.#take(best, pages);
      return [out];
    }

    // 2. whole holes, lowest address first.
    let chosen: number[] = [];
    let need = pages;
    for (let i = 0; i < this.#free.length && need > 0; i++) {
      chosen.push(i);
      need -= this.#free[i].pages;
    }
    // 3. too many pieces: the largest holes can only do better.
    if (chosen.length > maxExtents) {
      const bySize = this.#free.map((_, i) => i).sort((a, b) => this.#free[b].pages - this.#free[a].pages || a - b);
      chosen = [];
      need = pages;
      for (let k = 0; k < bySize.length && k < maxExtents && need > 0; k++) {
        chosen.push(bySize[k]);
        need -= this.#free[bySize[k]].pages;
      }
      if (need > 0) throw this.#noSpace(pages, maxExtents, 'fragmented');
      chosen.sort((a, b) => a - b);
    }

    // Build the result (the last hole in address order gives only what is left),
    // then remove from the highest index down so earlier indices stay valid.
    const out: Extent[] = [];
    const takes: Array<[number, number]> = [];
    let left = pages;
    for (const i of chosen) {
      const hole = this.#free[i];
      const n = Math.min(hole.pages, left);
      if (n === 0) continue;
      out.push({ page: hole.page, pages: n });
      takes.push([i, n]);
      left -= n;
    }
    for (let k = takes.length - 1; k >= 0; k--) this.#take(takes[k][0], takes[k][1]);
    return out;
  }

  /**
   * Returns extents to the free list. Out of range, overlapping each other or
   * already free (a double free) is 'ERR_NPMU_META_CORRUPT', and nothing is freed.
   */
  free(extents: readonly Extent[]): void {
    if (!Array.isArray(extents)) throw argTypeError('extents', 'an array of extents', extents);
    const sorted = extents.map((e, i) => checkExtent(e, this.dataPages, `extents[${i}]`)).sort((a, b) => a.page - b.page);
    for (let k = 1; k < sorted.length; k++) {
      const prev = sorted[k - 1];
      if (sorted[k].page < prev.page + prev.pages) {
        throw new NpmuError('ERR_NPMU_META_CORRUPT', `extents ${fmt(prev)} and ${fmt(sorted[k])} overlap`, {
          extent: sorted[k],
        });
      }
    }
    for (const e of sorted) {
      const i = this.#firstEndingAfter(e.page);
      if (i < this.#free.length && this.#free[i].page < e.page + e.pages) {
        throw new NpmuError('ERR_NPMU_META_CORRUPT', `double free: extent ${fmt(e)} overlaps free pages ${fmt(this.#free[i])}`, {
          extent: e,
        });
      }
    }
    for (const e of sorted) this.#insert(e.page, e.pages);
  }

  /** Index of the first free extent whose end is after `page` (binary search). */
  #firstEndingAfter(page: number): number {
    let lo = 0;
    let hi = this.#free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const e = this.#free[mid];
      if (e.page + e.pages <= page) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  #pushFree(page: number, pages: number): void {
    this.#free.push({ page, pages });
    this.#freePages += pages;
  }

  /** Takes `n` pages from the start of free extent `i`. */
  #take(i: number, n: number): void {
    const hole = this.#free[i];
    if (n === hole.pages) this.#free.splice(i, 1);
    else this.#free[i] = { page: hole.page + n, pages: hole.pages - n };
    this.#freePages -= n;
  }

  /** Inserts a range known not to overlap any free extent, coalescing with neighbours. */
  #insert(page: number, pages: number): void {
    const i = this.#firstEndingAfter(page); // free[i] starts after the range; free[i-1] ends at or before it
    const prev = i > 0 ? this.#free[i - 1] : undefined;
    const next = i < this.#free.length ? this.#free[i] : undefined;
    const joinPrev = prev !== undefined && prev.page + prev.pages === page;
    const joinNext = next !== undefined && page + pages === next.page;
    if (joinPrev && joinNext) {
      this.#free.splice(i - 1, 2, { page: prev.page, pages: prev.pages + pages + next.pages });
    } else if (joinPrev) {
      this.#free[i - 1] = { page: prev.page, pages: prev.pages + pages };
    } else if (joinNext) {
      this.#free[i] = { page, pages: pages + next.pages };
    } else {
      this.#free.splice(i, 0, { page, pages });
    }
    this.#freePages += pages;
  }

  #noSpace(requested: number, maxExtents: number, reason: 'full' | 'fragmented'): NpmuError {
    const free = this.#freePages;
    const largestFree = this.largestFree;
    const why =
      reason === 'full'
        ? `${requested} pages requested, ${free} free`
        : `${requested} pages requested, ${free} free but not in ${maxExtents} extents or fewer (largest free run ${largestFree})`;
    return new NpmuError('ERR_NPMU_NO_SPACE', `no space: ${why}`, { free, requested, largestFree, maxExtents, reason });
  }
}

function checkPositiveInt(name: string, v: unknown): asserts v is number {
  if (typeof v !== 'number') throw argTypeError(name, 'of type number', v);
  if (v === 0) throw argValueError(name, 'must not be 0', v);
  if (!Number.isSafeInteger(v) || v < 0) throw argRangeError(name, 'a positive safe integer', v);
}

/** Validates an extent from metadata or a caller; returns a private copy. */
function checkExtent(e: unknown, dataPages: number, what: string): Extent {
  const x = e as Extent | null;
  if (
    x === null ||
    typeof x !== 'object' ||
    !Number.isSafeInteger(x.page) ||
    !Number.isSafeInteger(x.pages) ||
    x.page < 0 ||
    x.pages < 1 ||
    x.page + x.pages > dataPages
  ) {
    const shown = x !== null && typeof x === 'object' ? `{page: ${String(x.page)}, pages: ${String(x.pages)}}` : String(e);
    throw new NpmuError('ERR_NPMU_META_CORRUPT', `${what} ${shown} is not an extent within [0, ${dataPages})`, { extent: e });
  }
  return { page: x.page, pages: x.pages };
}

function fmt(e: Extent): string {
  return `[${e.page}, ${e.page + e.pages})`;
}
