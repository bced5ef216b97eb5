/**
 * Power cuts of the log (docs/log.md): two units on emulated NVDIMMs, a PMM,
 * a client appending to an NpmuLog in waves of concurrent appends while a
 * Destager copies to ext4 on a virtio disk (cache=none) and truncates, and
 * `kill -9` of qemu at a seeded random moment (test/powercut/log-guest.ts).
 * After each cut a second boot checks: one LSN sequence from 1 across file
 * and tail, every acknowledged record present exactly once with its bytes,
 * nothing that was not appended. Odd rounds run on ADR with the units in
 * shadow mode (a missing flush loses data), even rounds on eADR.
 * NPMU_POWERCUT_ROUNDS sets the rounds (cuts; default 2), NPMU_POWERCUT_SEED replays.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot as bootVm, cacheDir as dir } from './boot';
import { prng } from './pmm-guest';

const imgs = [path.join(dir, 'log-powercut-0.img'), path.join(dir, 'log-powercut-1.img')];
const diskImg = path.join(dir, 'log-powercut-disk.img');
const boot = (args: string[], persistence: 'cpu' | 'mem-ctrl', onLine?: (line: string, cut: () => void) => void) =>
  bootVm({ guest: 'log-guest.js', args, nvdimms: imgs, disks: [`${diskImg}:64M`], timeoutSec: 900, persistence, onLine });
const rounds = Number(process.env.NPMU_POWERCUT_ROUNDS ?? 2);
const baseSeed = Number(process.env.NPMU_POWERCUT_SEED ?? Math.floor(Math.random() * 2 ** 31));

t.setTimeout(rounds * 15 * 60_000);
t.comment(`seed ${baseSeed} (NPMU_POWERCUT_SEED=${baseSeed} replays these rounds)`);

let totalChecked = 0;
let cutsInDestage = 0;
for (let round = 1; round <= rounds; round++) {
  const seed = (baseSeed + round * 7919) >>> 0;
  const persistence = round % 2 === 1 ? 'mem-ctrl' : 'cpu';
  t.test(`round ${round} (seed ${seed}, ${persistence === 'mem-ctrl' ? 'ADR, shadow units' : 'eADR'}): kill -9 of the VM during appends and destaging; every acknowledged record once, in LSN order, across file and tail`, async (t) => {
    const started = Date.now();
    fs.mkdirSync(dir, { recursive: true });
    for (const f of [...imgs, diskImg]) fs.rmSync(f, { force: true });
    const logFile = path.join(dir, `log-powercut-${round}.log`);
    const random = prng(seed);
    const cutAfter = 100 + Math.floor(random() * 600);
    const delayMs = Math.floor(random() * 80);
    let acks = 0;
    let cut = false;
    const first = await boot(['burst', String(seed), ...(persistence === 'mem-ctrl' ? ['shadow'] : [])], persistence, (line, kill) => {
      if (line.startsWith('ACK ') && ++acks === cutAfter && !cut) {
        cut = true;
        setTimeout(kill, delayMs);
      }
    });
    fs.writeFileSync(logFile, first.out);
    if (cut) t.pass(`the cut came ${delayMs} ms after the ${cutAfter}th acknowledged append`);
    else t.fail(`the guest did not reach ${cutAfter} acknowledged appends`, { output: first.out.slice(-3000) });
    t.equal(first.code, 137, 'the cut (kill -9 of qemu), not a crash or an exit, ended the run', { output: first.out.slice(-3000) });
    const destages = first.out.split('\n').filter((l) => l.startsWith('DESTAGED')).pop();
    t.comment(`cut after ${first.out.split('\n').filter((l) => l.startsWith('ACK ')).length} acknowledged appends; ${destages ?? 'no destage reported'}`);
    const second = await boot(['check', logFile], persistence);
    t.equal(second.code, 0, 'second boot: log and file recovered and checked', { output: second.out.slice(-3000) });
    t.match(second.out, /CHECKED/);
    const m = /(\d+) acknowledged records found once/.exec(second.out);
    const checked = m ? Number(m[1]) : 0;
    t.ok(checked > 0, `${checked} acknowledged records checked (never zero)`);
    const f = /(\d+) in the file/.exec(second.out);
    if (f && Number(f[1]) > 0) cutsInDestage++;
    totalChecked += checked;
    for (const l of second.out.split('\n').filter((x) => /^(log:|recovered|\d+ acknowledged)/.test(x))) t.comment(l);
    t.comment(`round took ${Math.round((Date.now() - started) / 1000)} s`);
  });
}
t.test('the rounds checked acknowledged records, with destaging under way', async (t) => {
  t.ok(totalChecked > 0, `${totalChecked} acknowledged records checked in ${rounds} rounds`);
  t.ok(cutsInDestage > 0, `${cutsInDestage} of ${rounds} rounds had records destaged to the file at the cut`);
});
