import t from 'tap';
import { NpmuError } from '../../lib/errors';
import { AttrCache, type RegionAttributes } from '../../pmm/attrs';

const U64_MAX = (1n << 64n) - 1n;

function record(over: Partial<RegionAttributes> = {}): RegionAttributes {
  return {
    name: 'wal-tail',
    size: 8 << 20,
    basePointer: 0x7f00_0000_0000n,
    owner: 'postgres@db1',
    createdAtMs: 1_700_000_000_000,
    lastOpenAtMs: 1_700_000_500_000,
    durability: 'pmem',
    durable: true,
    primaryUnit: '0123456789abcdef0123456789abcdef',
    mirrorUnit: 'fedcba9876543210fedcba9876543210',
    ...over,
  };
}

function thrownBy(fn: () => unknown): NpmuError | undefined {
  try {
    fn();
  } catch (e) {
    return e as NpmuError;
  }
  return undefined;
}

t.test('typed accessors', async (t) => {
  const a = new AttrCache(record({ basePointer: U64_MAX }));
  t.same(a.names(), [
    'name',
    'size',
    'basePointer',
    'owner',
    'createdAtMs',
    'lastOpenAtMs',
    'durability',
    'durable',
    'primaryUnit',
    'mirrorUnit',
  ]);
  t.equal(a.getAttrString('name'), 'wal-tail');
  t.equal(a.getAttrString('owner'), 'postgres@db1');
  t.equal(a.getAttrString('durability'), 'pmem');
  t.equal(a.getAttrString('primaryUnit'), '0123456789abcdef0123456789abcdef');
  t.equal(a.getAttrString('mirrorUnit'), 'fedcba9876543210fedcba9876543210');
  t.equal(a.getAttrNumber('size'), 8 << 20);
  t.equal(a.getAttrU64('size'), BigInt(8 << 20), 'a number attribute widens to u64');
  t.equal(a.getAttrU64('basePointer'), U64_MAX, 'full u64 range');
  t.equal(a.getAttrBool('durable'), true);
  t.equal(a.getAttrDate('createdAtMs').getTime(), 1_700_000_000_000);
  t.ok(a.getAttrDate('lastOpenAtMs') instanceof Date);
  t.not(a.getAttrDate('createdAtMs'), a.getAttrDate('createdAtMs'), 'a new Date each call');
  t.equal(a.typeOf('basePointer'), 'u64');
  t.equal(a.typeOf('durable'), 'bool');
  t.equal(new AttrCache(record({ lastOpenAtMs: 0 })).getAttrDate('lastOpenAtMs').getTime(), 0, 'never opened');
  t.equal(new AttrCache(record({ durability: 'volatile', durable: false })).getAttrBool('durable'), false);
});

t.test('wrong accessor is ERR_NPMU_ATTR_TYPE', async (t) => {
  const a = new AttrCache(record());
  const cases: Array<[string, () => unknown]> = [
    ['number of a u64', () => a.getAttrNumber('basePointer')],
    ['string of a number', () => a.getAttrString('size')],
    ['bool of a string', () => a.getAttrBool('name')],
    ['u64 of a string', () => a.getAttrU64('owner')],
    ['u64 of a bool', () => a.getAttrU64('durable')],
    ['u64 of a date', () => a.getAttrU64('createdAtMs')],
    ['date of a number', () => a.getAttrDate('size')],
    ['number of a date', () => a.getAttrNumber('lastOpenAtMs')],
    ['string of a u64', () => a.getAttrString('basePointer', 100)],
  ];
  for (const [what, fn] of cases) {
    const e = thrownBy(fn);
    t.ok(e instanceof NpmuError, `${what}: NpmuError`);
    t.match(e, { code: 'ERR_NPMU_ATTR_TYPE', name: 'NpmuError' }, what);
  }
  t.match(thrownBy(() => a.getAttrNumber('basePointer')), { attr: 'basePointer', type: 'u64', accessor: 'getAttrNumber' });
});

