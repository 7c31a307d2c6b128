#!/usr/bin/env bash
# Installs what berth's build and tests need and the machine lacks: Debian packages (through the
# testbed's installer) and the npm tools pinned in package.json (buf).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/testbed/install-deps.sh
if [ ! -x node_modules/.bin/buf ] || [ package.json -nt node_modules/.package-lock.json ]; then
  # npm ci rejects lock files missing other platforms' optional buf binaries (npm 11); install
  # still honours the pinned versions of the lock file.
  npm install --no-audit --no-fund --loglevel=error
fi
