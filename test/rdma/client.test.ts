/**
 * The client library on real rxe: argument checking before anything reaches
 * the verbs, transparent PM_ANY failover when the primary unit's process is
 * killed mid-stream (and PM_PRIMARY then failing clearly), and a linked list
 * written by one process and followed, pointer by pointer, by another.
 */
import * as path from 'node:path';
import t from 'tap';
import { NpmuClient, Mirror, ReadFrom, RegionHandle } from '../../lib/client';
import { readList } from '../../examples/linked-list';
import { rdmaAddress } from './fixture';
import { SECRETS, child, shmPath, startSystem, unitInProcess, unitProcess, until } from './pmm-helpers';
import type { System } from './pmm-helpers';

// Every RDMA test file shares one tap root in one process (run.ts); its default
// 30 s budget is far too short for a suite of VM tests.
t.setTimeout(30 * 60_000);

t.test('arguments are checked before anything reaches the verbs', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  try {
    await t.rejects(NpmuClient.attach(undefined as never), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(NpmuClient.attach({ pmm: { host: rdmaAddress(), port: 0 }, client: 'a', secret: 's', volume: sys.volume }), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(NpmuClient.attach({ pmm: { host: rdmaAddress(), port: sys.pmm.port }, client: 'alice', secret: 5 as never, volume: sys.volume }), {
      code: 'ERR_INVALID_ARG_TYPE',
    });
    await t.rejects(NpmuClient.attach({ pmm: { host: rdmaAddress(), port: sys.pmm.port }, client: 'alice', secret: 'wrong', volume: sys.volume }), {
      code: 'ERR_NPMU_NOT_AUTHORIZED',
    });
    await t.rejects(NpmuClient.attach({ pmm: { host: rdmaAddress(), port: sys.pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: 'nope' }), {
      code: 'ERR_NPMU_NO_SUCH_VOLUME',
    });
    for (const [spinUs, code] of [[-1, 'ERR_OUT_OF_RANGE'], [1.5, 'ERR_OUT_OF_RANGE'], [1_000_001, 'ERR_OUT_OF_RANGE'], ['100', 'ERR_INVALID_ARG_TYPE']] as const)
      await t.rejects(NpmuClient.attach({ pmm: { host: rdmaAddress(), port: sys.pmm.port }, client: 'alice', secret: SECRETS.alice!, volume: sys.volume, spinUs: spinUs as number }), { code }, `spinUs ${spinUs}`);
    const c = await sys.attach('alice');
    await t.rejects(c.createRegion(5 as never, 10), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.createRegion('', 10), { code: 'ERR_INVALID_ARG_VALUE' });
    await t.rejects(c.createRegion('x'.repeat(65), 10), { code: 'ERR_INVALID_ARG_VALUE' });
    await t.rejects(c.createRegion('a\0b', 10), { code: 'ERR_INVALID_ARG_VALUE' });
    await t.rejects(c.createRegion('r', 0), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.createRegion('r', 1.5), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.createRegion('r', '10' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.createRegion('r', 10, -1n), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.createRegion('r', 10, 1n << 64n), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.createRegion('r', 10, (1n << 64n) - 5n), { code: 'ERR_OUT_OF_RANGE' }, 'base + size past 2^64');
    await t.rejects(c.createRegion('r', 10, 0n, { durable: 1 } as never), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.listRegions(-1), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.listRegions(4097), { code: 'ERR_OUT_OF_RANGE' });
    await c.createRegion('r', 4096, 0x1000n);
    const h = await c.openRegion('r');
    const b = Buffer.alloc(16);
    await t.rejects(c.writeRegion({} as RegionHandle, b, 16, 0x1000n), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.writeRegion(h, 'text' as never, 4, 0x1000n), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.writeRegion(h, b, 0, 0x1000n), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.writeRegion(h, b, 17, 0x1000n), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.writeRegion(h, b, 16, '4096' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.writeRegion(h, b, 16, 0xfffn), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.writeRegion(h, b, 16, 0x1000n + 4096n - 15n), { code: 'ERR_OUT_OF_RANGE' });
    await t.rejects(c.writeRegion(h, b, 16, 0x1000n, { mirror: 'any' as never }), { code: 'ERR_INVALID_ARG_VALUE' });
    await t.rejects(c.writeRegion(h, b, 16, 0x1000n, { durable: 'yes' as never }), { code: 'ERR_INVALID_ARG_TYPE' });
    await t.rejects(c.readRegion(h, b, 16, 0x1000n, { mirror: 'both' as never }), { code: 'ERR_INVALID_ARG_VALUE' });
    await t.rejects(c.readRegion(h, b, 16, 0x1000n, null as never), { code: 'ERR_INVALID_ARG_TYPE' });
    // numbers work as pointers too; a Uint32Array is bytes
    const u = new Uint32Array([1, 2, 3, 4]);
    await c.writeRegion(h, u, 16, 0x1000 + 8);
    const back = new Uint32Array(4);
    await c.readRegion(h, back, undefined, 0x1008);
    t.same([...back], [1, 2, 3, 4]);
    await c.closeRegion(h);
    await t.rejects(c.closeRegion(h), { code: 'ERR_NPMU_BAD_HANDLE' });
  } finally {
    await sys.close();
  }
});

t.test('PM_ANY reads go on when the primary unit process is killed mid-stream; PM_PRIMARY then fails clearly', async (t) => {
  const primary = await unitProcess(shmPath(), '32M');
  const mirror = await unitInProcess(shmPath());
  let sys: System | undefined;
  try {
    sys = await startSystem({ primary, mirror });
    const c = await sys.attach('alice');
    await c.createRegion('stream', 1 << 20, 0x200000000n);
    const h = await c.openRegion('stream');
    const data = Buffer.alloc(1 << 20);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
    await c.writeRegion(h, data, data.length, h.basePointer);
    let downEvent = '';
    c.on('half-down', (half: string) => (downEvent ||= half));

    // A stream of PM_ANY reads; the primary dies in the middle of it.
    const chunk = Buffer.alloc(4096);
    let reads = 0;
    let failedOver = 0;
    let killed = false;
    for (let i = 0; i < 200; i++) {
      const off = (i * 4096 * 7) % data.length;
      const r = await c.readRegion(h, chunk, chunk.length, h.basePointer + BigInt(off));
      if (!chunk.equals(data.subarray(off, off + 4096))) t.fail(`read ${i} returned the wrong bytes`);
      reads++;
      if (r.half === 'mirror') failedOver++;
      if (i === 20 && !killed) {
        killed = true;
        await primary.kill();
      }
    }
    t.equal(reads, 200, 'every read succeeded');
    t.ok(failedOver >= 150, `reads after the kill came from the mirror (${failedOver})`);
    t.equal(downEvent, 'primary', "the client reported the primary's loss");
    t.equal(c.halfAvailable('primary'), false);

    await t.rejects(c.readRegion(h, chunk, 4096, h.basePointer, { mirror: ReadFrom.PRIMARY }), { code: 'ERR_NPMU_HALF_UNAVAILABLE', half: 'primary' });
    await t.rejects(c.writeRegion(h, chunk, 4096, h.basePointer, { mirror: Mirror.PRIMARY }), { code: 'ERR_NPMU_HALF_UNAVAILABLE', half: 'primary' });
    await t.rejects(c.writeRegion(h, chunk, 4096, h.basePointer), { code: 'ERR_NPMU_HALF_UNAVAILABLE' }, 'BOTH needs both halves');
    const m = await c.writeRegion(h, Buffer.from('degraded'), 8, h.basePointer, { mirror: Mirror.MIRROR });
    t.same(m.halves, ['mirror'], 'an explicit MIRROR write still works');
    const r = await c.readRegion(h, chunk, 8, h.basePointer, { mirror: ReadFrom.MIRROR });
    t.equal(r.half, 'mirror');
    t.equal(chunk.toString('utf8', 0, 8), 'degraded');

    await until(() => sys!.pmm.volumes.get(sys!.volume)!.state === 'degraded', 30_000, 'the PMM to see the primary down');
    const st = await c.volumeStatus();
    t.equal(st.state, 'degraded');
    t.equal(st.primary.available, false);
    const h2 = await c.openRegion('stream');
    t.equal(h2.primary.available, false, 'a new open maps the mirror only');
    t.equal(h2.mirror.available, true);
    const r2 = await c.readRegion(h2, chunk, 4096, h2.basePointer + 4096n);
    t.equal(r2.half, 'mirror');
    t.ok(chunk.equals(data.subarray(4096, 8192)));
    await c.closeRegion(h2);
    await c.closeRegion(h);
  } finally {
    if (sys) await sys.close();
    else {
      await primary.kill();
      await mirror.kill();
    }
  }
});

t.test('a linked list written by one process is followed by another that opened the region later ([0074])', async (t) => {
  const sys = await startSystem();
  try {
    const example = path.join(__dirname, '..', '..', 'examples', 'linked-list.js');
    const common = ['--pmm', `${rdmaAddress()}:${sys.pmm.port}`, '--client', 'alice', '--secret', SECRETS.alice!, '--volume', sys.volume, '--region', 'list'];
    const items = 'one,two,three,four,five,six,seven';
    const w = child(example, ['write', ...common, '--items', items]);
    await w.line(/^WRITTEN/);
    t.equal(await w.exited, 0, w.output());
    t.comment(w.output().trim());
    // another process
    const r = child(example, ['read', ...common.map((x) => (x === 'alice' ? 'bob' : x === SECRETS.alice ? SECRETS.bob! : x))]);
    const line = await r.line(/^LIST /);
    t.equal(await r.exited, 0, r.output());
    t.equal(line, `LIST ${items}`, 'the reader followed every pointer');
    // and this process, later still
    const c = await sys.attach('carol');
    t.same(await readList(c, 'list'), items.split(','));
    const a = await c.readAttributes('list');
    t.equal(a.getAttrString('owner'), 'alice');
  } finally {
    await sys.close();
  }
});
