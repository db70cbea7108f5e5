#!/usr/bin/env bash
# The official `openai` npm package against `moe serve`: chat, completions, streaming, choices, errors
# (401, 400, 404, 429) and a client that aborts a stream. Installs the package into a directory outside
# the repository (MOE_TEST_NPM_DIR, default a fresh temporary one; CMake points it into the build tree so
# that later runs reuse it) and exits 77 (ctest: skipped) when node/npm are missing or the npm registry
# cannot be reached.
#   openai_client_test.sh MOE MODEL
set -euo pipefail
MOE=$1 MODEL=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIPPED: node and npm are not installed (scripts/deps.sh serve installs them)"
  exit 77
fi
NPM_DIR=${MOE_TEST_NPM_DIR:-}
if [[ -z $NPM_DIR ]]; then NPM_DIR=$(mktemp -d /tmp/moe_openai_npm_XXXXXX); trap 'rm -rf "$NPM_DIR"' EXIT; fi
if [[ ! -f $NPM_DIR/node_modules/openai/package.json ]]; then
  mkdir -p "$NPM_DIR"
  if ! (cd "$NPM_DIR" && [[ -f package.json ]] || echo '{"private": true}' > package.json) ||
     ! (cd "$NPM_DIR" && timeout 180 npm install --no-audit --no-fund --loglevel=error openai@4 >npm.log 2>&1); then
    echo "SKIPPED: could not install the openai package from the npm registry:"
    tail -5 "$NPM_DIR/npm.log" 2>/dev/null || true
    exit 77
  fi
fi
export NPM_DIR
exec "$HERE/run_with_server.sh" "$MOE" "$MODEL" -- node "$HERE/openai_client_test.mjs" -- \
  --api-key test-key --alias test-model --parallel 2 --queue 0 -c 1024 -t 2
