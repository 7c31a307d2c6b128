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

step "proto checks: buf lint, buf format, buf breaking (against main)"
node_modules/.bin/buf lint
node_modules/.bin/buf format --diff --exit-code
if git rev-parse --verify --quiet main >/dev/null; then
  node_modules/.bin/buf breaking --against '.git#branch=main'
fi

step "generated SDK code is up to date"
scripts/gen.sh >/dev/null 2>&1 || scripts/gen.sh
if ! git diff --exit-code --stat -- sdk/typescript/src/gen sdk/go/berth sdk/python/src/berth/workspace ||
  [ -n "$(git status --porcelain --untracked-files=all -- sdk/typescript/src/gen sdk/go/berth sdk/python/src/berth/workspace)" ]; then
  echo "generated code differs from what is committed: run scripts/gen.sh and commit" >&2
  exit 1
fi

step "build"
cargo build --workspace --all-targets --locked
scripts/build-agent.sh

step "testbed up"
trap 'step "testbed down"; tests/testbed/down.sh' EXIT
tests/testbed/up.sh
# shellcheck disable=SC1091
source .testbed/env
export BERTH_BIN="$PWD/target/debug/berth"

step "unit and end-to-end tests"
cargo test --workspace --locked --no-fail-fast

step "berth-agent tests (the static binary, on this host)"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo test --locked -p berth-agent --features static --target "$(rustc -vV | sed -n 's/^host: //p')"

step "SDK, example, CLI and browser tests against a live berth"
scripts/test-sdks.sh

step "the tree is as committed"
# Nothing a test run installs or generates may change tracked files (a rewritten lock file once
# slipped through) or leave untracked ones outside .gitignore.
if [ -n "$(git status --porcelain --untracked-files=all)" ]; then
  git status --short >&2
  echo "make test changed the work tree (above): fix the step that writes these files" >&2
  exit 1
fi

step "done"
