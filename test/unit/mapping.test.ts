/** The native mapping layer, natively on the host (no RDMA device needed):
 * tmpfs and ordinary files, stitched extents, persistence, detach on close,
 * and bad arguments. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { mapFile, mapExtents, listDevices, native } from '../../lib/verbs';

const page = 4096;
function scratch(dir: string, size: number): string {
  const p = path.join(dir, `npmu-unit-${process.pid}-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(p, Buffer.alloc(0));
  fs.truncateSync(p, size);
  t.teardown(() => fs.rmSync(p, { force: true }));
  return p;
}

t.test('listDevices answers on any host', async (t) => {
  t.ok(Array.isArray(listDevices()));
});

t.test('tmpfs file: kind, writes through the ArrayBuffer land in the file, msync', async (t) => {
  const p = scratch('/dev/shm', 16 * page);
  const m = mapFile(p);
  t.equal(m.kind, 'tmpfs');
  t.equal(m.pageSize, page);
  t.equal(m.deviceSize, 16 * page);
  t.equal(m.length, 16 * page);
  const v = new Uint8Array(m.buffer());
  v.set(Buffer.from('hello'), 3 * page + 7);
  t.equal(m.persist(3 * page + 7, 5), 'msync');
  t.equal(fs.readFileSync(p).toString('utf8', 3 * page + 7, 3 * page + 12), 'hello');
  m.close();
  t.equal(v.byteLength, 0, 'views are detached when the mapping closes');
  t.equal(m.closed, true);
  t.doesNotThrow(() => m.close(), 'idempotent');
  t.throws(() => m.buffer(), { code: 'ERR_NPMU_CLOSED' });
  t.throws(() => m.persist(0, 1), { code: 'ERR_NPMU_CLOSED' });
});

t.test('ordinary file: create and size on request, offset mapping, read-only', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'unit.img');
  const m = mapFile(p, { create: true, size: 8 * page, offset: 2 * page, length: 4 * page });
  t.equal(m.kind, 'file');
  t.equal(fs.statSync(p).size, 8 * page);
  t.equal(m.length, 4 * page);
  new Uint8Array(m.buffer())[0] = 0xab;
  t.equal(m.persist(0, 1), 'msync');
  t.equal(fs.readFileSync(p)[2 * page], 0xab, 'offset honoured');
  m.close();
  const r = mapFile(p, { readOnly: true });
  t.equal(r.readOnly, true);
  t.equal(new Uint8Array(r.buffer())[2 * page], 0xab);
  r.close();
  t.throws(() => mapFile(path.join(dir, 'missing')), { code: 'ENOENT' });
  t.throws(() => mapFile(p, { offset: 100 }), { code: 'ERR_NPMU_NOT_ALIGNED' });
  t.throws(() => mapFile(p, { length: 100 }), { code: 'ERR_NPMU_NOT_ALIGNED' });
  t.throws(() => mapFile(p, { offset: 8 * page, length: page }), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => mapFile(dir), { code: /EISDIR|ERR_INVALID_ARG_VALUE|EINVAL|ENODEV/ }, 'a directory');
});

t.test('stitched extents: one contiguous range over discontiguous file pages', async (t) => {
  const p = scratch('/dev/shm', 8 * page);
  const m = mapExtents(p, [
    { offset: 5 * page, length: page },
    { offset: 1 * page, length: 2 * page },
    { offset: 7 * page, length: page },
  ]);
  t.equal(m.length, 4 * page);
  const v = new Uint8Array(m.buffer());
  for (let i = 0; i < v.length; i++) v[i] = (i / page) | 0 ? ((i / page) | 0) + 1 : 1;
  v.fill(0xee, page - 2, page + 2); // across the first seam
  m.persist(0, m.length);
  const f = fs.readFileSync(p);
  t.equal(f[5 * page + page - 1], 0xee, 'end of device page 5');
  t.equal(f[1 * page], 0xee, 'start of device page 1');
  t.equal(f[7 * page], 4, 'fourth virtual page is device page 7');
  t.equal(f[0], 0, 'unmapped pages untouched');
  m.close();
  t.throws(() => mapExtents(p, []), { code: /ERR_INVALID_ARG_VALUE|ERR_OUT_OF_RANGE/ }, 'no extents');
  t.throws(() => mapExtents(p, [{ offset: 1, length: page }]), { code: 'ERR_NPMU_NOT_ALIGNED' });
  t.throws(() => mapExtents(p, [{ offset: 7 * page, length: 2 * page }]), { code: 'ERR_OUT_OF_RANGE' });
});

t.test('bad arguments are TypeError/RangeError with codes, never a crash', async (t) => {
  const p = scratch('/dev/shm', 4 * page);
  const junk: unknown[] = [undefined, null, -1, 1.5, NaN, Infinity, 2 ** 60, '7', {}, [], 1n, Symbol('s')];
  const ok = /^(ERR_INVALID_ARG_TYPE|ERR_INVALID_ARG_VALUE|ERR_OUT_OF_RANGE|ERR_NPMU_NOT_ALIGNED|ENOENT)$/;
  const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const bad of junk) {
    const cases: Array<[string, () => unknown]> = [
      ['mapFile(path)', () => n.mapFile!(bad)],
      ['mapFile(opts)', () => n.mapFile!(p, bad)],
      ['offset', () => n.mapFile!(p, { offset: bad })],
      ['length', () => n.mapFile!(p, { length: bad })],
      ['size', () => n.mapFile!(p, { size: bad })],
      ['extents', () => n.mapExtents!(p, bad)],
      ['extent', () => n.mapExtents!(p, [bad])],
      ['extent.offset', () => n.mapExtents!(p, [{ offset: bad, length: page }])],
    ];
    for (const [what, fn] of cases) {
      let err: { code?: string } | undefined;
      let res: unknown;
      try {
        res = fn();
      } catch (e) {
        err = e as { code?: string };
      }
      if (err === undefined) {
        (res as { close?: () => void })?.close?.();
        continue; // undefined/defaults are legitimately accepted
      }
      t.match(err.code, ok, `${what} = ${typeof bad === 'symbol' ? 'symbol' : typeof bad === 'bigint' ? '1n' : JSON.stringify(bad)}`);
    }
  }
  const m = mapFile(p);
  for (const [o, l] of [[-1, 1], [0, 5 * page], [4 * page, 1], [NaN, 1]] as const) {
    t.throws(() => m.persist(o, l), { code: /ERR_OUT_OF_RANGE|ERR_INVALID_ARG_TYPE/ }, `persist(${o}, ${l})`);
  }
  m.close();
});
