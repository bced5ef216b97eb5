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

const imgs = [path.join(dir, 'pmm-powercut-0.img'), path.join(dir, 'pmm-powercut-1.img')];
const boot = (args: string[], onLine?: (line: string, cut: () => void) => void) =>
  bootVm({ guest: 'pmm-guest.js', args, nvdimms: imgs, timeoutSec: 900, onLine });
const rounds = Number(process.env.NPMU_POWERCUT_ROUNDS ?? 2);

t.setTimeout(rounds * 15 * 60_000);


for (let round = 1; round <= rounds; round++) {
  t.test(`round ${round}: kill -9 of the VM during a burst of create/write/delete; the volume recovers whole`, async (t) => {
    fs.mkdirSync(dir, { recursive: true });
    for (const f of imgs) fs.rmSync(f, { force: true });
    const logFile = path.join(dir, `pmm-powercut-${round}.log`);
    // Cut after a varying number of acknowledged operations, at a random moment.
    const cutAfter = 30 + Math.floor(Math.random() * 60);
    let acks = 0;
    let cut = false;
    const first = await boot(['burst'], (line, kill) => {
      if (line.startsWith('ACK ') && ++acks === cutAfter && !cut) {
        cut = true;
        setTimeout(kill, Math.floor(Math.random() * 40));
      }
    });
    fs.writeFileSync(logFile, first.out);
    if (cut) t.pass(`the guest acknowledged ${cutAfter} operations before the cut`);
    else t.fail(`the guest did not reach ${cutAfter} acknowledged operations`, { output: first.out.slice(-3000) });
    t.not(first.code, 0, 'the VM died (killed), not a clean exit');
    const ops = first.out.split('\n').filter((l) => l.startsWith('ACK ')).length;
    t.comment(`cut after ${ops} acknowledged operations (${first.out.split('\n').filter((l) => l.startsWith('ACK write')).length} writes)`);
    const second = await boot(['check', logFile]);
    t.equal(second.code, 0, 'second boot: the volume recovered and checked', { output: second.out.slice(-3000) });
    t.match(second.out, /CHECKED/);
    for (const l of second.out.split('\n').filter((x) => /^(log:|recovered|\d+ acknowledged)/.test(x))) t.comment(l);
  });
}
