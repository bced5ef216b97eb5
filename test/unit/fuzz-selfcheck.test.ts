/** The addon fuzzer's own failure paths (no RDMA needed: run natively): a
 * promise still pending past its timeout fails it, and so does a missing
 * NPMU_RXE_ADDR where RDMA is expected. Neither may pass in silence. */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';
import { listDevices } from '../../lib/verbs';

const script = path.resolve(__dirname, '..', '..', '..', 'test', 'fuzz', 'native-fuzz.js');
function fuzz(env: Record<string, string>): { status: number | null; out: string } {
  const base = { ...process.env };
  delete base.NPMU_RXE_ADDR;
  delete base.NPMU_IN_VM;
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', env: { ...base, FUZZ_CALLS: '200', ...env }, timeout: 60_000 });
  const out = `${r.stdout}${r.stderr}`;
  if (process.env.NPMU_TEST_VERBOSE) console.log(out);
  return { status: r.status, out };
}

t.test('a promise still pending past the timeout is a failure', async (t) => {
  const r = fuzz({ FUZZ_SELFCHECK_HANG: '1', FUZZ_PENDING_MS: '200' });
  t.not(r.status, 0, 'the fuzzer fails');
  t.match(r.out, /NOT OK - phase 1: all \d+ promises settled within 200 ms \(1 still pending: selfcheck \(never settles\)\)/, 'the pending promise is named');
});

t.test('in the micro-VM without NPMU_RXE_ADDR the RDMA phases fail loudly', async (t) => {
  const r = fuzz({ NPMU_IN_VM: '1' });
  t.not(r.status, 0, 'the fuzzer fails');
  t.match(r.out, /NOT OK - RDMA phases NOT run: NPMU_RXE_ADDR is unset/, 'the fuzzer says why');
});

t.test('outside the VM without NPMU_RXE_ADDR: a failure with a device, a loud note without one', async (t) => {
  const r = fuzz({});
  if (listDevices().length > 0) {
    t.not(r.status, 0, 'this host has an RDMA device: the fuzzer fails');
    t.match(r.out, /NOT OK - RDMA phases NOT run: NPMU_RXE_ADDR is unset though this host has an RDMA device/, 'the fuzzer says why');
  } else {
    t.equal(r.status, 0, 'the device-less part passes');
    t.match(r.out, /# RDMA phases NOT run: no RDMA device here/, 'and says the RDMA phases did not run');
  }
});
