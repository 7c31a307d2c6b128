#!/usr/bin/env bash
# Checks the toolchains (one line naming what is missing), then installs what berth's build and
# tests need and the machine lacks: Debian packages (through the testbed's installer) and the npm
# tools pinned in package.json (buf).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-toolchains.sh
tests/testbed/install-deps.sh
if [ ! -x node_modules/.bin/buf ] || [ package.json -nt node_modules/.package-lock.json ]; then
  # npm ci installs exactly the lock file and never rewrites it (the lock lists every platform's
  # optional buf binary, which npm 11 requires), so a fresh clone's tree stays clean.
  npm ci --no-audit --no-fund --loglevel=error
fi
