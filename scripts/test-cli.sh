#!/usr/bin/env bash
# The berth CLI against a live server (BERTH_TEST_SERVER): create with progress (plain lines
# when piped, per-layer bars on a terminal), ls with a selector, get as table and JSON,
# stop/start, rm --preserve-data + create --restore-data, exec (exit codes, stdin, -t through
# script, a missing command), ps, and a failing call's one-line error.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a running berth (scripts/test-sdks.sh sets it)}"
export BERTH_SERVER=$BERTH_TEST_SERVER
berth=target/debug/berth
id=cli-$RANDOM$RANDOM
TMPDIR_CLI=$(mktemp -d)
trap 'rm -rf "$TMPDIR_CLI"' EXIT
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

# exec: output as it comes, the process's exit code, stdin with -i, a terminal with -t.
set +e
out=$($berth exec "$id" -- sh -c 'echo out; echo err >&2; exit 7' 2>"$TMPDIR_CLI/err")
code=$?
set -e
[ "$code" = 7 ] || fail "exec exits $code, not the process's 7"
[ "$out" = out ] && [ "$(cat "$TMPDIR_CLI/err")" = err ] || fail "exec output: $out / $(cat "$TMPDIR_CLI/err")"
[ "$(printf 'typed\n' | $berth exec "$id" -i -- cat)" = typed ] || fail "exec -i does not forward stdin"
set +e
$berth exec "$id" -- sh -c 'kill -TERM $$'
code=$?
set -e
[ "$code" = 143 ] || fail "a SIGTERMed process exits $code, not 143"
tty_out=$(script -qec "$berth exec $id -t -- sh -c 'tty; stty size'" /dev/null | tr -d '\r')
grep -q '^/dev/pts/[0-9]' <<<"$tty_out" || fail "exec -t has no pty: $tty_out"
grep -q '^[0-9][0-9]* [0-9][0-9]*$' <<<"$tty_out" || fail "exec -t has no size: $tty_out"
$berth exec "$id" --tag cli-sleeper --timeout 30 -- sleep 20 >/dev/null 2>&1 &
sleeper=$!
for _ in $(seq 50); do $berth ps "$id" | grep -q cli-sleeper && break; sleep 0.1; done
$berth ps "$id" | grep -q '^[0-9][0-9]*  *cli-sleeper  *no  *sleep 20$' || fail "ps: $($berth ps "$id")"
[ "$($berth ps "$id" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["tag"])')" = cli-sleeper ] ||
  fail "ps -o json"
set +e
err=$($berth exec "$id" -- no-such-command 2>&1 >/dev/null)
code=$?
set -e
[ "$code" = 1 ] || fail "a missing command exits $code"
grep -q '^berth: NOT_FOUND EXECUTABLE_NOT_FOUND: ' <<<"$err" || fail "missing command: $err"

[ "$($berth stop "$id" --timeout 5)" = "$id STOPPED" ] || fail "stop"
wait "$sleeper" || true
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
