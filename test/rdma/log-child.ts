/** A log writer process for test/rdma/log.test.ts: attaches, opens the log as
 * writer (lease leaseMs), appends one record, prints WRITER <lsn> and waits to be killed. */
import { NpmuClient } from '../../lib/client';
import { NpmuLog } from '../../lib/log';

const [host, port, client, secret, volume, name, leaseMs] = process.argv.slice(2);

async function main(): Promise<void> {
  const c = await NpmuClient.attach({ pmm: { host: host!, port: Number(port) }, client: client!, secret: secret!, volume: volume! });
  const log = await NpmuLog.open(c, name!, { leaseMs: Number(leaseMs) });
  const lsn = await log.append(Buffer.from(`child ${process.pid}`));
  console.log(`WRITER ${lsn}`);
  setInterval(() => undefined, 1000);
}

main().catch((e) => {
  console.log(`ERROR ${(e as { code?: string }).code ?? ''} ${(e as Error).message}`);
  process.exit(1);
});
