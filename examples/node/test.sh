#!/usr/bin/env bash
# Runs the Node example against a live berth: creates a workspace with a unique id, checks that
# the output shows the progress and a RUNNING workspace, the file written and read back, the
# snapshot restored (the file's first content is back), and the export/import round trip (the
# archive file has the trailer's size and SHA-256 and lists hello.txt, the import received the
# same bytes and the copy reads back); deletes it with --delete.
#
# Needs BERTH_TEST_SERVER (http://127.0.0.1:PORT); uses BERTH_TEST_IMAGE_MULTILAYER when set,
# else the server's default image. With BERTH_TEST_SDK_NAMESPACE (the server's containerd
# namespace) set too, the image is forgotten first and the pull progress lines are checked.
set -euo pipefail
cd "$(dirname "$0")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth, e.g. http://127.0.0.1:50051}"

# The SDK is a file: dependency; (re)build it when its dist is missing or older than its sources.
sdk=../../sdk/typescript
if [ ! -f $sdk/dist/index.js ] || [ -n "$(find $sdk/src $sdk/package.json -newer $sdk/dist/index.js -print -quit)" ]; then
  (cd $sdk && { [ -x node_modules/.bin/tsc ] || npm ci --no-audit --no-fund; } && npm run --silent build)
fi
if [ ! -e node_modules/@berth/sdk ]; then
  npm ci --no-audit --no-fund
fi

export BERTH_SERVER=$BERTH_TEST_SERVER
id="node-example-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
out=$(mktemp)
archive_dir=$(mktemp -d)
export BERTH_ARCHIVE=$archive_dir/data.tar.gz
trap 'node index.mjs --delete "$id" >/dev/null 2>&1 || true; rm -rf "$out" "$archive_dir"' EXIT

image=${BERTH_TEST_IMAGE_MULTILAYER:-}
cold=false
if [ -n "$image" ] && [ -n "${BERTH_TEST_SDK_NAMESPACE:-}" ]; then
  ../../tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$image"
  cold=true
fi

node index.mjs "$id" "$image" | tee "$out"
if $cold; then
  grep -Eq '^pull_progress [0-9]+/[0-9]+ bytes' "$out" || { echo "FAIL: no pull progress" >&2; exit 1; }
fi
grep -q '^ready$' "$out" || { echo "FAIL: no ready line" >&2; exit 1; }
grep -Eq '^  state +RUNNING' "$out" || { echo "FAIL: the workspace is not RUNNING" >&2; exit 1; }
grep -q "^workspace $id\$" "$out" || { echo "FAIL: the workspace id is not printed" >&2; exit 1; }
# The test server runs with --network none: the policy in force is NONE, loopback only.
grep -q '^  network  NONE, loopback only$' "$out" || { echo "FAIL: the network is not NONE, loopback only" >&2; exit 1; }
grep -q '^uname -s: Linux (exit 0)$' "$out" || { echo "FAIL: the command did not run" >&2; exit 1; }
grep -Eq "^wrote /data/hello.txt \\($(( ${#id} + 12 )) bytes, revision .+\\)\$" "$out" || { echo "FAIL: the file was not written" >&2; exit 1; }
grep -q "^read /data/hello.txt: hello from $id\$" "$out" || { echo "FAIL: the file did not read back" >&2; exit 1; }

# The snapshot, the change and the restore: the first content is back.
grep -Eq '^snapshot before-change: version 2, [0-9]+ bytes$' "$out" || { echo "FAIL: no snapshot" >&2; exit 1; }
grep -q '^changed /data/hello.txt: changed after the snapshot$' "$out" || { echo "FAIL: the change did not read back" >&2; exit 1; }
grep -q '^restored before-change: version 3$' "$out" || { echo "FAIL: no restore as version 3" >&2; exit 1; }
grep -q "^after restore /data/hello.txt: hello from $id\$" "$out" || { echo "FAIL: the restore did not bring the file back" >&2; exit 1; }

# The export: the file on disk is the archive the trailer describes, with hello.txt in it.
exported=$(sed -En "s|^exported /data to $BERTH_ARCHIVE: ([0-9]+) bytes, ([0-9]+) entries, sha256 ([0-9a-f]{64})\$|\1 \2 \3|p" "$out")
[ -n "$exported" ] || { echo "FAIL: no export line" >&2; exit 1; }
read -r size entries sha <<<"$exported"
[ "$(stat -c %s "$BERTH_ARCHIVE")" = "$size" ] || { echo "FAIL: the archive file is not $size bytes" >&2; exit 1; }
[ "$(sha256sum "$BERTH_ARCHIVE" | cut -d' ' -f1)" = "$sha" ] || { echo "FAIL: the archive file's sha256 is not the trailer's" >&2; exit 1; }
tar -tzf "$BERTH_ARCHIVE" | grep -qx 'hello.txt' || { echo "FAIL: the archive lacks hello.txt" >&2; exit 1; }
[ "$(tar -xzOf "$BERTH_ARCHIVE" hello.txt)" = "hello from $id" ] || { echo "FAIL: the archive's hello.txt differs" >&2; exit 1; }
# The import received exactly that archive and extracted as many entries; the copy reads back.
grep -q "^imported $BERTH_ARCHIVE into /data/roundtrip: $size bytes, $entries entries, sha256 $sha\$" "$out" ||
  { echo "FAIL: the import did not receive the exported archive" >&2; exit 1; }
grep -q "^read /data/roundtrip/hello.txt: hello from $id\$" "$out" || { echo "FAIL: the imported copy did not read back" >&2; exit 1; }

node index.mjs --delete "$id" | tee "$out"
grep -q "^deleted $id\$" "$out" || { echo "FAIL: delete" >&2; exit 1; }
# Deleting again fails with the code and reason on one line.
if node index.mjs --delete "$id" 2>"$out"; then
  echo "FAIL: deleting a deleted workspace succeeded" >&2
  exit 1
fi
cat "$out"
grep -q 'NOT_FOUND WORKSPACE_NOT_FOUND' "$out" || { echo "FAIL: the error lacks code and reason" >&2; exit 1; }
echo "PASS examples/node"
