#!/usr/bin/env bash
# The berth CLI against a live server (BERTH_TEST_SERVER): create with progress (plain lines
# when piped, per-layer bars on a terminal), ls with a selector, get as table and JSON,
# stop/start, rm --preserve-data + create --restore-data, exec (exit codes, stdin, -t through
# script, a missing command), ps, cp and fs (files and trees both ways, byte-identical with their
# modes; symlinks made in the workspace never followed on this host; a stopped workspace's
# files), export (gzip and zstd, read back with tar), metrics (a sample, JSON, a stream of lines, a
# stopped workspace), snapshot create/ls/restore/rm and versions, update (limits, env, image),
# events replayed and filtered, a failing call's one-line error, and tokens over TLS against the
# second server (BERTH_TEST_TLS_SERVER, BERTH_TEST_CA_FILE, BERTH_TEST_TOKEN, BERTH_TEST_READ_TOKEN).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a running berth (scripts/test-sdks.sh sets it)}"
export BERTH_SERVER=$BERTH_TEST_SERVER
berth=target/debug/berth
id=cli-$RANDOM$RANDOM
TMPDIR_CLI=$(mktemp -d)
trap '$berth rm "$id" >/dev/null 2>&1 || true; rm -rf "$TMPDIR_CLI"' EXIT
fail() { echo "test-cli: $*" >&2; exit 1; }

tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$BERTH_TEST_IMAGE_MULTILAYER"
out=$($berth create "$id" --image "$BERTH_TEST_IMAGE_MULTILAYER" --label suite=cli --label "run=$id")
grep -q '^pulling ' <<<"$out" || fail "no pulling line: $out"
grep -q '^pull 100% ' <<<"$out" || fail "no finished pull line: $out"
grep -q "^ready $id RUNNING pid [1-9]" <<<"$out" || fail "no ready line: $out"

