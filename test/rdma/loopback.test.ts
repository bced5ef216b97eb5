/** Loopback data path between two connected endpoints on the rxe device:
 * WRITE, READ, SEND/RECV, both atomics, multi-WR posts, busy-poll mode. */
import t from 'tap';
import { connectedPair, regAll } from './fixture';
import { registerMemory, postAll, Access } from '../../lib/verbs';

t.test('RDMA WRITE and READ at a chosen iova land in the server buffer', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  t.equal(p.client.state, 'connected');
  t.equal(p.server.state, 'connected');
  t.same(p.server.peerPrivateData.subarray(0, 5), Buffer.from('hello'), 'server saw the connect private data (zero-padded to 56 bytes)');
  t.same(p.client.peerPrivateData.subarray(0, 7), Buffer.from('welcome'), 'client saw the accept private data');

  const remote = Buffer.alloc(8192);
  const rmr = regAll(p.serverPd, remote, 0x7f0000000000n);
  const iova = rmr.iova;
  t.equal(iova & ~0xfffn, 0x7f0000000000n, 'the chosen iova (plus the buffer\'s offset in its page)');
  const local = Buffer.alloc(8192);
  const lmr = regAll(p.client.pd, local);

  for (const [size, off] of [[64, 0], [4096, 100], [8192, 0], [1, 8191]] as const) {
    local.fill(0);
    for (let i = 0; i < size; i++) local[i] = (i * 7 + size) & 0xff;
    await p.client.write(lmr, 0, size, iova + BigInt(off), rmr.rkey);
    t.same(remote.subarray(off, off + size), local.subarray(0, size), `${size} B written at +${off}`);
    remote.fill(0xa5, off, off + size);
    await p.client.read(lmr, 0, size, iova + BigInt(off), rmr.rkey);
    t.ok(local.subarray(0, size).every((b) => b === 0xa5), `${size} B read back from +${off}`);
  }
  rmr.close();
  lmr.close();
});

t.test('SEND and RECV carry a message and its length', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const rbuf = Buffer.alloc(256);
  const rmr = regAll(p.server.pd, rbuf);
  const recv = p.server.recv(rmr, 16, 200);
  const sbuf = Buffer.from('persistent memory over rxe');
  const smr = regAll(p.client.pd, sbuf);
  await p.client.send(smr, 0, sbuf.length);
  t.equal(await recv, sbuf.length, 'recv reports the byte count');
  t.equal(rbuf.toString('utf8', 16, 16 + sbuf.length), sbuf.toString());
  rmr.close();
  smr.close();
});

t.test('compare-and-swap and fetch-and-add on a remote word', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const remote = Buffer.alloc(64);
  remote.writeBigUInt64LE(41n, 8);
  const rmr = regAll(p.serverPd, remote, 0x10000000n);
  const w = rmr.iova + 8n;
  const local = Buffer.alloc(16);
  const lmr = regAll(p.client.pd, local);

  t.equal(await p.client.fetchAdd(lmr, 0, w, rmr.rkey, 1n), 41n, 'FAA returns the old value');
  t.equal(remote.readBigUInt64LE(8), 42n, 'FAA added');
  t.equal(await p.client.compareSwap(lmr, 8, w, rmr.rkey, 42n, 0xdeadbeefcafef00dn), 42n, 'CAS returns the old value');
  t.equal(remote.readBigUInt64LE(8), 0xdeadbeefcafef00dn, 'CAS swapped on match');
  t.equal(await p.client.compareSwap(lmr, 8, w, rmr.rkey, 1n, 2n), 0xdeadbeefcafef00dn, 'CAS mismatch returns current');
  t.equal(remote.readBigUInt64LE(8), 0xdeadbeefcafef00dn, 'CAS did not swap on mismatch');
  t.equal(local.readBigUInt64LE(8), 0xdeadbeefcafef00dn, 'old value is also in the local slice');
  rmr.close();
  lmr.close();
});

t.test('several work requests in one post, and one post across two endpoints', async (t) => {
  const a = await connectedPair();
  const b = await connectedPair();
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const ra = Buffer.alloc(4096);
  const rb = Buffer.alloc(4096);
  const rma = regAll(a.serverPd, ra, 0x1000n);
  const rmb = regAll(b.serverPd, rb, 0x1000n);
  const A = rma.iova;
  const B = rmb.iova;
  const src = Buffer.alloc(4096, 0x3c);
  const la = regAll(a.client.pd, src);
  const lb = regAll(b.client.pd, src);

  const res = await a.client.post([
    { op: 'write', mr: la, offset: 0, length: 100, remoteAddr: A, rkey: rma.rkey },
    { op: 'write', mr: la, offset: 0, length: 100, remoteAddr: A + 200n, rkey: rma.rkey },
    { op: 'read', mr: la, offset: 1000, length: 8, remoteAddr: A + 3000n, rkey: rma.rkey },
  ]);
  t.same(res.map((r) => r.ok), [true, true, true], 'each request has its own result');
  t.equal(ra[0], 0x3c);
  t.equal(ra[250], 0x3c);
  t.equal(ra[150], 0, 'gap untouched');

  // The mirrored-write shape: both halves posted before either is awaited.
  src.fill(0x77);
  const both = await postAll([
    { ep: a.client, op: 'write', mr: la, offset: 0, length: 512, remoteAddr: A + 1024n, rkey: rma.rkey },
    { ep: b.client, op: 'write', mr: lb, offset: 0, length: 512, remoteAddr: B + 1024n, rkey: rmb.rkey },
  ]);
  t.same(both.map((r) => r.ok), [true, true]);
  t.ok(ra.subarray(1024, 1536).every((x) => x === 0x77), 'first peer has the bytes');
  t.ok(rb.subarray(1024, 1536).every((x) => x === 0x77), 'second peer has the bytes');

  // One failing request does not hide the others' results.
  const mixed = await postAll([
    { ep: b.client, op: 'write', mr: lb, offset: 0, length: 8, remoteAddr: B, rkey: rmb.rkey },
    { ep: a.client, op: 'write', mr: la, offset: 0, length: 8, remoteAddr: A + 8192n, rkey: rma.rkey },
  ]);
  t.equal(mixed[0]?.ok, true);
  t.equal(mixed[1]?.ok, false);
  t.equal(!mixed[1]?.ok && (mixed[1] as unknown as { error: { code: string } }).error.code, 'IBV_WC_REM_ACCESS_ERR');
  for (const m of [rma, rmb, la, lb]) m.close();
});

