/**
 * Power cut, for real: data written by RDMA WRITE into an emulated NVDIMM
 * (devdax) and made durable is still there after `kill -9` of qemu — the VM's
 * power cord — and the next boot. Runs on the host and drives two boots.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import t from 'tap';

// Two boots of a VM take longer than tap's default 30 s; rxe-vm.sh has its own timeout.
t.setTimeout(0);

const root = path.resolve(__dirname, '..', '..', '..');
const vm = path.join(root, 'scripts', 'rxe-vm.sh');
const guest = path.join(root, 'dist', 'test', 'powercut', 'guest.js');
const dir = path.join(root, '.cache', 'test');
const img = path.join(dir, 'powercut.img');
const pidfile = path.join(dir, 'powercut.pid');

function boot(args: string[], onLine?: (line: string, kill: () => void) => void): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [vm, '--timeout', '600', '--pidfile', pidfile, '--nvdimm', `${img}:256M`, '--', 'node', guest, ...args], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const kill = (): void => {
      const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
      process.kill(pid, 'SIGKILL'); // the power cut: qemu by its pid
    };
    let buf = '';
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

t.test('durable RDMA WRITEs into devdax survive kill -9 of the VM', async (t) => {
  fs.mkdirSync(dir, { recursive: true });
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
