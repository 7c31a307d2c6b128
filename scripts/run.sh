#!/usr/bin/env bash
# `make run`: a working berth on a fresh Debian machine. Installs containerd, runc and
# catatonit if missing, uses the containerd at BERTH_CONTAINERD_SOCKET (default
# /run/containerd/containerd.sock) or starts a private one, starts a local registry holding a
# demo image, and serves berth on 127.0.0.1:50051 with its state in ./.berth, allowing the
# example web page (examples/web, `node serve.mjs 8080`) to call it from its origin. Ctrl-C
# stops berth and whatever this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

socket=${BERTH_CONTAINERD_SOCKET:-/run/containerd/containerd.sock}
listen=${BERTH_LISTEN:-127.0.0.1:50051}
# The origins of examples/web served by `node serve.mjs 8080` (comma-separated).
cors_origins=${BERTH_CORS_ORIGIN:-http://127.0.0.1:8080,http://localhost:8080}

scripts/deps.sh
cargo build -p berth --locked
scripts/build-agent.sh

started_containerd=0
if ! ctr --address "$socket" version >/dev/null 2>&1; then
  echo "run: no containerd answers at $socket; using a private one under .testbed/"
  tests/testbed/containerd.sh status >/dev/null 2>&1 || started_containerd=1
  tests/testbed/containerd.sh start
  # shellcheck disable=SC1091
  socket=$(. tests/testbed/lib.sh && echo "$CTRD_SOCK")
fi
started_registry=0
tests/testbed/registry.sh status >/dev/null 2>&1 || started_registry=1
tests/testbed/registry.sh start
BERTH_TESTBED_SKIP_DEBIAN=1 tests/testbed/images.sh small
registry=127.0.0.1:$(cat .testbed/registry/port)

cleanup() {
  if [ "$started_registry" = 1 ]; then tests/testbed/registry.sh stop || true; fi
  if [ "$started_containerd" = 1 ]; then tests/testbed/containerd.sh stop || true; fi
}
trap cleanup EXIT

cat <<MSG

berth serves on http://$listen (containerd $socket, state ./.berth)
demo image: $registry/berth-test/busybox:latest (the default image of this server)
web pages allowed to call it: $cors_origins (examples/web: node serve.mjs 8080)
try:  npx buf curl --protocol grpc --http2-prior-knowledge --list-methods http://$listen

MSG
target/debug/berth serve \
  --listen "$listen" \
  --containerd-socket "$socket" \
  --state-dir "$PWD/.berth" \
  --insecure-registry "$registry" \
  --default-image "$registry/berth-test/busybox:latest" \
  --cors-origin "$cors_origins" &
berth=$!
trap 'kill -TERM $berth 2>/dev/null || true' INT TERM
wait $berth || true
