#!/usr/bin/env bash
# Builds @berth/sdk and runs its tests (Node's test runner, over the grpc and grpc-web transports)
# against a live berth.
#
# Needs BERTH_TEST_SERVER (http://127.0.0.1:PORT), BERTH_TEST_IMAGE_MULTILAYER and
# BERTH_TEST_SDK_NAMESPACE (the server's containerd namespace), plus TESTBED_DIR when the testbed
# is not the repository's .testbed: tests/testbed/forget-image.sh uses it before each create.
set -euo pipefail
cd "$(dirname "$0")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth, e.g. http://127.0.0.1:50051}"
: "${BERTH_TEST_IMAGE_MULTILAYER:?source the testbed env (BERTH_TEST_IMAGE_MULTILAYER is unset)}"
: "${BERTH_TEST_SDK_NAMESPACE:?BERTH_TEST_SDK_NAMESPACE must name the containerd namespace of the server}"

if [ ! -x node_modules/.bin/tsc ] || [ package.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
rm -rf dist dist-test
npm run --silent build
npm run --silent build:test
node --test --test-concurrency=1 dist-test/*.test.js
