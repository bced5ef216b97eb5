/**
 * Power cut of a file-backed unit (msync durability) on ext4 on the VM's
 * virtio disk (cache=none: only what the guest flushed is on the host file).
 * Bytes written by RDMA and persisted — including bytes written into pages
 * that writeback had already cleaned, which an RDMA WRITE does not dirty
 * again — must all be on the disk after `kill -9` of qemu and a second boot
 * (test/powercut/disk-guest.ts). Runs on the host, drives two boots:
 *   node dist/test/powercut/disk-run.js
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot as bootVm, cacheDir as dir } from './boot';

// Two boots, each bounded by rxe-vm.sh --timeout: longer than tap's default 30 s.
t.setTimeout(0);

const img = path.join(dir, 'disk-powercut.img');
const boot = (args: string[], onLine?: (line: string, cut: () => void) => void) =>
  bootVm({ guest: 'disk-guest.js', args, nvdimms: [], disks: [`${img}:64M`], timeoutSec: 600, onLine });

t.test('a file-backed unit on ext4 on a virtio disk: persisted RDMA-written bytes survive kill -9 of the VM', async (t) => {
  fs.mkdirSync(dir, { recursive: true });
  fs.rmSync(img, { force: true });
  const stamp = `${process.pid}-${Date.now()}`;
  const args = [`a-${stamp}`, `b-${stamp}`, `c-${stamp}`];
  let cut = false;
  const first = await boot(['write', ...args], (line, kill) => {
    if (line.startsWith('PERSISTED ') && !cut) {
      cut = true;
      kill();
    }
  });
  t.ok(cut, `the guest wrote, persisted and reported before the cut\n${first.out}`);
  t.match(first.out, /durability: msync/, 'the unit reports msync durability');
  t.match(first.out, /persist-range B: msync/, 'persist-range answered');
  t.not(first.code, 0, 'the VM died (killed), not a clean exit');
  const second = await boot(['check', ...args]);
  t.equal(second.code, 0, `second boot: every persisted byte is on the disk\n${second.out}`);
  t.match(second.out, /FOUND /);
});
