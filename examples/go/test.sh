#!/usr/bin/env bash
# Runs the Go example against a live berth server: creates a workspace with a unique id, checks
# that progress and the final RUNNING state are printed, deletes it; then checks that a failing
# call prints its code and reason and exits non-zero.
#   BERTH_TEST_SERVER (required), BERTH_TEST_IMAGE_MULTILAYER (optional: else the server's default image)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth server, e.g. http://127.0.0.1:50700}"

unformatted=$(gofmt -l .)
[[ -z $unformatted ]] || { echo "gofmt needed on: $unformatted" >&2; exit 1; }
go vet ./...
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/berth-example" .

id="go-example-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
out=$("$bin/berth-example" -server "$BERTH_TEST_SERVER" -id "$id" \
  -image "${BERTH_TEST_IMAGE_MULTILAYER:-}" -label sdk=go-example -delete -timeout 2m)
echo "$out"
grep -q '^ready ' <<<"$out" || { echo "FAIL: no ready line" >&2; exit 1; }
grep -q "^workspace $id: state=RUNNING" <<<"$out" || { echo "FAIL: final state is not RUNNING" >&2; exit 1; }
grep -q '^uname -s: Linux (exit 0)$' <<<"$out" || { echo "FAIL: the command did not run" >&2; exit 1; }
grep -Eq "^wrote /data/hello.txt \\($(( ${#id} + 12 )) bytes, revision .+\\)\$" <<<"$out" || { echo "FAIL: the file was not written" >&2; exit 1; }
grep -q "^read /data/hello.txt: hello from $id\$" <<<"$out" || { echo "FAIL: the file did not read back" >&2; exit 1; }
grep -q "^deleted $id\$" <<<"$out" || { echo "FAIL: workspace not deleted" >&2; exit 1; }

# A failing call: an invalid workspace id.
if err=$("$bin/berth-example" -server "$BERTH_TEST_SERVER" -id "Not_Valid!" 2>&1); then
  echo "FAIL: invalid id succeeded: $err" >&2
  exit 1
fi
echo "$err"
grep -q 'code=InvalidArgument reason=INVALID_WORKSPACE_ID' <<<"$err" || { echo "FAIL: no code/reason in: $err" >&2; exit 1; }
echo "examples/go: ok"
