#!/usr/bin/env bash
# Runs the Go example against a live berth server: creates a workspace with a unique id, checks
# that progress and the final RUNNING state are printed, the file written and read back, the
# snapshot restored (the file's first content is back) and the export/import round trip (the
# archive file has the trailer's size and SHA-256 and holds hello.txt, the import received the
# same bytes and the copy reads back); deletes it; then checks that a failing call prints its
# code and reason and exits non-zero.
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
archive=$bin/data.tar.gz
out=$("$bin/berth-example" -server "$BERTH_TEST_SERVER" -id "$id" \
  -image "${BERTH_TEST_IMAGE_MULTILAYER:-}" -label sdk=go-example -archive "$archive" -delete -timeout 2m)
echo "$out"
grep -q '^ready ' <<<"$out" || { echo "FAIL: no ready line" >&2; exit 1; }
grep -q "^workspace $id: state=RUNNING" <<<"$out" || { echo "FAIL: final state is not RUNNING" >&2; exit 1; }
# The test server runs with --network none: the policy in force is NONE, loopback only.
grep -q '^network: NONE, loopback only$' <<<"$out" || { echo "FAIL: the network is not NONE, loopback only" >&2; exit 1; }
grep -q '^uname -s: Linux (exit 0)$' <<<"$out" || { echo "FAIL: the command did not run" >&2; exit 1; }
grep -Eq "^wrote /data/hello.txt \\($(( ${#id} + 12 )) bytes, revision .+\\)\$" <<<"$out" || { echo "FAIL: the file was not written" >&2; exit 1; }
grep -q "^read /data/hello.txt: hello from $id\$" <<<"$out" || { echo "FAIL: the file did not read back" >&2; exit 1; }

# The snapshot, the change and the restore: the first content is back.
grep -Eq '^snapshot before-change: version 2, [0-9]+ bytes$' <<<"$out" || { echo "FAIL: no snapshot" >&2; exit 1; }
grep -q '^changed /data/hello.txt: changed after the snapshot$' <<<"$out" || { echo "FAIL: the change did not read back" >&2; exit 1; }
grep -q '^restored before-change: version 3$' <<<"$out" || { echo "FAIL: no restore as version 3" >&2; exit 1; }
grep -q "^after restore /data/hello.txt: hello from $id\$" <<<"$out" || { echo "FAIL: the restore did not bring the file back" >&2; exit 1; }

# The export: the file on disk is the archive the trailer describes, with hello.txt in it.
exported=$(sed -En "s|^exported /data to $archive: ([0-9]+) bytes, ([0-9]+) entries, sha256 ([0-9a-f]{64})\$|\1 \2 \3|p" <<<"$out")
[ -n "$exported" ] || { echo "FAIL: no export line" >&2; exit 1; }
read -r size entries sha <<<"$exported"
[ "$(stat -c %s "$archive")" = "$size" ] || { echo "FAIL: the archive file is not $size bytes" >&2; exit 1; }
[ "$(sha256sum "$archive" | cut -d' ' -f1)" = "$sha" ] || { echo "FAIL: the archive file's sha256 is not the trailer's" >&2; exit 1; }
[ "$(tar -xzOf "$archive" hello.txt)" = "hello from $id" ] || { echo "FAIL: the archive lacks hello.txt or it differs" >&2; exit 1; }
# The import received exactly that archive and extracted as many entries; the copy reads back.
grep -q "^imported $archive into /data/roundtrip: $size bytes, $entries entries, sha256 $sha\$" <<<"$out" ||
  { echo "FAIL: the import did not receive the exported archive" >&2; exit 1; }
grep -q "^read /data/roundtrip/hello.txt: hello from $id\$" <<<"$out" || { echo "FAIL: the imported copy did not read back" >&2; exit 1; }
grep -q "^deleted $id\$" <<<"$out" || { echo "FAIL: workspace not deleted" >&2; exit 1; }

# A failing call: an invalid workspace id.
if err=$("$bin/berth-example" -server "$BERTH_TEST_SERVER" -id "Not_Valid!" 2>&1); then
  echo "FAIL: invalid id succeeded: $err" >&2
  exit 1
fi
echo "$err"
grep -q 'code=InvalidArgument reason=INVALID_WORKSPACE_ID' <<<"$err" || { echo "FAIL: no code/reason in: $err" >&2; exit 1; }
echo "examples/go: ok"
