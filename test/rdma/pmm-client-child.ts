/** A client process for the PMM tests: attaches, opens the regions named,
 * writes a marker into each, prints OPEN and waits to be killed ([0085]). */
import { NpmuClient } from '../../lib/client';

const [host, port, client, secret, volume, ...regions] = process.argv.slice(2);

async function main(): Promise<void> {
  const c = await NpmuClient.attach({ pmm: { host: host!, port: Number(port) }, client: client!, secret: secret!, volume: volume! });
  for (const r of regions) {
    const h = await c.openRegion(r);
    await c.writeRegion(h, Buffer.from(`child ${process.pid}`), undefined, h.basePointer);
  }
  console.log(`OPEN ${regions.length}`);
  setInterval(() => undefined, 1000);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
