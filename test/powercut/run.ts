/**
 * Power cut, for real: data written by RDMA WRITE into an emulated NVDIMM
 * (devdax) and made durable is still there after `kill -9` of qemu — the VM's
 * power cord — and the next boot. Runs on the host and drives two boots.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot as bootVm, cacheDir as dir } from './boot';

// Two boots of a VM take longer than tap's default 30 s; rxe-vm.sh has its own timeout.
t.setTimeout(0);

const img = path.join(dir, 'powercut.img');
const boot = (args: string[], onLine?: (line: string, cut: () => void) => void) =>
  bootVm({ guest: 'guest.js', args, nvdimms: [img], timeoutSec: 600, onLine });


t.test('durable RDMA WRITEs into devdax survive kill -9 of the VM', async (t) => {
  fs.rmSync(img, { force: true });
  const token = `npmu-powercut-${process.pid}-${Date.now()}`;
  let cut = false;
  const first = await boot(['write', token], (line, kill) => {
    if (line.startsWith('WRITTEN ') && !cut) {
      cut = true;
      kill();
    }
  });
  t.ok(cut, `the guest wrote and reported before the cut\n${first.out}`);
  t.not(first.code, 0, 'the VM died (killed), not a clean exit');
  t.ok(fs.readFileSync(img).includes(Buffer.from(token)), 'the bytes are in the NVDIMM backing file on the host');
  const second = await boot(['check', token]);
  t.equal(second.code, 0, `second boot found the data\n${second.out}`);
  t.match(second.out, /FOUND/);
});
