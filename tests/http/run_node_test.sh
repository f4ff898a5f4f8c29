#!/usr/bin/env bash
# Runs one Node test of the HTTP service (piston_test.mjs, playground_test.mjs) with the npm packages
# pinned in tests/http/client/package-lock.json, installed by `npm ci` into the build folder.
# Usage: run_node_test.sh SOURCE_DIR BUILD_DIR TEST.mjs
set -euo pipefail
src="$1/tests/http/client"
dir="$2/http-client"
mkdir -p "$dir"
cp "$src"/package.json "$src"/package-lock.json "$src"/*.mjs "$dir"/
cd "$dir"
# npm ci again only when the lock file changed since the last install. Two tests may start at once:
# the lock keeps them from installing over each other.
(
  flock 9
  if ! cmp -s package-lock.json node_modules/.spr-installed-lock 2>/dev/null; then
    timeout 600 npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.spr-installed-lock
  fi
) 9>"$dir/.npm-ci.lock"
export SPR_ARTIFACT_DIR="$2/http-artifacts"
mkdir -p "$SPR_ARTIFACT_DIR"
exec node "$3"
