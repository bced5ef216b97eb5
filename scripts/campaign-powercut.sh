#!/usr/bin/env bash
# A long power-cut campaign (`npm run campaign:powercut -- [ROUNDS] [SEED]`):
# the PMM power-cut test of the suite (test/powercut/pmm-run.ts) for many
# rounds, each a kill -9 of the micro-VM at a seeded random moment in a burst
# of creates, durable writes, deletes and PMM takeovers, then a boot that
# checks every acknowledged operation. Two boots per round, ~1-3 min a round
# under TCG. The suite runs 2 rounds; default here 25. SEED replays a run
# (it is printed at the start). NPMU_CAMPAIGN=log runs the log's power-cut
# test (test/powercut/log-run.ts: appends + destaging) instead: ROUNDS is then
# the number of cuts, one boot each (~35 s a cut; the suite runs 20).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-25}
[[ $rounds =~ ^[0-9]+$ ]] || { echo "usage: $0 [ROUNDS] [SEED]" >&2; exit 2; }
[[ -f build/Release/npmu_native.node ]] || npx cmake-js compile >/dev/null
npx tsc -p tsconfig.json
export NPMU_POWERCUT_ROUNDS=$rounds
[[ -n ${2:-} ]] && export NPMU_POWERCUT_SEED=$2
export TAP_TIMEOUT=0
test=${NPMU_CAMPAIGN:-pmm}
[[ $test == pmm || $test == log ]] || { echo "NPMU_CAMPAIGN must be pmm or log" >&2; exit 2; }
exec npx tap --reporter=tap --timeout=0 "dist/test/powercut/$test-run.js"
