#!/usr/bin/env bash
# Builds the page (tsc type check + esbuild), serves it, and drives it in headless Chromium
# (Debian chromium + playwright-core) against a live berth: create with a live progress bar,
# RUNNING, a terminal that comes back after a reload, the file manager (browse, edit and save, a
# conflicting change inside the workspace, upload, download), the data part (export as .tar.gz
# and .tar.zst, import with chunked uploads), snapshots and versions (take, restore by name and
# by version, SNAPSHOT_IN_USE, delete), an image change and its rollback, stop, start, delete
# with preserved data (test.mjs); then the live panels (test-live.mjs): the device picker with a
# fake CDI device, a create with it, the metrics charts under a busy loop; then the network parts
# (test-network.mjs): a create with the egress policy "none", the info panel's NONE and loopback
# only, policies this --network none server refuses; then the token field against the berth with
# tokens and TLS (test-auth.mjs). Writes artifacts/screenshot.png, terminal.png, files.png,
# files-conflict.png, data.png, snapshots.png, image-change.png, devices.png, metrics.png,
# network.png and auth.png.
#
# Needs BERTH_TEST_SERVER (http://127.0.0.1:PORT), BERTH_TEST_IMAGE_MULTILAYER,
# BERTH_TEST_IMAGE_BUSYBOX, BERTH_TEST_SDK_NAMESPACE (the containerd namespace of the server) and
# BERTH_TEST_CDI_SPEC_DIR (a directory the server reads with --cdi-spec-dir: the test writes its
# fake spec files there), BERTH_TEST_TLS_SERVER, BERTH_TEST_TOKEN and BERTH_TEST_READ_TOKEN (the
# berth with tokens and TLS of scripts/test-sdks.sh), plus TESTBED_DIR when the testbed is not the
# repository's .testbed. The page is served on BERTH_TEST_WEB_PORT (default 8080), whose origin
# http://127.0.0.1:PORT both servers must allow (--cors-origin).
set -euo pipefail
cd "$(dirname "$0")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth, e.g. http://127.0.0.1:50051}"
: "${BERTH_TEST_IMAGE_MULTILAYER:?source the testbed env (BERTH_TEST_IMAGE_MULTILAYER is unset)}"
: "${BERTH_TEST_IMAGE_BUSYBOX:?source the testbed env (BERTH_TEST_IMAGE_BUSYBOX is unset)}"
: "${BERTH_TEST_SDK_NAMESPACE:?BERTH_TEST_SDK_NAMESPACE must name the containerd namespace of the server}"
: "${BERTH_TEST_CDI_SPEC_DIR:?BERTH_TEST_CDI_SPEC_DIR must name the --cdi-spec-dir of the server}"
: "${BERTH_TEST_TLS_SERVER:?BERTH_TEST_TLS_SERVER must name the berth with tokens and TLS (scripts/test-sdks.sh)}"

# Debian's chromium comes from the installer (tests/testbed/install-deps.sh).
command -v chromium >/dev/null || { echo "chromium is missing: run tests/testbed/install-deps.sh (as root)" >&2; exit 1; }

# The SDK is a file: dependency; (re)build it when its dist is missing or older than its sources.
sdk=../../sdk/typescript
if [ ! -f $sdk/dist/web.js ] || [ -n "$(find $sdk/src $sdk/package.json -newer $sdk/dist/web.js -print -quit)" ]; then
  (cd $sdk && { [ -x node_modules/.bin/tsc ] || npm ci --no-audit --no-fund; } && npm run --silent build)
fi
if [ ! -x node_modules/.bin/esbuild ] || [ ! -d node_modules/playwright-core ] || [ ! -e node_modules/@berth/sdk ] ||
  [ package.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

rm -rf dist artifacts
node_modules/.bin/tsc --noEmit -p tsconfig.json
node build.mjs
node test.mjs
node test-live.mjs
node test-network.mjs
node test-auth.mjs