t.test('busy-poll mode: same results, promise already settled', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const remote = Buffer.alloc(4096);
  const rmr = regAll(p.serverPd, remote, 0x2000n);
  const at = rmr.iova;
  const local = Buffer.alloc(4096, 9);
  const lmr = registerMemory(p.client.pd, local, { access: Access.LOCAL_WRITE });
  p.client.busyPoll = true;
  t.equal(p.client.busyPoll, true);
  for (let i = 0; i < 50; i++) {
    local.writeUInt32LE(i, 0);
    await p.client.write(lmr, 0, 64, at, rmr.rkey);
    t.equal(remote.readUInt32LE(0), i);
  }
  await p.client.read(lmr, 100, 64, at, rmr.rkey);
  t.equal(local.readUInt32LE(100), 49);
  p.client.busyPoll = false;
  await p.client.write(lmr, 0, 64, at + 64n, rmr.rkey);
  t.equal(remote.readUInt32LE(64), 49, 'event mode again');
  rmr.close();
  lmr.close();
});

t.test('hybrid polling (event mode, spinUs): same results; work done within the budget settles in the post, the rest through the channel', async (t) => {
  const p = await connectedPair();
  t.teardown(() => p.close());
  const remote = Buffer.alloc(4096);
  const rmr = regAll(p.serverPd, remote, 0x3000n);
  const at = rmr.iova;
  const local = Buffer.alloc(4096, 9);
  const lmr = registerMemory(p.client.pd, local, { access: Access.LOCAL_WRITE });
  t.equal(p.client.spinUs, 0, 'off by default');
  p.client.spinUs = 1_000_000; // the largest budget: a WRITE on rxe completes well within it
  t.equal(p.client.spinUs, 1_000_000);
  for (let i = 0; i < 50; i++) {
    local.writeUInt32LE(i, 0);
    let settled = false;
    const w = p.client.write(lmr, 0, 64, at, rmr.rkey).then(() => (settled = true));
    await Promise.resolve();
    t.equal(settled, true, `write ${i}: settled inside the post`);
    await w;
    t.equal(remote.readUInt32LE(0), i);
  }
  // A recv waits for the peer: the spin gives up after its budget and the
  // completion channel reports it later.
  p.client.spinUs = 2000;
  const rlocal = registerMemory(p.client.pd, Buffer.alloc(64), { access: Access.LOCAL_WRITE });
  let got = false;
  const recv = p.client.recv(rlocal, 0, 64).then((r) => ((got = true), r));
  await Promise.resolve();
  t.equal(got, false, 'the recv is still out after the post');
  const smr = registerMemory(p.serverPd, Buffer.from('hybrid'), { access: Access.LOCAL_WRITE });
  await p.server.send(smr, 0, 6);
  const r = await recv;
  t.equal(r, 6, 'the recv completed through the completion channel');
  p.client.spinUs = 0;
  await p.client.write(lmr, 0, 64, at + 64n, rmr.rkey);
  t.equal(remote.readUInt32LE(64), 49, 'one poll again');
  for (const m of [rmr, lmr, rlocal, smr]) m.close();
});

t.test('devices, ports and GIDs: enumerate, open, query', async (t) => {
  const { listDevices, openContext } = await import('../../lib/verbs');
  const { deviceName, rdmaAddress } = await import('./fixture');
  const name = deviceName();
  const dev = listDevices().find((d) => d.name === name);
  t.ok(dev, `${name} is listed`);
  t.match(dev?.guid, /^[0-9a-f]{16}$/, 'node GUID as 16 hex digits');
  const ctx = openContext(name);
  t.equal(ctx.name, name);
  const attr = ctx.queryDevice();
  t.ok(attr.maxQp > 0 && attr.maxMr > 0 && attr.maxSge > 0, 'device limits');
  t.equal(typeof attr.maxMrSize, 'bigint');
  t.ok(attr.physPortCnt >= 1);
  const port = ctx.queryPort(1);
  t.equal(port.stateName, 'PORT_ACTIVE');
  t.equal(port.linkLayer, 'Ethernet', 'soft-RoCE runs over Ethernet');
  t.ok(port.activeMtu >= 256 && port.gidTblLen > 1);
  // GID index 1 is the IPv4-mapped GID of the rxe address (RoCEv2).
  const mapped = rdmaAddress().split('.').map((o) => Number(o).toString(16).padStart(2, '0'));
  const gid = ctx.queryGid(1, 1);
  t.match(gid, /^([0-9a-f]{4}:){7}[0-9a-f]{4}$/);
  t.equal(gid.replace(/:/g, '').slice(-8), mapped.join(''), `GID 1 ends with ${rdmaAddress()}`);
  ctx.close();
});
