/**
 * Power cut of a whole npmu system: two units on emulated NVDIMMs, a PMM and
 * a client doing a burst of create / write / delete, and `kill -9` of qemu
 * (the power cord) in the middle of it. The next boot must find a volume
 * that opens cleanly, both halves agreeing, no page owned twice or leaked,
 * and every acknowledged durable write on both halves
 * (test/powercut/pmm-guest.ts). Runs on the host and drives two boots per
 * round; NPMU_POWERCUT_ROUNDS sets the number of rounds (default 2).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot as bootVm, cacheDir as dir } from './boot';
import { bootAndCut, planCut, prng } from './cut';

const imgs = [path.join(dir, 'pmm-powercut-0.img'), path.join(dir, 'pmm-powercut-1.img')];
const vm = { guest: 'pmm-guest.js', nvdimms: imgs, timeoutSec: 900 };
const rounds = Number(process.env.NPMU_POWERCUT_ROUNDS ?? 2);
/** Every round's moments derive from this seed: NPMU_POWERCUT_SEED=<n> replays a run. */
const baseSeed = Number(process.env.NPMU_POWERCUT_SEED ?? Math.floor(Math.random() * 2 ** 31));

t.setTimeout(rounds * 15 * 60_000);
t.comment(`seed ${baseSeed} (NPMU_POWERCUT_SEED=${baseSeed} replays these rounds)`);

let totalChecked = 0;
for (let round = 1; round <= rounds; round++) {
  const seed = (baseSeed + round * 7919) >>> 0;
  // Odd rounds on an ADR platform with the units in shadow mode (a missing flush loses data); even rounds eADR.
  const persistence = round % 2 === 1 ? 'mem-ctrl' : 'cpu';
  t.test(`round ${round} (seed ${seed}, ${persistence === 'mem-ctrl' ? 'ADR, shadow units' : 'eADR'}): kill -9 of the VM in the middle of create/write/delete and takeovers; every acknowledged operation survives`, async (t) => {
    fs.mkdirSync(dir, { recursive: true });
    for (const f of imgs) fs.rmSync(f, { force: true });
    const logFile = path.join(dir, `pmm-powercut-${round}.log`);
    // Cut at a seeded moment: after a number of acknowledged operations, then a delay into the next one.
    const plan = planCut(prng(seed), 20, 80, 60);
    const first = await bootAndCut({ ...vm, args: ['burst', String(seed), ...(persistence === 'mem-ctrl' ? ['shadow'] : [])], persistence }, plan);
    const cut = first.cut;
    const { cutAfter, delayMs } = plan;
    // Complete lines only: a line the cut tore (no newline yet) cannot be checked.
    const whole = first.out.slice(0, first.out.lastIndexOf('\n') + 1);
    fs.writeFileSync(logFile, whole);
    if (cut) t.pass(`the cut came ${delayMs} ms after the ${cutAfter}th acknowledged operation`);
    else t.fail(`the guest did not reach ${cutAfter} acknowledged operations`, { output: first.out.slice(-3000) });
    t.equal(first.code, 137, 'the cut (kill -9 of qemu), not a crash or an exit, ended the run', { output: first.out.slice(-3000) });
    const lines = whole.split('\n');
    const ops = lines.filter((l) => l.startsWith('ACK ')).length;
    t.comment(`cut after ${ops} acknowledged operations (${lines.filter((l) => l.startsWith('ACK write')).length} writes, ${lines.filter((l) => l.startsWith('ACK takeover')).length} takeovers)`);
    const second = await bootVm({ ...vm, args: ['check', logFile], persistence });
    t.equal(second.code, 0, 'second boot: the volume recovered and checked', { output: second.out.slice(-3000) });
    t.match(second.out, /CHECKED/);
    const m = /(\d+) acknowledged writes found on both halves/.exec(second.out);
    const checked = m ? Number(m[1]) : 0;
    // Every acknowledged write to a region whose deletion never began must have been checked
    // (one cut mid-delete may leave that region and its writes too); the first region is never deleted.
    const deleting = new Set(lines.filter((l) => l.startsWith('BEGIN delete ')).map((l) => l.split(' ')[2]));
    const acked = lines.filter((l) => l.startsWith('ACK write '));
    const owed = acked.filter((l) => !deleting.has(l.split(' ')[2])).length;
    t.ok(owed > 0 && checked >= owed && checked <= acked.length, `${checked} acknowledged writes checked on both halves: all ${owed} on regions never deleted (never zero)`);
    totalChecked += checked;
    for (const l of second.out.split('\n').filter((x) => /^(log:|recovered|\d+ acknowledged)/.test(x))) t.comment(l);
  });
}
t.test('the rounds checked acknowledged operations', async (t) => {
  t.ok(totalChecked > 0, `${totalChecked} acknowledged writes checked in ${rounds} rounds`);
});
