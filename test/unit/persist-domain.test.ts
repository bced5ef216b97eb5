/** The persistence domain, natively on the host: how a unit finds it in sysfs
 * (a fake sysfs tree here; the real one is checked in the VM by the power-cut
 * tests), what files report, and the client's choice of durable write method
 * by durability and domain. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { methodFor } from '../../lib/client';
import { persistDomainOf } from '../../unit/device';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-pdomain-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A fake sysfs where /dev/null (char 1:3) is a dax device under region0 with `domain` (undefined: no file). */
function fakeSysfs(name: string, domain: string | undefined): string {
  const sys = path.join(dir, name);
  const region = path.join(sys, 'devices', 'ACPI0012:00', 'ndbus0', 'region0');
  const dax = path.join(region, 'dax0.0', 'dax0.0');
  fs.mkdirSync(dax, { recursive: true });
  if (domain !== undefined) fs.writeFileSync(path.join(region, 'persistence_domain'), domain);
  fs.mkdirSync(path.join(sys, 'dev', 'char'), { recursive: true });
  fs.symlinkSync(dax, path.join(sys, 'dev', 'char', '1:3'));
  return sys;
}

t.test('persistDomainOf reads the nd region of a character device', async (t) => {
  t.equal(persistDomainOf('/dev/null', fakeSysfs('mc', 'memory_controller\n')), 'memory_controller');
  t.equal(persistDomainOf('/dev/null', fakeSysfs('cc', 'cpu_cache\n')), 'cpu_cache');
  t.equal(persistDomainOf('/dev/null', fakeSysfs('empty', '\n')), 'none', 'an empty persistence_domain is none');
  t.equal(persistDomainOf('/dev/null', fakeSysfs('absent', undefined)), 'none', 'no persistence_domain file is none');
  t.equal(persistDomainOf('/dev/null', fakeSysfs('odd', 'something_new\n')), 'none', 'an unknown value is none');
  t.equal(persistDomainOf('/dev/null', path.join(dir, 'no-sysfs')), 'none', 'no sysfs entry is none');
  const f = path.join(dir, 'plain');
  fs.writeFileSync(f, 'x');
  t.equal(persistDomainOf(f, fakeSysfs('file', 'cpu_cache\n')), 'none', 'a regular file is none');
  t.equal(persistDomainOf(path.join(dir, 'missing')), 'none', 'a missing path is none');
});

t.test('methodFor: the durable write method by durability and persistence domain', async (t) => {
  t.equal(methodFor('pmem', 'cpu_cache'), 'read-after-write', 'eADR: placement is persistence');
  t.equal(methodFor('pmem', 'memory_controller'), 'unit-flush', 'ADR: flush on the unit');
  t.equal(methodFor('pmem', 'none'), 'unit-flush', 'unknown: conservative');
  t.equal(methodFor('pmem', undefined), 'unit-flush', 'an older unit that does not report it');
  t.equal(methodFor('msync', 'cpu_cache'), 'msync');
  t.equal(methodFor('msync', 'none'), 'msync');
  t.equal(methodFor('volatile', 'none'), 'none');
});
