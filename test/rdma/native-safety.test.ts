/** Review of native/ (issue 8, item 3): credits and backpressure, onEvent not a
 * GC root, registered/mapped memory that cannot be transferred away, no
 * re-entrant onEvent, no use of an MR closed by a getter during post(). */
import t from 'tap';
import { connectedPair, regAll, tmpfsFile } from './fixture';
import { startSystem } from './pmm-helpers';
import { native, registerMemory, mapFile } from '../../lib/verbs';
import type { Endpoint } from '../../lib/verbs';

const gc = (globalThis as { gc?: () => void }).gc;

t.test('a raw endpoint: far more work requests than the queue depth, all complete', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const cap = p.client.capacity;
  t.ok(cap.maxSendWr >= 128, `real max_send_wr ${cap.maxSendWr}`);
  t.ok(cap.cqe >= cap.maxSendWr + cap.maxRecvWr, `CQ ${cap.cqe} holds every slot`);
  const remote = Buffer.alloc(4096);
  const rmr = regAll(p.serverPd, remote);
  const local = Buffer.alloc(4096);
  const lmr = regAll(p.client.pd, local);
  const n = cap.maxSendWr * 8;
  // one write() each
  const writes: Promise<void>[] = [];
  for (let i = 0; i < n; i++) writes.push(p.client.write(lmr, i % 4096, 1, rmr.iova + BigInt(i % 4096), rmr.rkey));
  t.comment(`right after the burst: ${p.client.capacity.queued} queued, ${p.client.inFlight} in flight`);
  await Promise.all(writes);
  // one post() far longer than the queue
  const wrs = Array.from({ length: n }, (_, i) => ({ op: 'write' as const, mr: lmr, offset: 0, length: 8, remoteAddr: rmr.iova + BigInt(i % 512) * 8n, rkey: rmr.rkey }));
  const res = await p.client.post(wrs);
  t.equal(res.filter((r) => r.ok).length, n, 'every WR of one long post() completed');
  // busy-poll mode too
  p.client.busyPoll = true;
  const spun = await Promise.all(Array.from({ length: 2 * cap.maxSendWr }, () => p.client.post(wrs.slice(0, 4))));
  t.equal(spun.flat().filter((r) => r.ok).length, 8 * cap.maxSendWr, 'busy-poll: every completion');
  p.client.busyPoll = false;
  t.equal(p.client.state, 'connected');
  t.equal(p.client.inFlight, 0);
  t.equal(p.client.capacity.queued, 0);
  lmr.close();
  rmr.close();
});

t.test('1,000 concurrent writeRegion calls on one client: all succeed, both halves stay up', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  t.teardown(() => sys.close());
  const c = await sys.attach('alice');
  await c.createRegion('burst', 1 << 20, 0x7f0000000000n);
  const h = await c.openRegion('burst');
  const bufs = Array.from({ length: 1000 }, (_, i) => Buffer.alloc(64, i & 0xff));
  const results = await Promise.allSettled(bufs.map((b, i) => c.writeRegion(h, b, 64, h.basePointer + BigInt(i * 64))));
  const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
  t.equal(failed.length, 0, failed.length ? `first failure: ${String(failed[0]!.reason)}` : 'no write failed');
  t.equal(c.halfAvailable('primary'), true, 'primary still available');
  t.equal(c.halfAvailable('mirror'), true, 'mirror still available');
});

