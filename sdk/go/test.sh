#!/usr/bin/env bash
# Runs the Go SDK's checks and tests. The integration test needs a live berth server:
#   BERTH_TEST_SERVER (e.g. http://127.0.0.1:50700), BERTH_TEST_IMAGE_MULTILAYER,
#   BERTH_TEST_SDK_NAMESPACE and TESTBED_DIR (see README.md). It fails when they are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth server, e.g. http://127.0.0.1:50700}"
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
  echo "gofmt needed on:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
go test -count=1 ./...
