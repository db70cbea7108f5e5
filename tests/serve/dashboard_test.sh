#!/usr/bin/env bash
# Headless chromium loads the dashboard of a running `moe serve` and checks that the expert-load heatmap
# updates while requests run (tests/serve/dashboard_test.mjs drives chromium over the DevTools protocol
# with node's built-in WebSocket; nothing is downloaded). Exits 77 (ctest: skipped) without chromium or
# node. SCREENSHOT=FILE also saves a PNG of the page under load.
#   dashboard_test.sh MOE MODEL [extra serve flags]
set -euo pipefail
MOE=$1 MODEL=$2; shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z $CHROMIUM ]]; then echo "SKIPPED: chromium is not installed (scripts/deps.sh serve installs it)"; exit 77; fi
if ! command -v node >/dev/null || ! node --experimental-websocket -e 'if (typeof WebSocket !== "function") process.exit(1)' 2>/dev/null; then
  echo "SKIPPED: node with a built-in WebSocket (node >= 20.10) is not installed"
  exit 77
fi
export CHROMIUM
exec "$HERE/run_with_server.sh" "$MOE" "$MODEL" -- node --experimental-websocket --no-warnings "$HERE/dashboard_test.mjs" -- \
  --parallel 4 -t 2 "$@"
