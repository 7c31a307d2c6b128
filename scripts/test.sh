#!/usr/bin/env bash
# The whole truth: installs what is missing, checks the protos, builds, starts the testbed
# (private containerd + local registry + test images), runs unit and end-to-end tests against
# it, and stops everything it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }

step "dependencies"
scripts/deps.sh

step "proto checks: buf lint, buf format"
node_modules/.bin/buf lint
node_modules/.bin/buf format --diff --exit-code

step "build"
cargo build --workspace --all-targets --locked

step "testbed up"
trap 'step "testbed down"; tests/testbed/down.sh' EXIT
tests/testbed/up.sh
# shellcheck disable=SC1091
source .testbed/env
export BERTH_BIN="$PWD/target/debug/berth"
export BERTH_E2E_REQUIRED=1

step "unit and end-to-end tests"
cargo test --workspace --locked

step "done"
