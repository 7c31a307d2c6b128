#!/usr/bin/env bash
# Runs create_workspace.py as its README says against a live berth (scripts/test-sdks.sh sets
# BERTH_TEST_SERVER, BERTH_TEST_SDK_NAMESPACE and BERTH_TEST_IMAGE_MULTILAYER): a workspace is
# created from a cold image, its progress printed, a snapshot of it restored (the file's first
# content is back), /data exported to a file and imported again (the file has the trailer's size
# and SHA-256, the import received the same bytes), then deleted; a bad id fails visibly.
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
archive_dir=$(mktemp -d)
trap 'rm -rf "$archive_dir"' EXIT
archive=$archive_dir/data.tar.gz
../../tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$BERTH_TEST_IMAGE_MULTILAYER"
out=$(BERTH_SERVER="$BERTH_TEST_SERVER" "$python" create_workspace.py --id "$id" \
  --image "$BERTH_TEST_IMAGE_MULTILAYER" --label example=python --archive "$archive" --delete)
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
expect '^network NONE, loopback only$' "the network of a server run with --network none"
expect '^uname -s: Linux \(exit 0\)$' "the command's output and exit code"
expect "^wrote /data/hello.txt \\($(( ${#id} + 12 )) bytes, revision .+\\)\$" "the written file"
expect "^read /data/hello.txt: hello from ${id}\$" "the file read back"
expect '^snapshot before-change: version 2, [0-9]+ bytes$' "the snapshot"
expect '^changed /data/hello.txt: changed after the snapshot$' "the change read back"
expect '^restored before-change: version 3$' "the restore as version 3"
expect "^after restore /data/hello.txt: hello from ${id}\$" "the file's first content after the restore"
expect "^read /data/roundtrip/hello.txt: hello from ${id}\$" "the imported copy read back"
expect "^deleted ${id}\$" "the deletion"

# The export: the file on disk is the archive the trailer describes, with hello.txt in it; the
# import received exactly that archive and extracted as many entries.
check() { # check WHAT COMMAND...
  checks=$((checks + 1))
  if ! "${@:2}"; then
    echo "FAIL: $1" >&2
    failures=$((failures + 1))
  fi
}
exported=$(sed -En "s|^exported /data to $archive: ([0-9]+) bytes, ([0-9]+) entries, sha256 ([0-9a-f]{64})\$|\1 \2 \3|p" <<<"$out")
read -r size entries sha <<<"${exported:-none none none}"
check "the archive file has the trailer's size ($size)" test "$(stat -c %s "$archive" 2>/dev/null)" = "$size"
check "the archive file has the trailer's sha256 ($sha)" test "$(sha256sum "$archive" 2>/dev/null | cut -d' ' -f1)" = "$sha"
check "the archive holds hello.txt" test "$(tar -xzOf "$archive" hello.txt 2>/dev/null)" = "hello from $id"
expect "^imported $archive into /data/roundtrip: $size bytes, $entries entries, sha256 $sha\$" "the import of the exported archive"

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
