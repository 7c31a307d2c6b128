#!/usr/bin/env bash
# Runs the Node example against a live berth: creates a workspace with a unique id, checks that
# the output shows the progress and a RUNNING workspace, and deletes it with --delete.
#
# Needs BERTH_TEST_SERVER (http://127.0.0.1:PORT); uses BERTH_TEST_IMAGE_MULTILAYER when set,
# else the server's default image. With BERTH_TEST_SDK_NAMESPACE (the server's containerd
# namespace) set too, the image is forgotten first and the pull progress lines are checked.
set -euo pipefail
cd "$(dirname "$0")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth, e.g. http://127.0.0.1:50051}"

# The SDK is a file: dependency; (re)build it when its dist is missing or older than its sources.
sdk=../../sdk/typescript
if [ ! -f $sdk/dist/index.js ] || [ -n "$(find $sdk/src $sdk/package.json -newer $sdk/dist/index.js -print -quit)" ]; then
  (cd $sdk && { [ -x node_modules/.bin/tsc ] || npm ci --no-audit --no-fund; } && npm run --silent build)
fi
if [ ! -e node_modules/@berth/sdk ]; then
  npm ci --no-audit --no-fund
fi

export BERTH_SERVER=$BERTH_TEST_SERVER
id="node-example-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
out=$(mktemp)
trap 'node index.mjs --delete "$id" >/dev/null 2>&1 || true; rm -f "$out"' EXIT

image=${BERTH_TEST_IMAGE_MULTILAYER:-}
cold=false
if [ -n "$image" ] && [ -n "${BERTH_TEST_SDK_NAMESPACE:-}" ]; then
  ../../tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$image"
  cold=true
fi

node index.mjs "$id" "$image" | tee "$out"
if $cold; then
  grep -Eq '^pull_progress [0-9]+/[0-9]+ bytes' "$out" || { echo "FAIL: no pull progress" >&2; exit 1; }
fi
grep -q '^ready$' "$out" || { echo "FAIL: no ready line" >&2; exit 1; }
grep -Eq '^  state +RUNNING' "$out" || { echo "FAIL: the workspace is not RUNNING" >&2; exit 1; }
grep -q "^workspace $id\$" "$out" || { echo "FAIL: the workspace id is not printed" >&2; exit 1; }
grep -q '^uname -s: Linux (exit 0)$' "$out" || { echo "FAIL: the command did not run" >&2; exit 1; }
grep -Eq "^wrote /data/hello.txt \\($(( ${#id} + 12 )) bytes, revision .+\\)\$" "$out" || { echo "FAIL: the file was not written" >&2; exit 1; }
grep -q "^read /data/hello.txt: hello from $id\$" "$out" || { echo "FAIL: the file did not read back" >&2; exit 1; }

node index.mjs --delete "$id" | tee "$out"
grep -q "^deleted $id\$" "$out" || { echo "FAIL: delete" >&2; exit 1; }
# Deleting again fails with the code and reason on one line.
if node index.mjs --delete "$id" 2>"$out"; then
  echo "FAIL: deleting a deleted workspace succeeded" >&2
  exit 1
fi
cat "$out"
grep -q 'NOT_FOUND WORKSPACE_NOT_FOUND' "$out" || { echo "FAIL: the error lacks code and reason" >&2; exit 1; }
echo "PASS examples/node"
