/** Every kind of bad argument thrown at every function, method and setter of
 * the addon, thousands of times, on a real rxe device: the process survives and
 * only documented errors appear. Runs test/fuzz/native-fuzz.js in a child. */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';

t.test('native fuzz: random calls, documented errors only, no crash', async (t) => {
  const script = path.resolve(__dirname, '..', '..', '..', 'test', 'fuzz', 'native-fuzz.js');
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', env: process.env, timeout: 600_000 });
  const out = `${r.stdout}${r.stderr}`;
  t.equal(r.signal, null, `no signal (crash)\n${out.slice(-2000)}`);
  t.equal(r.status, 0, out.slice(-4000));
  t.match(out, /ok - only documented errors/);
  t.match(out, /ok - survived \d+ calls/);
});
