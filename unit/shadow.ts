/**
 * Shadow mode (TEST-ONLY): makes a missing flush visible to a power-cut test.
 *
 * An emulated NVDIMM is a shared mapping of a host file, so every guest store
 * reaches the host page cache at once and `kill -9` of qemu loses nothing: a
 * client that forgot to flush would still pass. In shadow mode the unit serves
 * RDMA from a DRAM copy of the data pages (a sparse file in the guest's tmpfs)
 * and copies a range to the device, then persists the device (pmem_persist),
 * only when that range is persisted (`persist`, `persist-range`). A power cut
 * then loses exactly what was never made durable, as an ADR platform would
 * lose bytes still in the CPU caches.
 *
 * Each data page is filled from the device the first time it is mapped
 * (the same as filling the whole shadow at start, without copying pages no
 * one uses). The metadata area is not shadowed: meta-write persists to the
 * device already. Never use this in production: unflushed bytes are lost on
 * a mere unit restart, and every persist costs a copy.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { mapFile } from '../lib/verbs';
import type { Extent, Mapping } from '../lib/verbs';
import type { UnitDevice } from './device';

export class DataShadow {
  /** The shadow file: laid out like the device (same offsets), sparse. */
  readonly path: string;
  #device: UnitDevice;
  #map: Mapping;
  #view: Buffer;
  #filled: Uint8Array;

  private constructor(device: UnitDevice, file: string, map: Mapping) {
    this.#device = device;
    this.path = file;
    this.#map = map;
    this.#view = Buffer.from(map.buffer());
    this.#filled = new Uint8Array(device.dataPages);
  }

  /** Creates the shadow file in `dir` (default: /dev/shm if there, else the temp dir). */
  static create(device: UnitDevice, dir?: string): DataShadow {
    const where = dir ?? (isDir('/dev/shm') ? '/dev/shm' : os.tmpdir());
    const file = path.join(where, `npmu-shadow-${device.unitId}-${process.pid}-${randomBytes(4).toString('hex')}`);
    const map = mapFile(file, { create: true, size: device.capacity });
    return new DataShadow(device, file, map);
  }

  /** The shadow's bytes, at device offsets (what the device copies from on a persist). */
  get view(): Buffer {
    return this.#view;
  }

  /** Fills the data pages under `ranges` (device offsets, page-aligned) from the device, once per page. */
  fill(ranges: readonly Extent[]): void {
    const { dataOffset, pageSize } = this.#device.superblock;
    for (const r of ranges) {
      for (let off = r.offset; off < r.offset + r.length; off += pageSize) {
        const page = (off - dataOffset) / pageSize;
        if (this.#filled[page]) continue;
        this.#device.copyDataTo(this.#view, off, pageSize);
        this.#filled[page] = 1;
      }
    }
  }

  /** Unmaps and removes the shadow file (its unflushed bytes are gone, like a power cut). Idempotent. */
  close(): void {
    this.#map.close();
    fs.rmSync(this.path, { force: true });
  }
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
