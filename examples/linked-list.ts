/**
 * Pointer-stable regions ([0069], [0074]): a linked list written into a
 * region by one process and followed by another, with no marshalling.
 *
 * The region is created with a base pointer (here 0x7f5a_0000_0000). Every
 * node's `next` field holds an ordinary pointer value in [base, base + size);
 * because the PMM maps the region at a network virtual address equal to its
 * base pointer, the reader hands those pointers straight to readRegion — the
 * pointer *is* the remote address, in any process that opens the region,
 * on any host, at any later time.
 *
 * Layout (little-endian):
 *   base + 0   header: magic "NPMULIST" (8), head pointer (u64), count (u64)
 *   node:      next pointer (u64, 0 = end), value (u64), text (48 bytes, NUL padded)
 * The writer scatters the nodes over the region in a shuffled order, so
 * following `next` really jumps around.
 *
 *   node dist/examples/linked-list.js write --pmm HOST:PORT --client NAME --secret S --volume V [--region R] [--items a,b,c]
 *   node dist/examples/linked-list.js read  --pmm HOST:PORT --client NAME --secret S --volume V [--region R]
 */
import { NpmuClient } from '../lib/client';
import type { RegionHandle } from '../lib/client';

export const LIST_BASE = 0x7f5a00000000n;
export const LIST_REGION_SIZE = 64 * 1024;
const MAGIC = Buffer.from('NPMULIST');
const HEADER = 24;
const NODE = 64;
const TEXT = 48;

/** Writes `items` as a linked list into `region` (created if missing); returns the node pointers in list order. */
export async function writeList(client: NpmuClient, region: string, items: string[], log: (s: string) => void = () => undefined): Promise<bigint[]> {
  const { names } = await client.listRegions();
  if (!names.includes(region)) await client.createRegion(region, LIST_REGION_SIZE, LIST_BASE);
  const h = await client.openRegion(region);
  try {
    const slots = Math.floor((h.size - HEADER) / NODE);
    if (items.length > slots) throw new RangeError(`${items.length} items do not fit (${slots} nodes)`);
    // Shuffled slots: node i lives at slot perm[i].
    const perm = Array.from({ length: slots }, (_, i) => i);
    for (let i = perm.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    const ptrs = items.map((_, i) => h.basePointer + BigInt(HEADER + perm[i]! * NODE));
    // Nodes first, then the header that makes them reachable.
    for (let i = items.length - 1; i >= 0; i--) {
      const node = Buffer.alloc(NODE);
      node.writeBigUInt64LE(i + 1 < items.length ? ptrs[i + 1]! : 0n, 0);
      node.writeBigUInt64LE(BigInt(i), 8);
      node.write(items[i]!.slice(0, TEXT), 16, 'utf8');
      await client.writeRegion(h, node, NODE, ptrs[i]!);
      log(`  node ${i} "${items[i]}" at 0x${ptrs[i]!.toString(16)} -> next 0x${(i + 1 < items.length ? ptrs[i + 1]! : 0n).toString(16)}`);
    }
    const hdr = Buffer.alloc(HEADER);
    MAGIC.copy(hdr, 0);
    hdr.writeBigUInt64LE(items.length > 0 ? ptrs[0]! : 0n, 8);
    hdr.writeBigUInt64LE(BigInt(items.length), 16);
    const r = await client.writeRegion(h, hdr, HEADER, h.basePointer);
    log(`  header at 0x${h.basePointer.toString(16)}: head 0x${(ptrs[0] ?? 0n).toString(16)}, ${items.length} nodes (durable: ${r.durable}, ${r.durability})`);
    return ptrs;
  } finally {
    await client.closeRegion(h);
  }
}

/** Opens `region` and follows the list from its header, pointer by pointer. */
export async function readList(client: NpmuClient, region: string, log: (s: string) => void = () => undefined): Promise<string[]> {
  const h: RegionHandle = await client.openRegion(region);
  try {
    const hdr = Buffer.alloc(HEADER);
    await client.readRegion(h, hdr, HEADER, h.basePointer);
    if (!hdr.subarray(0, 8).equals(MAGIC)) throw new Error(`region ${region} holds no list (bad magic)`);
    let p = hdr.readBigUInt64LE(8);
    const count = Number(hdr.readBigUInt64LE(16));
    log(`  region ${region}: base pointer 0x${h.basePointer.toString(16)}, base NVA 0x${h.primary.baseNva.toString(16)}, head 0x${p.toString(16)}`);
    const out: string[] = [];
    const node = Buffer.alloc(NODE);
    while (p !== 0n) {
      if (out.length > count) throw new Error('the list has a cycle');
      // The stored pointer is used as is: [0074], no translation, no marshalling.
      await client.readRegion(h, node, NODE, p);
      const text = node.toString('utf8', 16, 16 + TEXT).replace(/\0+$/, '');
      log(`  0x${p.toString(16)}: "${text}"`);
      out.push(text);
      p = node.readBigUInt64LE(0);
    }
    return out;
  } finally {
    await client.closeRegion(h);
  }
}

async function main(argv: string[]): Promise<void> {
  const [mode, ...rest] = argv;
  const opt: Record<string, string> = {};
  for (let i = 0; i < rest.length; i += 2) opt[rest[i]!.replace(/^--/, '')] = rest[i + 1] ?? '';
  if ((mode !== 'write' && mode !== 'read') || !opt.pmm || !opt.client || !opt.volume) {
    throw new Error('usage: linked-list.js write|read --pmm HOST:PORT --client NAME --secret S --volume V [--region R] [--items a,b,c]');
  }
  const i = opt.pmm.lastIndexOf(':');
  const client = await NpmuClient.attach({
    pmm: { host: opt.pmm.slice(0, i), port: Number(opt.pmm.slice(i + 1)) },
    client: opt.client,
    secret: opt.secret ?? process.env.NPMU_SECRET ?? '',
    volume: opt.volume,
  });
  const region = opt.region ?? 'list';
  try {
    if (mode === 'write') {
      const items = (opt.items ?? 'alpha,beta,gamma,delta,epsilon').split(',');
      console.log(`pid ${process.pid} writes ${items.length} nodes into ${region}:`);
      await writeList(client, region, items, (s) => console.log(s));
      console.log('WRITTEN');
    } else {
      console.log(`pid ${process.pid} follows the list in ${region}:`);
      const items = await readList(client, region, (s) => console.log(s));
      console.log(`LIST ${items.join(',')}`);
    }
  } finally {
    await client.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e: Error & { code?: string }) => {
    console.error(`linked-list: ${e.code ? `${e.code}: ` : ''}${e.message}`);
    process.exit(1);
  });
}
