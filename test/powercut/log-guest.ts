/**
 * Inside the VM for powercut/log-run.ts. Two units on the emulated NVDIMMs, a
 * PMM, a client with an NpmuLog and a Destager to ext4 on the VM's virtio
 * disk (cache=none), all in this process (the power cut takes them all).
 *
 *   burst SEED [shadow]
 *                 mkfs + mount the disk, format both units (shadow: test-only
 *                 shadow mode, so a missing flush loses data), create volume
 *                 "lg" and a 256 KiB log "wal", start a destager to the disk
 *                 (small batches, every 5 ms), then append forever in waves
 *                 of 1-16 concurrent appends of random sizes (replayable from
 *                 SEED). Prints "BEGIN n len" before an append and
 *                 "ACK lsn n len" once it resolved (durable on both halves).
 *   check LOGFILE mount the disk, recover the volume, open the log as writer
 *                 and the destager (which cuts a torn file tail), read ONE
 *                 sequence across file and tail, and check: LSNs 1.. with no
 *                 gap, every acknowledged record present once with its bytes,
 *                 every record one that was begun, none twice. Then append
 *                 and destage once more. Prints CHECKED.
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { NpmuClient } from '../../lib/client';
import { NpmuLog } from '../../lib/log';
import { Destager, readAll } from '../../lib/destage';
import { rdmaAddress } from '../rdma/fixture';
import { guestSystem } from './guest-system';
import { prng } from './pmm-guest';

const SECRET = 'powercut';
const sys = guestSystem({ keyByte: 9, client: 'pc', secret: SECRET, label: 'log-powercut' });
const MNT = '/tmp/npmu-log-disk';
const FILE = `${MNT}/wal.destaged`;

/** The bytes of append number n: self-describing, so a record found can be traced to its append. */
export function payload(n: number, len: number): Buffer {
  const b = Buffer.alloc(len, (n * 7 + 3) & 0xff);
  const head = Buffer.from(`${n}|${len}|`);
  head.copy(b, 0, 0, Math.min(head.length, len));
  return b;
}

function disk(): string {
  const d = (process.env.NPMU_DISKS ?? '').split(/\s+/).filter(Boolean)[0];
  if (!d) throw new Error('need NPMU_DISKS');
  fs.mkdirSync(MNT, { recursive: true });
  return d;
}

async function burst(seed: number, shadow: boolean): Promise<void> {
  const random = prng(seed);
  const d = disk();
  execFileSync('mkfs.ext4', ['-q', '-F', d]);
  execFileSync('mount', ['-t', 'ext4', d, MNT]);
  const u = await sys.units(true, shadow);
  const pmm = await sys.pmmOn(u);
  await sys.createVolume(pmm, u, 'lg');
  const c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pc', secret: SECRET, volume: 'lg' });
  await NpmuLog.create(c, 'wal', { size: 256 * 1024 });
  const log = await NpmuLog.open(c, 'wal', { leaseMs: 10_000 });
  const dst = await Destager.open(log, FILE, { maxBytes: 8 * 1024 + Math.floor(random() * 56 * 1024) });
  let destaged = 0;
  const tick = setInterval(() => {
    if (dst.batches !== destaged) console.log(`DESTAGED ${(destaged = dst.batches)} batches, log from ${log.firstLsn}`);
  }, 50);
  tick.unref();
  dst.start(5, (e) => {
    console.log(`DESTAGE ERROR ${e.message}`);
    process.exit(1);
  });
  console.log('READY');
  let n = 0;
  for (;;) {
    const k = 1 + Math.floor(random() * 16);
    const wave = Array.from({ length: k }, () => ({ n: ++n, len: 16 + Math.floor(random() * 2000) })); // ≥ 16: room for "n|len|"
    await Promise.all(
      wave.map(async (w) => {
        console.log(`BEGIN ${w.n} ${w.len}`);
        for (;;) {
          try {
            const lsn = await log.append(payload(w.n, w.len));
            console.log(`ACK ${lsn} ${w.n} ${w.len}`);
            return;
          } catch (e) {
            if ((e as { code?: string }).code !== 'ERR_NPMU_LOG_FULL') throw e;
            await new Promise((r) => setTimeout(r, 5));
          }
        }
      }),
    );
  }
}

async function check(logFile: string): Promise<void> {
  const begun = new Map<number, number>();
  const acked = new Map<bigint, { n: number; len: number }>();
  for (const l of fs.readFileSync(logFile, 'utf8').split('\n')) {
    const f = l.trim().split(' ');
    if (f[0] === 'BEGIN') begun.set(Number(f[1]), Number(f[2]));
    if (f[0] === 'ACK') acked.set(BigInt(f[1]!), { n: Number(f[2]), len: Number(f[3]) });
  }
  console.log(`log: ${begun.size} appends begun, ${acked.size} acknowledged`);
  const fail = (m: string): never => {
    throw new Error(`CHECK FAILED: ${m}`);
  };
  const d = disk();
  execFileSync('mount', ['-t', 'ext4', d, MNT]);
  const u = await sys.units(false);
  const pmm = await sys.pmmOn(u);
  const c = await NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pc', secret: SECRET, volume: 'lg' });
  const log = await NpmuLog.open(c, 'wal', { leaseMs: 10_000 });
  const dst = await Destager.open(log, FILE);
  console.log(`recovered: file up to ${dst.fileNextLsn ?? 'nothing'}, log ${log.firstLsn}..${log.nextLsn - 1n}`);
  const seen = new Set<number>();
  let expect = 1n;
  let inFile = 0;
  for await (const r of readAll(FILE, log)) {
    if (r.lsn !== expect) fail(`LSN ${r.lsn} where ${expect} is expected`);
    expect++;
    if (r.lsn < log.firstLsn) inFile++;
    const m = /^(\d+)\|(\d+)\|/.exec(r.data.subarray(0, 24).toString('latin1'));
    const n = m ? Number(m[1]) : NaN;
    const len = begun.get(n);
    if (len === undefined || !r.data.equals(payload(n, len))) fail(`record ${r.lsn} is no begun append (${r.data.length} bytes)`);
    if (seen.has(n)) fail(`append ${n} is in the log twice (again at LSN ${r.lsn})`);
    seen.add(n);
    const a = acked.get(r.lsn);
    if (a && a.n !== n) fail(`LSN ${r.lsn} was acknowledged for append ${a.n}, holds ${n}`);
  }
  for (const [lsn, a] of acked) if (lsn >= expect) fail(`acknowledged LSN ${lsn} (append ${a.n}) is missing: the log ends at ${expect - 1n}`);
  console.log(`${acked.size} acknowledged records found once, in LSN order (${expect - 1n} records: ${inFile} in the file, ${Number(expect - 1n) - inFile} in the tail)`);
  // The recovered log goes on.
  const lsn = await log.append(payload(0, 10));
  if (lsn !== expect) fail(`the next append got LSN ${lsn}, not ${expect}`);
  await dst.destageOnce();
  let count = 0n;
  for await (const r of readAll(FILE, log)) if (r.lsn === ++count) continue;
  if (count !== expect) fail(`after one more append and destage: ${count} records`);
  await dst.close();
  await log.close();
  await c.close();
  await pmm.close();
  for (const x of u) await x.close();
  console.log('CHECKED');
}

if (require.main === module) {
  const [mode, arg] = process.argv.slice(2);
  (mode === 'burst' ? burst(Number(arg ?? 1), process.argv[4] === 'shadow') : mode === 'check' ? check(arg!) : Promise.reject(new Error('usage: log-guest.js burst SEED [shadow] | check LOGFILE'))).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
