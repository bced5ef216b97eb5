/** Inside the VM for powercut/run: `write TOKEN` RDMA-WRITEs TOKEN into devdax
 * through rxe, persists it and reports; `check TOKEN` RDMA-READs it back. */
import { connectedPair, regAll, daxDevices, ALL } from '../rdma/fixture';
import { mapFile, registerMemory } from '../../lib/verbs';

const [mode, token] = process.argv.slice(2);
const OFFSET = (2 << 20) + 4096; // in the second 2 MiB page

async function main(): Promise<void> {
  const dax = daxDevices()[0];
  if (!dax || !token) throw new Error('need NPMU_DAX_DEVICES and a token');
  const m = mapFile(dax, { length: 4 << 20 });
  const p = await connectedPair();
  const rmr = registerMemory(p.serverPd, m, { access: ALL, iova: 0x7f0000000000n });
  const buf = Buffer.alloc(token.length);
  const lmr = regAll(p.client.pd, buf);
  if (mode === 'write') {
    buf.write(token);
    await p.client.write(lmr, 0, buf.length, 0x7f0000000000n + BigInt(OFFSET), rmr.rkey);
    // Durable: read-after-write orders it, pmem_persist flushes it.
    await p.client.read(lmr, 0, 8, 0x7f0000000000n + BigInt(OFFSET), rmr.rkey);
    console.log(`persist: ${m.persist(OFFSET, token.length)}`);
    console.log(`WRITTEN ${token}`);
    setInterval(() => undefined, 1000); // wait for the power cut
    return;
  }
  await p.client.read(lmr, 0, buf.length, 0x7f0000000000n + BigInt(OFFSET), rmr.rkey);
  if (buf.toString() !== token) throw new Error(`lost: found ${JSON.stringify(buf.toString())}`);
  console.log(`FOUND ${token}`);
  rmr.close();
  lmr.close();
  await p.close();
  m.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
