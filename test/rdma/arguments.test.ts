/** Every kind of bad argument to the verbs that need a device: a TypeError or
 * RangeError with a stable code (or a VerbsError), never a crash. */
import t, { Test } from 'tap';
import { connectedPair, regAll } from './fixture';
import { native, openContext, newProtectionDomain, registerMemory, connect, listen } from '../../lib/verbs';

const junk: unknown[] = [undefined, null, -1, 1.5, NaN, Infinity, 2 ** 53, '7', {}, [], () => 0, Symbol('x'), 10n ** 30n, -1n];
const CODE = /^(ERR_INVALID_ARG_TYPE|ERR_INVALID_ARG_VALUE|ERR_OUT_OF_RANGE|ERR_NPMU_[A-Z_]+|E[A-Z]+)$/;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFn = (...a: any[]) => unknown;
function rejectsAll(t: Test, label: string, call: (bad: unknown) => unknown): Promise<void> {
  return (async () => {
    for (const bad of junk) {
      let err: unknown;
      try {
        await call(bad);
      } catch (e) {
        err = e;
      }
      if (err === undefined) continue; // some junk is acceptable for some slots (e.g. undefined = default)
      t.match((err as { code?: string }).code, CODE, `${label}(${typeof bad === 'bigint' ? `${bad}n` : String(typeof bad === 'symbol' ? 'symbol' : JSON.stringify(bad))}) → ${(err as Error).message}`);
    }
  })();
}

t.test('contexts, PDs and MRs reject bad arguments', async (t) => {
  const n = native();
  t.throws(() => openContext('no-such-device'), { code: 'ERR_NPMU_NO_DEVICE' });
  await rejectsAll(t, 'openContext', (b) => (n.openContext as AnyFn)(b));
  await rejectsAll(t, 'ProtectionDomain', (b) => new (n.ProtectionDomain as unknown as new (x: unknown) => unknown)(b));
  const ctx = openContext(process.env.NPMU_RXE_DEV ?? 'rxe0');
  await rejectsAll(t, 'queryPort', (b) => (ctx.queryPort as AnyFn)(b));
  t.throws(() => ctx.queryPort(9), { code: /E|ERR/ }, 'port 9 does not exist');
  await rejectsAll(t, 'queryGid', (b) => (ctx.queryGid as AnyFn)(1, b));
  const pd = newProtectionDomain(ctx);
  const buf = Buffer.alloc(4096);
  await rejectsAll(t, 'MemoryRegion source', (b) => registerMemory(pd, b as Buffer));
  await rejectsAll(t, 'MemoryRegion pd', (b) => registerMemory(b as never, buf));
  for (const key of ['offset', 'length', 'iova', 'access'] as const) {
    await rejectsAll(t, `MemoryRegion ${key}`, (b) => {
      const mr = registerMemory(pd, buf, { [key]: b });
      mr.close(); // accepted values are fine
    });
  }
  t.throws(() => registerMemory(pd, buf, { offset: 4000, length: 200 }), { code: 'ERR_OUT_OF_RANGE' }, 'slice past the end');
  t.throws(() => registerMemory(pd, buf, { access: 1 << 30 }), { code: /ERR_INVALID_ARG_VALUE|ERR_OUT_OF_RANGE/ }, 'unknown access bits');
  pd.close();
  t.throws(() => registerMemory(pd, buf), { code: 'ERR_NPMU_CLOSED' }, 'closed PD');
  ctx.close();
});

t.test('connect and listen reject bad arguments', async (t) => {
  await rejectsAll(t, 'connect', (b) => connect(b as never));
  await rejectsAll(t, 'connect host', (b) => connect({ host: b as string, port: 1, timeoutMs: 2000 }));
  await rejectsAll(t, 'connect port', (b) => connect({ host: '127.0.0.1', port: b as number, timeoutMs: 2000 }));
  await t.rejects(async () => connect({ host: 'not-an-address', port: 1 }), { code: /ERR_INVALID_ARG_VALUE|ERR_NPMU_UNREACHABLE/ });
  await t.rejects(async () => connect({ host: '127.0.0.1', port: 1, privateData: Buffer.alloc(57) }), { code: /ERR_OUT_OF_RANGE|ERR_INVALID_ARG_VALUE/ }, 'private data over 56 bytes');
  await rejectsAll(t, 'listen', (b) => {
    const l = listen(b as never);
    l.close();
  });
  await t.rejects(async () => connect({ host: process.env.NPMU_RXE_ADDR ?? '127.0.0.1', port: 1, timeoutMs: 3000 }), { code: /ERR_NPMU_(REJECTED|UNREACHABLE|TIMEOUT)/ }, 'nobody listening');
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
  await rejectsAll(t, 'write mr', (b) => (ep.write as AnyFn)(b, 0, 8, R, rk));
  await rejectsAll(t, 'write offset', (b) => (ep.write as AnyFn)(mr, b, 8, R, rk));
  await rejectsAll(t, 'write length', (b) => (ep.write as AnyFn)(mr, 0, b, R, rk));
  await rejectsAll(t, 'write remoteAddr', (b) => (ep.write as AnyFn)(mr, 0, 8, b, rk));
  await rejectsAll(t, 'write rkey', (b) => (ep.write as AnyFn)(mr, 0, 8, R, b));
  await rejectsAll(t, 'recv length', (b) => (ep.recv as AnyFn)(mr, 0, b));
  await rejectsAll(t, 'cas compare', (b) => (ep.compareSwap as AnyFn)(mr, 0, R, rk, b, 0n));
  await rejectsAll(t, 'faa add', (b) => (ep.fetchAdd as AnyFn)(mr, 0, R, rk, b));
  await rejectsAll(t, 'post', (b) => (ep.post as AnyFn)(b));
  await rejectsAll(t, 'post item', (b) => (ep.post as AnyFn)([b]));
  await t.rejects(async () => ep.write(mr, 4090, 8, 0n, 1), { code: 'ERR_OUT_OF_RANGE' }, 'local slice past the MR');
  await t.rejects(async () => ep.compareSwap(mr, 4092, R, rk, 0n, 0n), { code: 'ERR_OUT_OF_RANGE' }, 'atomic result slice past the MR');
  await t.rejects(async () => ep.fetchAdd(mr, 0, R + 3n, rk, 1n), { code: 'ERR_NPMU_NOT_ALIGNED' }, 'unaligned remote atomic address');
  await t.rejects(async () => ep.post([{ op: "frobnicate", mr, offset: 0, length: 1 } as never]), { code: 'ERR_INVALID_ARG_VALUE' }, 'unknown op');
  const other = await connectedPair();
  const foreign = regAll(other.client.pd, Buffer.alloc(64));
  await t.rejects(async () => ep.write(foreign, 0, 8, R, rk), { code: /ERR_INVALID_ARG_VALUE|EINVAL/ }, "an MR of another PD as the local buffer");
  foreign.close();
  await other.close();
  t.equal(ep.state, 'connected', 'bad arguments never reached the QP');
  mr.close();
  rmr.close();
});
