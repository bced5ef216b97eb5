/**
 * One history: which half of a volume may be served, decided from what the
 * units themselves record (pure logic; pmm/volume.ts does the I/O).
 *
 * Each half's metadata root carries its sync state (pmm/metadata.ts):
 * `peerStale` says "my peer missed updates since generation `staleSince`".
 * The rules that make it work, in the manner of MD's event counts and DRBD's
 * generation identifiers:
 *
 * 1. A PMM acknowledges nothing that only one half holds until that half
 *    records its peer stale (a metadata update that reaches one half is
 *    followed by a root-only update marking the other stale, before the
 *    reply; a client's single-half write asks the PMM to mark the other half
 *    stale before it is acknowledged; a half the PMM loses is marked stale on
 *    the other at once).
 * 2. So two halves that both say "in sync" differ by at most one
 *    unacknowledged update (a commit interrupted between the halves): the
 *    newer one is rolled forward onto the other.
 * 3. A half that says its peer is stale is the volume's history; the peer is
 *    never served (not read, not mapped) until it is resynced by a full copy.
 * 4. Both halves saying the other is stale is a split brain (only an operator
 *    forcing one half ends it); so is an in-sync pair more than one
 *    generation apart.
 * 5. A single reachable half that says "in sync" cannot know whether its
 *    peer went on without it: the volume waits for the peer (or an operator's
 *    force), it is never served from that half on a guess. Generation numbers
 *    never decide between two histories.
 */
import type { Half, RootRecord } from './metadata';

/** What one half of a volume showed at recovery. */
export type HalfView =
  | { state: 'unreachable' }
  /** Reachable, but no valid root (never written, or wiped). */
  | { state: 'empty' }
  | { state: 'root'; root: RootRecord };

export type Decision =
  | {
      kind: 'serve';
      /** The half whose metadata is the volume's state. */
      source: Half;
      /** Halves in sync with the source (the source included) that can be served. */
      current: Half[];
      /** A current half one generation behind: write the source's image onto it before serving it. */
      rollForward: Half | null;
      /** The half that missed updates (reachable or not): never served until resynced. */
      stale: Half | null;
      /** The source must record `stale` in its root before anything is served (it does not yet). */
      markStale: boolean;
    }
  | { kind: 'wait'; code: 'ERR_NPMU_VOLUME_WAITING'; reason: string }
  | { kind: 'split-brain'; code: 'ERR_NPMU_SPLIT_BRAIN'; reason: string }
  | { kind: 'empty'; code: 'ERR_NPMU_META_EMPTY'; reason: string };

const other = (h: Half): Half => (h === 'primary' ? 'mirror' : 'primary');

/**
 * Decides how a volume may be served from its halves' roots. `force` (an
 * operator's `volume-force`) serves that half whatever the other says,
 * marking the other stale.
 */
export function decide(views: Record<Half, HalfView>, force?: Half): Decision {
  const p = views.primary;
  const m = views.mirror;
  if (force) {
    const v = views[force];
    if (v.state !== 'root') {
      return { kind: 'wait', code: 'ERR_NPMU_VOLUME_WAITING', reason: `cannot force the ${force}: it is ${v.state === 'empty' ? 'empty' : 'unreachable'}` };
    }
    const stale = other(force);
    const already = v.root.sync.peerStale;
    return { kind: 'serve', source: force, current: [force], rollForward: null, stale, markStale: !already };
  }
  if (p.state !== 'root' && m.state !== 'root') {
    if (p.state === 'empty' && m.state === 'empty') return { kind: 'empty', code: 'ERR_NPMU_META_EMPTY', reason: 'no metadata on either half' };
    return { kind: 'wait', code: 'ERR_NPMU_VOLUME_WAITING', reason: 'no half with metadata is reachable' };
  }
  // Exactly one half has a root.
  if (p.state !== 'root' || m.state !== 'root') {
    const src: Half = p.state === 'root' ? 'primary' : 'mirror';
    const root = (views[src] as { root: RootRecord }).root;
    const peer = views[other(src)];
    if (root.sync.peerStale) return { kind: 'serve', source: src, current: [src], rollForward: null, stale: other(src), markStale: false };
    if (peer.state === 'empty') {
      // The peer is reachable and holds nothing: either the volume's creation
      // stopped between the halves (generation 1), or its metadata was lost.
      if (root.generation === 1) return { kind: 'serve', source: src, current: [src, other(src)], rollForward: other(src), stale: null, markStale: false };
      return { kind: 'serve', source: src, current: [src], rollForward: null, stale: other(src), markStale: true };
    }
    return {
      kind: 'wait',
      code: 'ERR_NPMU_VOLUME_WAITING',
      reason:
        `only the ${src} is reachable and it records no missed updates on the ${other(src)}: ` +
        `the ${other(src)} may have gone on without it. Bring the ${other(src)} back, or force the ${src} (what the ${other(src)} acknowledged alone is then lost)`,
    };
  }
  const P = p.root;
  const M = m.root;
  if (P.volume.volumeId !== M.volume.volumeId) {
    return { kind: 'split-brain', code: 'ERR_NPMU_SPLIT_BRAIN', reason: `the halves hold different volumes (${P.volume.volumeId}, ${M.volume.volumeId})` };
  }
  if (P.sync.peerStale && M.sync.peerStale) {
    return {
      kind: 'split-brain',
      code: 'ERR_NPMU_SPLIT_BRAIN',
      reason: `both halves went on alone (primary since generation ${P.sync.staleSince}, mirror since ${M.sync.staleSince}): force the one to keep`,
    };
  }
  for (const [src, a, b] of [['primary', P, M], ['mirror', M, P]] as const) {
    if (!a.sync.peerStale) continue;
    if (b.generation > a.generation) {
      return {
        kind: 'split-brain',
        code: 'ERR_NPMU_SPLIT_BRAIN',
        reason: `the ${src} marked the ${other(src)} stale at generation ${a.sync.staleSince}, but the ${other(src)} has gone on to ${b.generation}: force the one to keep`,
      };
    }
    return { kind: 'serve', source: src, current: [src], rollForward: null, stale: other(src), markStale: false };
  }
  const gap = P.generation - M.generation;
  if (Math.abs(gap) > 1) {
    return {
      kind: 'split-brain',
      code: 'ERR_NPMU_SPLIT_BRAIN',
      reason: `both halves say they are in sync but are ${Math.abs(gap)} generations apart (${P.generation}, ${M.generation}): force the one to keep`,
    };
  }
  const src: Half = gap >= 0 ? 'primary' : 'mirror';
  return { kind: 'serve', source: src, current: ['primary', 'mirror'], rollForward: gap === 0 ? null : other(src), stale: null, markStale: false };
}
