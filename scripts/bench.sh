#!/usr/bin/env bash
# `make bench`: release build, testbed up, berth vs ctr in the same run, testbed down.
# BERTH_BENCH_ONLY=files (create, process, files, snapshot, export, pull) runs only those sections of the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p berth --locked
scripts/build-agent.sh
trap 'tests/testbed/down.sh' EXIT
# The Debian image too: the process bench measures coreutils' head (cached after the first build).
tests/testbed/up.sh
# shellcheck disable=SC1091
source .testbed/env
export BERTH_BIN="$PWD/target/release/berth"
cargo bench -p berth-e2e --locked --bench lifecycle
