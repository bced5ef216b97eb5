/**
 * The power cord, shared by the power-cut drivers (pmm-run.ts, log-run.ts):
 * one boot of a guest that prints "ACK …" for every acknowledged operation,
 * cut by `kill -9` of qemu at a seeded moment — after the `cutAfter`th ACK
 * (counted from the guest's "READY" line when `afterReady`), then `delayMs`
 * into whatever runs next.
 */
import { boot as bootVm, type BootOptions } from './boot';

export { prng } from './pmm-guest';

export interface CutPlan {
  /** cut after this many acknowledged operations… */
  cutAfter: number;
  /** …and this many ms into the next ones */
  delayMs: number;
}

/** A seeded cut moment: cutAfter in [minAcks, minAcks + spanAcks), delay in [0, maxDelayMs). */
export function planCut(random: () => number, minAcks: number, spanAcks: number, maxDelayMs: number): CutPlan {
  return { cutAfter: minAcks + Math.floor(random() * spanAcks), delayMs: Math.floor(random() * maxDelayMs) };
}

export interface CutResult {
  /** true when the cut was made (the guest reached cutAfter ACKs) */
  cut: boolean;
  /** qemu's exit code: 137 when the cut ended the run */
  code: number | null;
  out: string;
  /** the ACK lines the host saw before the VM died */
  acks: number;
}

/** Boots `o` and pulls the cord per `plan`. With `afterReady`, ACKs count only after the guest's "READY" line. */
export async function bootAndCut(o: Omit<BootOptions, 'onLine'>, plan: CutPlan, afterReady = false): Promise<CutResult> {
  let acks = 0;
  let ready = !afterReady;
  let cut = false;
  const r = await bootVm({
    ...o,
    onLine: (line, kill) => {
      if (line.startsWith('READY')) ready = true;
      if (ready && line.startsWith('ACK ') && ++acks === plan.cutAfter && !cut) {
        cut = true;
        setTimeout(kill, plan.delayMs);
      }
    },
  });
  return { cut, code: r.code, out: r.out, acks };
}
