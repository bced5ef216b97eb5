#!/usr/bin/env bash
# The verbs benchmark (`npm run bench:verbs`): post-to-completion latency of
# 64 B / 4 KiB RDMA WRITE and READ from Node (busy-poll and event mode), next to
# perftest (ib_write_lat / ib_read_lat) and a plain C loop (bench/c/lat.c), all
# measured in the same boot. Natively when this host has an ACTIVE RDMA device,
# else in ONE boot of the rxe micro-VM (scripts/rxe-vm.sh). More parts on
# request (--only): c-peer (bench/c/peer.c, the mirrored durable write's verbs),
# rpma (bench/c/rpma.c, librpma), bw (ib_write_bw); see bench/run.ts.
#
# usage: scripts/bench-verbs.sh [--iters N] [--warmup N]
#                               [--only perftest,c-loop,node,c-peer,rpma,bw,npmu,disk,kv]
#                               [--vm | --native] [--timeout SEC] [--pmem] [--disk]
#   --pmem  (VM) boot with two emulated NVDIMMs on an eADR platform
#           (--nvdimm-persistence cpu), backed by ${TMPDIR:-/tmp}/npmu-bench-pmem0/1
#           (256 MiB each, sparse): c-peer and rpma then target devdax
#   --disk  (VM) boot with a virtio-blk disk (cache=none) backed by
#           ${TMPDIR:-/tmp}/npmu-bench-disk.img (512 MiB, sparse): the disk and kv
#           parts make ext4 on it (natively they use NPMU_BENCH_DISK_DIR)
# env: NPMU_BENCH_ITERS / NPMU_BENCH_WARMUP (defaults 2000 / 100), NPMU_RXE_ADDR
#      (native runs: the device's IPv4 address, if it cannot be found),
#      NPMU_BENCH_NO_ADDON_BUILD=1 (use build/Release/npmu_native.node as it is),
#      NPMU_BENCH_CPU (default 0: the Node and C-loop parts pin themselves to
#      that CPU, as perftest users do with taskset; empty: not pinned),
#      NPMU_BENCH_SCHED=fifo (diagnostic: their poster runs SCHED_FIFO 1, so
#      rxe's per-READ ksoftirqd wakeup cannot preempt it; docs/perf-read.md).
# Output: the table on stdout; every result as a JSON line in
# bench/results/verbs-<UTC timestamp>.json, copied to bench/results/verbs-latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "bench-verbs: $*" >&2; exit 2; }

where=auto timeout=${NPMU_BENCH_TIMEOUT:-1200} run_args=() vm_args=()
while (($#)); do
  case $1 in
    --iters | --warmup | --only)
      [[ -n ${2:-} ]] || die "$1 needs a value"; run_args+=("$1" "$2"); shift 2 ;;
    --vm) where=vm; shift ;;
    --native) where=native; shift ;;
    --pmem)
      for i in 0 1; do vm_args+=(--nvdimm "${TMPDIR:-/tmp}/npmu-bench-pmem$i:256M"); done
      vm_args+=(--nvdimm-persistence cpu); shift ;;
    --disk) vm_args+=(--disk "${TMPDIR:-/tmp}/npmu-bench-disk.img:512M"); shift ;;
    --timeout) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs seconds"; timeout=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

# Pinned by default: a floating Node poster migrates between (emulated) CPUs,
# which inflates and scatters its figures (docs/perf-read.md). rxe-vm.sh passes
# NPMU_* into the guest.
export NPMU_BENCH_CPU=${NPMU_BENCH_CPU-0}

t_start=$(date +%s)
mkdir -p .cache/bench bench/results

echo "== build" >&2
only=" ${run_args[*]} "
if [[ $only == *" --only "* && $only != *node* ]] || [[ -n ${NPMU_BENCH_NO_ADDON_BUILD:-} ]]; then
  : # no Node part, or the caller built the addon
elif [[ ! -f build/Release/npmu_native.node ]]; then
  npx cmake-js compile >.cache/bench/cmake.log 2>&1 || { cat .cache/bench/cmake.log >&2; die "addon build failed"; }
else
  npx cmake-js build >.cache/bench/cmake.log 2>&1 || { cat .cache/bench/cmake.log >&2; die "addon build failed"; }
fi
npx tsc -p tsconfig.json
cc -O2 -Wall -Wextra -o .cache/bench/lat bench/c/lat.c -lrdmacm -libverbs -lpthread
cc -O2 -Wall -Wextra -o .cache/bench/peer bench/c/peer.c -lrdmacm -libverbs -lpthread
if [[ -f /usr/include/librpma.h ]]; then
  cc -O2 -Wall -Wextra -o .cache/bench/rpma bench/c/rpma.c -lrpma -libverbs -lpthread
elif [[ $only == *rpma* ]]; then
  die "the rpma part needs librpma-dev (librpma.h)"
fi

# An ACTIVE RDMA device on this host? (sysfs; the host kernel here has none.)
native_dev=
for st in /sys/class/infiniband/*/ports/1/state; do
  [[ -r $st ]] && grep -q ACTIVE "$st" && { native_dev=$(basename "$(dirname "$(dirname "$(dirname "$st")")")"); break; }
done
case $where in
  auto) [[ -n $native_dev ]] && where=native || where=vm ;;
  native) [[ -n $native_dev ]] || die "--native: no ACTIVE RDMA device on this host" ;;
esac

ts=$(date -u +%Y%m%dT%H%M%SZ)
out=$root/bench/results/verbs-$ts.json
latest=$root/bench/results/verbs-latest.json
status=0
if [[ $where == native ]]; then
  addr=${NPMU_RXE_ADDR:-}
  if [[ -z $addr ]]; then
    # rxe: `rdma link show` names the netdev; take its first IPv4 address.
    netdev=$(rdma link show "$native_dev/1" 2>/dev/null | sed -n 's/.* netdev \([^ ]*\).*/\1/p')
    [[ -n $netdev ]] && addr=$(ip -4 -o addr show dev "$netdev" 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n 1)
  fi
  [[ -n $addr ]] || die "cannot tell the IPv4 address of $native_dev: set NPMU_RXE_ADDR"
  echo "== benchmark natively on $native_dev at $addr" >&2
  NPMU_RXE_DEV=$native_dev NPMU_RXE_ADDR=$addr node dist/bench/run.js --out "$out" "${run_args[@]}" || status=$?
else
  echo "== benchmark in the rxe micro-VM (one boot)" >&2
  scripts/rxe-vm.sh --timeout "$timeout" "${vm_args[@]}" -- node dist/bench/run.js --out "$out" "${run_args[@]}" || status=$?
fi

if [[ -s $out ]]; then
  cp "$out" "$latest"
  echo "results: ${out#"$root"/} (and ${latest#"$root"/}); $(($(date +%s) - t_start)) s in all" >&2
else
  echo "bench-verbs: no results were written" >&2
  ((status)) || status=1
fi
exit $status