$berth ls --selector "run=$id" | grep -q "^$id  *RUNNING" || fail "ls with a selector misses $id"
[ "$($berth ls --selector "run=nothing-$id" | wc -l)" = 1 ] || fail "ls with another selector is not empty"
grep -q '^STATE  *RUNNING' <<<"$($berth get "$id")" || fail "get table lacks STATE RUNNING"
state=$($berth get "$id" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
[ "$state" = WORKSPACE_STATE_RUNNING ] || fail "get -o json state is $state"
data_paths=$($berth get "$id" -o json | python3 -c 'import json,sys; w=json.load(sys.stdin); print(w["dataPath"], w["hostDataPath"])')
[[ $data_paths == "/data /"*/data ]] || fail "get -o json dataPath, hostDataPath: $data_paths"
get_out=$($berth get "$id")
grep -q '^DATA PATH  */data$' <<<"$get_out" || fail "get table lacks DATA PATH /data: $get_out"
grep -qF "HOST DATA PATH ${data_paths#/data }" <<<"$get_out" || fail "get table lacks HOST DATA PATH: $get_out"

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
# script(1) writes a byte into the terminal when its own stdin ends, which the process's line
# discipline echoes as ^@: give it a stdin that outlives the command.
tty_out=$(script -qec "$berth exec $id -t -- sh -c 'tty; stty size'" /dev/null < <(sleep 30) | tr -d '\r')
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

# Files. A host tree with modes, an empty directory, a multi-chunk file and a symlink.
work=$TMPDIR_CLI/files
mkdir -p "$work/tree/sub/deeper" "$work/tree/empty"
printf 'hello\n' >"$work/tree/a.txt"
head -c 3000000 /dev/urandom >"$work/tree/sub/blob.bin"
printf 'deep\n' >"$work/tree/sub/deeper/d.txt"
chmod 0600 "$work/tree/a.txt"
chmod 0750 "$work/tree/sub"
chmod 0755 "$work/tree/sub/blob.bin"
chmod 0700 "$work/tree/empty"
ln -s a.txt "$work/tree/link"
# Type and permission bits of everything below $1 but symlinks, which uploads skip.
modes() { (cd "$1" && find . -mindepth 1 ! -type l -printf '%P %y %m\n' | sort); }
expect_failure() { # expect_failure PATTERN COMMAND...: exits 1 with one line matching PATTERN on stderr
  local pattern=$1 err code
  shift
  set +e
  err=$("$@" 2>&1 >/dev/null)
  code=$?
  set -e
  [ "$code" = 1 ] || fail "$* exits $code, not 1 ($err)"
  grep -q "$pattern" <<<"$err" || fail "$*: stderr is not $pattern: $err"
}

# One file in and out, byte-identical with its mode; stdin in and stdout out.
$berth cp "$work/tree/a.txt" "$id:/data/a.txt"
[ "$($berth fs cat "$id:/data/a.txt")" = hello ] || fail "fs cat does not print what cp wrote"
$berth cp "$id:/data/a.txt" "$work/a.out"
cmp "$work/tree/a.txt" "$work/a.out" || fail "a file copied in and out differs"
[ "$(stat -c %a "$work/a.out")" = 600 ] || fail "the file's mode is $(stat -c %a "$work/a.out"), not 600"
printf 'piped\n' | $berth cp - "$id:/data/piped.txt"
[ "$($berth cp "$id:/data/piped.txt" -)" = piped ] || fail "cp - and cp to - do not round-trip"

# A tree into an existing directory lands inside it; the host symlink is skipped, said on stderr.
$berth fs mkdir -p "$id:/data/cli/in"
err=$($berth cp "$work/tree" "$id:/data/cli/in" 2>&1 >/dev/null)
grep -q "^berth: skipped symlink .*tree/link -> a.txt" <<<"$err" || fail "the skipped symlink is not reported: $err"
ls_out=$($berth fs ls -R "$id:/data/cli/in")
for name in tree tree/a.txt tree/empty tree/sub tree/sub/blob.bin tree/sub/deeper tree/sub/deeper/d.txt; do
  grep -q " $name\$" <<<"$ls_out" || fail "fs ls -R lacks $name: $ls_out"
done
grep -q '^-rw------- .* 6 .* tree/a.txt$' <<<"$ls_out" || fail "fs ls -R row of a.txt: $ls_out"
grep -q 'link' <<<"$ls_out" && fail "the host symlink was uploaded: $ls_out"
names=$($berth fs ls "$id:/data/cli/in/tree" -o json | python3 -c 'import json,sys; print(" ".join(e["name"] for e in json.load(sys.stdin)))')
[ "$names" = "a.txt empty sub" ] || fail "fs ls -o json names: $names"
# ... and back to a missing destination, which becomes the copy; then into an existing directory,
# and a directory's content (DIR/.) into an existing one.
$berth cp "$id:/data/cli/in/tree" "$work/back"
diff -r -x link "$work/tree" "$work/back" || fail "the tree copied in and out differs"
[ "$(modes "$work/tree")" = "$(modes "$work/back")" ] || fail "modes differ: $(modes "$work/back")"
mkdir "$work/into" "$work/contents"
$berth cp "$id:/data/cli/in/tree" "$work/into"
diff -r -x link "$work/tree" "$work/into/tree" || fail "the tree copied into a directory differs"
$berth cp "$id:/data/cli/in/tree/." "$work/contents"
diff -r -x link "$work/tree" "$work/contents" || fail "DIR/. copied into a directory differs"

# fs stat, mkdir -p, mv, rm.
stat_out=$($berth fs stat "$id:/data/cli/in/tree/a.txt")
grep -q '^TYPE  *FILE$' <<<"$stat_out" && grep -q '^SIZE  *6$' <<<"$stat_out" &&
  grep -q '^MODE  *0600 (-rw-------)$' <<<"$stat_out" || fail "fs stat: $stat_out"
$berth fs mkdir -p "$id:/data/cli/x/y/z"
grep -q '^TYPE  *DIRECTORY$' <<<"$($berth fs stat "$id:/data/cli/x/y/z")" || fail "fs mkdir -p made no directory"
$berth fs mkdir -p "$id:/data/cli/x/y/z" || fail "fs mkdir -p of an existing directory fails"
expect_failure '^berth: ALREADY_EXISTS PATH_ALREADY_EXISTS: ' $berth fs mkdir "$id:/data/cli/x"
$berth fs mv "$id:/data/piped.txt" "$id:/data/cli/x/moved.txt"
[ "$($berth fs cat "$id:/data/cli/x/moved.txt")" = piped ] || fail "fs mv lost the content"
expect_failure '^berth: FAILED_PRECONDITION DIRECTORY_NOT_EMPTY: ' $berth fs rm "$id:/data/cli/x"
$berth fs rm -r "$id:/data/cli/x"
expect_failure '^berth: NOT_FOUND PATH_NOT_FOUND: .*/data/cli/x' $berth fs stat "$id:/data/cli/x"
$berth fs rm "$id:/data/a.txt"
expect_failure '^berth: NOT_FOUND PATH_NOT_FOUND: ' $berth fs cat "$id:/data/a.txt"

# Copies of missing paths fail with the reason and create nothing.
expect_failure '^berth: NOT_FOUND PATH_NOT_FOUND: .*/data/cli/missing' $berth cp "$id:/data/cli/missing" "$work/missing"
[ ! -e "$work/missing" ] || fail "a failed download left $work/missing"
expect_failure "^berth: cannot read $work/missing: " $berth cp "$work/missing" "$id:/data/cli/missing"
expect_failure '^berth: NOT_FOUND PATH_NOT_FOUND: ' $berth cp "$work/tree/a.txt" "$id:/data/cli/no/such/dir/a.txt"
expect_failure '^berth: INVALID_ARGUMENT INVALID_PATH: ' $berth fs ls "$id:data"
expect_failure 'must be ID:/path' $berth cp "$work/tree" "$work/elsewhere"

# Symlinks made in the workspace come out as symlinks, never followed to this host's files.
$berth exec "$id" -- sh -c 'ln -s /etc/shadow /data/evil && mkdir /data/cli/links &&
  ln -s /etc/shadow /data/cli/links/shadow && ln -s /etc /data/cli/links/etc && echo x >/data/cli/links/plain'
grep -q ' shadow -> /etc/shadow$' <<<"$($berth fs ls "$id:/data/cli/links")" || fail "fs ls shows no symlink target"
grep -q '^TARGET  */etc/shadow$' <<<"$($berth fs stat "$id:/data/evil")" || fail "fs stat shows no symlink target"
$berth cp "$id:/data/evil" "$work/evil"
[ -L "$work/evil" ] && [ "$(readlink "$work/evil")" = /etc/shadow ] || fail "the symlink was not copied as a symlink"
$berth cp "$id:/data/cli/links" "$work/links"
[ "$(readlink "$work/links/shadow")" = /etc/shadow ] && [ "$(readlink "$work/links/etc")" = /etc ] ||
  fail "symlinks in a tree were not copied as symlinks: $(ls -l "$work/links")"
[ "$(cd "$work" && find evil links -type f)" = links/plain ] || fail "a symlink was followed: $(find "$work/links")"
# A later copy into the same place meets the symlinks the first one made: it never writes
# through them (here the workspace turned escape, a symlink to a host directory, into a directory).
mkdir "$work/host-target"
$berth exec "$id" -- sh -c "mkdir /data/cli/swap && ln -s '$work/host-target' /data/cli/swap/escape"
$berth cp "$id:/data/cli/swap" "$work/"
[ "$(readlink "$work/swap/escape")" = "$work/host-target" ] || fail "escape was not copied as a symlink"
$berth exec "$id" -- sh -c 'rm /data/cli/swap/escape && mkdir /data/cli/swap/escape && echo planted >/data/cli/swap/escape/planted'
expect_failure "^berth: cannot overwrite $work/swap/escape" $berth cp "$id:/data/cli/swap" "$work/"
[ -z "$(ls -A "$work/host-target")" ] || fail "a download wrote through a host symlink: $(ls -A "$work/host-target")"

# A large file: no output when piped, a progress bar on a terminal; byte-identical both ways.
head -c 20000000 /dev/urandom >"$work/big"
[ -z "$($berth cp "$work/big" "$id:/data/cli/big" 2>&1)" ] || fail "cp prints something when not on a terminal"
tty_out=$(script -qec "$berth cp $id:/data/cli/big $work/big.out" /dev/null)
grep -q '\[=*' <<<"$tty_out" || fail "no progress bar on a terminal: $tty_out"
cmp "$work/big" "$work/big.out" || fail "a 20 MB file copied in and out differs"

# export: an archive of a directory to stdout or -o, which the system tools read; a failed
# export leaves no file behind.
$berth export "$id" --path /data/cli/in >"$work/in.tar.gz" 2>"$work/export.err"
grep -q '^exported [0-9]* entries, [0-9]* bytes, sha256 [0-9a-f]\{64\}$' "$work/export.err" ||
  fail "export summary: $(cat "$work/export.err")"
listing=$(tar -tzf "$work/in.tar.gz")
grep -qx 'tree/a.txt' <<<"$listing" || fail "export lacks tree/a.txt: $listing"
$berth export "$id" --path /data/cli/in --format zstd -o "$work/in.tar.zst" 2>/dev/null
[ "$(tar --use-compress-program=zstd -xOf "$work/in.tar.zst" tree/a.txt)" = hello ] || fail "zstd export content"
expect_failure '^berth: NOT_FOUND PATH_NOT_FOUND: ' $berth export "$id" --path /data/nope -o "$work/nope.tar.gz"
[ -z "$(find "$work" -maxdepth 1 -name '*nope*')" ] || fail "a failed export left a file: $(ls -A "$work")"

# metrics: one sample as a table and as JSON, then a stream of lines until interrupted.
metrics_out=$($berth metrics "$id")
grep -q '^CPU  *[0-9.]*% of one core (unlimited), ' <<<"$metrics_out" || fail "metrics CPU: $metrics_out"
grep -q '^PIDS  *[1-9][0-9]* (unlimited)$' <<<"$metrics_out" || fail "metrics PIDS: $metrics_out"
grep -q '^ROOTFS  *[0-9.]* [KMG]*i*B in [1-9][0-9]* inodes$' <<<"$metrics_out" || fail "metrics ROOTFS: $metrics_out"
memory=$($berth metrics "$id" -o json | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["supported"], int(m["memory"]["usageBytes"]) > 0)')
[ "$memory" = "True True" ] || fail "metrics -o json: $memory"
watch_out=$(timeout 3 $berth metrics "$id" --watch --interval 0.2 || true)
head -1 <<<"$watch_out" | grep -q '^TIME  *CPU%  *MEMORY  *MEM%  *PIDS  *ROOTFS  *DATA$' || fail "metrics --watch header: $watch_out"
[ "$(grep -c '^[0-9]\{4\}-[0-9-]*T[0-9:]*Z  *[0-9.]*  *[0-9.]* [KMG]*i*B ' <<<"$watch_out")" -ge 5 ] || fail "metrics --watch lines: $watch_out"
expect_failure '^berth: INVALID_ARGUMENT INVALID_ARGUMENT: interval ' $berth metrics "$id" --watch --interval 0.01
# top: lines in a pipe, the table redrawn in place on a terminal.
top_out=$(timeout 2 $berth top "$id" --interval 0.2 || true)
head -1 <<<"$top_out" | grep -q '^TIME  *CPU%' || fail "top in a pipe: $top_out"
top_tty=$(timeout 2 script -qec "$berth top $id --interval 0.2" /dev/null < <(sleep 30) 2>/dev/null | tr -d '\r' || true)
[ "$(grep -c "^.*berth top $id " <<<"$top_tty")" -ge 3 ] && grep -q $'\e\[H\e\[2J' <<<"$top_tty" || fail "top on a terminal: $top_tty"
expect_failure '^berth: NOT_FOUND WORKSPACE_NOT_FOUND: ' $berth metrics "no-such-$id"

[ "$($berth stop "$id" --timeout 5)" = "$id STOPPED" ] || fail "stop"
wait "$sleeper" || true
grep -q '^CPU  *- (not running)$' <<<"$($berth metrics "$id")" || fail "metrics of a stopped workspace: $($berth metrics "$id")"
# A stopped workspace's files are reachable too.
[ "$($berth fs cat "$id:/data/cli/in/tree/a.txt")" = hello ] || fail "fs cat of a stopped workspace"
$berth cp "$id:/data/cli/in/tree/sub" "$work/stopped"
diff -r "$work/tree/sub" "$work/stopped" || fail "cp out of a stopped workspace differs"
[ "$($berth start "$id")" = "$id RUNNING" ] || fail "start"
# Snapshots: take one, change /data, restore by name and by version; in-use ones stay.
$berth exec "$id" -- sh -c 'echo before >/data/snap.txt'
[ "$($berth snapshot create "$id" cli-snap --label via=cli)" = "snapshot cli-snap of $id taken (version 2)" ] || fail "snapshot create"
$berth exec "$id" -- sh -c 'echo after >/data/snap.txt'
grep -q '^cli-snap  *USER  *2 .*via=cli$' <<<"$($berth snapshot ls "$id")" || fail "snapshot ls: $($berth snapshot ls "$id")"
[ "$($berth snapshot restore "$id" cli-snap)" = "$id restored to snapshot cli-snap (version 3, RUNNING)" ] || fail "snapshot restore"
[ "$($berth fs cat "$id:/data/snap.txt")" = before ] || fail "the restore did not bring /data back"
$berth snapshot restore "$id" --version 2 >/dev/null
grep -q '^\* 4  *RESTORE  *cli-snap ' <<<"$($berth versions "$id")" || fail "versions: $($berth versions "$id")"
expect_failure '^berth: FAILED_PRECONDITION SNAPSHOT_IN_USE: ' $berth snapshot rm "$id" cli-snap
expect_failure '^berth: NOT_FOUND SNAPSHOT_NOT_FOUND: ' $berth snapshot rm "$id" no-such-snapshot
# Live limits and labels (no restart), a new environment (one restart).
pid=$($berth get "$id" -o json | jq -r .initPid)
[ "$($berth update "$id" --memory 256Mi --cpus 1.5 --pids 50 --label tier=gold)" = "$id updated (resources, labels)" ] || fail "update limits"
[ "$($berth get "$id" -o json | jq -c '[.resources.memoryBytes, .resources.cpuMillis, .resources.pidsLimit, .labels.tier, .initPid]')" = "[\"268435456\",\"1500\",\"50\",\"gold\",$pid]" ] ||
  fail "update limits: $($berth get "$id" -o json | jq -c .resources)"
[ "$($berth update "$id" --env GREETING=hi)" = "$id updated (env, restarted)" ] || fail "update env"
[ "$($berth exec "$id" -- sh -c 'echo $GREETING')" = hi ] || fail "the new env is not seen"
expect_failure '^berth: INVALID_ARGUMENT INVALID_RESOURCES: ' $berth update "$id" --memory 1k
expect_failure '^berth: nothing to change' $berth update "$id"
# An image change keeps /data, lists the previous state as a SYSTEM snapshot, and goes back.
out=$($berth update "$id" --image "$BERTH_TEST_IMAGE_BUSYBOX")
[ "$out" = "$id moved to $BERTH_TEST_IMAGE_BUSYBOX (version 5, restarted); the previous state is snapshot before-image-change-v5" ] ||
  fail "update: $out"
[ "$($berth fs cat "$id:/data/snap.txt")" = before ] || fail "the image change lost /data"
expect_failure '^berth: NOT_FOUND ' $berth fs cat "$id:/etc/berth-layer3"
grep -q '^before-image-change-v5  *SYSTEM  *5 ' <<<"$($berth snapshot ls "$id")" || fail "snapshot ls after update: $($berth snapshot ls "$id")"
grep -q '^\* 5  *IMAGE_CHANGE  *before-image-change-v5 ' <<<"$($berth versions "$id")" || fail "versions after update: $($berth versions "$id")"
grep -q 'nothing changed$' <<<"$($berth update "$id" --image "$BERTH_TEST_IMAGE_BUSYBOX")" || fail "a second update changed something"
$berth snapshot restore "$id" before-image-change-v5 >/dev/null
[ "$($berth fs cat "$id:/etc/berth-layer3")" = "berth multilayer image, layer 3" ] || fail "the restore did not bring the old image back"
$berth rm "$id" --preserve-data | grep -q preserved || fail "rm --preserve-data"
out=$($berth create "$id" --image "$BERTH_TEST_IMAGE_MULTILAYER" --restore-data)
grep -q '^restoring /data' <<<"$out" || fail "no restoring line: $out"
$berth rm "$id" >/dev/null
# events: the stored history replayed, one line each, filtered by kind (the stream stays open:
# timeout ends it).
events=$(timeout 3 $berth events "$id" --after 1 --kind snapshot_created --kind deleted || true)
grep -q "^[0-9][0-9]* [0-9T:.-]*Z $id SNAPSHOT_CREATED .*snapshot=cli-snap version=2 " <<<"$events" || fail "events lack the snapshot: $events"
grep -q "^[0-9][0-9]* [^ ]* $id DELETED " <<<"$events" || fail "events lack the deletion: $events"
if grep -q STATE_CHANGED <<<"$events"; then fail "the kind filter let STATE_CHANGED through: $events"; fi
err=$($berth events "$id" --kind exploded 2>&1 >/dev/null) && fail "an unknown kind was accepted"
grep -q '"exploded" is not an event kind; one of: heartbeat, created' <<<"$err" || fail "unknown kind: $err"

# On a terminal: per-layer progress bars.
tests/testbed/forget-image.sh "$BERTH_TEST_SDK_NAMESPACE" "$BERTH_TEST_IMAGE_MULTILAYER"
tty_out=$(script -qec "$berth create $id --image $BERTH_TEST_IMAGE_MULTILAYER" /dev/null)
grep -q '\[=*' <<<"$tty_out" || fail "no progress bars on a terminal: $tty_out"
grep -q "ready $id RUNNING" <<<"$tty_out" || fail "no ready on a terminal"
$berth rm "$id" >/dev/null

# Network policy. The server under test runs with --network none (it shares the host's network
# namespace, where no test may make a bridge): NONE works and shows loopback only, every other
# policy is FAILED_PRECONDITION NETWORK_DISABLED, and a malformed CIDR is refused before that.
$berth create "$id" --network none >/dev/null
get_out=$($berth get "$id")
grep -q '^NETWORK  *NONE$' <<<"$get_out" || fail "get table lacks NETWORK NONE: $get_out"
grep -q '^ADDRESS  *none (loopback only)$' <<<"$get_out" || fail "get table lacks ADDRESS loopback only: $get_out"
grep -q '^DNS ' <<<"$get_out" || fail "get table lacks a DNS row: $get_out"
network=$($berth get "$id" -o json | python3 -c 'import json,sys; n=json.load(sys.stdin)["network"]; print(n["policy"]["mode"], repr(n["address"]))')
[ "$network" = "NETWORK_MODE_NONE ''" ] || fail "get -o json network.policy.mode, network.address: $network"
expect_failure '^berth: FAILED_PRECONDITION NETWORK_DISABLED: ' $berth update "$id" --deny 203.0.113.0/24
expect_failure '^berth: INVALID_ARGUMENT INVALID_NETWORK_POLICY: .*"203.0.113.0/33"' $berth update "$id" --deny 203.0.113.0/33
grep -q '^NETWORK  *NONE$' <<<"$($berth get "$id")" || fail "a refused update changed the policy: $($berth get "$id")"
$berth rm "$id" >/dev/null
expect_failure '^berth: FAILED_PRECONDITION NETWORK_DISABLED: ' $berth create "$id" --allow 203.0.113.0/24
expect_failure '^berth: INVALID_ARGUMENT INVALID_NETWORK_POLICY: .*"not-a-cidr"' $berth create "$id" --allow not-a-cidr
expect_failure '^berth: NOT_FOUND WORKSPACE_NOT_FOUND: ' $berth get "$id"

set +e
err=$($berth get "$id" 2>&1 >/dev/null)
code=$?
set -e
[ "$code" = 1 ] || fail "a failed call exits $code, not 1"
[ "$(wc -l <<<"$err")" = 1 ] || fail "the error is not one line: $err"
grep -q "^berth: NOT_FOUND WORKSPACE_NOT_FOUND: workspace \"$id\"" <<<"$err" || fail "error line: $err"

# Tokens and TLS, against the second berth of scripts/test-sdks.sh (a tokens file, a certificate
# from a test CA): --token / BERTH_TOKEN, --ca-file / BERTH_CA_FILE, https:// URLs, the refusals
# as one line each, and `berth token create`.
: "${BERTH_TEST_TLS_SERVER:?BERTH_TEST_TLS_SERVER must name the berth with tokens and TLS (scripts/test-sdks.sh)}"
tls=(--server "$BERTH_TEST_TLS_SERVER" --ca-file "$BERTH_TEST_CA_FILE")
listed=$($berth "${tls[@]}" --token "$BERTH_TEST_TOKEN" ls) || fail "ls with a token over TLS failed"
grep -q '^ID ' <<<"$listed" || fail "ls with a token over TLS: $listed"
listed=$(BERTH_TOKEN=$BERTH_TEST_TOKEN BERTH_CA_FILE=$BERTH_TEST_CA_FILE $berth --server "$BERTH_TEST_TLS_SERVER" ls) ||
  fail "ls with BERTH_TOKEN and BERTH_CA_FILE failed"
grep -q '^ID ' <<<"$listed" || fail "ls with BERTH_TOKEN and BERTH_CA_FILE: $listed"
err=$($berth "${tls[@]}" ls 2>&1 >/dev/null) && fail "ls without a token succeeded"
grep -q '^berth: UNAUTHENTICATED UNAUTHENTICATED: ' <<<"$err" || fail "no token: $err"
err=$($berth "${tls[@]}" --token "$BERTH_TEST_READ_TOKEN" stop sdk-tls-reader 2>&1 >/dev/null) &&
  fail "a read token stopped a workspace"
grep -q '^berth: PERMISSION_DENIED PERMISSION_DENIED: token "sdk-reader" may only read' <<<"$err" || fail "read token: $err"
err=$($berth --server "$BERTH_TEST_TLS_SERVER" --token "$BERTH_TEST_TOKEN" ls 2>&1 >/dev/null) &&
  fail "a certificate from an untrusted CA was accepted"
grep -q '^berth: UNAVAILABLE cannot reach berth at .*certificate' <<<"$err" || fail "untrusted certificate: $err"
out=$($berth token create --name cli-token --write --workspace "$id" --label team=red)
token=$(head -n 1 <<<"$out")
[[ $token =~ ^berth_[A-Za-z0-9_-]{43}$ ]] || fail "token create's first line: $token"
entry=$(tail -n +2 <<<"$out")
grep -q '^sha256 = "[0-9a-f]\{64\}"$' <<<"$entry" || fail "token create's entry: $entry"
grep -q "^workspaces = \[\"$id\"\]$" <<<"$entry" || fail "token create's workspaces: $entry"
if grep -qF "$token" <<<"$entry"; then fail "the entry holds the token"; fi
echo "cli: 1 passed, 0 failed"