t.test('an errored endpoint with onEvent set, dropped by JS, is finalized', { skip: gc ? false : 'needs --expose-gc' }, async (t) => {
  let p: Awaited<ReturnType<typeof connectedPair>> | undefined = await connectedPair();
  const { server, serverPd, ctx } = p;
  const before = native().liveObjects().endpoints;
  let events = 0;
  await (async () => {
    const ep: Endpoint = p!.client;
    const lmr = regAll(ep.pd!, Buffer.alloc(64));
    ep.onEvent = () => {
      events++;
      void ep.state; // the closure holds the endpoint: a cycle through onEvent
    };
    await t.rejects(ep.write(lmr, 0, 8, 0x1000n, 0xdead), { code: 'IBV_WC_REM_ACCESS_ERR' });
    t.equal(ep.state, 'error');
    lmr.close();
  })();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(events, 1, 'the error event came');
  p = undefined; // (its close() closes over the client)
  let now = before;
  for (let i = 0; i < 40 && now >= before; i++) {
    gc!();
    await new Promise((r) => setImmediate(r));
    now = native().liveObjects().endpoints;
  }
  t.equal(now, before - 1, 'the finalizer destroyed the endpoint (QP, CQ, cm_id, PD)');
  await server.close();
  serverPd.close();
  ctx.close();
});

t.test('onEvent never runs inside write()/post(), event or busy-poll mode', async (t) => {
  for (const busy of [false, true]) {
    const p = await connectedPair();
    const lmr = regAll(p.client.pd, Buffer.alloc(64));
    let inside = false;
    let sawInside = false;
    const ev = new Promise<string>((resolve) => {
      p.client.onEvent = (e) => {
        if (inside) sawInside = true;
        resolve(e.type);
      };
    });
    p.client.busyPoll = busy;
    inside = true;
    const w = p.client.post([{ op: 'write', mr: lmr, offset: 0, length: 8, remoteAddr: 0x1000n, rkey: 0xbad }]);
    inside = false;
    const r = await w;
    t.equal(r[0]!.ok, false);
    t.equal(await ev, 'error');
    t.equal(sawInside, false, `busyPoll=${busy}: the event came from the event loop`);
    lmr.close();
    await p.close();
  }
});

t.test('a getter that closes an MR already checked: post() refuses, nothing posted', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const rmr = regAll(p.serverPd, Buffer.alloc(64));
  const a = regAll(p.client.pd, Buffer.alloc(64));
  const b = regAll(p.client.pd, Buffer.alloc(64));
  const sneaky = {
    op: 'write',
    mr: b,
    offset: 0,
    length: 8,
    get remoteAddr() {
      a.close();
      return rmr.iova;
    },
    rkey: rmr.rkey,
  };
  t.throws(() => p.client.post([{ op: 'write', mr: a, offset: 0, length: 8, remoteAddr: rmr.iova, rkey: rmr.rkey }, sneaky as never]), { code: 'ERR_NPMU_CLOSED' });
  t.equal(a.closed, true);
  t.equal(p.client.inFlight, 0, 'nothing was posted');
  t.equal(p.client.state, 'connected', 'the QP is fine');
  await p.client.write(b, 0, 8, rmr.iova, rmr.rkey);
  b.close();
  rmr.close();
});

t.test('registered memory and mapping buffers cannot be transferred away', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const buf = Buffer.alloc(4096);
  const mr = regAll(p.client.pd, buf);
  try {
    structuredClone(buf.buffer, { transfer: [buf.buffer] });
  } catch {
    // refused (Node >= 21): as good as copied
  }
  t.equal(buf.buffer.byteLength, 4096, 'the registered ArrayBuffer is not detached by a transfer');
  mr.close();

  const ab = new ArrayBuffer(4096);
  structuredClone(ab, { transfer: [ab] });
  t.throws(() => registerMemory(p.client.pd, ab), { code: 'ERR_NPMU_DETACHED' }, 'a detached ArrayBuffer is refused');

  const f = tmpfsFile(65536);
  t.teardown(f.remove);
  const m = mapFile(f.path, { length: 65536 });
  const view = m.buffer();
  try {
    structuredClone(view, { transfer: [view] });
  } catch {
    // refused
  }
  t.equal(view.byteLength, 65536, 'a mapping buffer is not detached by a transfer');
  const mmr = registerMemory(p.client.pd, m);
  t.throws(() => m.close(), { code: 'ERR_NPMU_BUSY' }, 'no close under a registration');
  mmr.close();
  m.close();
  t.equal(view.byteLength, 0, 'close() detached the view: no live view over unmapped memory');
});
