#!/usr/bin/env bash
# The project's benchmark (`npm run bench`): the data path side by side, in ONE
# boot of the rxe micro-VM with two emulated NVDIMMs on an eADR platform
# (natively where the host has rxe and NPMU_DAX_DEVICES):
#   perftest   ib_write_lat / ib_read_lat (64 B, 4 KiB), ib_write_bw (4 KiB, 64 KiB)
#   c-loop     one WRITE / READ from C (bench/c/lat.c)
#   node       the same through the addon (bench/verbs.ts)
#   c-peer     the durable mirrored write's verbs from C, two QPs (bench/c/peer.c)
#   rpma       librpma write + flush, write, read (bench/c/rpma.c)
#   npmu       NpmuClient: durable mirrored writes (eADR and ADR), reads, batches,
#              pipelined bandwidth (bench/client.ts)
#   disk       write + fdatasync from Node (64 B, 4 KiB; appending, overwriting a
#              preallocated file) on ext4 on the VM's virtio-blk disk (bench/disk.ts)
#   kv         the KV store of examples/kv on a file WAL, a group-commit WAL, the
#              npmu log (when lib/log.ts is built) and SQLite WAL/FULL, 1/4/16
#              committers (bench/kv.ts)
# then the tables and the data-path targets as ratios in that boot; then, on
# the host, the disk/KV table and SVG plots (bench/plot.ts).
#
# usage: scripts/bench.sh [--quick] [--iters N] [--warmup N] [--only PARTS] [--timeout SEC]
#   --quick   200 iterations after 20 warm-up, 2 s KV pre-warm (a smoke run; figures are noisier)
#   --profile instead: where one durable mirrored write / one read spends its
#             time (bench/profile.ts: V8's sampling profiler, by stage)
#   --tail    instead: the tail of a durable mirrored write, p50..max, and the
#             garbage collections under it (bench/tail.ts)
# Output: the tables on stdout; JSON lines in bench/results/verbs-<UTC time>.json
# (and verbs-latest.json), HdrHistogram logs in verbs-<UTC time>-hdr/, and
# bench/results/{kv-commits,kv-latency-cdf,disk-latency-cdf}.svg + results-latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# One Node benchmark script (dist/bench/NAME.js) alone in the micro-VM, two NVDIMMs on an eADR platform.
guest_bench() {
  [[ -f build/Release/npmu_native.node ]] || npx cmake-js compile >/dev/null
  npx tsc -p tsconfig.json
  export NPMU_BENCH_CPU=${NPMU_BENCH_CPU-0}
  exec scripts/rxe-vm.sh --timeout 1200 --nvdimm-persistence cpu \
    --nvdimm "${TMPDIR:-/tmp}/npmu-bench-pmem0:256M" --nvdimm "${TMPDIR:-/tmp}/npmu-bench-pmem1:256M" \
    -- node --expose-gc "dist/bench/$1.js"
}
args=(--pmem --disk --only "${NPMU_BENCH_PARTS:-perftest,c-loop,node,c-peer,rpma,bw,npmu,disk,kv}")
while (($#)); do
  case $1 in
    --profile) guest_bench profile ;;
    --tail) guest_bench tail ;;
    --quick) export NPMU_BENCH_ITERS=${NPMU_BENCH_ITERS:-200} NPMU_BENCH_WARMUP=${NPMU_BENCH_WARMUP:-20} NPMU_BENCH_KV_PREWARM_MS=${NPMU_BENCH_KV_PREWARM_MS:-2000}; shift ;;
    --only) [[ -n ${2:-} ]] || { echo "bench: --only needs parts" >&2; exit 2; }; args[3]=$2; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
export NPMU_BENCH_ITERS=${NPMU_BENCH_ITERS:-1000}
status=0
scripts/bench-verbs.sh "${args[@]}" || status=$?
# The disk/KV table and the plots, on the host (vega under TCG would be slow).
if [[ ${args[3]} == *disk* || ${args[3]} == *kv* ]] && [[ -s bench/results/verbs-latest.json ]]; then
  echo "== plots" >&2
  node dist/bench/plot.js bench/results/verbs-latest.json --out-dir bench/results || { ((status)) || status=1; }
fi
exit "$status"
