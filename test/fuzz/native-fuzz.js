'use strict';
// Throws every kind of bad argument at every function, method and setter of
// the addon; the process must survive and only documented errors appear.
//   scripts/rxe-vm.sh -- node test/fuzz/native-fuzz.js   (also runs on the host); run by test/rdma/fuzz.test.ts
const os = require('os');
const fs = require('fs');
const path = require('path');
const { n, VerbsError, ok, done } = require('./common');

const HOST = process.env.NPMU_RXE_ADDR;
// The RDMA phases need the rxe address. Without it they used to be dropped in
// silence; now that is a failure wherever RDMA is expected (in the micro-VM, or
// on a host with an RDMA device). Only a host with no device at all runs the
// device-less part alone, and says so.
const RDMA_EXPECTED = !!process.env.NPMU_IN_VM || n.listDevices().length > 0;
const PENDING_MS = Number(process.env.FUZZ_PENDING_MS || 30000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-fuzz-'));
process.chdir(dir);
let seed = Number(process.env.SEED || 12345);
const rnd = (k) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % k; };
const file = path.join(dir, 'f');
fs.writeFileSync(file, Buffer.alloc(65536));

async function main() {
  if (!HOST) {
    if (RDMA_EXPECTED) ok(false, `RDMA phases NOT run: NPMU_RXE_ADDR is unset though ${process.env.NPMU_IN_VM ? 'this is the rxe micro-VM' : 'this host has an RDMA device'} (set NPMU_RXE_ADDR to the device's IPv4 address)`);
    else console.log('# RDMA phases NOT run: no RDMA device here and no NPMU_RXE_ADDR (device-less calls only)');
  }
  const objs = {};
  objs.map = n.mapFile(file);
  objs.closedMap = n.mapFile(file);
  objs.closedMap.close();
  let server;
  let acceptAll = null;
  if (HOST) {
    objs.ctx = n.openContext(process.env.NPMU_RXE_DEV || 'rxe0');
    objs.pd = new n.ProtectionDomain(objs.ctx);
    objs.closedPd = new n.ProtectionDomain(objs.ctx);
    objs.closedPd.close();
    objs.mr = new n.MemoryRegion(objs.pd, Buffer.alloc(4096), { access: 15 });
    objs.mapMr = new n.MemoryRegion(objs.pd, objs.map, { access: 15 });
    objs.closedMr = new n.MemoryRegion(objs.pd, Buffer.alloc(64));
    objs.closedMr.close();
    objs.listener = n.listen({ host: HOST });
    const reqs = [];
    acceptAll = (r) => { reqs.push(r); r.accept({ pd: objs.pd }).then((e) => (server = e), () => {}); };
    objs.listener.onRequest = acceptAll;
    objs.ep = await n.connect({ host: HOST, port: objs.listener.port });
    while (!server) await new Promise((r) => setTimeout(r, 5));
    objs.sep = server;
    objs.req = reqs[0];
    objs.epMr = new n.MemoryRegion(objs.ep.pd, Buffer.alloc(4096), { access: 1 });
    objs.closedEp = await n.connect({ host: HOST, port: objs.listener.port });
    await objs.closedEp.close();
    objs.fenceMr = new n.MemoryRegion(objs.ep.pd, Buffer.alloc(64), { access: 1 });
    objs.fanout = new n.Fanout([{ ep: objs.ep, rkey: objs.mr.rkey, remoteAddr: objs.mr.iova, length: 4096, fence: objs.fenceMr },
      { ep: objs.closedEp, rkey: objs.mr.rkey, remoteAddr: objs.mr.iova, length: 4096 }]);
  }
  const pool = [undefined, null, 0, -1, 1, 7, 8, 1.5, NaN, Infinity, -Infinity, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 64, -0,
    '', 'abc', '0', 'a\0b', 0n, 1n, -1n, 8n, 2n ** 63n, 2n ** 64n, -(2n ** 64n), true, false, {}, [], [{}],
    Buffer.alloc(0), Buffer.alloc(8), Buffer.alloc(300), new Uint8Array(56), new Float64Array(3), new ArrayBuffer(16),
    new DataView(new ArrayBuffer(8)), Symbol('s'), () => {}, new Date(), /x/, new Proxy({}, {}),
    { offset: 0, length: 4096 }, [{ offset: 0, length: 4096 }], { host: HOST || '127.0.0.1', port: 1, timeoutMs: 50 },
    ...Object.values(objs)];
  const wr = () => ({ op: ['write', 'read', 'send', 'recv', 'cas', 'faa', 'x'][rnd(7)], mr: pool[rnd(pool.length)],
    offset: pool[rnd(pool.length)], length: pool[rnd(pool.length)], remoteAddr: pool[rnd(pool.length)],
    rkey: pool[rnd(pool.length)], compare: pool[rnd(pool.length)], swap: pool[rnd(pool.length)], add: pool[rnd(pool.length)],
    ep: pool[rnd(pool.length)] });
  const arg = () => (rnd(6) === 0 ? [wr(), wr()] : rnd(8) === 0 ? wr() : pool[rnd(pool.length)]);

  const targets = [];
  for (const k of ['mapFile', 'mapExtents', 'openContext', 'connect', 'listen', 'postAll', 'listDevices', 'liveObjects'])
    targets.push([`n.${k}`, (...a) => n[k](...a)]);
  targets.push(['new ProtectionDomain', (...a) => new n.ProtectionDomain(...a)]);
  targets.push(['new MemoryRegion', (...a) => new n.MemoryRegion(...a)]);
  targets.push(['new Fanout', (...a) => new n.Fanout(...a)]);
  for (const [name, o] of Object.entries(objs)) {
    const proto = Object.getPrototypeOf(o);
    for (const k of Object.getOwnPropertyNames(proto)) {
      if (k === 'constructor') continue;
      if (['close', 'disconnect'].includes(k) && !name.startsWith('closed')) continue; // keep the objects usable
      const d = Object.getOwnPropertyDescriptor(proto, k);
      if (typeof d.value === 'function') targets.push([`${name}.${k}`, (...a) => o[k](...a)]);
      if (d.set) targets.push([`${name}.${k}=`, (v) => { o[k] = v; }]);
      if (d.get) targets.push([`${name}.${k}`, () => o[k]]);
    }
  }
  const allowed = new Set(['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_THIS',
    'ERR_ILLEGAL_CONSTRUCTOR', 'ERR_NPMU_CLOSED', 'ERR_NPMU_BUSY', 'ERR_NPMU_NOT_ALIGNED', 'ERR_NPMU_ENDPOINT_STATE',
    'ERR_NPMU_NO_DEVICE', 'ERR_NPMU_UNREACHABLE', 'ERR_NPMU_TIMEOUT', 'ERR_NPMU_REJECTED']);
  const seen = {};
  const bad = [];
  const pending = [];
  const N = Number(process.env.FUZZ_CALLS || 4000);
  // Self-check of the hang detection (test/unit/fuzz-selfcheck.test.ts): one promise that never settles.
  if (process.env.FUZZ_SELFCHECK_HANG) pending.push({ name: 'selfcheck (never settles)', settled: false, p: new Promise(() => {}) });
  const check = (name, e) => {
    const c = e && e.code;
    seen[c] = (seen[c] || 0) + 1;
    const fine = allowed.has(c) || (e instanceof VerbsError && /^(E[A-Z0-9]+|IBV_WC_\w+)$/.test(c)) ||
      (e instanceof TypeError && /Illegal invocation|Cannot convert a Symbol|Class constructor|cannot be invoked/.test(e.message));
    if (!fine && bad.length < 20) bad.push(`${name}: ${e && e.constructor && e.constructor.name} ${c} ${e && e.message}`);
  };
  for (let i = 0; i < N; i++) {
    const [name, fn] = targets[rnd(targets.length)];
    const args = Array.from({ length: rnd(7) }, arg);
    try {
      const r = fn(...args);
      if (r && typeof r.then === 'function') {
        const entry = { name, settled: false };
        pending.push(entry);
        entry.p = r.then((v) => { if (v && typeof v.close === 'function' && v !== objs.ep) v.close(); }, (e) => check(name + ' (async)', e))
          .finally(() => { entry.settled = true; });
      }
    } catch (e) {
      check(name, e);
    }
    if (i % 200 === 0) await new Promise((r) => setImmediate(r));
  }
  // A promise still pending after PENDING_MS is a hang: a failure, not a pass.
  let timer;
  await Promise.race([Promise.all(pending.map((e) => e.p)), new Promise((r) => { timer = setTimeout(r, PENDING_MS); })]);
  clearTimeout(timer);
  const hung = pending.filter((e) => !e.settled);
  ok(hung.length === 0, `phase 1: all ${pending.length} promises settled within ${PENDING_MS} ms` +
    (hung.length ? ` (${hung.length} still pending: ${[...new Set(hung.map((e) => e.name))].slice(0, 20).join(', ')})` : ''));

  // Phase 2: nearly valid work requests (hits posting, completions, WC errors,
  // error state, reconnects).
  if (HOST) {
    // Phase 1 may have set the listener's onRequest to anything (its setter is a target): phase 2 reconnects through it.
    objs.listener.onRequest = acceptAll;
    let ep = objs.ep;
    let lmr = objs.epMr;
    const M = Number(process.env.FUZZ_POSTS || 1500);
    const pick = (a) => a[rnd(a.length)];
    let tmr = null; // a throwaway MR, closed right after posting (ERR_NPMU_BUSY while in flight)
    const mrs = () => [lmr, lmr, lmr, objs.mr, objs.closedMr, tmr || lmr];
    const offs = [0, 0, 8, 64, 4088, 4096, -1, 1.5];
    const lens = [0, 8, 8, 64, 4096, 4097];
    const raddr = () => pick([objs.mr.iova, objs.mr.iova + 8n, objs.mapMr.iova, objs.mapMr.iova + 65528n, 0n, 2n ** 64n - 8n, objs.mr.iova + 4093n]);
    const rkey = () => pick([objs.mr.rkey, objs.mapMr.rkey, objs.mr.rkey, 0, 2 ** 32 - 1]);
    // no send: with rnr_retry_count 7 a send waits for the peer's recv forever
    const ops = ['write', 'read', 'cas', 'faa'];
    let posted = 0;
    for (let i = 0; i < M; i++) {
      if (ep.state !== 'connected') {
        await ep.close().catch((e) => check('close', e));
        try { lmr.close(); } catch (e) { check('mr.close', e); }
        ep = await n.connect({ host: HOST, port: objs.listener.port, busyPoll: rnd(2) === 0 });
        lmr = new n.MemoryRegion(ep.pd, Buffer.alloc(4096), { access: 1 });
      }
      tmr = new n.MemoryRegion(ep.pd, Buffer.alloc(64), { access: 1 });
      const w = () => ({ op: pick(ops), mr: pick(mrs()), offset: pick(offs), length: pick(lens), remoteAddr: raddr(), rkey: rkey(), compare: 1n, swap: 2n, add: -1n });
      const ps = [];
      const dbg = (x) => { if (process.env.FUZZ_DEBUG) console.log(JSON.stringify(x, (k, v) => (typeof v === 'bigint' ? v.toString(16) : v && v.lkey !== undefined ? (v === lmr ? 'lmr' : v === objs.mr ? 'smr' : v === tmr ? 'tmr' : 'mr?') : v))); return x; };
      try {
        let a;
        switch (rnd(7)) {
          case 0: a = dbg(['write', pick(mrs()), pick(offs), pick(lens), raddr(), rkey()]); ps.push(ep.write(...a.slice(1))); break;
          case 1: a = dbg(['read', pick(mrs()), pick(offs), pick(lens), raddr(), rkey()]); ps.push(ep.read(...a.slice(1))); break;
          case 2: a = dbg(['faa', pick(mrs()), pick(offs), raddr(), rkey(), 1n]); ps.push(ep.fetchAdd(...a.slice(1))); break;
          case 5: case 6: {
            // the lean path: a Fanout over this endpoint (twice: a mirror onto one peer) with near-valid arguments
            const fan = new n.Fanout([0, 1].map(() => ({ ep, rkey: rkey(), remoteAddr: pick([objs.mr.iova, objs.mapMr.iova, 0n]), length: pick([4096, 65536, 8]), fence: pick([undefined, lmr, tmr]) })));
            const src = pick([lmr, [lmr, lmr], [lmr, tmr], objs.closedMr, Buffer.alloc(pick([8, 64, 65])), tmr]);
            const k = pick([0, 1, 2, 3]);
            if (k === 0) ps.push(fan.write(src, pick(offs), pick(lens), pick([0, 8, 4088, 4096, 2n ** 63n, -1]), pick([undefined, 1, 2, 3, 4]), pick([undefined, true, false])));
            else if (k === 1) ps.push(fan.writev(src, new Float64Array(Array.from({ length: 3 * (1 + rnd(5)) }, () => pick([0, 8, 64, 4088, 1, 4096]))), pick([undefined, 3]), rnd(2) === 0));
            else if (k === 2) ps.push(fan.read(pick(mrs()), pick(offs), pick(lens), pick([0, 8, 4088]), pick([0, 1, 2])));
            else ps.push(objs.fanout.write(pick([lmr, Buffer.alloc(8)]), 0, 8, pick([0, 4088]), pick([1, 2, 3]), rnd(2) === 0));
            break;
          }
          case 3: ps.push(ep.post(dbg(Array.from({ length: 1 + rnd(6) }, w).filter((x) => x.op !== 'recv')))); break;
          default: ps.push(n.postAll(dbg(Array.from({ length: 1 + rnd(4) }, () => ({ ep: rnd(3) ? ep : objs.closedEp, ...w(), op: pick(['write', 'read', 'faa']) }))))); break;
        }
        posted++;
      } catch (e) {
        check('post', e);
      }
      try { tmr.close(); } catch (e) { check('mr.close (in flight)', e); }
      if (process.env.FUZZ_DEBUG) console.log('post', i, ep.state, ep.inFlight, ep.busyPoll);
      let settled = false;
      let timer;
      await Promise.race([
        Promise.all(ps.map((p) => p.then((r) => Array.isArray(r) && r.forEach((x) => x && (x instanceof Error ? check('fanout result', x) : !x.ok && check('result', x.error))), (e) => check('post (async)', e)))).then(() => { settled = true; }),
        new Promise((r) => { timer = setTimeout(r, PENDING_MS); }),
      ]);
      clearTimeout(timer);
      if (!settled) {
        ok(false, `phase 2: post ${i} (${ep.state}, ${ep.inFlight} in flight) still pending after ${PENDING_MS} ms`);
        break;
      }
      if (!tmr.closed) tmr.close();
    }
    ok(posted > M / 4, `phase 2: ${posted} posts`);
    await ep.close();
  }
  console.log('error codes seen:', JSON.stringify(seen));
  ok(bad.length === 0, 'only documented errors' + (bad.length ? ':\n  ' + bad.join('\n  ') : ''));
  ok(true, `survived ${N} calls on ${targets.length} targets`);
  fs.rmSync(dir, { recursive: true, force: true });
  setTimeout(() => process.exit(process.exitCode), 100);
}
main().catch((e) => { ok(false, e.stack); }).finally(done);
