/** Every kind of bad argument thrown at every function, method and setter of
 * the addon, thousands of times, on a real rxe device: the process survives and
 * only documented errors appear. Runs test/fuzz/native-fuzz.js in a child. */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';
import { rdmaAddress } from './fixture';

t.test('native fuzz: random calls, documented errors only, no crash', async (t) => {
  const script = path.resolve(__dirname, '..', '..', '..', 'test', 'fuzz', 'native-fuzz.js');
  // The RDMA phases need the device's address; on a native rxe host it is found
  // from the device (rdmaAddress() throws, failing the test, if it cannot be).
  const env = { ...process.env, NPMU_RXE_ADDR: rdmaAddress() };
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', env, timeout: 600_000 });
  const out = `${r.stdout}${r.stderr}`;
  if (r.signal !== null || r.status !== 0 || /NOT OK/.test(out)) t.comment(out.slice(-6000));
  t.equal(r.signal, null, 'no signal (crash, or a hang past 600 s)');
  t.equal(r.status, 0, 'exit status 0');
  t.notMatch(out, /NOT OK/, 'no check failed');
  t.match(out, /ok - only documented errors/);
  t.match(out, /ok - survived \d+ calls/);
  t.match(out, /ok - phase 1: all \d+ promises settled within \d+ ms/, 'no promise hung past the timeout');
  t.match(out, /ok - phase 2: \d+ posts/, 'the RDMA phase ran');
});
