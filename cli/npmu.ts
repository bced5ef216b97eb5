#!/usr/bin/env node
/**
 * `npmu`: the operator's command line. Human-readable output by default,
 * `--json` for scripts. Errors: "npmu: CODE: message" on stderr, exit 1.
 *
 *   npmu unit start --device PATH --host ADDR --key-file F [--create-size N] [--format] [...]
 *   npmu pmm start --key-file F --clients-file C --unit HOST:PORT[:RDMA]... [--host A] [--port N]
 *   npmu pmm add-client NAME --clients-file C [--secret S] [--admin]
 *   npmu volume create NAME --pmm HOST:PORT --primary HOST:PORT[:RDMA] --mirror HOST:PORT[:RDMA] [--force]
 *   npmu volume status NAME --pmm HOST:PORT
 *   npmu region create|list|stat|delete|dump|write ... --pmm HOST:PORT --volume V --client NAME --secret S
 *
 * Connection options may come from the environment: NPMU_PMM, NPMU_VOLUME,
 * NPMU_CLIENT, NPMU_SECRET.
 */
import * as fs from 'node:fs';
import { Command, Option } from 'commander';
import { NpmuClient, ReadFrom } from '../lib/client';
import type { ReadMode } from '../lib/client';
import { ControlConnection } from '../lib/protocol';
import type { OkReply } from '../lib/protocol';
import { clientLine, newSecret, parseClients } from '../pmm/credentials';
import { runPmm } from '../pmm/main';
import { parseAddress } from '../pmm/volume';

class CliError extends Error {
  code = 'ERR_NPMU_USAGE';
}

export function parseSize(s: string): number {
  const m = /^(0x[0-9a-f]+|[0-9]+)\s*([kmgt]?)(i?b)?$/i.exec(String(s).trim());
  if (!m) throw new CliError(`not a size: ${s}`);
  const n = Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
  if (!Number.isSafeInteger(n) || n < 0) throw new CliError(`size out of range: ${s}`);
  return n;
}

function parsePointer(s: string): bigint {
  if (!/^(0x[0-9a-f]+|[0-9]+)$/i.test(s)) throw new CliError(`not a pointer (decimal or 0x hex): ${s}`);
  return BigInt(s);
}

function hostPort(s: string | undefined, what: string): { host: string; port: number } {
  if (!s) throw new CliError(`${what} is required (HOST:PORT)`);
  const i = s.lastIndexOf(':');
  const port = Number(s.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new CliError(`${what}: expected HOST:PORT, got ${s}`);
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

const fmtBytes = (n: number): string => {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${u[i]}`;
};
const hex = (p: bigint): string => `0x${p.toString(16)}`;

function print(json: boolean | undefined, value: unknown, human: () => string): void {
  if (json) {
    process.stdout.write(JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
  } else {
    const text = human();
    if (text) process.stdout.write(text.endsWith('\n') ? text : text + '\n');
  }
}

/** The classic hexdump -C layout, with addresses as region pointers. */
export function hexdump(buf: Buffer, start: bigint): string {
  const lines: string[] = [];
  let prev = '';
  let starred = false;
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, Math.min(i + 16, buf.length));
    const key = row.toString('hex');
    if (key === prev && row.length === 16 && i + 16 < buf.length) {
      if (!starred) lines.push('*');
      starred = true;
      continue;
    }
    starred = false;
    prev = key;
    const bytes = [...row].map((b) => b.toString(16).padStart(2, '0'));
    const left = bytes.slice(0, 8).join(' ').padEnd(23);
    const right = bytes.slice(8).join(' ').padEnd(23);
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(start + BigInt(i)).toString(16).padStart(12, '0')}  ${left}  ${right}  |${ascii}|`);
  }
  lines.push((start + BigInt(buf.length)).toString(16).padStart(12, '0'));
  return lines.join('\n');
}

interface ConnOpts {
  pmm?: string;
  volume?: string;
  client?: string;
  secret?: string;
  json?: boolean;
}

function connOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--pmm <host:port>', 'the PMM').env('NPMU_PMM'))
    .addOption(new Option('--volume <name>', 'the volume').env('NPMU_VOLUME'))
    .addOption(new Option('--client <name>', 'client name (clients file)').env('NPMU_CLIENT'))
    .addOption(new Option('--secret <secret>', "the client's secret").env('NPMU_SECRET'))
    .option('--json', 'machine-readable output');
}

async function attach(o: ConnOpts, data = false): Promise<NpmuClient> {
  if (!o.volume) throw new CliError('--volume is required');
  if (!o.client) throw new CliError('--client is required');
  return NpmuClient.attach({ pmm: hostPort(o.pmm, '--pmm'), client: o.client, secret: o.secret ?? '', volume: o.volume, connectUnits: data });
}

async function withClient<T>(o: ConnOpts, data: boolean, fn: (c: NpmuClient) => Promise<T>): Promise<T> {
  const c = await attach(o, data);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** A PMM connection for volume requests: attached as a client if one is given, else unattached (allowed from the PMM's host). */
async function pmmConnection(o: ConnOpts, volume: string): Promise<ControlConnection> {
  const c = await ControlConnection.connect({ ...hostPort(o.pmm, '--pmm'), defaultTimeoutMs: 120_000 });
  if (o.client) {
    try {
      await c.request('attach', { client: o.client, credential: Buffer.from(o.secret ?? ''), volume });
    } catch (e) {
      c.destroy();
      throw e;
    }
  }
  return c;
}

export function volumeStatusText(s: Omit<OkReply<'volume-status'>, 'v' | 'id' | 'type'>): string {
  const half = (name: string, u: typeof s.primary): string =>
    `  ${name.padEnd(8)} unit ${u.unitId}  ${u.host}:${u.controlPort}  ${u.available ? 'up' : 'DOWN'}  ${u.durability}${u.sync ? `  ${u.sync}` : ''}`;
  return [
    `volume ${s.volume} (${s.volumeId}): ${s.state.toUpperCase()}${s.epoch !== undefined ? `  (epoch ${s.epoch}, generation ${s.generation ?? '?'})` : ''}`,
    ...(s.reason ? [`  ${s.reason}`] : []),
    ...(s.resync ? [`  resync of the ${s.resync.half}: ${fmtBytes(s.resync.done)} of ${fmtBytes(s.resync.total)}`] : []),
    `  ${s.regions} regions, ${s.usedPages}/${s.totalPages} pages of ${fmtBytes(s.pageSize)} used (${fmtBytes(s.usedPages * s.pageSize)} of ${fmtBytes(s.totalPages * s.pageSize)})`,
    half('primary', s.primary),
    half('mirror', s.mirror),
  ].join('\n');
}

export function buildProgram(): Command {
  const program = new Command('npmu')
    .description('network-attached persistent memory over RDMA: units, the PMM, volumes and regions')
    .showHelpAfterError()
    .enablePositionalOptions();

  // ---- units --------------------------------------------------------------
  const unit = program.command('unit').description('a unit (nPMU): one persistent memory device');
  for (const [name, sub] of [
    ['start', 'serve'],
    ['format', 'format'],
    ['info', 'info'],
  ] as const) {
    unit
      .command(name)
      .description(`${name === 'start' ? 'serve a device' : name === 'format' ? 'format a device' : 'show a device'} (options as npmu-unit ${sub} --help)`)
      .allowUnknownOption()
      .helpOption(false)
      .passThroughOptions()
      .argument('[options...]')
      .action(async (args: string[]) => {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const { main } = require('../unit/main') as typeof import('../unit/main');
        const code = await main([sub, ...args]);
        if (code >= 0) process.exitCode = code;
      });
  }

  // ---- the PMM --------------------------------------------------------------
  const pmm = program.command('pmm').description('the persistent memory manager');
  pmm
    .command('start')
    .description('serve the volumes of the units given (recovered from their metadata)')
    .requiredOption('--key-file <file>', 'key shared with the units (created if missing, mode 0600)')
    .requiredOption('--clients-file <file>', 'who may attach (see npmu pmm add-client)')
    .option('--unit <host:port[:rdmaPort]>', 'a unit control address (repeat)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--host <addr>', 'listen address', '0.0.0.0')
    .option('--port <n>', 'listen port', '7480')
    .option('--no-zero', 'do not zero new regions (needs no RDMA in the PMM; new regions may show old bytes)')
    .option('--quiet', 'warnings only on stderr')
    .option('--json', 'print the ready line as JSON')
    .action(async (o: { keyFile: string; clientsFile: string; unit: string[]; host: string; port: string; zero: boolean; quiet?: boolean; json?: boolean }) => {
      for (const u of o.unit) parseAddress(u);
      await runPmm({ keyFile: o.keyFile, clientsFile: o.clientsFile, units: o.unit, host: o.host, port: Number(o.port), zero: o.zero, quiet: o.quiet, json: o.json });
    });
  pmm
    .command('add-client <name>')
    .description('add a client to a clients file and print its secret')
    .requiredOption('--clients-file <file>', 'the clients file (created if missing, mode 0600)')
    .option('--secret <secret>', 'use this secret instead of a random one')
    .option('--admin', 'may also create volumes')
    .option('--log-n <n>', 'scrypt cost, log2 N', '14')
    .option('--json')
    .action((name: string, o: { clientsFile: string; secret?: string; admin?: boolean; logN: string; json?: boolean }) => {
      const secret = o.secret ?? newSecret();
      const line = clientLine(name, secret, { roles: o.admin ? ['admin'] : ['user'], logN: Number(o.logN) });
      const old = fs.existsSync(o.clientsFile) ? fs.readFileSync(o.clientsFile, 'utf8') : '';
      if (parseClients(old, o.clientsFile).has(name)) throw new CliError(`client ${name} is already in ${o.clientsFile}`);
      fs.writeFileSync(o.clientsFile, (old === '' || old.endsWith('\n') ? old : old + '\n') + line + '\n', { mode: 0o600 });
      print(o.json, { client: name, secret }, () => `client ${name} added to ${o.clientsFile}\nsecret: ${secret}`);
    });

  // ---- volumes ------------------------------------------------------------------
  const volume = program.command('volume').description('mirrored pairs of units');
  connOptions(
    volume
      .command('create <name>')
      .description('make a volume of two units that belong to none (formats both halves)')
      .requiredOption('--primary <host:port[:rdmaPort]>', 'primary unit control address')
      .requiredOption('--mirror <host:port[:rdmaPort]>', 'mirror unit control address')
      .option('--force', 'rebind units that belong to another volume (destroys it)'),
  ).action(async (name: string, o: ConnOpts & { primary: string; mirror: string; force?: boolean }) => {
    const c = await pmmConnection(o, name);
    try {
      const p = parseAddress(o.primary);
      const m = parseAddress(o.mirror);
      const r = await c.request('create-volume', { volume: name, primary: p, mirror: m, force: o.force ?? false });
      print(o.json, { volume: name, volumeId: r.volumeId }, () => `volume ${name} created (${r.volumeId}): primary ${o.primary}, mirror ${o.mirror}`);
    } finally {
      c.close();
    }
  });
  connOptions(volume.command('status <name>').description('health and usage of a volume and its two units')).action(async (name: string, o: ConnOpts) => {
    const c = await pmmConnection(o, name);
    try {
      const { v: _v, id: _id, type: _t, ...s } = await c.request('volume-status', { volume: name });
      print(o.json, s, () => volumeStatusText(s));
    } finally {
      c.close();
    }
  });

  connOptions(
    volume
      .command('resync <name>')
      .description('bring the stale half of a volume up to date by a full copy (every region must be closed)'),
  ).action(async (name: string, o: ConnOpts) => {
    const c = await pmmConnection(o, name);
    const watch = await pmmConnection(o, name);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { SingleBar, Presets } = require('cli-progress') as typeof import('cli-progress');
    const bar = o.json ? null : new SingleBar({ format: 'resync {half} [{bar}] {percentage}% {done} of {all}', stream: process.stderr, noTTYOutput: true, notTTYSchedule: 2000 }, Presets.shades_classic);
    let started = false;
    const timer = setInterval(() => {
      void watch
        .request('volume-status', { volume: name })
        .then((s) => {
          if (!bar || !s.resync) return;
          const payload = { half: s.resync.half, done: fmtBytes(s.resync.done), all: fmtBytes(s.resync.total) };
          if (!started) bar.start(Math.max(1, s.resync.total), s.resync.done, payload);
          else bar.update(s.resync.done, payload);
          started = true;
        })
        .catch(() => undefined);
    }, 250);
    try {
      const r = await c.request('volume-resync', { volume: name }, { timeoutMs: 24 * 3600_000 });
      if (bar && started) {
        bar.update(Math.max(1, r.bytes));
        bar.stop();
      }
      print(o.json, { volume: name, half: r.half, regions: r.regions, bytes: r.bytes }, () => `volume ${name}: the ${r.half} is current again (${r.regions} regions, ${fmtBytes(r.bytes)} copied)`);
    } finally {
      clearInterval(timer);
      if (bar && started) bar.stop();
      c.close();
      watch.close();
    }
  });
  connOptions(
    volume
      .command('force <name>')
      .description('serve a waiting or split-brain volume from one half; the other becomes stale (what it acknowledged alone is lost)')
      .requiredOption('--half <primary|mirror>', 'the half to keep'),
  ).action(async (name: string, o: ConnOpts & { half: string }) => {
    if (o.half !== 'primary' && o.half !== 'mirror') throw new CliError('--half must be primary or mirror');
    const c = await pmmConnection(o, name);
    try {
      const r = await c.request('volume-force', { volume: name, half: o.half });
      print(o.json, { volume: name, served: o.half, stale: r.stale }, () => `volume ${name}: served from the ${o.half}; the ${r.stale} is stale (resync it with npmu volume resync ${name})`);
    } finally {
      c.close();
    }
  });

  // ---- regions ------------------------------------------------------------------------
  const region = program.command('region').description('regions of a volume');
  connOptions(
    region
      .command('create <name> <size>')
      .description('create a region (size like 4096, 64K, 2M)')
      .option('--base <pointer>', 'base pointer (decimal or 0x hex), fixed for life', '0')
      .option('--not-durable', 'writes are not durable by default'),
  ).action(async (name: string, size: string, o: ConnOpts & { base: string; notDurable?: boolean }) => {
    const bytes = parseSize(size);
    const base = parsePointer(o.base);
    await withClient(o, false, (c) => c.createRegion(name, bytes, base, { durable: !o.notDurable }));
    print(o.json, { region: name, size: bytes, basePointer: base }, () => `region ${name} created: ${fmtBytes(bytes)} at base pointer ${hex(base)}`);
  });
  connOptions(region.command('list').description('the regions of the volume').option('--max <n>', 'list at most n names', '4096')).action(
    async (o: ConnOpts & { max: string }) => {
      const r = await withClient(o, false, (c) => c.listRegions(Number(o.max)));
      print(o.json, r, () => [...r.names, `${r.count} region(s)${r.names.length < r.count ? ` (${r.names.length} listed)` : ''}`].join('\n'));
    },
  );
  connOptions(region.command('stat <name>').description("a region's attributes")).action(async (name: string, o: ConnOpts) => {
    const attrs = await withClient(o, false, async (c) => {
      const a = await c.readAttributes(name);
      const out = {
        name: a.getAttrString('name'),
        size: a.getAttrNumber('size'),
        basePointer: a.getAttrU64('basePointer'),
        owner: a.getAttrString('owner'),
        createdAt: a.getAttrDate('createdAtMs').toISOString(),
        lastOpenAt: a.getAttrDate('lastOpenAtMs').getTime() === 0 ? null : a.getAttrDate('lastOpenAtMs').toISOString(),
        durable: a.getAttrBool('durable'),
        durability: a.getAttrString('durability'),
        primaryUnit: a.getAttrString('primaryUnit'),
        mirrorUnit: a.getAttrString('mirrorUnit'),
      };
      c.freeRegionAttrs(a);
      return out;
    });
    print(o.json, attrs, () =>
      Object.entries({ ...attrs, size: `${attrs.size} (${fmtBytes(attrs.size)})`, basePointer: hex(attrs.basePointer), lastOpenAt: attrs.lastOpenAt ?? 'never' })
        .map(([k, v]) => `${k.padEnd(12)} ${String(v)}`)
        .join('\n'),
    );
  });
  connOptions(region.command('delete <name>').description('delete a region (only its owner; refused while another client has it open)')).action(
    async (name: string, o: ConnOpts) => {
      await withClient(o, false, (c) => c.deleteRegion(name));
      print(o.json, { region: name, deleted: true }, () => `region ${name} deleted`);
    },
  );
  connOptions(
    region
      .command('dump <name>')
      .description('hexdump a range of a region, read by RDMA')
      .option('--offset <n>', 'from this offset in the region', '0')
      .option('--length <n>', 'this many bytes', '256')
      .addOption(new Option('--half <half>', 'which half to read').choices(['any', 'primary', 'mirror']).default('any')),
  ).action(async (name: string, o: ConnOpts & { offset: string; length: string; half: ReadMode }) => {
    const offset = parseSize(o.offset);
    await withClient(o, true, async (c) => {
      const h = await c.openRegion(name);
      try {
        const len = Math.min(parseSize(o.length), Math.max(0, h.size - offset));
        if (len === 0) throw new CliError(`offset ${offset} is past the end of ${name} (${h.size} bytes)`);
        const buf = Buffer.alloc(len);
        const r = await c.readRegion(h, buf, len, h.basePointer + BigInt(offset), { mirror: o.half ?? ReadFrom.ANY });
        print(o.json, { region: name, pointer: h.basePointer + BigInt(offset), length: len, half: r.half, data: buf.toString('base64') }, () =>
          [`region ${name}, ${len} bytes at pointer ${hex(h.basePointer + BigInt(offset))}, read from the ${r.half}:`, hexdump(buf, h.basePointer + BigInt(offset))].join('\n'),
        );
      } finally {
        await c.closeRegion(h);
      }
    });
  });
  connOptions(
    region
      .command('write <name>')
      .description('write text or a file into a region, by RDMA')
      .option('--offset <n>', 'at this offset in the region', '0')
      .option('--text <text>', 'the bytes to write (UTF-8)')
      .option('--file <file>', 'or the contents of this file')
      .addOption(new Option('--half <half>', 'which half to write').choices(['both', 'primary', 'mirror']).default('both')),
  ).action(async (name: string, o: ConnOpts & { offset: string; text?: string; file?: string; half: 'both' | 'primary' | 'mirror' }) => {
    const data = o.text !== undefined ? Buffer.from(o.text, 'utf8') : o.file ? fs.readFileSync(o.file) : undefined;
    if (!data || data.length === 0) throw new CliError('give --text or --file (non-empty)');
    await withClient(o, true, async (c) => {
      const h = await c.openRegion(name);
      try {
        const r = await c.writeRegion(h, data, data.length, h.basePointer + BigInt(parseSize(o.offset)), { mirror: o.half });
        print(o.json, { region: name, ...r }, () => `${r.bytes} bytes written to ${r.halves.join(' and ')} (${r.durable ? `durable: ${r.durability}` : `not durable: ${r.durability}`})`);
      } finally {
        await c.closeRegion(h);
      }
    });
  });
  return program;
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((e: Error & { code?: string }) => {
      process.stderr.write(`npmu: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
      process.exit(e instanceof CliError ? 2 : 1);
    });
}
