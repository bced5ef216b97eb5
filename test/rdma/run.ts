/**
 * Runs every RDMA test file in ONE node process. Under TCG a node start plus
 * loading tap costs seconds, so the files share a process as they share a boot.
 * Usage: node --expose-gc dist/test/rdma/run.js [substring…]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

// tap's default 30 s limit applies to the whole process here; each test file
// sets its own limits where it needs them. Must be set before tap loads.
process.env.TAP_TIMEOUT ??= '0';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { describeEnvironment } = require('./fixture') as typeof import('./fixture');

const only = process.argv.slice(2);
console.log(`# RDMA tests on ${describeEnvironment()}`);
for (const f of fs.readdirSync(__dirname).filter((f) => f.endsWith('.test.js')).sort()) {
  if (only.length > 0 && !only.some((o) => f.includes(o))) continue;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require(path.join(__dirname, f));
}
