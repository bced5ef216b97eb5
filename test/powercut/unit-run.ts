/**
 * Power cut of a unit, for real: a unit on devdax (an emulated NVDIMM) is
 * given metadata and, by RDMA WRITE through a stitched mapping, data; both are
 * made durable (meta-write persist, persist-range → pmem). Then `kill -9` of
 * qemu — the VM's power cord — and a second boot, where the unit comes back
 * from the device alone: same unit id, metadata area and data intact, no
 * mapping alive until the PMM maps again. Runs on the host, drives two boots:
 *   node dist/test/powercut/unit-run.js
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot as bootVm, cacheDir as dir } from './boot';

// Two boots, each bounded by rxe-vm.sh --timeout: longer than tap's default 30 s.
t.setTimeout(0);

const img = path.join(dir, 'unit-powercut.img');
const boot = (args: string[], onLine?: (line: string, cut: () => void) => void) =>
  bootVm({ guest: 'unit-guest.js', args, nvdimms: [img], timeoutSec: 600, onLine });


t.test('a devdax unit: metadata and data made durable survive kill -9 of the VM', async (t) => {
  fs.mkdirSync(dir, { recursive: true });
  fs.rmSync(img, { force: true });
  const stamp = `${process.pid}-${Date.now()}`;
  const meta = `npmu-unit-meta-${stamp}`;
  const data = `npmu-unit-data-${stamp}`;
  let unitId = '';
  let cut = false;
  const first = await boot(['write', meta, data], (line, kill) => {
    const m = /^UNIT ([0-9a-f]{32})$/.exec(line);
    if (m) unitId = m[1]!;
    if (line.startsWith('WRITTEN ') && !cut) {
      cut = true;
      kill();
    }
  });
  t.ok(cut, `the guest wrote, persisted and reported before the cut\n${first.out}`);
  t.match(first.out, /durability: pmem/, 'the unit reports pmem durability');
  t.match(first.out, /persist-range: pmem/, 'persist-range flushed with pmem_persist');
  t.not(first.code, 0, 'the VM died (killed), not a clean exit');
  t.ok(fs.readFileSync(img).includes(Buffer.from(meta)), 'the metadata bytes are in the NVDIMM backing file on the host');
  const second = await boot(['check', meta, data, unitId]);
  t.equal(second.code, 0, `second boot: the unit came back with its data\n${second.out}`);
  t.match(second.out, /FOUND/);
});
