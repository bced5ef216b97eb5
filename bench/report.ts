/**
 * Print the table of a verbs benchmark results file (JSON lines), e.g.
 *   node dist/bench/report.js bench/results/verbs-latest.json
 * Several files are read in order; for a cell measured more than once, the
 * last line wins.
 */
import * as fs from 'node:fs';
import { parseResultLines, renderTable } from './table';

const files = process.argv.slice(2);
if (files.length === 0) {
  process.stderr.write('usage: node dist/bench/report.js RESULTS.json...\n');
  process.exit(2);
}
const parsed = parseResultLines(files.map((f) => fs.readFileSync(f, 'utf8')).join('\n'));
for (const e of parsed.errors) process.stderr.write(`report: ${e}\n`);
process.stdout.write(
  renderTable(parsed.results, { meta: Object.assign({}, ...parsed.meta) as Record<string, unknown>, bandwidth: parsed.bandwidth }),
);
