#!/usr/bin/env bash
# Runs the SDK, example, CLI and browser tests against one live berth on the running testbed
# (called by scripts/test.sh after the Rust tests; the testbed env must be sourced).
#
# Each suite gets BERTH_TEST_SERVER (http://127.0.0.1:PORT), BERTH_TEST_SDK_NAMESPACE, the
# BERTH_TEST_IMAGE_* refs, BERTH_TEST_WEB_PORT (the port the browser test serves its page on;
# berth allows that page's origin and no other) and BERTH_TEST_CDI_SPEC_DIR (berth's
# --cdi-spec-dir, empty); `tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" IMAGE`
# makes the next pull of IMAGE download bytes again. Suites use their own workspace ids and
# delete what they create.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BERTH_TEST_NAMESPACE:?source .testbed/env first}"

# Other namespaces of this run keep image content alive; SDK tests want cold pulls.
mapfile -t namespaces < <(ctr --address "$BERTH_TEST_CONTAINERD_SOCKET" namespaces ls -q | grep '^berth-test-' || true)
if [ ${#namespaces[@]} -gt 0 ]; then
  tests/testbed/containerd.sh purge "${namespaces[@]}"
fi

export BERTH_TEST_SDK_NAMESPACE="$BERTH_TEST_NAMESPACE-sdk"
state_dir="$TESTBED_DIR/sdk-server"
rm -rf "$state_dir" && mkdir -p "$state_dir"
# CDI spec files for the server: empty here; a suite installs the fake devices it needs (berth
# reads the directory afresh at each call) and removes them.
export BERTH_TEST_CDI_SPEC_DIR="$state_dir/cdi"
mkdir -p "$BERTH_TEST_CDI_SPEC_DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
export BERTH_TEST_SERVER="http://127.0.0.1:$port"
export BERTH_TEST_WEB_PORT
BERTH_TEST_WEB_PORT=$(free_port)
target/debug/berth serve --listen "127.0.0.1:$port" --containerd-socket "$BERTH_TEST_CONTAINERD_SOCKET" \
  --namespace "$BERTH_TEST_SDK_NAMESPACE" --state-dir "$state_dir" --insecure-registry "$BERTH_TEST_REGISTRY" \
  --default-image "$BERTH_TEST_IMAGE_BUSYBOX" --cors-origin "http://127.0.0.1:$BERTH_TEST_WEB_PORT" \
  --cdi-spec-dir "$BERTH_TEST_CDI_SPEC_DIR" --network none \
  2>"$state_dir/berth.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

failed=()
for suite in sdk/typescript/test.sh sdk/go/test.sh sdk/python/test.sh examples/node/test.sh examples/go/test.sh \
  examples/python/test.sh examples/web/test.sh examples/grpcurl-test.sh scripts/test-cli.sh; do
  [ -x "$suite" ] || { echo "missing test suite $suite" >&2; failed+=("$suite"); continue; }
  printf '\n--> %s\n' "$suite"
  if ! "$suite"; then
    failed+=("$suite")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed suites: ${failed[*]} (server log: $state_dir/berth.log)" >&2
  exit 1
fi
