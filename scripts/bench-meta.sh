#!/usr/bin/env bash
# The metadata benchmark (`npm run bench:meta`): create, open + close, list,
# read-attributes and delete as a volume grows to 10, 1,000 and 10,000 regions,
# with two real units on the micro-VM's emulated NVDIMMs and a PMM, in ONE boot
# of the rxe micro-VM (natively when this host has an ACTIVE RDMA device and
# NPMU_DAX_DEVICES names two devdax devices). About 10-20 minutes under TCG;
# --quick stops at 1,000 regions (a few minutes).
#
# usage: scripts/bench-meta.sh [--quick]
# Output: the table on stdout; JSON lines in bench/results/meta-<UTC>.json and meta-latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p .cache/bench bench/results
[[ -f build/Release/npmu_native.node ]] || npx cmake-js compile >.cache/bench/cmake.log 2>&1 || { cat .cache/bench/cmake.log >&2; exit 2; }
npx tsc -p tsconfig.json
ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/meta-$ts.json
if [[ -n ${NPMU_DAX_DEVICES:-} ]] && node -e "process.exit(require('./dist/lib/verbs').firstActiveDevice() ? 0 : 1)" 2>/dev/null; then
  node dist/bench/meta.js "$@" --out "$out"
else
  scripts/rxe-vm.sh --timeout 3600 \
    --nvdimm "$root/.cache/bench/meta0.img:256M" --nvdimm "$root/.cache/bench/meta1.img:256M" \
    -- node dist/bench/meta.js "$@" --out "$out"
fi
cp "$out" bench/results/meta-latest.json
