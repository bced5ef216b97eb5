/**
 * The unit (the nPMU, [0035], [0038]-[0046]) as a library: open or format a
 * device, serve it. The CLI is unit/main.ts; the on-device format unit/layout.ts.
 */
export { UnitDevice, durabilityOf } from './device';
export type { OpenOptions, PageExtent } from './device';
export { UnitServer } from './server';
export type { UnitServerOptions, UnitInfo } from './server';
export { LAYOUT_VERSION, planLayout, readSuperblock, dataPageOffset } from './layout';
export type { Superblock, Durability, Role, Layout } from './layout';
