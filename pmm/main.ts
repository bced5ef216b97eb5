/**
 * The PMM daemon: `node dist/pmm/main.js --key-file F --clients-file C
 * --unit HOST:CONTROLPORT[:RDMAPORT]... [--host ADDR] [--port N] [--json]`.
 *
 * Prints one line when it is serving (human-readable, or with --json
 * `{"event":"ready","pmmId","host","port","volumes":[…]}`) on stdout; logs go
 * to stderr. SIGINT/SIGTERM stop it. `npmu pmm start` runs the same code.
 */
import { loadOrCreateKey } from '../lib/ticket';
import { ClientRegistry } from './credentials';
import { PmmServer } from './server';
import { parseAddress } from './volume';
import type { Logger } from './volume';

export interface PmmMainOptions {
  keyFile: string;
  clientsFile: string;
  units: string[];
  host?: string;
  port?: number;
  json?: boolean;
  zero?: boolean;
  quiet?: boolean;
}

export function stderrLogger(prefix: string, quiet = false): Logger {
  const line = (level: string, msg: string): void => {
    if (!quiet || level === 'warn') process.stderr.write(`${new Date().toISOString()} ${prefix} ${level}: ${msg}\n`);
  };
  return { info: (m) => line('info', m), warn: (m) => line('warn', m) };
}

/** Starts a PMM, prints the ready line, stops on SIGINT/SIGTERM. */
export async function runPmm(o: PmmMainOptions): Promise<PmmServer> {
  const key = loadOrCreateKey(o.keyFile);
  const clients = new ClientRegistry({ file: o.clientsFile });
  const pmm = await PmmServer.start({
    key,
    clients,
    host: o.host ?? '0.0.0.0',
    port: o.port ?? 7480,
    units: o.units.map(parseAddress),
    log: stderrLogger('pmm', o.quiet),
    zeroNewRegions: o.zero ?? true,
  });
  const volumes = [...pmm.volumes.values()].map((v) => ({ name: v.name, volumeId: v.volumeId, state: v.state, regions: v.image.regionCount }));
  if (o.json) process.stdout.write(JSON.stringify({ event: 'ready', pmmId: pmm.pmmId, host: pmm.host, port: pmm.port, volumes }) + '\n');
  else {
    process.stdout.write(`npmu PMM ${pmm.pmmId} serving on ${pmm.host}:${pmm.port}\n`);
    for (const v of volumes) process.stdout.write(`  volume ${v.name} (${v.volumeId}): ${v.state}, ${v.regions} regions\n`);
  }
  const stop = (): void => {
    void pmm.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return pmm;
}

function parseArgs(argv: string[]): PmmMainOptions {
  const o: PmmMainOptions = { keyFile: '', clientsFile: '', units: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--key-file': o.keyFile = val(); break;
      case '--clients-file': o.clientsFile = val(); break;
      case '--unit': o.units.push(val()); break;
      case '--host': o.host = val(); break;
      case '--port': o.port = Number(val()); break;
      case '--json': o.json = true; break;
      case '--no-zero': o.zero = false; break;
      case '--quiet': o.quiet = true; break;
      default: throw new Error(`unknown option ${a}`);
    }
  }
  if (!o.keyFile || !o.clientsFile) throw new Error('usage: pmm/main.js --key-file F --clients-file C --unit HOST:PORT[:RDMAPORT]... [--host A] [--port N] [--json] [--no-zero] [--quiet]');
  return o;
}

if (require.main === module) {
  try {
    runPmm(parseArgs(process.argv.slice(2))).catch((e: Error) => {
      process.stderr.write(`pmm: ${e.message}\n`);
      process.exit(1);
    });
  } catch (e) {
    process.stderr.write(`pmm: ${(e as Error).message}\n`);
    process.exit(2);
  }
}
