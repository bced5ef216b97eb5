/**
 * Fairness to the event loop (lib/fair.ts) on rxe: writes that complete
 * inside their post settle before the loop turns, and a loop of them must
 * still let timers and I/O run (a log's lease heartbeat and its destager
 * depend on it). Found by the log's power-cut test: on eADR the destager
 * never ran while appends went on.
 */
import t from 'tap';
import { startSystem } from './pmm-helpers';
import { native } from '../../lib/verbs';

t.setTimeout(10 * 60_000);

t.test('a loop of awaited small writes lets a timer and the loop run', async (t) => {
  const sys = await startSystem({ devices: 'tmpfs' });
  t.teardown(() => sys.close());
  const c = await sys.attach('alice');
  await c.createRegion('fair', 1 << 16, 0x20000000n);
  const h = await c.openRegion('fair');
  const b = Buffer.alloc(8);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const turns = native().loopTurn();
  let writes = 0;
  const deadline = Date.now() + 60_000;
  while (ticks < 3 && Date.now() < deadline) {
    b.writeUInt32LE(writes, 0);
    await c.writeRegion(h, b, 8, h.basePointer + BigInt((writes % 64) * 8));
    writes++;
  }
  clearInterval(timer);
  t.ok(ticks >= 3, `a 1 ms interval fired ${ticks} times during ${writes} awaited writes`);
  t.ok(native().loopTurn() > turns, 'the event loop turned');
  const out = Buffer.alloc(8);
  const last = writes - 1;
  await c.readRegion(h, out, 8, h.basePointer + BigInt((last % 64) * 8));
  t.equal(out.readUInt32LE(0), last, 'the writes, gated or not, landed in order');
  await c.closeRegion(h);
});
