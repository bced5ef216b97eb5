/**
 * lib/fair.ts: a chain of operations that settle inside their post (no event
 * loop turn between them) yields to the loop once a turn has run
 * TURN_BUDGET_MS, so timers and I/O are not starved. Pure logic: the addon's
 * loop-turn counter needs no RDMA device.
 */
import t from 'tap';
import { TURN_BUDGET_MS, turnGate } from '../../lib/fair';
import { native } from '../../lib/verbs';

const spin = (ms: number): void => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};
const nextTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

t.test('the addon counts event-loop turns', async (t) => {
  const a = native().loopTurn();
  t.equal(native().loopTurn(), a, 'no turn within one synchronous run');
  await nextTurn();
  await nextTurn();
  t.ok(native().loopTurn() > a, 'turns counted');
});

t.test('within budget: go ahead; past it: one gate, open once the loop turned', async (t) => {
  await nextTurn();
  t.equal(turnGate(), null, 'the first operation of a turn goes ahead');
  spin(TURN_BUDGET_MS + 1);
  const g = turnGate();
  t.type(g, Promise, 'a turn that ran past the budget waits');
  t.equal(turnGate(), g, 'every later operation of that turn waits on the same gate');
  await g;
  t.equal(turnGate(), null, 'once the loop turned, operations go ahead');
});

t.test('a loop of operations that never wait for the loop does not starve a timer', async (t) => {
  let fired = false;
  setTimeout(() => (fired = true), 1);
  let ops = 0;
  const deadline = performance.now() + 10_000;
  // Each "operation" settles at once, as an RDMA write completing inside its post does.
  while (!fired && performance.now() < deadline) {
    const g = turnGate();
    if (g) await g;
    await Promise.resolve();
    ops++;
  }
  t.ok(fired, `the timer fired after ${ops} operations`);
});
