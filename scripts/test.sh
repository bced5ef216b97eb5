#!/usr/bin/env bash
# The README's test command (`npm test`). Builds everything, then:
#   1. pure-logic tests natively (metadata, allocation, protocol, mapping…);
#   2. every RDMA test on a real rxe device: natively when this host has an
#      ACTIVE RDMA device, else inside the micro-VM (scripts/rxe-vm.sh), all test
#      files sharing ONE boot and ONE node process (JS is ~25x slower under TCG);
#   3. the power-cut tests, which need the VM's emulated NVDIMMs (or its
#      virtio disk, for a file-backed unit on ext4): write, kill -9 qemu, boot
#      again, check (among them one per persistence domain, with the units in
#      test-only shadow mode so a missing flush loses data).
# No RDMA test is ever skipped: if neither a device nor the VM can run them,
# this fails. A skip anywhere (tap's `skip: N`) counts as a failure. A todo is
# a known, reported product defect: each is listed loudly and counted on its
# own line ("todo: N known defects"), not as passed or failed.
# The last line is "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p .cache/test
log=.cache/test

echo "== build"
[ -f build/Release/npmu_native.node ] || npx cmake-js compile >"$log/cmake.log" 2>&1 || { cat "$log/cmake.log"; exit 1; }
npx cmake-js build >"$log/cmake.log" 2>&1 || { cat "$log/cmake.log"; exit 1; }
npx tsc -p tsconfig.json

passed=0; failed=0; skipped=0; todo=0
todos=()
# tap prints "# { total: N, pass: N, fail: N, todo: N, skip: N }" at the end of
# a run (keys with a zero count are left out). Skips are failures: no test may
# be skipped. Todos are known defects, counted apart and listed.
count() {
  local line; line=$(grep -E '^# \{ total: [0-9]+' "$1" | tail -n 1 || true)
  local p f s d
  p=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$line"); f=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$line")
  s=$(sed -nE 's/.*skip: ([0-9]+).*/\1/p' <<<"$line"); d=$(sed -nE 's/.*todo: ([0-9]+).*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0} + ${s:-0})); skipped=$((skipped + ${s:-0})); todo=$((todo + ${d:-0}))
  [ -n "$line" ] || { echo "!! $1: no tap summary (run crashed?)"; failed=$((failed + 1)); }
  if [ "${s:-0}" -gt 0 ]; then
    echo "!! $1: $s SKIPPED (counted as failed; no test may be skipped):"
    grep -E '# SKIP' "$1" | sed -E 's/^\s*/!!   /' || true
  fi
  if [ "${d:-0}" -gt 0 ]; then
    local l
    while IFS= read -r l; do todos+=("$1: $l"); done < <(grep -E '# TODO' "$1" | sed -E 's/^\s*//' || true)
  fi
}

# Each run's full TAP goes to .cache/test/*.tap; the screen gets the top-level
# results (and the whole TAP of a run that failed).
show() {
  grep -E '^(ok|not ok) |^# (RDMA tests on|\{ total)' "$1" || true
  if grep -qE '^\s*not ok ' "$1" || ! grep -qE '^# \{ total' "$1"; then
    echo "---- $1 (full) ----"; cat "$1"
  fi
}

export TAP_TIMEOUT=0 # rxe-vm.sh and the tests bound their own waits
status=0
echo "== pure-logic tests (native host)"
npx tap --reporter=tap dist/test/unit/*.test.js >"$log/unit.tap" 2>&1 || status=1
show "$log/unit.tap"
count "$log/unit.tap"

echo "== RDMA tests"
if node -e "process.exit(require('./dist/lib/verbs').firstActiveDevice() ? 0 : 1)" 2>/dev/null; then
  echo "   host has an ACTIVE RDMA device: running natively"
  node --expose-gc dist/test/rdma/run.js >"$log/rdma.tap" 2>&1 || status=1
else
  echo "   no RDMA device on this host: running in the rxe micro-VM (one boot)"
  scripts/rxe-vm.sh --timeout 2400 \
    --nvdimm "$root/.cache/test/nv0.img:256M" --nvdimm "$root/.cache/test/nv1.img:256M" \
    -- node --expose-gc dist/test/rdma/run.js >"$log/rdma.tap" 2>&1 || status=1
fi
show "$log/rdma.tap"
count "$log/rdma.tap"

echo "== power-cut test (micro-VM, emulated NVDIMM, kill -9 of qemu)"
node dist/test/powercut/run.js >"$log/powercut.tap" 2>&1 || status=1
show "$log/powercut.tap"
count "$log/powercut.tap"

echo "== unit power-cut test (devdax unit: metadata + RDMA data persisted, kill -9, boot again)"
node dist/test/powercut/unit-run.js >"$log/powercut-unit.tap" 2>&1 || status=1
show "$log/powercut-unit.tap"
count "$log/powercut-unit.tap"

echo "== persistence-domain power-cut test (mem-ctrl + shadow: only unit-flushed bytes survive; cpu: read-after-write survives)"
node dist/test/powercut/domain-run.js >"$log/domain-powercut.tap" 2>&1 || status=1
show "$log/domain-powercut.tap"
count "$log/domain-powercut.tap"

echo "== PMM power-cut test (two NVDIMMs, kill -9 during a create/write/delete burst, boot again)"
node dist/test/powercut/pmm-run.js >"$log/pmm-powercut.tap" 2>&1 || status=1
show "$log/pmm-powercut.tap"
count "$log/pmm-powercut.tap"

echo "== log power-cut test (NpmuLog + Destager to a virtio disk, kill -9 during appends and destaging: NPMU_LOG_POWERCUT_CUTS cuts, default 20, one boot per cut, each boot checking the cut before; ~35 s a cut; the campaign: NPMU_CAMPAIGN=log npm run campaign:powercut)"
NPMU_POWERCUT_ROUNDS=${NPMU_LOG_POWERCUT_CUTS:-20} node dist/test/powercut/log-run.js >"$log/log-powercut.tap" 2>&1 || status=1
show "$log/log-powercut.tap"
count "$log/log-powercut.tap"

echo "== disk power-cut test (file-backed unit on ext4 on a virtio disk: RDMA writes into cleaned pages persisted, kill -9, boot again)"
node dist/test/powercut/disk-run.js >"$log/disk-powercut.tap" 2>&1 || status=1
show "$log/disk-powercut.tap"
count "$log/disk-powercut.tap"

echo "== benchmark smoke test (npm run bench -- --quick: one boot, every part, tables and plots; no timing asserted)"
npx tap --reporter=tap dist/test/smoke/bench.test.js >"$log/bench-smoke.tap" 2>&1 || status=1
show "$log/bench-smoke.tap"
count "$log/bench-smoke.tap"

[ "$failed" -eq 0 ] || status=1
if [ "$todo" -gt 0 ]; then
  echo "== TODO: $todo known product defect(s), reported, to be fixed (not counted as passed or failed):"
  printf '!! %s\n' "${todos[@]}"
fi
[ "$skipped" -eq 0 ] || echo "!! $skipped skipped test(s) counted as failed"
# CI parses the last line: it must stay "tests: N passed, N failed".
echo "todo: $todo known defects"
echo "tests: $passed passed, $failed failed"
exit $status
