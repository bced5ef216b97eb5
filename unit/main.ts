#!/usr/bin/env node
/**
 * `npmu-unit`: the unit daemon's command line (docs/unit.md).
 *
 *   npmu-unit [serve] --device PATH --key-file F --host ADDR [options]
 *   npmu-unit format  --device PATH [--create-size SIZE] [--label L] [--meta-length SIZE] [--force]
 *   npmu-unit info    --device PATH [--json] [--host ADDR --control-port N --key-file F]
 *
 * `serve` prints one line on stdout when ready (JSON with --json), so a PMM or
 * a test can parse its ports and unit id; diagnostics go to stderr. SIGTERM or
 * SIGINT shut it down cleanly (exit 0). Errors: exit 1 with
 * "npmu-unit: CODE: message" on stderr; usage errors exit 2.
 */
import { parseArgs } from 'node:util';
import { ControlConnection, MAX_PERSIST_SLOTS } from '../lib/protocol';
import { NpmuError } from '../lib/errors';
import { issueTicket, loadOrCreateKey } from '../lib/ticket';
import { PERSIST_DOMAINS, UnitDevice } from './device';
import type { PersistDomain } from './device';
import { UnitServer } from './server';

const USAGE = `usage:
  npmu-unit [serve] --device PATH --key-file FILE --host ADDR [options]
      serve one device: a devdax device (/dev/daxN.M), a file on tmpfs, or an ordinary file
      --create-size SIZE   create the file if missing / grow it to SIZE (e.g. 64M, 1G)
      --format             format the device if it is not formatted yet
      --force              with --format: reformat a formatted (or corrupt) device, destroying it
      --label TEXT         label written at format time (up to 32 bytes)
      --meta-length SIZE   metadata area size at format time (default: data from 8 MiB on devices of 128 MiB or more, else 1 MiB)
      --host ADDR          IP address of the RDMA device; RDMA and control listeners bind to it
      --rdma-port N        RDMA (rdma_cm) port, 0 = any (default 0)
      --control-port N     TCP control port, 0 = any (default 0)
      --rdma-device NAME   RDMA device (default: the first ACTIVE one)
      --key-file FILE      key shared with the PMM (64 hex digits, mode 0600; created if missing)
      --persist-domain D   the platform's persistence domain, cpu_cache | memory_controller | none,
                           overriding sysfs (devdax only; default: the nd region's persistence_domain)
      --persist-slots N    persist requests over each client's RDMA connection: N receives posted
                           (0-64, default 16; 0: clients persist over the control connection)
      --shadow             TEST-ONLY: serve RDMA from a DRAM shadow of the data pages and write a
                           range to the device only when it is persisted (devdax only; ignored
                           on cpu_cache). Unflushed bytes are lost on a power cut or a restart
      --json               print the ready line as JSON
      --quiet              no diagnostics on stderr
  npmu-unit format --device PATH [--create-size SIZE] [--label TEXT] [--meta-length SIZE] [--force] [--json]
  npmu-unit info --device PATH [--json] [--host ADDR --control-port N --key-file FILE]
      print the superblock; with --control-port, also the running unit's live info
`;

class UsageError extends Error {}

