#!/usr/bin/env bash
# `npm run demo`: a complete local npmu — two units, a PMM and a client — and
# a short tour of the verbs (examples/demo.ts), printing what it does.
#   - natively when this host has an ACTIVE RDMA device (units on tmpfs files:
#     volatile, as the demo says);
#   - otherwise inside the rxe micro-VM (scripts/rxe-vm.sh), the units on two
#     emulated NVDIMMs (devdax: pmem durability) backed by files in .cache/demo.
# Needs a build (npm install does it); builds the TypeScript if dist/ is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -f dist/examples/demo.js || ! -f build/Release/npmu_native.node ]]; then
  echo "demo: building first" >&2
  [[ -f build/Release/npmu_native.node ]] || npx cmake-js compile >/dev/null
  npx tsc -p tsconfig.json
fi

if node -e "process.exit(require('./dist/lib/verbs').firstActiveDevice() ? 0 : 1)" 2>/dev/null; then
  exec node dist/examples/demo.js
fi

echo "demo: no RDMA device on this host: booting the rxe micro-VM (about 10 s)" >&2
mkdir -p .cache/demo
exec scripts/rxe-vm.sh --timeout 600 \
  --nvdimm .cache/demo/nv0.img:256M --nvdimm .cache/demo/nv1.img:256M \
  -- node dist/examples/demo.js
