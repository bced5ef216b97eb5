/** Every kind of bad argument to the verbs that need a device: each bad value
 * gets its exact expected error (class and stable `code`), never a crash; a
 * value the addon accepts is asserted as accepted (a documented default or
 * wrap-around), or marked `todo` when accepting it is a known product defect. */
import t, { Test } from 'tap';
import { connectedPair, regAll } from './fixture';
import { native, openContext, newProtectionDomain, registerMemory, connect, listen } from '../../lib/verbs';

const junk: unknown[] = [undefined, null, -1, 1.5, NaN, Infinity, 2 ** 53, '7', {}, [], () => 0, Symbol('x'), 10n ** 30n, -1n];

interface Refused { name: string; code: string }
/** What a call with one bad value must do: throw/reject with `name` and `code`,
 * or be accepted (`why` says why that is right, or, with `todo`, why it is a
 * known defect: the assertion still runs and is reported as todo). */
type Expect = Refused | { accept: string; todo?: string } | (Refused & { todo: string });

const TYPE: Refused = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const RANGE: Refused = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };
const VALUE: Refused = { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' };

const show = (b: unknown): string =>
  typeof b === 'bigint' ? `${b}n` : typeof b === 'symbol' ? 'Symbol(x)' : typeof b === 'function' ? '() => 0' : typeof b === 'number' ? String(b) : JSON.stringify(b);

/** An object/string/instance slot: every junk value is the wrong type. */
const anyType = (): Expect => TYPE;
/** A non-negative safe integer (a number): wrong numbers are out of range, non-numbers the wrong type. */
const integer = (b: unknown): Expect => (typeof b === 'number' ? RANGE : TYPE);
/** A bigint in [0, 2^64): numbers are the wrong type, out-of-range bigints out of range. */
const u64 = (b: unknown): Expect => (typeof b === 'bigint' ? RANGE : TYPE);
/** A bigint in [-2^63, 2^64): negative values wrap (two's complement: an add of -1n is a decrement). */
const u64OrNegative = (b: unknown): Expect =>
  b === -1n ? { accept: "negative bigints wrap (two's complement)" } : typeof b === 'bigint' ? RANGE : TYPE;
/** An optional option: `undefined` means the default. */
const optional = (f: (b: unknown) => Expect) => (b: unknown): Expect => (b === undefined ? { accept: 'undefined is the default' } : f(b));

async function outcome(call: () => unknown): Promise<{ accepted: true } | { accepted: false; err: unknown }> {
  try {
    await call();
    return { accepted: true };
  } catch (err) {
    return { accepted: false, err };
  }
}

/** Calls `call` with each junk value and checks it against `expect(value)`. */
async function each(t: Test, label: string, expect: (bad: unknown) => Expect, call: (bad: unknown) => unknown): Promise<void> {
  for (const bad of junk) {
    const want = expect(bad);
    const got = await outcome(() => call(bad));
    const what = `${label}(${show(bad)})`;
    const todo = 'todo' in want ? { todo: want.todo } : {};
    if ('accept' in want) {
      const why = got.accepted ? '' : `: ${(got.err as Error)?.name} ${(got.err as { code?: string })?.code} ${(got.err as Error)?.message}`;
      t.ok(got.accepted, `${what} is accepted (${want.accept})${why}`, todo);
    } else if (got.accepted) {
      t.fail(`${what} must be refused with ${want.name} ${want.code}, but was accepted`, todo);
    } else {
      const e = got.err as { name?: string; code?: string; message?: string };
      t.strictSame({ name: e?.name, code: e?.code }, { name: want.name, code: want.code }, `${what} → ${want.name} ${want.code} (${e?.message})`, todo);
    }
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFn = (...a: any[]) => unknown;
const VERBS = (code: string): Refused => ({ name: 'VerbsError', code });

t.test('contexts, PDs and MRs reject bad arguments', async (t) => {
  const n = native();
  t.throws(() => openContext('no-such-device'), VERBS('ERR_NPMU_NO_DEVICE'));
  // A string is the right type: "7" is just a device that does not exist.
  await each(t, 'openContext', (b) => (b === '7' ? VERBS('ERR_NPMU_NO_DEVICE') : TYPE), (b) => (n.openContext as AnyFn)(b));
  await each(t, 'new ProtectionDomain', anyType, (b) => new (n.ProtectionDomain as unknown as new (x: unknown) => unknown)(b));
  const ctx = openContext(process.env.NPMU_RXE_DEV ?? 'rxe0');
  await each(t, 'queryPort', integer, (b) => (ctx.queryPort as AnyFn)(b));
  t.throws(() => ctx.queryPort(9), VERBS('EINVAL'), 'port 9 does not exist: the verb refuses it');
  await each(t, 'queryGid index', integer, (b) => (ctx.queryGid as AnyFn)(1, b));
  const pd = newProtectionDomain(ctx);
  const buf = Buffer.alloc(4096);
  await each(t, 'MemoryRegion source', anyType, (b) => registerMemory(pd, b as Buffer));
  await each(t, 'MemoryRegion pd', anyType, (b) => registerMemory(b as never, buf));
  const mrOpts = { offset: optional(integer), length: optional(integer), iova: optional(u64), access: optional(integer) } as const;
  for (const key of ['offset', 'length', 'iova', 'access'] as const) {
    await each(t, `MemoryRegion opts.${key}`, mrOpts[key], (b) => {
      const mr = registerMemory(pd, buf, { [key]: b });
      mr.close();
    });
  }
  t.throws(() => registerMemory(pd, buf, { offset: 4000, length: 200 }), RANGE, 'slice past the end');
  t.throws(() => registerMemory(pd, buf, { access: 1 << 30 }), RANGE, 'unknown access bits');
  pd.close();
  t.throws(() => registerMemory(pd, buf), VERBS('ERR_NPMU_CLOSED'), 'closed PD');
  ctx.close();
});

t.test('connect and listen reject bad arguments', async (t) => {
  await each(t, 'connect', anyType, (b) => connect(b as never)); // no object, or one without a host
  // "7" is a host name of the right type (inet_aton reads it as 0.0.0.7): unreachable.
  await each(t, 'connect opts.host', (b) => (b === '7' ? VERBS('ERR_NPMU_UNREACHABLE') : TYPE), (b) => connect({ host: b as string, port: 1, timeoutMs: 2000 }));
  await each(t, 'connect opts.port', integer, (b) => connect({ host: '127.0.0.1', port: b as number, timeoutMs: 2000 }));
  await t.rejects(async () => connect({ host: 'not-an-address', port: 1 }), VERBS('ERR_NPMU_UNREACHABLE'), 'a name that does not resolve');
  await t.rejects(async () => connect({ host: '127.0.0.1', port: 1, privateData: Buffer.alloc(57) }), RANGE, 'private data over 56 bytes');
  await t.rejects(async () => connect({ host: '127.0.0.1', port: 1, spinUs: -1 }), RANGE, 'a negative hybrid polling budget');
  await t.rejects(async () => connect({ host: '127.0.0.1', port: 1, spinUs: 1_000_001 }), RANGE, 'a hybrid polling budget over 1 s');
  await t.rejects(async () => connect({ host: '127.0.0.1', port: 1, spinUs: '5' as never }), TYPE, 'a hybrid polling budget as a string');
  await each(
    t,
    'listen',
    (b) =>
      b === undefined || b === null ? { accept: 'no options: the defaults' }
      : Array.isArray(b) || typeof b === 'function' ? TYPE // option bags refuse arrays and functions, as Node's do
      : typeof b === 'object' ? { accept: 'an empty options object: the defaults' }
      : TYPE,
    (b) => {
      const l = listen(b as never);
      l.close();
    },
  );
  await t.rejects(async () => connect({ host: process.env.NPMU_RXE_ADDR ?? '127.0.0.1', port: 1, timeoutMs: 3000 }), VERBS('ERR_NPMU_REJECTED'), 'nobody listening');
});

t.test('work requests reject bad arguments before reaching the QP', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const buf = Buffer.alloc(4096);
  const mr = regAll(p.client.pd, buf);
  // A real remote target, so that any value the addon accepts makes a valid request.
  const rmr = regAll(p.serverPd, Buffer.alloc(4096), 0x1000n);
  const rk = rmr.rkey;
  const R = rmr.iova;
  const ep = p.client;
  await each(t, 'write mr', anyType, (b) => (ep.write as AnyFn)(b, 0, 8, R, rk));
  await each(t, 'write offset', integer, (b) => (ep.write as AnyFn)(mr, b, 8, R, rk));
  await each(t, 'write length', integer, (b) => (ep.write as AnyFn)(mr, 0, b, R, rk));
  await each(t, 'write remoteAddr', u64, (b) => (ep.write as AnyFn)(mr, 0, 8, b, rk));
  await each(t, 'write rkey', integer, (b) => (ep.write as AnyFn)(mr, 0, 8, R, b));
  await each(t, 'recv length', integer, (b) => (ep.recv as AnyFn)(mr, 0, b));
  await each(t, 'cas compare', u64OrNegative, (b) => (ep.compareSwap as AnyFn)(mr, 0, R, rk, b, 0n));
  await each(t, 'faa add', u64OrNegative, (b) => (ep.fetchAdd as AnyFn)(mr, 0, R, rk, b));
  await each(t, 'post', (b) => (Array.isArray(b) ? { accept: 'an empty batch posts nothing' } : TYPE), (b) => (ep.post as AnyFn)(b));
  t.strictSame(await ep.post([]), [], 'an empty batch resolves to no results');
  await each(t, 'post item', anyType, (b) => (ep.post as AnyFn)([b]));
  await each(t, 'spinUs', integer, (b) => {
    ep.spinUs = b as number;
  });
  t.throws(() => (ep.spinUs = 1_000_001), RANGE, 'spinUs over 1 s');
  t.equal(ep.spinUs, 0, 'refused values left the budget alone');
  await t.rejects(async () => ep.write(mr, 4090, 8, 0n, 1), RANGE, 'local slice past the MR');
  await t.rejects(async () => ep.compareSwap(mr, 4092, R, rk, 0n, 0n), RANGE, 'atomic result slice past the MR');
  await t.rejects(async () => ep.fetchAdd(mr, 0, R + 3n, rk, 1n), VERBS('ERR_NPMU_NOT_ALIGNED'), 'unaligned remote atomic address');
  await t.rejects(async () => ep.post([{ op: 'frobnicate', mr, offset: 0, length: 1 } as never]), VALUE, 'unknown op');
  const other = await connectedPair();
  const foreign = regAll(other.client.pd, Buffer.alloc(64));
  await t.rejects(async () => ep.write(foreign, 0, 8, R, rk), VALUE, 'an MR of another PD as the local buffer');
  foreign.close();
  await other.close();
  t.equal(ep.state, 'connected', 'bad arguments never reached the QP');
  mr.close();
  rmr.close();
});
