/**
 * One boot of the rxe micro-VM for the power-cut tests: runs a guest script
 * with the given NVDIMM backing files, hands each stdout line to `onLine`
 * together with `cut()`, which is the power cord — `kill -9` of qemu by its pid.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';

export const root = path.resolve(__dirname, '..', '..', '..');
/** Where the power-cut tests keep their NVDIMM images and logs. */
export const cacheDir = path.join(root, '.cache', 'test');

export interface BootOptions {
  /** the guest script, a path under dist/test/powercut */
  guest: string;
  args: string[];
  /** NVDIMM backing files, 256 MiB each, in order (/dev/dax0.0, /dev/dax1.0, …) */
  nvdimms: string[];
  /** virtio-blk disks as FILE:SIZE, in order (NPMU_DISKS: /dev/vda, …) */
  disks?: string[];
  timeoutSec: number;
  /** the platform's persistence domain (rxe-vm.sh --nvdimm-persistence); default: not set */
  persistence?: 'cpu' | 'mem-ctrl';
  onLine?: (line: string, cut: () => void) => void;
}

export function boot(o: BootOptions): Promise<{ code: number | null; out: string }> {
  fs.mkdirSync(cacheDir, { recursive: true });
  const pidfile = path.join(cacheDir, `${path.basename(o.guest, '.js')}.pid`);
  const nv = [...o.nvdimms.flatMap((f) => ['--nvdimm', `${f}:256M`]), ...(o.disks ?? []).flatMap((d) => ['--disk', d])];
  if (o.persistence) nv.push('--nvdimm-persistence', o.persistence);
  const vm = path.join(root, 'scripts', 'rxe-vm.sh');
  const guest = path.join(root, 'dist', 'test', 'powercut', o.guest);
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [vm, '--timeout', String(o.timeoutSec), '--pidfile', pidfile, ...nv, '--', 'node', guest, ...o.args], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const cut = (): void => {
      const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
      process.kill(pid, 'SIGKILL');
    };
    let out = '';
    let pending = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d;
      pending += d;
      let i;
      while ((i = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, i);
        pending = pending.slice(i + 1);
        o.onLine?.(line, cut);
      }
    });
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}
