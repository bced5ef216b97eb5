/**
 * The `npmu` CLI on rxe: the commands that need the data path (region write,
 * region dump) and the daemon starters (npmu unit start, npmu pmm start).
 * The management commands are tested natively (test/unit/pmm-cli.test.ts).
 */
import * as path from 'node:path';
import t from 'tap';
import { deviceName, rdmaAddress } from './fixture';
import { SECRETS, child, clientsFile, keyFile, shmPath, startSystem } from './pmm-helpers';

t.setTimeout(30 * 60_000);

const cli = path.join(__dirname, '..', '..', 'cli', 'npmu.js');

t.test('npmu region write / dump move bytes by RDMA and show them as a hexdump', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  try {
    const c = await sys.attach('alice');
    await c.createRegion('log', 8192, 0x7f0000000000n);
    const conn = ['--pmm', `${rdmaAddress()}:${sys.pmm.port}`, '--volume', sys.volume, '--client', 'alice', '--secret', SECRETS.alice!];
    const w = child(cli, ['region', 'write', 'log', '--offset', '4096', '--text', 'hello from the npmu CLI', ...conn]);
    t.equal(await w.exited, 0, w.output());
    t.match(w.output(), /23 bytes written to primary and mirror \(not durable: volatile\)/);
    const d = child(cli, ['region', 'dump', 'log', '--offset', '4090', '--length', '40', '--half', 'mirror', ...conn]);
    t.equal(await d.exited, 0, d.output());
    t.match(d.output(), /region log, 40 bytes at pointer 0x7f0000000ffa, read from the mirror:/);
    t.match(d.output(), /7f0000000ffa {2}00 00 00 00 00 00 68 65 {2}6c 6c 6f 20 66 72 6f 6d {2}\|\.\.\.\.\.\.hello from\|/);
    t.match(d.output(), /7f0000001022\n?$/m);
  } finally {
    await sys.close();
  }
});

t.test('npmu unit start and npmu pmm start bring up daemons that print a ready line', async (t) => {
  const u = child(cli, ['unit', 'start', '--device', shmPath(), '--create-size', '16M', '--format', '--host', rdmaAddress(), '--rdma-device', deviceName(), '--key-file', keyFile, '--json', '--quiet']);
  const ready = JSON.parse(await u.line(/"event":"ready"/)) as { unitId: string; controlPort: number; rdmaPort: number; durability: string };
  t.match(ready, { unitId: /^[0-9a-f]{32}$/, durability: 'volatile' });
  const p = child(cli, [
    'pmm',
    'start',
    '--key-file',
    keyFile,
    '--clients-file',
    clientsFile,
    '--unit',
    `${rdmaAddress()}:${ready.controlPort}`,
    '--host',
    rdmaAddress(),
    '--port',
    '0',
    '--json',
    '--quiet',
  ]);
  const pr = JSON.parse(await p.line(/"event":"ready"/)) as { pmmId: string; port: number; volumes: unknown[] };
  t.match(pr, { pmmId: /^[0-9a-f]{32}$/, volumes: [] }, 'a fresh unit: no volume yet');
  t.ok(pr.port > 0);
  p.proc.kill('SIGTERM');
  u.proc.kill('SIGTERM');
  t.equal(await p.exited, 0, 'the PMM stops cleanly on SIGTERM');
  t.equal(await u.exited, 0, 'the unit stops cleanly on SIGTERM');
});
