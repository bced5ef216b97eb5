#!/usr/bin/env python3
"""Summarize an ftrace text dump from scripts/read-gap.sh (docs/perf-read.md).

For every TASKLET softirq_raise (one per RDMA READ: rxe schedules the responder
of a READ request as a tasklet) by the benchmark process: did it wake
ksoftirqd, in which task did the softirq run, how long from raise to
softirq_exit (the READ's completion is queued by then), and was the benchmark
process switched out to ksoftirqd before its next raise. With syscalls traced,
also the time from the raise to the benchmark's next clock_gettime (t1).

usage: scripts/read-gap-trace.py TRACE [COMM]
"""
import re
import statistics
import sys

LINE = re.compile(r'^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+(\S+)\s+([\d.]+):\s+(\w+):\s*(.*)$')


def phases(ev, pid):
    """Per post (a write(2) to the uverbs fd returning 32, i.e. ibv_post_send),
    with syscalls traced: t0 (the clock read before it) -> write enter -> exit
    -> t1 (the next clock read), and the time switched out in between."""
    rows = []
    mine = [e for e in ev if e[2] == pid or e[5] == 'sched_switch']
    for j, e in enumerate(mine):
        if not (e[2] == pid and e[5] == 'sys_enter' and e[6].startswith('NR 1 ')):
            continue
        t0 = next((x[0] for x in reversed(mine[max(0, j - 6):j]) if x[2] == pid and x[5] == 'sys_enter' and x[6].startswith('NR 228 ')), None)
        k = j + 1
        while k < len(mine) and not (mine[k][2] == pid and mine[k][5] == 'sys_exit' and mine[k][6].startswith('NR 1 ')):
            k += 1
        if k >= len(mine) or not mine[k][6].endswith('= 32') or t0 is None:
            continue
        out = 0.0
        t1 = None
        left = None
        for x in mine[k + 1:k + 40]:
            if x[5] == 'sched_switch' and f'prev_pid={pid} ' in x[6]:
                left = x[0]
            elif x[5] == 'sched_switch' and f'next_pid={pid} ' in x[6] and left is not None:
                out += x[0] - left
                left = None
            elif x[2] == pid and x[5] == 'sys_enter':
                if x[6].startswith('NR 228 '):
                    t1 = x[0]
                break
        if t1 is None:
            continue
        rows.append((e[0] - t0, mine[k][0] - e[0], out, t1 - mine[k][0] - out, t1 - t0))
    if not rows:
        return
    med = lambda i: statistics.median(r[i] for r in rows)
    print(f'  per post, p50 us over {len(rows)}: t0->post {med(0):.0f} | in ibv_post_send syscall {med(1):.0f} | '
          f'switched out {med(2):.0f} | back->t1 {med(3):.0f} | t0->t1 {med(4):.0f}')


def main():
    path = sys.argv[1]
    want = sys.argv[2] if len(sys.argv) > 2 else None
    ev = []
    for line in open(path, errors='replace'):
        m = LINE.match(line)
        if m:
            comm, pid, cpu, flags, ts, name, rest = m.groups()
            ev.append((float(ts) * 1e6, comm, int(pid), int(cpu), flags, name, rest))
    raises = [i for i, e in enumerate(ev) if e[5] == 'softirq_raise' and 'vec=6' in e[6]
              and (want is None or e[1] == want) and not e[1].startswith('ksoftirqd')]
    if not raises:
        print(f'{path}: no TASKLET raises')
        return
    woke = ran_in_ksoftirqd = preempted = 0
    to_exit, cycle, after = [], [], []
    for k, i in enumerate(raises):
        t0, comm, pid, cpu = ev[i][0], ev[i][1], ev[i][2], ev[i][3]
        end = raises[k + 1] if k + 1 < len(raises) else len(ev)
        if k + 1 < len(raises):
            cycle.append(ev[end][0] - t0)
        entered = exited = False
        for e in ev[i + 1:end]:
            if e[5] == 'sched_wakeup' and 'comm=ksoftirqd' in e[6]:
                woke += 1 if not entered or not exited else 0
            if e[5] == 'softirq_entry' and 'vec=6' in e[6] and e[3] == cpu and not entered:
                entered = True
                if e[1].startswith('ksoftirqd'):
                    ran_in_ksoftirqd += 1
            if e[5] == 'softirq_exit' and 'vec=6' in e[6] and e[3] == cpu and entered and not exited:
                exited = True
                to_exit.append(e[0] - t0)
            if e[5] == 'sched_switch' and f'prev_pid={pid} ' in e[6] and 'next_comm=ksoftirqd' in e[6]:
                preempted += 1
                break
        for e in ev[i + 1:end]:
            if e[2] == pid and e[5] == 'sys_enter' and 'NR 228 ' in e[6]:
                after.append(e[0] - t0)
                break
    n = len(raises)
    phases(ev, ev[raises[0]][2])
    q = lambda xs: f'p50 {statistics.median(xs):7.1f}  avg {statistics.fmean(xs):7.1f}' if xs else 'n/a'
    print(f'{path}: {n} TASKLET raises by {ev[raises[0]][1]}')
    print(f'  woke ksoftirqd after the raise:            {woke:5d} ({100 * woke / n:.0f}%)')
    print(f'  tasklet ran in ksoftirqd (not inline):     {ran_in_ksoftirqd:5d} ({100 * ran_in_ksoftirqd / n:.0f}%)')
    print(f'  poster switched out to ksoftirqd before next raise: {preempted:5d} ({100 * preempted / n:.0f}%)')
    print(f'  raise -> softirq_exit (us):  {q(to_exit)}')
    print(f'  raise -> next raise (us):    {q(cycle)}')
    if after:
        print(f'  raise -> next clock_gettime (us): {q(after)}')


main()
