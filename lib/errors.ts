/**
 * Errors are part of the API: every error npmu throws or rejects with has a
 * stable string `code` that callers can switch on.
 *
 * - `NpmuError`: policy-level failures (PMM, unit, client library, protocol).
 *   Codes are `ERR_NPMU_*`.
 * - `VerbsError` (a subclass): failures of a verb or system call in the native
 *   layer. `code` is the errno name (`ENOMEM`, `EINVAL`, …), a work-completion
 *   status name (`IBV_WC_REM_ACCESS_ERR`, `IBV_WC_WR_FLUSH_ERR`, …) or an
 *   `ERR_NPMU_*` code; `errno` is set where there is one; `syscall` names the
 *   verb (`ibv_reg_mr_iova2`, `rdma_connect`, `mmap`, …).
 * - The log (lib/log.ts, docs/log.md) adds: `ERR_NPMU_NOT_A_LOG` (the region
 *   holds no log), `ERR_NPMU_LOG_CORRUPT` (a log header or an acknowledged
 *   record fails its check), `ERR_NPMU_LOG_FULL` (an append does not fit
 *   until records are truncated), `ERR_NPMU_LOG_BUSY` (another writer holds
 *   the lease, or took it), `ERR_NPMU_LOG_READ_ONLY` (opened with writer:
 *   false), `ERR_NPMU_LOG_CLOSED`; the destager (lib/destage.ts)
 *   `ERR_NPMU_LOG_GAP` (records between the file and the log are missing).
 * - Bad arguments are `TypeError` / `RangeError` with Node's codes
 *   (`ERR_INVALID_ARG_TYPE`, `ERR_INVALID_ARG_VALUE`, `ERR_OUT_OF_RANGE`),
 *   raised before anything reaches the verbs.
 */
export class NpmuError extends Error {
  readonly code: string;
  [key: string]: unknown;

  constructor(code: string, message: string, props?: Record<string, unknown>) {
    super(message);
    this.code = code;
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k !== 'code' && k !== 'message' && k !== 'name' && k !== 'stack') this[k] = v;
      }
    }
  }

  override get name(): string {
    return 'NpmuError';
  }
}

export class VerbsError extends NpmuError {
  readonly errno: number | undefined;
  readonly syscall: string | undefined;

  constructor(message: string, code: string, errno?: number, syscall?: string) {
    super(code, message);
    this.errno = errno;
    this.syscall = syscall;
  }

  override get name(): string {
    return 'VerbsError';
  }
}

/** Node-style argument errors, for validation done in TypeScript. */
export function argTypeError(name: string, expected: string, actual: unknown): TypeError {
  const e = new TypeError(`The "${name}" argument must be ${expected}. Received ${describe(actual)}`);
  (e as TypeError & { code: string }).code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

export function argRangeError(name: string, range: string, actual: unknown): RangeError {
  const e = new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${describe(actual)}`);
  (e as RangeError & { code: string }).code = 'ERR_OUT_OF_RANGE';
  return e;
}

export function argValueError(name: string, reason: string, actual: unknown): TypeError {
  const e = new TypeError(`The argument "${name}" ${reason}. Received ${describe(actual)}`);
  (e as TypeError & { code: string }).code = 'ERR_INVALID_ARG_VALUE';
  return e;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  if (typeof v === 'object') return `an instance of ${(v as object).constructor?.name ?? 'Object'}`;
  return `type ${typeof v} (${String(v)})`;
}
