/** Memory regions over mapped files and devices at a chosen iova, and stitched
 * (translated) mappings: bytes checked at the far side. */
import * as fs from 'node:fs';
import t from 'tap';
import { connectedPair, daxAlignment, regAll, tmpfsFile, requireDax, ALL } from './fixture';
import { mapFile, mapExtents, registerMemory } from '../../lib/verbs';

t.test('MR over a tmpfs file mapping at iova: RDMA WRITE lands in the file', async (t) => {
  const p = await connectedPair();
  const f = tmpfsFile(1 << 20);
  t.teardown(async () => {
    await p.close();
    f.remove();
  });
  const m = mapFile(f.path);
  t.equal(m.kind, 'tmpfs');
  t.equal(m.length, 1 << 20);
  const iova = 0x7f0000000000n;
  const rmr = registerMemory(p.serverPd, m, { access: ALL, iova });
  const src = Buffer.from('bytes through rxe into a tmpfs page');
  const lmr = regAll(p.client.pd, src);
  await p.client.write(lmr, 0, src.length, iova + 12345n, rmr.rkey);
  const fd = fs.openSync(f.path, 'r');
  const got = Buffer.alloc(src.length);
  fs.readSync(fd, got, 0, got.length, 12345);
  fs.closeSync(fd);
  t.same(got, src, 'file holds the bytes at the right offset');
  t.equal(m.persist(12345, src.length), 'msync');
  rmr.close();
  lmr.close();
  m.close();
});

t.test('stitched mapping: three discontiguous extents, writes across the seams', async (t) => {
  const p = await connectedPair();
  const page = 4096;
  const f = tmpfsFile(8 * page);
  t.teardown(async () => {
    await p.close();
    f.remove();
  });
  // Device pages 5, 1, 3 become one contiguous virtual range.
  const m = mapExtents(f.path, [
    { offset: 5 * page, length: page },
    { offset: 1 * page, length: page },
    { offset: 3 * page, length: page },
  ]);
  t.equal(m.length, 3 * page);
  const iova = 0x10000000n;
  const rmr = registerMemory(p.serverPd, m, { access: ALL, iova });
  const src = Buffer.alloc(100);
  for (let i = 0; i < 100; i++) src[i] = i + 1;
  const lmr = regAll(p.client.pd, src);
  await p.client.write(lmr, 0, 100, iova + BigInt(page - 50), rmr.rkey); // seam 5|1
  await p.client.write(lmr, 0, 100, iova + BigInt(2 * page - 50), rmr.rkey); // seam 1|3
  const file = fs.readFileSync(f.path);
  t.same(file.subarray(5 * page + page - 50, 6 * page), src.subarray(0, 50), 'tail of device page 5');
  t.same(file.subarray(1 * page, 1 * page + 50), src.subarray(50), 'head of device page 1');
  t.same(file.subarray(2 * page - 50, 2 * page), src.subarray(0, 50), 'tail of device page 1');
  t.same(file.subarray(3 * page, 3 * page + 50), src.subarray(50), 'head of device page 3');
  t.equal(file.subarray(0, page).some((b) => b !== 0), false, 'page 0 untouched');
  rmr.close();
  lmr.close();
  m.close();
});

t.test('MR over devdax at iova: RDMA WRITE lands in the device', async (t) => {
  const dax = requireDax(t)?.[0];
  if (!dax) return; // failed: NVDIMMs are required
  const p = await connectedPair();
  t.teardown(() => p.close());
  const a = daxAlignment(dax);
  t.equal(a, 4096, 'the test bed creates devdax namespaces with 4 KiB alignment');
  const m = mapFile(dax, { length: 4 << 20 });
  t.equal(m.kind, 'devdax');
  t.equal(m.pageSize, a, 'the mapping page size is the device alignment');
  t.throws(() => mapFile(dax, { length: a + a / 2 }), { code: 'ERR_NPMU_NOT_ALIGNED' }, 'a length that is not a multiple of the alignment is refused');
  t.throws(() => mapFile(dax, { offset: a / 2 }), { code: 'ERR_NPMU_NOT_ALIGNED' }, 'an unaligned offset is refused');
  const iova = 0x7f0000000000n;
  const rmr = registerMemory(p.serverPd, m, { access: ALL, iova });
  const src = Buffer.from(`devdax ${Date.now()}`);
  const lmr = regAll(p.client.pd, src);
  const at = (2 << 20) - 5; // across the 2 MiB boundary
  await p.client.write(lmr, 0, src.length, iova + BigInt(at), rmr.rkey);
  const view = Buffer.from(m.buffer());
  t.same(view.subarray(at, at + src.length), src, 'device holds the bytes');
  t.equal(m.persist(at, src.length), 'pmem');
  // Stitched devdax, extents of one device page each (4 KiB): pages 5, 1, 3.
  const s = mapExtents(dax, [5, 1, 3].map((pg) => ({ offset: pg * a, length: a })));
  t.equal(s.length, 3 * a);
  const smr = registerMemory(p.serverPd, s, { access: ALL, iova: 0x20000000n });
  await p.client.write(lmr, 0, src.length, 0x20000000n + BigInt(a - 5), smr.rkey); // seam 5|1
  await p.client.write(lmr, 0, src.length, 0x20000000n + BigInt(2 * a - 5), smr.rkey); // seam 1|3
  t.same(Buffer.concat([view.subarray(6 * a - 5, 6 * a), view.subarray(a, a + src.length - 5)]), src, 'across the first seam: device pages 5 then 1');
  t.same(Buffer.concat([view.subarray(2 * a - 5, 2 * a), view.subarray(3 * a, 3 * a + src.length - 5)]), src, 'across the second seam: device pages 1 then 3');
  t.equal(s.persist(a - 5, src.length), 'pmem');
  smr.close();
  s.close();
  rmr.close();
  lmr.close();
  m.close();
});
