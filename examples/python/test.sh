#!/usr/bin/env bash
# Runs create_workspace.py as its README says against a live berth (scripts/test-sdks.sh sets
# BERTH_TEST_SERVER, BERTH_TEST_SDK_NAMESPACE and BERTH_TEST_IMAGE_MULTILAYER): a workspace is
# created from a cold image, its progress printed, then deleted; a bad id fails visibly.
set -euo pipefail
cd "$(dirname "$0")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth server (http://127.0.0.1:PORT)}"
: "${BERTH_TEST_IMAGE_MULTILAYER:?source the testbed env first}"
: "${BERTH_TEST_SDK_NAMESPACE:?BERTH_TEST_SDK_NAMESPACE must name the containerd namespace of the server}"

../../scripts/tools.sh
python=../../.tools/venv/bin/python
# `pip install ./sdk/python`, as the README says (into the repo's venv).
rm -rf ../../sdk/python/build ../../sdk/python/src/*.egg-info
"$python" -m pip install --quiet --disable-pip-version-check --no-build-isolation ../../sdk/python
rm -rf ../../sdk/python/build ../../sdk/python/src/*.egg-info

id="py-example-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
../../tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$BERTH_TEST_IMAGE_MULTILAYER"
out=$(BERTH_SERVER="$BERTH_TEST_SERVER" "$python" create_workspace.py --id "$id" \
  --image "$BERTH_TEST_IMAGE_MULTILAYER" --label example=python --delete)
printf '%s\n' "$out"

checks=0
failures=0
expect() { # expect REGEX WHAT
  checks=$((checks + 1))
  if ! grep -Eq -- "$1" <<<"$out"; then
    echo "FAIL: output lacks $2 (/$1/)" >&2
    failures=$((failures + 1))
  fi
}
expect '^pulling .* bytes\)$' "a pulling line"
expect '^pull_progress [0-9]+/[1-9][0-9]* bytes' "a pull_progress line with bytes"
expect '^unpacking [0-9]+/[0-9]+ layers$' "an unpacking line"
expect '^creating$' "a creating line"
expect "^ready $id: RUNNING " "a ready line with RUNNING"
expect '^state RUNNING$' "the final state RUNNING"
expect '^uname -s: Linux \(exit 0\)$' "the command's output and exit code"
expect "^wrote /data/hello.txt \\($(( ${#id} + 12 )) bytes, revision .+\\)\$" "the written file"
expect "^read /data/hello.txt: hello from ${id}\$" "the file read back"
expect "^deleted ${id}\$" "the deletion"

# A failed call prints the status code and the berth reason, and exits non-zero.
checks=$((checks + 1))
if err=$("$python" create_workspace.py --server "$BERTH_TEST_SERVER" --id "Not Valid" 2>&1); then
  echo "FAIL: an invalid id succeeded: $err" >&2
  failures=$((failures + 1))
elif ! grep -q '^error: INVALID_ARGUMENT INVALID_WORKSPACE_ID: ' <<<"$err"; then
  echo "FAIL: an invalid id printed no code and reason: $err" >&2
  failures=$((failures + 1))
fi

passed=$((checks - failures))
echo "examples/python: $passed passed, $failures failed"
[ "$failures" -eq 0 ]
