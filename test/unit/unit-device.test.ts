/** The unit's device handling, natively on the host (no RDMA device needed):
 * format and recognise tmpfs and ordinary files, refuse unformatted, newer and
 * corrupt devices, bounded metadata I/O, superblock updates, extents, the
 * write-back persist of ordinary files, and the CLI's `format` / `info`
 * commands. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import t from 'tap';
import { crc32c } from '../../lib/crc32c';
import { mapFile } from '../../lib/verbs';
import { UnitDevice } from '../../unit/device';
import { parseSize } from '../../unit/main';
import { SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, readSuperblock } from '../../unit/layout';

const MiB = 1024 * 1024;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'npmu-unitdev-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function tmpfsPath(): string {
  const p = path.join('/dev/shm', `npmu-unitdev-${process.pid}-${Math.random().toString(36).slice(2)}`);
  t.teardown(() => fs.rmSync(p, { force: true }));
  return p;
}
const filePath = (name: string): string => path.join(dir, name);

t.test('tmpfs: created, sized and formatted on request; durability volatile', async (t) => {
  const p = tmpfsPath();
  const d = UnitDevice.open(p, { create: { size: 8 * MiB }, format: { label: 'shm-unit' } });
  t.equal(d.kind, 'tmpfs');
  t.equal(d.durability, 'volatile', 'tmpfs does not survive power loss, and says so');
  t.equal(d.formatted, true);
  t.equal(fs.statSync(p).size, 8 * MiB);
  const sb = d.superblock;
  t.equal(sb.pageSize, 4096);
  t.equal(sb.capacity, 8 * MiB);
  t.equal(sb.dataOffset, 1 * MiB);
  t.equal(sb.dataPages, (7 * MiB) / 4096);
  t.equal(sb.label, 'shm-unit');
  t.equal(sb.durability, 'volatile');
  t.match(sb.unitId, /^[0-9a-f]{32}$/);
  d.close();
  t.equal(d.closed, true);
  t.throws(() => d.readMeta(0, 1), { code: 'ERR_NPMU_CLOSED' });

  const again = UnitDevice.open(p);
  t.equal(again.formatted, false);
  t.same(again.superblock, sb, 'recognised: the same unit');
  again.close();
});

t.test('ordinary file: durability msync; both superblock copies written', async (t) => {
  const p = filePath('file.img');
  const d = UnitDevice.open(p, { create: { size: 4 * MiB }, format: { metaLength: 64 * 1024 } });
  t.equal(d.kind, 'file');
  t.equal(d.durability, 'msync');
  t.equal(d.metaLength, 64 * 1024);
  t.equal(d.superblock.dataOffset, 8192 + 64 * 1024);
  d.close();
  const img = fs.readFileSync(p);
  t.same(img.subarray(SUPERBLOCK_OFFSET.A, SUPERBLOCK_SIZE), img.subarray(SUPERBLOCK_OFFSET.B, SUPERBLOCK_OFFSET.B + SUPERBLOCK_SIZE));
  t.equal(readSuperblock(img).other, 'valid');
});

t.test('an unformatted device is refused, never formatted behind the operator', async (t) => {
  const p = filePath('blank.img');
  fs.writeFileSync(p, Buffer.alloc(2 * MiB, 0x5a));
  t.throws(() => UnitDevice.open(p), { code: 'ERR_NPMU_NOT_FORMATTED' });
  t.equal(fs.readFileSync(p)[0], 0x5a, 'untouched');
  t.throws(() => UnitDevice.open(filePath('missing.img')), { code: 'ENOENT' }, 'missing without create');
  const tiny = filePath('tiny.img');
  t.throws(() => UnitDevice.open(tiny, { create: { size: 64 * 1024 }, format: {} }), { code: 'ERR_NPMU_DEVICE_TOO_SMALL' });
});

t.test('format over a formatted, corrupt or newer device needs force', async (t) => {
  const p = filePath('reformat.img');
  const first = UnitDevice.open(p, { create: { size: 2 * MiB }, format: {} });
  first.writeMeta(0, Buffer.from('old volume metadata'), true);
  const id = first.unitId;
  first.close();
  t.throws(() => UnitDevice.open(p, { format: {} }), { code: 'ERR_NPMU_ALREADY_FORMATTED', unitId: id });
  const same = UnitDevice.open(p);
  t.equal(same.unitId, id, 'still the same unit');
  same.close();

  const img = fs.readFileSync(p);
  const corrupt = Buffer.from(img);
  corrupt[SUPERBLOCK_OFFSET.A + 40]! ^= 1;
  corrupt[SUPERBLOCK_OFFSET.B + 40]! ^= 1;
  fs.writeFileSync(p, corrupt);
  t.throws(() => UnitDevice.open(p), { code: 'ERR_NPMU_CORRUPT' });
  t.throws(() => UnitDevice.open(p, { format: {} }), { code: 'ERR_NPMU_ALREADY_FORMATTED' });

  const newer = Buffer.from(img);
  for (const off of [SUPERBLOCK_OFFSET.A, SUPERBLOCK_OFFSET.B]) {
    newer.writeUInt32LE(3, off + 8);
    newer.writeUInt32LE(crc32c(newer.subarray(off, off + SUPERBLOCK_SIZE - 4)), off + SUPERBLOCK_SIZE - 4);
  }
  fs.writeFileSync(p, newer);
  t.throws(() => UnitDevice.open(p), { code: 'ERR_NPMU_LAYOUT_TOO_NEW', message: /newer/ });
  t.throws(() => UnitDevice.open(p, { format: {} }), { code: 'ERR_NPMU_ALREADY_FORMATTED' });

  const d = UnitDevice.open(p, { format: { label: 'fresh' }, force: true });
  t.not(d.unitId, id, 'a new unit');
  t.same(d.readMeta(0, 19), Buffer.alloc(19), 'the old metadata area is zeroed');
  d.close();
});

t.test('a device smaller than its formatted capacity is refused', async (t) => {
  const p = filePath('shrunk.img');
  UnitDevice.open(p, { create: { size: 4 * MiB }, format: {} }).close();
  fs.truncateSync(p, 3 * MiB);
  t.throws(() => UnitDevice.open(p), { code: 'ERR_NPMU_DEVICE_MISMATCH' });
  fs.truncateSync(p, 5 * MiB);
  const d = UnitDevice.open(p);
  t.equal(d.capacity, 4 * MiB, 'a grown file keeps its formatted capacity');
  d.close();
});

t.test('metadata area: bounded, persisted, survives reopen', async (t) => {
  const p = filePath('meta.img');
  const d = UnitDevice.open(p, { create: { size: 2 * MiB }, format: {} });
  const end = d.metaLength;
  d.writeMeta(end - 5, Buffer.from('tail!'), true);
  d.writeMeta(0, Buffer.from('head'), false);
  t.equal(d.readMeta(end - 5, 5).toString(), 'tail!');
  t.throws(() => d.writeMeta(end - 4, Buffer.from('tail!'), true), { code: 'ERR_NPMU_BAD_RANGE' });
  t.throws(() => d.readMeta(end, 1), { code: 'ERR_NPMU_BAD_RANGE' });
  t.throws(() => d.readMeta(-1, 1), { code: 'ERR_NPMU_BAD_RANGE' });
  t.throws(() => d.readMeta(0.5, 1), { code: 'ERR_NPMU_BAD_RANGE' });
  const copy = d.readMeta(0, 4);
  d.writeMeta(0, Buffer.from('HEAD'), true);
  t.equal(copy.toString(), 'head', 'reads are copies');
  d.close();
  const f = fs.readFileSync(p);
  const metaOffset = 8192;
  t.equal(f.toString('latin1', metaOffset, metaOffset + 4), 'HEAD', 'in the file at the metadata offset');
  const again = UnitDevice.open(p);
  t.equal(again.readMeta(end - 5, 5).toString(), 'tail!');
  again.close();
});

t.test('superblock updates alternate slots and survive reopen', async (t) => {
  const p = filePath('sb.img');
  const d = UnitDevice.open(p, { create: { size: 2 * MiB }, format: {} });
  const vol = 'ab'.repeat(16);
  const s2 = d.updateSuperblock({ volumeId: vol, role: 'primary', label: 'vol-a/p' });
  t.equal(s2.generation, 2);
  const s3 = d.updateSuperblock({ label: 'renamed' });
  t.equal(s3.generation, 3);
  t.throws(() => d.updateSuperblock({ capacity: 1 } as never), { code: 'ERR_INVALID_ARG_VALUE' });
  d.close();
  const r = readSuperblock(fs.readFileSync(p));
  t.equal(r.sb.generation, 3);
  t.equal(r.other, 'older');
  const again = UnitDevice.open(p);
  t.match(again.superblock, { volumeId: vol, role: 'primary', label: 'renamed', generation: 3 });
  t.equal(again.updateSuperblock({ label: 'x' }).generation, 4, 'the next update continues from the right slot');
  again.close();
});

t.test('extentRanges: data pages to device byte ranges, bounds checked', async (t) => {
  const d = UnitDevice.open(tmpfsPath(), { create: { size: 2 * MiB }, format: {} });
  const { dataOffset, pageSize, dataPages } = d.superblock;
  t.same(d.extentRanges([{ page: 5, pages: 1 }, { page: 1, pages: 2 }, { page: dataPages - 1, pages: 1 }]), [
    { offset: dataOffset + 5 * pageSize, length: pageSize },
    { offset: dataOffset + pageSize, length: 2 * pageSize },
    { offset: dataOffset + (dataPages - 1) * pageSize, length: pageSize },
  ]);
  for (const bad of [
    [],
    [{ page: dataPages, pages: 1 }],
    [{ page: dataPages - 1, pages: 2 }],
    [{ page: 0, pages: 0 }],
    [{ page: -1, pages: 1 }],
    [{ page: 1.5, pages: 1 }],
    [{ page: Number.MAX_SAFE_INTEGER, pages: Number.MAX_SAFE_INTEGER }],
    [null],
  ]) {
    t.throws(() => d.extentRanges(bad as never), { code: 'ERR_NPMU_BAD_EXTENT' }, JSON.stringify(bad));
  }
  t.equal(d.persistData(0, 0, dataPages * pageSize), 'msync');
  t.throws(() => d.persistData(dataPages - 1, 1, pageSize), { code: 'ERR_NPMU_BAD_RANGE' });
  t.throws(() => d.persistData(0, 0, 0), { code: 'ERR_NPMU_BAD_RANGE' });
  d.close();
});

// The real node:fs module (the `import * as fs` namespaces read through to it),
// to watch how the device persists.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const nodeFs = require('node:fs') as typeof import('node:fs');

/** Records pwrite (writeSync with a position) and fdatasync calls while `fn` runs. */
function watchWriteBack(fn: () => void): Array<['write', number, number] | ['fdatasync']> {
  const calls: Array<['write', number, number] | ['fdatasync']> = [];
  const { writeSync, fdatasyncSync } = nodeFs;
  nodeFs.writeSync = ((fd: number, buf: Buffer, off: number, len: number, pos: number) => {
    calls.push(['write', pos, len]);
    if (off !== pos) throw new Error(`bytes at ${off} written at file offset ${pos}`);
    return writeSync(fd, buf, off, len, pos);
  }) as typeof writeSync;
  nodeFs.fdatasyncSync = ((fd: number) => {
    calls.push(['fdatasync']);
    fdatasyncSync(fd);
  }) as typeof fdatasyncSync;
  try {
    fn();
  } finally {
    nodeFs.writeSync = writeSync;
    nodeFs.fdatasyncSync = fdatasyncSync;
  }
  return calls;
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

t.test('ordinary file: a persist writes the range back through the fd, then fdatasync (not msync)', async (t) => {
  const fdsBefore = openFds();
  const p = filePath('writeback.img');
  const d = UnitDevice.open(p, { create: { size: 4 * MiB }, format: {} });
  const { dataOffset, pageSize: ps } = d.superblock;
  // Bytes stored by someone else into the same page-cache pages (as an RDMA
  // WRITE into the unit's translated mapping would be): a second mapping.
  const other = mapFile(p);
  const view = Buffer.from(other.buffer());
  view.write('written-elsewhere', dataOffset + 3 * ps - 8, 'latin1');
  const calls = watchWriteBack(() => t.equal(d.persistData(2, ps - 8, 17), 'msync'));
  t.same(calls, [['write', dataOffset + 3 * ps - 8, 17], ['fdatasync']], 'pwrite of exactly the range at its own offset, then fdatasync');
  t.equal(fs.readFileSync(p).toString('latin1', dataOffset + 3 * ps - 8, dataOffset + 3 * ps + 9), 'written-elsewhere', 'the bytes are in the file');

  // persistMapped: a range of a mapping made of discontiguous device ranges.
  const ranges = d.extentRanges([
    { page: 5, pages: 1 },
    { page: 1, pages: 2 },
    { page: 8, pages: 1 },
  ]);
  const c2 = watchWriteBack(() => t.equal(d.persistMapped(ranges, ps - 10, 2 * ps + 20), 'msync'));
  t.same(
    c2,
    [['write', dataOffset + 6 * ps - 10, 10], ['write', dataOffset + ps, 2 * ps], ['write', dataOffset + 8 * ps, 10], ['fdatasync']],
    'each device piece written back (5|1, 1-2, 2|8 seams), one fdatasync',
  );
  t.same(watchWriteBack(() => d.persistMapped(ranges, 4 * ps, 0)), [], 'an empty range writes nothing');
  t.throws(() => d.persistMapped(ranges, 4 * ps - 1, 2), { code: 'ERR_NPMU_BAD_RANGE' });
  t.throws(() => d.persistMapped(ranges, -1, 2), { code: 'ERR_NPMU_BAD_RANGE' });

  // Metadata and superblock persists take the same way.
  const c3 = watchWriteBack(() => d.writeMeta(100, Buffer.from('meta'), true));
  t.same(c3, [['write', d.superblock.metaOffset + 100, 4], ['fdatasync']]);
  t.same(watchWriteBack(() => d.writeMeta(100, Buffer.from('meta'), false)), [], 'no persist asked, nothing written back');
  other.close();
  d.close();
  d.close();
  t.equal(openFds(), fdsBefore, 'the file descriptor is closed with the device');
  t.throws(() => d.persistData(0, 0, 1), { code: 'ERR_NPMU_CLOSED' });
  t.throws(() => d.persistMapped(ranges, 0, 1), { code: 'ERR_NPMU_CLOSED' });
});

t.test('tmpfs and read-only opens keep persisting through the mapping (no fd, no write-back)', async (t) => {
  const fdsBefore = openFds();
  const d = UnitDevice.open(tmpfsPath(), { create: { size: 2 * MiB }, format: {} });
  t.same(watchWriteBack(() => t.equal(d.persistData(0, 0, 100), 'msync')), []);
  t.same(watchWriteBack(() => t.equal(d.persistMapped(d.extentRanges([{ page: 1, pages: 1 }]), 0, 100), 'msync')), []);
  d.close();
  const p = filePath('ro-persist.img');
  UnitDevice.open(p, { create: { size: 2 * MiB }, format: {} }).close();
  const r = UnitDevice.open(p, { readOnly: true });
  t.same(watchWriteBack(() => r.persistData(0, 0, 1)), [], 'a read-only open never writes the file');
  r.close();
  t.equal(openFds(), fdsBefore);
});

t.test('read-only open (for info) cannot write', async (t) => {
  const p = filePath('ro.img');
  UnitDevice.open(p, { create: { size: 2 * MiB }, format: {} }).close();
  const d = UnitDevice.open(p, { readOnly: true });
  t.equal(d.readOnly, true);
  t.throws(() => d.writeMeta(0, Buffer.from('x'), true), { code: 'ERR_NPMU_READ_ONLY' });
  t.throws(() => d.updateSuperblock({ label: 'x' }), { code: 'ERR_NPMU_READ_ONLY' });
  d.close();
  t.throws(() => UnitDevice.open(p, { readOnly: true, format: {} }), { code: 'ERR_INVALID_ARG_VALUE' });
});

t.test('sizes on the command line', async (t) => {
  t.equal(parseSize('4096', 'x'), 4096);
  t.equal(parseSize('64M', 'x'), 64 * MiB);
  t.equal(parseSize('2MiB', 'x'), 2 * MiB);
  t.equal(parseSize('1g', 'x'), 1024 * MiB);
  t.throws(() => parseSize('12Q', 'x'));
  t.throws(() => parseSize('0', 'x'));
});

const cli = path.join(__dirname, '..', '..', 'unit', 'main.js');
function run(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('CLI: format and info (text and --json)', async (t) => {
  const p = filePath('cli.img');
  const f = run('format', '--device', p, '--create-size', '4M', '--label', 'cli-unit', '--json');
  t.equal(f.status, 0, f.stderr);
  const formatted = JSON.parse(f.stdout);
  t.match(formatted, { kind: 'file', durability: 'msync', label: 'cli-unit', capacity: 4 * MiB, pageSize: 4096 });
  const again = run('format', '--device', p);
  t.equal(again.status, 1);
  t.match(again.stderr, /ERR_NPMU_ALREADY_FORMATTED/);
  const info = run('info', '--device', p, '--json');
  t.equal(info.status, 0, info.stderr);
  t.same(JSON.parse(info.stdout), formatted);
  const text = run('info', '--device', p);
  t.match(text.stdout, /unitId\s+[0-9a-f]{32}/);
  t.match(text.stdout, /durability\s+msync/);
  const blank = filePath('cli-blank.img');
  fs.writeFileSync(blank, Buffer.alloc(MiB));
  const refused = run('info', '--device', blank);
  t.equal(refused.status, 1);
  t.match(refused.stderr, /ERR_NPMU_NOT_FORMATTED/);
  t.equal(run('--bogus').status, 2);
  t.equal(run('frobnicate', '--device', p).status, 2);
  const noHost = run('--device', p, '--key-file', filePath('k'));
  t.equal(noHost.status, 2);
  t.match(noHost.stderr, /--host is required/);
  t.equal(run('--help').status, 0);
});