const OPTIONS = {
  device: { type: 'string' },
  'create-size': { type: 'string' },
  format: { type: 'boolean' },
  force: { type: 'boolean' },
  label: { type: 'string' },
  'meta-length': { type: 'string' },
  host: { type: 'string' },
  'rdma-port': { type: 'string' },
  'control-port': { type: 'string' },
  'rdma-device': { type: 'string' },
  'key-file': { type: 'string' },
  'persist-domain': { type: 'string' },
  'persist-slots': { type: 'string' },
  shadow: { type: 'boolean' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

/** "4096", "64K", "64M", "1G", "2MiB" → bytes. */
export function parseSize(s: string, name: string): number {
  const m = /^([0-9]+)\s*([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`--${name}: not a size: ${s}`);
  const n = Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`--${name}: out of range: ${s}`);
  return n;
}

function parsePort(s: string | undefined, name: string): number | undefined {
  if (s === undefined) return undefined;
  if (!/^[0-9]{1,5}$/.test(s) || Number(s) > 65535) throw new UsageError(`--${name}: not a port number: ${s}`);
  return Number(s);
}

function need(v: string | undefined, name: string): string {
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function openDevice(v: Values, format: boolean): UnitDevice {
  return UnitDevice.open(need(v.device, 'device'), {
    create: v['create-size'] !== undefined ? { size: parseSize(v['create-size'], 'create-size') } : undefined,
    format: format
      ? { label: v.label, metaLength: v['meta-length'] !== undefined ? parseSize(v['meta-length'], 'meta-length') : undefined }
      : undefined,
    force: v.force,
  });
}

async function serveCommand(v: Values): Promise<void> {
  const log = v.quiet ? undefined : (line: string): void => void process.stderr.write(`npmu-unit: ${line}\n`);
  const host = need(v.host, 'host');
  const key = loadOrCreateKey(need(v['key-file'], 'key-file'));
  const rdmaPort = parsePort(v['rdma-port'], 'rdma-port');
  const controlPort = parsePort(v['control-port'], 'control-port');
  const persistDomain = v['persist-domain'];
  if (persistDomain !== undefined && !(PERSIST_DOMAINS as readonly string[]).includes(persistDomain)) {
    throw new UsageError(`--persist-domain: must be one of ${PERSIST_DOMAINS.join(', ')}, not ${persistDomain}`);
  }
  const slots = v['persist-slots'];
  const persistSlots = slots === undefined ? undefined : Number(slots);
  if (slots !== undefined && (!/^\d{1,2}$/.test(slots) || persistSlots! > MAX_PERSIST_SLOTS)) {
    throw new UsageError(`--persist-slots: must be an integer in [0, ${MAX_PERSIST_SLOTS}], not ${slots}`);
  }
  const device = openDevice(v, v.format === true);
  let server: UnitServer;
  try {
    server = await UnitServer.start({
      device,
      key,
      host,
      rdmaPort,
      controlPort,
      rdmaDevice: v['rdma-device'],
      log,
      persistDomain: persistDomain as PersistDomain | undefined,
      shadow: v.shadow,
      persistSlots,
    });
  } catch (err) {
    device.close();
    throw err;
  }
  let stopping = false;
  const stop = (sig: string): void => {
    if (stopping) process.exit(130); // a second signal: do not wait
    stopping = true;
    log?.(`${sig}: shutting down`);
    server.close().then(
      () => {
        log?.('stopped');
        process.exit(0);
      },
      (err) => {
        process.stderr.write(`npmu-unit: shutdown: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  const ready = {
    event: 'ready',
    unitId: server.unitId,
    host,
    rdmaPort: server.rdmaPort,
    controlPort: server.controlPort,
    device: device.path,
    kind: device.kind,
    durability: server.durability,
    persistDomain: server.persistDomain,
    shadow: server.shadow,
    capacity: device.capacity,
    pageSize: device.pageSize,
    dataPages: device.dataPages,
    formatted: device.formatted,
    pid: process.pid,
  };
  if (v.json) console.log(JSON.stringify(ready));
  else {
    console.log(
      `npmu-unit ready unitId=${ready.unitId} host=${host} rdmaPort=${ready.rdmaPort} controlPort=${ready.controlPort} ` +
        `durability=${ready.durability} persistDomain=${ready.persistDomain}${ready.shadow ? ' shadow=true' : ''} pageSize=${ready.pageSize} dataPages=${ready.dataPages} formatted=${ready.formatted} pid=${ready.pid}`,
    );
  }
}

function describeDevice(d: UnitDevice): Record<string, unknown> {
  const sb = d.superblock;
  return {
    device: d.path,
    kind: d.kind,
    durability: d.durability,
    persistDomain: d.persistDomain,
    unitId: sb.unitId,
    label: sb.label,
    layoutVersion: sb.layoutVersion,
    generation: sb.generation,
    capacity: sb.capacity,
    pageSize: sb.pageSize,
    metaOffset: sb.metaOffset,
    metaLength: sb.metaLength,
    dataOffset: sb.dataOffset,
    dataPages: sb.dataPages,
    createdAt: new Date(sb.createdAtMs).toISOString(),
    volumeId: sb.volumeId,
    role: sb.role,
  };
}

function printTable(rows: Record<string, unknown>): void {
  const w = Math.max(...Object.keys(rows).map((k) => k.length));
  for (const [k, val] of Object.entries(rows)) console.log(`${k.padEnd(w)}  ${typeof val === 'object' ? JSON.stringify(val) : String(val)}`);
}

async function infoCommand(v: Values): Promise<void> {
  const d = UnitDevice.open(need(v.device, 'device'), { readOnly: true });
  const out: Record<string, unknown> = describeDevice(d);
  d.close();
  const controlPort = parsePort(v['control-port'], 'control-port');
  if (controlPort !== undefined) {
    const key = loadOrCreateKey(need(v['key-file'], 'key-file'));
    const ticket = issueTicket({ key, kind: 'control', unitId: String(out.unitId), sessionId: 0, ttlSec: 60 });
    const c = await ControlConnection.connect({ host: need(v.host, 'host'), port: controlPort });
    try {
      await c.request('hello', { ticket });
      const { v: _v, id: _id, type: _t, ...live } = await c.request('info', {});
      out.live = live;
    } finally {
      c.close();
    }
  }
  if (v.json) console.log(JSON.stringify(out));
  else printTable(out);
}

function formatCommand(v: Values): void {
  const d = openDevice(v, true);
  const out = describeDevice(d);
  d.close();
  if (v.json) console.log(JSON.stringify(out));
  else printTable(out);
}

export async function main(argv: string[]): Promise<number> {
  let v: Values;
  let command: string;
  try {
    const parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    v = parsed.values;
    if (v.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    if (parsed.positionals.length > 1) throw new UsageError(`unexpected arguments: ${parsed.positionals.slice(1).join(' ')}`);
    command = parsed.positionals[0] ?? 'serve';
    if (!['serve', 'info', 'format'].includes(command)) throw new UsageError(`unknown command ${command}`);
  } catch (err) {
    process.stderr.write(`npmu-unit: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  try {
    if (command === 'info') await infoCommand(v);
    else if (command === 'format') formatCommand(v);
    else {
      await serveCommand(v);
      return -1; // serving: the signal handlers exit
    }
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`npmu-unit: ${err.message}\n${USAGE}`);
      return 2;
    }
    const code = err instanceof NpmuError || typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : 'ERROR';
    process.stderr.write(`npmu-unit: ${code}: ${(err as Error)?.message ?? String(err)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    if (code >= 0) process.exitCode = code;
  });
}
