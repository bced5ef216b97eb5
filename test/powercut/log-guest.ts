/**
 * Inside the VM for powercut/log-run.ts. Two units on the emulated NVDIMMs, a
 * PMM, a client with an NpmuLog and a Destager to ext4 on the VM's virtio
 * disk (cache=none), all in this process (the power cut takes them all).
 * One boot per cut: each boot checks what the previous cut left, then goes on
 * appending to the same log until the next cut.
 *
 *   step HISTORY SEED [shadow]
 *                 HISTORY "-" (the first boot): mkfs + mount the disk, format
 *                 both units, create volume "lg" and a 256 KiB log "wal".
 *                 Otherwise: recover and check as `check` does, against
 *                 HISTORY (every earlier boot's output, concatenated).
 *                 Then (shadow: units in test-only shadow mode, so a missing
 *                 flush loses data) start a destager to the disk (small
 *                 batches, every 5 ms), print READY and append forever in
 *                 waves of 1-16 concurrent appends of random sizes (replayable
 *                 from SEED), numbered on from the history's last append.
 *                 Prints "BEGIN n len" before an append and "ACK lsn n len"
 *                 once it resolved (durable on both halves).
 *   check HISTORY mount the disk, recover the volume, open the log as writer
 *                 and the destager (which cuts a torn file tail), read ONE
 *                 sequence across file and tail, and check: LSNs 1.. with no
 *                 gap, every acknowledged record present once with its bytes,
 *                 every record one that was begun, none twice. A record found
 *                 that was never acknowledged (its append was in flight at
 *                 the cut) is printed "KEEP lsn n len": from then on it is as
 *                 good as acknowledged, and later boots must find it too.
 *                 Then append and destage once more. Prints CHECKED.
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { NpmuClient } from '../../lib/client';
import { NpmuLog } from '../../lib/log';
import { Destager, readAll } from '../../lib/destage';
import { rdmaAddress } from '../rdma/fixture';
import { guestSystem } from './guest-system';
import { prng } from './pmm-guest';
import type { UnitServer } from '../../unit/server';
import type { PmmServer } from '../../pmm/server';

const SECRET = 'powercut';
const sys = guestSystem({ keyByte: 9, client: 'pc', secret: SECRET, label: 'log-powercut' });
const MNT = '/tmp/npmu-log-disk';
const FILE = `${MNT}/wal.destaged`;
/** Short, so that a boot after a cut waits little for the dead writer's lease. */
const LEASE_MS = 2000;

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

interface System {
  u: UnitServer[];
  pmm: PmmServer;
  c: NpmuClient;
  log: NpmuLog;
}

const attach = (pmm: PmmServer): Promise<NpmuClient> => NpmuClient.attach({ pmm: { host: rdmaAddress(), port: pmm.port }, client: 'pc', secret: SECRET, volume: 'lg' });

/** First boot: a fresh file system, fresh units, the volume and the log. */
async function fresh(shadow: boolean): Promise<System> {
  const d = disk();
  execFileSync('mkfs.ext4', ['-q', '-F', d]);
  execFileSync('mount', ['-t', 'ext4', d, MNT]);
  const u = await sys.units(true, shadow);
  const pmm = await sys.pmmOn(u);
  await sys.createVolume(pmm, u, 'lg');
  const c = await attach(pmm);
  await NpmuLog.create(c, 'wal', { size: 256 * 1024 });
  const log = await NpmuLog.open(c, 'wal', { leaseMs: LEASE_MS });
  return { u, pmm, c, log };
}

