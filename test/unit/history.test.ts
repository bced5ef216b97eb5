/**
 * One history (pmm/history.ts): which half of a volume may be served,
 * decided from the units' own records, for every fork the issue names.
 */
import t from 'tap';
import { decide } from '../../pmm/history';
import type { HalfView } from '../../pmm/history';
import type { RootRecord } from '../../pmm/metadata';

const VOL = 'ab'.repeat(16);

function root(generation: number, peerStale = false, staleSince = 0, volumeId = VOL): RootRecord {
  return {
    generation,
    epoch: 1,
    writer: 'cd'.repeat(16),
    sync: { peerStale, staleSince },
    volume: { volumeId, name: 'vol', primaryUnit: '11'.repeat(16), mirrorUnit: '22'.repeat(16), pageSize: 4096, dataPages: 100, createdAtMs: 1, nextRegionId: 1 },
    regionCount: 0,
    pages: [],
  };
}
const R = (generation: number, peerStale = false, staleSince = 0): HalfView => ({ state: 'root', root: root(generation, peerStale, staleSince) });
const GONE: HalfView = { state: 'unreachable' };
const EMPTY: HalfView = { state: 'empty' };

t.test('both halves in sync at one generation: serve both', async (t) => {
  t.match(decide({ primary: R(7), mirror: R(7) }), { kind: 'serve', source: 'primary', current: ['primary', 'mirror'], rollForward: null, stale: null, markStale: false });
});

t.test('a commit interrupted between the halves (one generation apart, both in sync) rolls the newer one forward', async (t) => {
  t.match(decide({ primary: R(8), mirror: R(7) }), { kind: 'serve', source: 'primary', rollForward: 'mirror', stale: null });
  t.match(decide({ primary: R(7), mirror: R(8) }), { kind: 'serve', source: 'mirror', rollForward: 'primary', stale: null });
});

t.test('the fork of the issue: an acknowledged delete on the primary alone, then a restart on the mirror alone', async (t) => {
  // The mirror died; the PMM recorded it stale on the primary (generation 5) before acknowledging the delete (6).
  const primary = R(6, true, 5);
  const mirror = R(4);
  const onMirror = decide({ primary: GONE, mirror });
  t.match(onMirror, { kind: 'wait', code: 'ERR_NPMU_VOLUME_WAITING' }, 'the stale branch alone is never served');
  t.match(String((onMirror as { reason: string }).reason), /may have gone on without it/);
  t.match(decide({ primary, mirror }), { kind: 'serve', source: 'primary', current: ['primary'], stale: 'mirror', markStale: false }, 'when the primary returns, its history wins');
  t.match(decide({ primary, mirror: GONE }), { kind: 'serve', source: 'primary', stale: 'mirror' }, 'the survivor of record serves alone');
});

t.test('a stale half that went on anyway, or both halves alone: split brain, never merged by generation', async (t) => {
  t.match(decide({ primary: R(6, true, 5), mirror: R(9, true, 5) }), { kind: 'split-brain', code: 'ERR_NPMU_SPLIT_BRAIN' });
  t.match(decide({ primary: R(6, true, 5), mirror: R(9) }), { kind: 'split-brain' }, 'the marked-stale half has a newer generation');
  t.match(decide({ primary: R(9), mirror: R(6) }), { kind: 'split-brain' }, 'in sync but more than one update apart');
});

t.test('one half reachable and in sync: wait; an operator may force it', async (t) => {
  t.match(decide({ primary: R(3), mirror: GONE }), { kind: 'wait' });
  t.match(decide({ primary: R(3), mirror: GONE }, 'primary'), { kind: 'serve', source: 'primary', stale: 'mirror', markStale: true });
  t.match(decide({ primary: R(6, true, 5), mirror: R(9, true, 5) }, 'mirror'), { kind: 'serve', source: 'mirror', stale: 'primary', markStale: false });
  t.match(decide({ primary: GONE, mirror: R(3) }, 'primary'), { kind: 'wait' }, 'cannot force a half that is not there');
});

t.test('empty halves: creation interrupted, metadata lost, nothing at all', async (t) => {
  t.match(decide({ primary: R(1), mirror: EMPTY }), { kind: 'serve', source: 'primary', rollForward: 'mirror', stale: null }, 'creation stopped between the halves');
  t.match(decide({ primary: R(5), mirror: EMPTY }), { kind: 'serve', source: 'primary', stale: 'mirror', markStale: true }, 'a half whose metadata is gone is stale');
  t.match(decide({ primary: EMPTY, mirror: EMPTY }), { kind: 'empty' });
  t.match(decide({ primary: GONE, mirror: GONE }), { kind: 'wait' });
  t.match(decide({ primary: EMPTY, mirror: GONE }), { kind: 'wait' });
});

t.test('halves of different volumes are never merged', async (t) => {
  t.match(decide({ primary: R(3), mirror: { state: 'root', root: root(3, false, 0, 'ef'.repeat(16)) } }), { kind: 'split-brain' });
});
