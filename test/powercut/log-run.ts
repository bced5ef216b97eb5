/**
 * Power cuts of the log (docs/log.md): two units on emulated NVDIMMs, a PMM,
 * a client appending to an NpmuLog in waves of concurrent appends while a
 * Destager copies to ext4 on a virtio disk (cache=none) and truncates, and
 * `kill -9` of qemu at a seeded random moment (test/powercut/log-guest.ts).
 *
 * One boot per cut, chained on the same images: boot k recovers what cut k-1
 * left and checks it against everything earlier boots printed (one LSN
 * sequence from 1 across file and tail, every acknowledged record present
 * exactly once with its bytes, nothing that was not appended, and every
 * record an earlier check found still there), then goes on appending to the
 * same log until cut k. A last boot checks the last cut. Odd boots run on
 * ADR with the units in shadow mode (a missing flush loses data), even boots
 * on eADR.
 * NPMU_POWERCUT_ROUNDS sets the cuts (default 20), NPMU_POWERCUT_SEED replays.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot, cacheDir as dir } from './boot';
import { bootAndCut, planCut, prng } from './cut';

const imgs = [path.join(dir, 'log-powercut-0.img'), path.join(dir, 'log-powercut-1.img')];
const diskImg = path.join(dir, 'log-powercut-disk.img');
const history = path.join(dir, 'log-powercut.history');
const cuts = Number(process.env.NPMU_POWERCUT_ROUNDS ?? 20);
const baseSeed = Number(process.env.NPMU_POWERCUT_SEED ?? Math.floor(Math.random() * 2 ** 31));
const vm = { guest: 'log-guest.js', nvdimms: imgs, disks: [`${diskImg}:64M`], timeoutSec: 900 };

t.setTimeout((cuts + 1) * 5 * 60_000);
t.comment(`seed ${baseSeed} (NPMU_POWERCUT_SEED=${baseSeed} replays these cuts); one boot per cut, chained; outputs in ${history}`);

fs.mkdirSync(dir, { recursive: true });
for (const f of [...imgs, diskImg, history]) fs.rmSync(f, { force: true });

/** Keeps a boot's complete lines (a line the cut tore has no newline yet) for the next boot to check against. */
const remember = (out: string): void => fs.appendFileSync(history, out.slice(0, out.lastIndexOf('\n') + 1));
const summaryLines = (out: string): string[] => out.split('\n').filter((x) => /^(log:|recovered|\d+ acknowledged)/.test(x));

let broken = false;
let totalChecked = 0;
let cutsInDestage = 0;
let kept = 0;
for (let k = 1; k <= cuts; k++) {
  const seed = (baseSeed + k * 7919) >>> 0;
  const persistence = k % 2 === 1 ? 'mem-ctrl' : 'cpu';
  t.test(`cut ${k}/${cuts} (seed ${seed}, ${persistence === 'mem-ctrl' ? 'ADR, shadow units' : 'eADR'}): ${k === 1 ? 'a fresh log' : `boot checks cut ${k - 1}, then`} appends and destaging until kill -9 of the VM`, async (t) => {
    if (broken) return t.fail('not run: an earlier boot of the chain failed');
    const started = Date.now();
    const plan = planCut(prng(seed), 30, 250, 80);
    const r = await bootAndCut({ ...vm, args: ['step', k === 1 ? '-' : history, String(seed), ...(persistence === 'mem-ctrl' ? ['shadow'] : [])], persistence }, plan, true);
    remember(r.out);
    fs.writeFileSync(path.join(dir, `log-powercut-${k}.log`), r.out);
    if (k > 1) {
      const m = /(\d+) acknowledged records found once/.exec(r.out);
      t.ok(m && Number(m[1]) > 0, `boot ${k} checked cut ${k - 1}: ${m?.[1] ?? 0} acknowledged records found once, in LSN order`, { output: r.out.slice(-3000) });
      totalChecked += m ? Number(m[1]) : 0;
      const f = /(\d+) in the file/.exec(r.out);
      if (f && Number(f[1]) > 0) cutsInDestage++;
      kept += r.out.split('\n').filter((l) => l.startsWith('KEEP ')).length;
      for (const l of summaryLines(r.out)) t.comment(l);
    }
    if (r.cut) t.pass(`the cut came ${plan.delayMs} ms after the ${plan.cutAfter}th acknowledged append of this boot`);
    else t.fail(`the guest did not reach ${plan.cutAfter} acknowledged appends`, { output: r.out.slice(-3000) });
    t.equal(r.code, 137, 'the cut (kill -9 of qemu), not a crash or an exit, ended the run', { output: r.out.slice(-3000) });
    if (!r.cut || r.code !== 137) broken = true;
    const destages = r.out.split('\n').filter((l) => l.startsWith('DESTAGED')).pop();
    t.comment(`${r.acks} acknowledged appends seen; ${destages ?? 'no destage reported'}; boot took ${Math.round((Date.now() - started) / 1000)} s`);
  });
}
t.test(`a last boot checks cut ${cuts}, appends and destages once more`, async (t) => {
  if (broken) return t.fail('not run: an earlier boot of the chain failed');
  const r = await boot({ ...vm, args: ['check', history], persistence: 'cpu' });
  fs.writeFileSync(path.join(dir, `log-powercut-${cuts + 1}.log`), r.out);
  t.equal(r.code, 0, 'the log and file recovered and checked', { output: r.out.slice(-3000) });
  t.match(r.out, /CHECKED/);
  const m = /(\d+) acknowledged records found once/.exec(r.out);
  totalChecked += m ? Number(m[1]) : 0;
  const f = /(\d+) in the file/.exec(r.out);
  if (f && Number(f[1]) > 0) cutsInDestage++;
  for (const l of summaryLines(r.out)) t.comment(l);
});
t.test('the chain checked acknowledged records, with destaging under way', async (t) => {
  t.ok(totalChecked > 0, `${totalChecked} acknowledged records checked after ${cuts} cuts (${kept} unacknowledged records found and kept)`);
  t.ok(cutsInDestage > 0, `${cutsInDestage} of ${cuts} checks found records destaged to the file`);
});