t.test('unknown names are ERR_NPMU_ATTR_UNKNOWN', async (t) => {
  const a = new AttrCache(record());
  for (const name of ['nope', '', 'Name', 'toString', '__proto__', 'constructor', 'hasOwnProperty']) {
    t.throws(() => a.getAttrString(name), { code: 'ERR_NPMU_ATTR_UNKNOWN', attr: name }, JSON.stringify(name));
  }
  t.throws(() => a.getAttrU64('nope'), { code: 'ERR_NPMU_ATTR_UNKNOWN' });
  t.throws(() => a.typeOf('nope'), { code: 'ERR_NPMU_ATTR_UNKNOWN' });
  t.throws(() => a.getAttrString(42 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' });
  // Fields outside the schema are not exposed.
  const extra = new AttrCache({ ...record(), secret: 'x' } as RegionAttributes);
  t.throws(() => extra.getAttrString('secret'), { code: 'ERR_NPMU_ATTR_UNKNOWN' });
});

t.test('strings longer than maxLen are cut and flagged [0098]', async (t) => {
  const a = new AttrCache(record({ name: 'journal-日本-🚀🚀' }));
  t.equal(a.getAttrString('name', 100), 'journal-日本-🚀🚀');
  t.equal(a.getAttrString('name', 13), 'journal-日本-🚀🚀', 'exactly maxLen characters fits');
  const e = thrownBy(() => a.getAttrString('name', 12));
  t.ok(e instanceof NpmuError);
  t.match(e, { code: 'ERR_NPMU_ATTR_TRUNCATED', value: 'journal-日本-🚀', length: 13, maxLen: 12, attr: 'name' });
  t.match(thrownBy(() => a.getAttrString('name', 3)), { code: 'ERR_NPMU_ATTR_TRUNCATED', value: 'jou' });
  t.match(thrownBy(() => a.getAttrString('name', 0)), { code: 'ERR_NPMU_ATTR_TRUNCATED', value: '' });
  t.equal(new AttrCache(record({ owner: '' })).getAttrString('owner', 0), '', 'empty string fits 0');
  t.throws(() => a.getAttrString('name', -1), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => a.getAttrString('name', 1.5), { code: 'ERR_OUT_OF_RANGE' });
});

t.test('a snapshot: later changes are not reflected [0097]', async (t) => {
  const r = record();
  const a = new AttrCache(r);
  r.name = 'renamed';
  r.size = 1;
  r.basePointer = 5n;
  r.durable = false;
  t.equal(a.getAttrString('name'), 'wal-tail');
  t.equal(a.getAttrNumber('size'), 8 << 20);
  t.equal(a.getAttrU64('basePointer'), 0x7f00_0000_0000n);
  t.equal(a.getAttrBool('durable'), true);
  const d = a.getAttrDate('createdAtMs');
  d.setTime(0);
  t.equal(a.getAttrDate('createdAtMs').getTime(), 1_700_000_000_000, 'mutating a returned Date changes nothing');
});

t.test('free_region_attrs [0099]', async (t) => {
  const a = new AttrCache(record());
  t.equal(a.freed, false);
  a.free();
  t.equal(a.freed, true);
  const calls: Array<[string, () => unknown]> = [
    ['getAttrString', () => a.getAttrString('name')],
    ['getAttrString maxLen', () => a.getAttrString('name', 1)],
    ['getAttrU64', () => a.getAttrU64('basePointer')],
    ['getAttrNumber', () => a.getAttrNumber('size')],
    ['getAttrBool', () => a.getAttrBool('durable')],
    ['getAttrDate', () => a.getAttrDate('createdAtMs')],
    ['unknown name', () => a.getAttrString('nope')],
    ['names', () => a.names()],
    ['typeOf', () => a.typeOf('name')],
  ];
  for (const [what, fn] of calls) t.throws(fn, { code: 'ERR_NPMU_ATTR_FREED', name: 'NpmuError' }, what);
  t.doesNotThrow(() => a.free(), 'free is idempotent');
  t.throws(() => a.getAttrNumber('size'), { code: 'ERR_NPMU_ATTR_FREED' });
});

t.test('malformed records are rejected with Node argument errors', async (t) => {
  const bad: Array<[string, Partial<Record<keyof RegionAttributes, unknown>>, string]> = [
    ['basePointer a number', { basePointer: 5 }, 'ERR_INVALID_ARG_TYPE'],
    ['basePointer negative', { basePointer: -1n }, 'ERR_OUT_OF_RANGE'],
    ['basePointer 2^64', { basePointer: 1n << 64n }, 'ERR_OUT_OF_RANGE'],
    ['size a bigint', { size: 5n }, 'ERR_INVALID_ARG_TYPE'],
    ['size negative', { size: -1 }, 'ERR_OUT_OF_RANGE'],
    ['createdAtMs fractional', { createdAtMs: 1.5 }, 'ERR_OUT_OF_RANGE'],
    ['name missing', { name: undefined }, 'ERR_INVALID_ARG_TYPE'],
    ['durable a string', { durable: 'yes' }, 'ERR_INVALID_ARG_TYPE'],
    ['durability unknown', { durability: 'battery' }, 'ERR_INVALID_ARG_VALUE'],
  ];
  for (const [what, over, code] of bad) {
    t.throws(() => new AttrCache({ ...record(), ...over } as RegionAttributes), { code }, what);
  }
  t.throws(() => new AttrCache(null as unknown as RegionAttributes), { code: 'ERR_INVALID_ARG_TYPE' });
});
