/**
 * Power cut by persistence domain: does a durable write honour the platform?
 * Two devdax units in TEST-ONLY shadow mode (RDMA lands in a DRAM shadow; only
 * a persist writes the device, so a power cut loses exactly what was never
 * flushed), a PMM and a client (test/powercut/domain-guest.ts).
 *
 * (a) mem-ctrl (ADR): durable writes must be unit-flushed (a persist request over RDMA);
 *     after `kill -9` of qemu and a second boot every durable record is on
 *     both halves and NO non-durable one is — the proof that the shadow loses
 *     unflushed bytes, so a client that skipped the flush would fail here.
 * (b) cpu (eADR): durable writes are read-after-write (no persist request;
 *     the unit serves the device even with shadow) and survive the cut.
 * Runs on the host; four boots in all. NPMU_DOMAIN_CASES=mem-ctrl (or cpu)
 * runs one case only.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { boot as bootVm, cacheDir as dir } from './boot';

t.setTimeout(0); // each boot is bounded by rxe-vm.sh --timeout

const imgs = [path.join(dir, 'domain-powercut-0.img'), path.join(dir, 'domain-powercut-1.img')];

const cases = [
  { persistence: 'mem-ctrl', domain: 'memory_controller', method: 'unit-flush', nondurable: 0 },
  { persistence: 'cpu', domain: 'cpu_cache', method: 'read-after-write', nondurable: undefined },
] as const;

const only = process.env.NPMU_DOMAIN_CASES?.split(',');
for (const k of cases.filter((c) => !only || only.includes(c.persistence))) {
  t.test(`${k.persistence}: durable writes (${k.method}) survive kill -9 of the VM${k.nondurable === 0 ? ', non-durable ones do not' : ''}`, async (t) => {
    fs.mkdirSync(dir, { recursive: true });
    for (const f of imgs) fs.rmSync(f, { force: true });
    const token = `pd-${process.pid}-${Date.now()}`;
    const boot = (args: string[], onLine?: (line: string, cut: () => void) => void) =>
      bootVm({ guest: 'domain-guest.js', args, nvdimms: imgs, persistence: k.persistence, timeoutSec: 600, onLine });
    let cut = false;
    const first = await boot(['write', k.domain, token], (line, kill) => {
      if (line.startsWith('WRITTEN ') && !cut) {
        cut = true;
        kill();
      }
    });
    t.ok(cut, 'the guest wrote and reported before the cut', { output: first.out.slice(-3000) });
    t.not(first.code, 0, 'the VM died (killed), not a clean exit');
    t.match(first.out, new RegExp(`SYSFS region[0-9]+ persistence_domain ${k.domain}`), `the guest's nd region reads ${k.domain}`);
    t.match(first.out, new RegExp(`UNIT [0-9a-f]{32} persistDomain ${k.domain} shadow ${k.domain !== 'cpu_cache'}`), 'the unit reports it (and serves a shadow only on ADR)');
    t.match(first.out, new RegExp(`METHOD ${k.method}`), `durable writes used ${k.method}`);
    const timing = /^TIMING .*$/m.exec(first.out);
    if (timing) t.comment(timing[0]);
    const second = await boot(['check', token]);
    t.equal(second.code, 0, 'second boot: the volume recovered and was read', { output: second.out.slice(-3000) });
    for (const half of ['primary', 'mirror']) {
      const m = new RegExp(`HALF ${half} durable (\\d+)/(\\d+) nondurable (\\d+)/(\\d+)`).exec(second.out);
      t.ok(m, `the ${half} was read`);
      if (!m) continue;
      t.equal(m[1], m[2], `${half}: every durable record survived (${m[1]}/${m[2]})`);
      if (k.nondurable !== undefined) t.equal(Number(m[3]), k.nondurable, `${half}: no non-durable record survived (${m[3]}/${m[4]})`);
      else t.comment(`${half}: ${m[3]}/${m[4]} non-durable records survived (on eADR placement is persistence)`);
    }
  });
}
