#!/usr/bin/env bash
# The berth CLI against a live server (BERTH_TEST_SERVER): create with progress (plain lines
# when piped, per-layer bars on a terminal), ls with a selector, get as table and JSON,
# stop/start, rm --preserve-data + create --restore-data, and a failing call's one-line error.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a running berth (scripts/test-sdks.sh sets it)}"
export BERTH_SERVER=$BERTH_TEST_SERVER
berth=target/debug/berth
id=cli-$RANDOM$RANDOM
fail() { echo "test-cli: $*" >&2; exit 1; }

tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$BERTH_TEST_IMAGE_MULTILAYER"
out=$($berth create "$id" --image "$BERTH_TEST_IMAGE_MULTILAYER" --label suite=cli --label "run=$id")
grep -q '^pulling ' <<<"$out" || fail "no pulling line: $out"
grep -q '^pull 100% ' <<<"$out" || fail "no finished pull line: $out"
grep -q "^ready $id RUNNING pid [1-9]" <<<"$out" || fail "no ready line: $out"

$berth ls --selector "run=$id" | grep -q "^$id  *RUNNING" || fail "ls with a selector misses $id"
[ "$($berth ls --selector "run=nothing-$id" | wc -l)" = 1 ] || fail "ls with another selector is not empty"
$berth get "$id" | grep -q '^STATE  *RUNNING' || fail "get table lacks STATE RUNNING"
state=$($berth get "$id" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
[ "$state" = WORKSPACE_STATE_RUNNING ] || fail "get -o json state is $state"

[ "$($berth stop "$id" --timeout 5)" = "$id STOPPED" ] || fail "stop"
[ "$($berth start "$id")" = "$id RUNNING" ] || fail "start"
$berth rm "$id" --preserve-data | grep -q preserved || fail "rm --preserve-data"
out=$($berth create "$id" --image "$BERTH_TEST_IMAGE_MULTILAYER" --restore-data)
grep -q '^restoring /data' <<<"$out" || fail "no restoring line: $out"
$berth rm "$id" >/dev/null

# On a terminal: per-layer progress bars.
tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$BERTH_TEST_IMAGE_MULTILAYER"
tty_out=$(script -qec "$berth create $id --image $BERTH_TEST_IMAGE_MULTILAYER" /dev/null)
grep -q '\[=*' <<<"$tty_out" || fail "no progress bars on a terminal: $tty_out"
grep -q "ready $id RUNNING" <<<"$tty_out" || fail "no ready on a terminal"
$berth rm "$id" >/dev/null

set +e
err=$($berth get "$id" 2>&1 >/dev/null)
code=$?
set -e
[ "$code" = 1 ] || fail "a failed call exits $code, not 1"
[ "$(wc -l <<<"$err")" = 1 ] || fail "the error is not one line: $err"
grep -q "^berth: NOT_FOUND WORKSPACE_NOT_FOUND: workspace \"$id\"" <<<"$err" || fail "error line: $err"
echo "cli: 1 passed, 0 failed"
