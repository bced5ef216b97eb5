/** Protection on real rxe: MR bounds, rkeys, deregistration, PD isolation, and
 * the requester's error state afterwards. */
import t, { Test } from 'tap';
import { connectedPair, regAll } from './fixture';

async function expectAccessError(t: Test, run: (p: Awaited<ReturnType<typeof connectedPair>>) => Promise<unknown>, what: string) {
  const p = await connectedPair();
  try {
    await t.rejects(run(p), { code: 'IBV_WC_REM_ACCESS_ERR', name: 'VerbsError' }, what);
    t.equal(p.client.state, 'error', 'endpoint reports its error state');
    const b = Buffer.alloc(8);
    const m = regAll(p.client.pd, b);
    await t.rejects(async () => p.client.write(m, 0, 8, 0n, 1), { code: 'ERR_NPMU_ENDPOINT_STATE' }, 'later posts are refused');
    m.close();
  } finally {
    await p.close();
  }
}

t.test('a WRITE past the end of the MR fails with IBV_WC_REM_ACCESS_ERR', async (t) => {
  const remote = Buffer.alloc(4096);
  await expectAccessError(t, async (p) => {
    const rmr = regAll(p.serverPd, remote, 0x1000n);
    const lmr = regAll(p.client.pd, Buffer.alloc(64));
    try {
      await p.client.write(lmr, 0, 64, rmr.iova + 4096n - 32n, rmr.rkey);
    } finally {
      rmr.close();
      lmr.close();
    }
  }, 'straddling the end');
});

t.test('a READ with a wrong rkey fails with IBV_WC_REM_ACCESS_ERR', async (t) => {
  await expectAccessError(t, async (p) => {
    const rmr = regAll(p.serverPd, Buffer.alloc(4096), 0x1000n);
    const lmr = regAll(p.client.pd, Buffer.alloc(64));
    try {
      await p.client.read(lmr, 0, 64, rmr.iova, (rmr.rkey ^ 0x5a5a00) >>> 0);
    } finally {
      rmr.close();
      lmr.close();
    }
  }, 'wrong rkey');
});

t.test("a deregistered MR's rkey is refused", async (t) => {
  await expectAccessError(t, async (p) => {
    const rmr = regAll(p.serverPd, Buffer.alloc(4096), 0x1000n);
    const lmr = regAll(p.client.pd, Buffer.alloc(64));
    const at = rmr.iova;
    await p.client.write(lmr, 0, 64, at, rmr.rkey); // works while registered
    const rkey = rmr.rkey;
    rmr.close();
    t.equal(rmr.closed, true);
    try {
      await p.client.write(lmr, 0, 64, at, rkey);
    } finally {
      lmr.close();
    }
  }, 'dead rkey');
});

t.test("an rkey of another connection's PD is useless on this connection", async (t) => {
  const a = await connectedPair();
  t.teardown(() => a.close());
  const rmrA = regAll(a.serverPd, Buffer.alloc(4096), 0x1000n);
  await expectAccessError(t, async (b) => {
    const lmr = regAll(b.client.pd, Buffer.alloc(64));
    try {
      await b.client.write(lmr, 0, 64, rmrA.iova, rmrA.rkey);
    } finally {
      lmr.close();
    }
  }, 'leaked rkey from PD A used through PD B');
  rmrA.close();
});

t.test('a READ-only MR refuses RDMA WRITE', async (t) => {
  await expectAccessError(t, async (p) => {
    const { registerMemory, Access } = await import('../../lib/verbs');
    const rmr = registerMemory(p.serverPd, Buffer.alloc(4096), { access: Access.LOCAL_WRITE | Access.REMOTE_READ });
    const lmr = regAll(p.client.pd, Buffer.alloc(64));
    try {
      await p.client.read(lmr, 0, 64, rmr.iova, rmr.rkey);
      await p.client.write(lmr, 0, 64, rmr.iova, rmr.rkey);
    } finally {
      rmr.close();
      lmr.close();
    }
  }, 'write to a read-only region');
});
