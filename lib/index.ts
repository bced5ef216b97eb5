/**
 * npmu: network-attached persistent memory for Node.js over RDMA verbs.
 * The package entry: the client API (the region verbs), its errors, and
 * the general verbs layer underneath.
 */
export { NpmuClient, RegionHandle, Mirror, ReadFrom } from './client';
export type {
  AttachOptions,
  MirrorMode,
  ReadMode,
  RegionHalf,
  WriteOptions,
  WriteResult,
  ReadOptions,
  ReadResult,
  VolumeStatus,
  Half,
  Durability,
} from './client';
export { AttrCache } from '../pmm/attrs';
export type { AttrType, RegionAttributes } from '../pmm/attrs';
export { NpmuError, VerbsError } from './errors';
export * as verbs from './verbs';
export { NpmuLog } from './log';
export type { LogCreateOptions, LogOpenOptions, LogStats } from './log';
export { Destager, readAll, readFile } from './destage';
export type { DestagerOptions } from './destage';