/** What earlier boots printed: the appends begun and the records acknowledged (ACK, or KEEP by an earlier check). */
function history(file: string): { begun: Map<number, number>; acked: Map<bigint, { n: number; len: number }>; lastN: number } {
  const begun = new Map<number, number>();
  const acked = new Map<bigint, { n: number; len: number }>();
  let lastN = 0;
  for (const l of fs.readFileSync(file, 'utf8').split('\n')) {
    const f = l.trim().split(' ');
    if (f[0] === 'BEGIN') {
      begun.set(Number(f[1]), Number(f[2]));
      lastN = Math.max(lastN, Number(f[1]));
    }
    if (f[0] === 'ACK' || f[0] === 'KEEP') {
      const lsn = BigInt(f[1]!);
      const a = { n: Number(f[2]), len: Number(f[3]) };
      const had = acked.get(lsn);
      if (had && had.n !== a.n) throw new Error(`CHECK FAILED: history: LSN ${lsn} acknowledged for appends ${had.n} and ${a.n}`);
      acked.set(lsn, a);
    }
  }
  return { begun, acked, lastN };
}

/** After a cut: recover the system and check the log against the history. Returns it with the destager open. */
async function recover(file: string, shadow: boolean): Promise<System & { dst: Destager; lastN: number; next: bigint }> {
  const { begun, acked, lastN } = history(file);
  console.log(`log: ${begun.size} appends begun, ${acked.size} acknowledged (or kept) in earlier boots`);
  const fail = (m: string): never => {
    throw new Error(`CHECK FAILED: ${m}`);
  };
  execFileSync('mount', ['-t', 'ext4', disk(), MNT]);
  const u = await sys.units(false, shadow);
  const pmm = await sys.pmmOn(u);
  const c = await attach(pmm);
  const log = await NpmuLog.open(c, 'wal', { leaseMs: LEASE_MS });
  const dst = await Destager.open(log, FILE);
  console.log(`recovered: file up to ${dst.fileNextLsn ?? 'nothing'}, log ${log.firstLsn}..${log.nextLsn - 1n}`);
  const seen = new Set<number>();
  let expect = 1n;
  let inFile = 0;
  let kept = 0;
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
    if (!a) {
      console.log(`KEEP ${r.lsn} ${n} ${len}`);
      kept++;
    }
  }
  for (const [lsn, a] of acked) if (lsn >= expect) fail(`acknowledged LSN ${lsn} (append ${a.n}) is missing: the log ends at ${expect - 1n}`);
  console.log(`${acked.size} acknowledged records found once, in LSN order (${expect - 1n} records: ${inFile} in the file, ${Number(expect - 1n) - inFile} in the tail; ${kept} unacknowledged kept)`);
  return { u, pmm, c, log, dst, lastN, next: expect };
}

async function step(file: string, seed: number, shadow: boolean): Promise<void> {
  const random = prng(seed);
  let s: System;
  let n = 0;
  if (file === '-') s = await fresh(shadow);
  else {
    const r = await recover(file, shadow);
    await r.dst.close(); // it cut the torn file tail; the burst opens its own with a seeded batch size
    s = r;
    n = r.lastN;
  }
  const dst = await Destager.open(s.log, FILE, { maxBytes: 8 * 1024 + Math.floor(random() * 56 * 1024) });
  const { log } = s;
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

async function check(file: string): Promise<void> {
  const { u, pmm, c, log, dst, next } = await recover(file, false);
  const fail = (m: string): never => {
    throw new Error(`CHECK FAILED: ${m}`);
  };
  // The recovered log goes on.
  const lsn = await log.append(payload(0, 10));
  if (lsn !== next) fail(`the next append got LSN ${lsn}, not ${next}`);
  await dst.destageOnce();
  let count = 0n;
  for await (const r of readAll(FILE, log)) if (r.lsn === ++count) continue;
  if (count !== next) fail(`after one more append and destage: ${count} records`);
  await dst.close();
  await log.close();
  await c.close();
  await pmm.close();
  for (const x of u) await x.close();
  console.log('CHECKED');
}

if (require.main === module) {
  const [mode, file, seed, flag] = process.argv.slice(2);
  (mode === 'step' && file ? step(file, Number(seed ?? 1), flag === 'shadow') : mode === 'check' && file ? check(file) : Promise.reject(new Error('usage: log-guest.js step HISTORY|- SEED [shadow] | check HISTORY'))).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
