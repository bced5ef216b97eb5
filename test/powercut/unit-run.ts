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
import { spawn } from 'node:child_process';
import t from 'tap';

// Two boots, each bounded by rxe-vm.sh --timeout: longer than tap's default 30 s.
t.setTimeout(0);

const root = path.resolve(__dirname, '..', '..', '..');
const vm = path.join(root, 'scripts', 'rxe-vm.sh');
const guest = path.join(root, 'dist', 'test', 'powercut', 'unit-guest.js');
const dir = path.join(root, '.cache', 'test');
const img = path.join(dir, 'unit-powercut.img');
const pidfile = path.join(dir, 'unit-powercut.pid');

function boot(args: string[], onLine?: (line: string, kill: () => void) => void): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [vm, '--timeout', '600', '--pidfile', pidfile, '--nvdimm', `${img}:256M`, '--', 'node', guest, ...args], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let buf = '';
    const kill = (): void => {
      const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
      process.kill(pid, 'SIGKILL'); // the power cut: qemu, by its pid
    };
    child.stdout.on('data', (d: Buffer) => {
      out += d;
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        onLine?.(line, kill);
      }
    });
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

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
