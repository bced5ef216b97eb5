/**
 * Fairness to the event loop. On soft-RoCE an RDMA operation often completes
 * inside its own post (lib/native.ts: an event-mode endpoint polls once right
 * after posting), and its promise then settles before the event loop turns.
 * A caller that loops on such operations (`for (;;) await log.append(…)`)
 * would run as ONE chain of microtasks and starve every timer and I/O
 * callback of the process: a log's lease heartbeat, a destager, a server.
 * So the client notes when it starts its first operation in a turn of the
 * loop (the addon counts turns with a uv_check handle) and, once a turn has
 * run TURN_BUDGET_MS or TURN_BUDGET_OPS operations, the next one is posted as
 * usual (its buffers are taken or pinned at the call, as always) but its
 * promise settles only after setImmediate: timers and I/O run, then the
 * caller goes on. An operation that completes by an event (the usual case on
 * real hardware, and any READ on rxe) starts in a new turn and never waits.
 */
import { performance } from 'node:perf_hooks';
import { native } from './verbs';

/** A turn of the loop that started operations for this long lets the loop turn before the next. */
export const TURN_BUDGET_MS = 4;
/** …or after this many operations. */
export const TURN_BUDGET_OPS = 256;

let seen = -1;
let ops = 0;
let since = 0;
let gate: Promise<void> | null = null;

/** null: go ahead now; else a promise that settles once the event loop turned. */
export function turnGate(): Promise<void> | null {
  const t = native().loopTurn();
  if (t !== seen) {
    seen = t;
    ops = 0;
    since = performance.now();
  }
  if (++ops <= TURN_BUDGET_OPS && performance.now() - since < TURN_BUDGET_MS) return null;
  return (gate ??= new Promise<void>((resolve) =>
    setImmediate(() => {
      gate = null;
      ops = 0;
      since = performance.now();
      resolve();
    }),
  ));
}

/** `p`, or — past the turn's budget — `p` settled only once the event loop has turned. */
export function settleFairly<T>(p: Promise<T>): Promise<T> {
  const g = turnGate();
  return g === null ? p : p.then((v) => g.then(() => v));
}
