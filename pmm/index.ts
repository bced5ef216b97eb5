/** The persistent memory manager as a library: start one in-process, or use its parts. */
export { PmmServer } from './server';
export type { PmmOptions } from './server';
export { Volume, UnitLink, parseAddress, formatAddress, weakest } from './volume';
export type { UnitAddress, Durability, Half, Logger, VolumeState } from './volume';
export { ClientRegistry, clientLine, parseClients, newSecret } from './credentials';
export type { Role, ClientEntry } from './credentials';
export { runPmm, stderrLogger } from './main';
export type { PmmMainOptions } from './main';
