#!/usr/bin/env bash
# Diagnostics for the Node-vs-C RDMA READ latency gap (docs/perf-read.md).
# On the host: builds the C loop and boots ONE rxe micro-VM (--cpus N, default
# 2) that runs this script's guest part: the C loop and the Node benchmark,
# 64 B WRITE+READ, floating and pinned to one CPU (taskset -c 0), each with the
# TASKLET softirq counts per CPU and the ksoftirqd run time (schedstat) it
# caused; then an ftrace (irq:softirq_*, sched:sched_switch/wakeup) of 300 READs
# from each, summarized by scripts/read-gap-trace.py.
#
# usage: scripts/read-gap.sh [--cpus N] [--iters N] [--rounds N] [--parts measure,touch,trace]
#   measure: the C loop and Node, floating and pinned, twice
#   touch:   the C loop pinned, with lat -t N (N pages touched per completion)
#   rt:      the C loop and Node pinned, SCHED_OTHER vs SCHED_FIFO (chrt -f 1)
#   perfstat: perf stat software counters of Node READ vs WRITE loops
#   trace:   ftrace of 300 READs/WRITEs (.cache/readgap/trace-*.txt)
# output: stdout; traces in .cache/readgap/
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${NPMU_IN_VM:-} ]]; then
  cpus=2 args=()
  while (($#)); do
    case $1 in
      --cpus) cpus=$2; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  mkdir -p .cache/bench .cache/readgap
  cc -O2 -Wall -Wextra -o .cache/bench/lat bench/c/lat.c -lrdmacm -libverbs -lpthread || exit 2
  exec scripts/rxe-vm.sh --cpus "$cpus" --timeout 1500 -- scripts/read-gap.sh "${args[@]}"
fi

iters=2000 parts=measure,trace rounds=2
while (($#)); do
  case $1 in
    --iters) iters=$2; shift 2 ;;
    --parts) parts=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "read-gap: unknown argument $1" >&2; exit 2 ;;
  esac
done
export NPMU_BENCH_ITERS=$iters NPMU_BENCH_WARMUP=100
lat=.cache/bench/lat
ncpu=$(nproc)
echo "== guest: $ncpu CPUs, $(uname -r), iters $iters"

# counters: TASKLET per CPU, NET_RX per CPU, ksoftirqd/N run ns (schedstat field 1)
snap() {
  awk '/TASKLET:|NET_RX:/ { for (i = 2; i <= NF; i++) printf "%s%d=%s ", $1, i - 2, $i }' /proc/softirqs
  for d in /proc/[0-9]*; do
    c=$(cat "$d/comm" 2>/dev/null) || continue
    [[ $c == ksoftirqd/* ]] && printf '%s=%s ' "$c" "$(cut -d' ' -f1 "$d/schedstat")"
  done
  echo
}
delta() { # before after -> per-key difference
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); A[kv[1]] = kv[2] }
    n = split(b, y, " "); for (i = 1; i <= n; i++) { split(y[i], kv, "="); d = kv[2] - A[kv[1]];
      if (kv[1] ~ /ksoftirqd/) d = sprintf("%.1fms", d / 1e6); out = out " " kv[1] "+" d }
    print "   delta:" out }'
}
m() { # label cmd...
  local label=$1; shift
  echo "-- $label: $*"
  local a b; a=$(snap)
  "$@" 2>/dev/null | sed -E 's/.*"impl":"([^"]*)".*"op":"([^"]*)".*"size":([0-9]+).*"p50_us":([0-9.]+),"p99_us":([0-9.]+),"avg_us":([0-9.]+).*/   \1 \2 \3: p50 \4 p99 \5 avg \6/'
  b=$(snap); delta "$a" "$b"
}

has() { [[ ,$parts, == *,$1,* ]]; }
node=(node dist/bench/verbs.js --sizes 64 --ops write,read --modes busy,event)
echo "   clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)," \
  "meltdown: $(cat /sys/devices/system/cpu/vulnerabilities/meltdown 2>/dev/null)"
if has touch; then
  echo "== C loop pinned to cpu0, touching N pages after each completion (inside the window)"
  for t in 0 64 256 1024 0 64 256 1024; do m "touch $t" taskset -c 0 $lat -s 64 -t $t; done
fi
if has rt; then
  # SCHED_FIFO: a CFS ksoftirqd woken by the READ's tasklet raise cannot
  # preempt the poster (the tasklet itself runs inline either way).
  echo "== SCHED_FIFO 1 vs SCHED_OTHER, pinned to cpu0"
  for round in 1 2; do
    m "C loop, pinned" taskset -c 0 $lat -s 64
    m "C loop, pinned, FIFO" taskset -c 0 chrt -f 1 $lat -s 64
    m "Node, pinned" taskset -c 0 "${node[@]}"
    m "Node, pinned, FIFO" taskset -c 0 chrt -f 1 "${node[@]}"
  done
fi
if has perfstat; then
  echo "== perf stat (software events) of Node, pinned, busy mode, 4000 READs vs 4000 WRITEs"
  for op in write read write read; do
    echo "-- $op"
    perf stat -x, -e task-clock,context-switches,cpu-migrations,page-faults -- taskset -c 0 node dist/bench/verbs.js --sizes 64 --ops $op --modes busy --iters 4000 2>&1 >/dev/null | awk -F, '{ printf "   %s %s\n", $3, $1 }'
  done
fi
for round in $(has measure && seq "$rounds"); do
  echo "== round $round"
  m "C loop, floating" $lat -s 64
  m "C loop, floating, -y 64" $lat -s 64 -y 64
  m "C loop, pinned cpu0" taskset -c 0 $lat -s 64
  m "C loop, pinned cpu0, -y 64" taskset -c 0 $lat -s 64 -y 64
  m "Node, floating" "${node[@]}"
  m "Node, pinned cpu0" taskset -c 0 "${node[@]}"
done

has trace || exit 0
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T || { echo "no tracefs"; exit 0; }
tr() { # name cmd...
  local name=$1; shift
  echo 0 >$T/tracing_on; echo >$T/trace; echo 8192 >$T/buffer_size_kb
  echo 'vec == 6 || vec == 3' >$T/events/irq/softirq_raise/filter
  echo 'vec == 6 || vec == 3' >$T/events/irq/softirq_entry/filter
  echo 'vec == 6 || vec == 3' >$T/events/irq/softirq_exit/filter
  for e in irq/softirq_raise irq/softirq_entry irq/softirq_exit sched/sched_switch sched/sched_wakeup sched/sched_migrate_task raw_syscalls/sys_enter raw_syscalls/sys_exit; do
    echo 1 >$T/events/$e/enable
  done
  echo 1 >$T/tracing_on
  "$@" 2>/dev/null | sed -E 's/.*"impl":"([^"]*)".*"op":"([^"]*)".*"size":([0-9]+).*"p50_us":([0-9.]+),"p99_us":([0-9.]+).*/   traced \1 \2 \3: p50 \4 p99 \5/'
  echo 0 >$T/tracing_on
  cp $T/trace ".cache/readgap/trace-$name-cpus$ncpu.txt"
  echo "   trace: .cache/readgap/trace-$name-cpus$ncpu.txt ($(wc -l <$T/trace) lines)"
}
export NPMU_BENCH_ITERS=300 NPMU_BENCH_WARMUP=20
for op in read write; do
  tr c-$op-pinned taskset -c 0 $lat -s 64 -o $op
  tr node-$op-pinned taskset -c 0 node dist/bench/verbs.js --sizes 64 --ops $op --modes busy
done
tr c-read $lat -s 64 -o read
tr node-read node dist/bench/verbs.js --sizes 64 --ops read --modes busy
