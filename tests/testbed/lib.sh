# shellcheck shell=bash disable=SC2034
# Shared helpers of the testbed scripts. Sourced, never run.
#
# Everything lives under TESTBED_DIR (default: <repo>/.testbed), which `make clean`
# removes once down.sh has run.

TESTBED_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TESTBED_SCRIPTS/../.." && pwd)
TESTBED_DIR=${TESTBED_DIR:-$REPO_ROOT/.testbed}
[[ $TESTBED_DIR == /* ]] || TESTBED_DIR=$PWD/$TESTBED_DIR
TESTBED_DIR=${TESTBED_DIR%/}
export TESTBED_DIR

CTRD_DIR=$TESTBED_DIR/containerd
CTRD_SOCK=$CTRD_DIR/containerd.sock
CTRD_TTRPC_SOCK=$CTRD_DIR/containerd.sock.ttrpc
CTRD_DEBUG_SOCK=$CTRD_DIR/debug.sock
CTRD_CONFIG=$CTRD_DIR/config.toml
CTRD_PIDFILE=$CTRD_DIR/containerd.pid
CTRD_LOG=$CTRD_DIR/containerd.log

REG_DIR=$TESTBED_DIR/registry
REG_CONFIG=$REG_DIR/config.yml
REG_PIDFILE=$REG_DIR/registry.pid
REG_PORTFILE=$REG_DIR/port
REG_LOG=$REG_DIR/registry.log

# The network lab (lab.sh): two network namespaces bound to files, the "remote" one's web server
# and a second registry instance inside the lab namespace.
NETNS_DIR=$TESTBED_DIR/netns
LAB_NETNS=$NETNS_DIR/lab
REMOTE_NETNS=$NETNS_DIR/remote
REMOTE_DIR=$TESTBED_DIR/remote
LAB_ADDR=198.51.100.1
REMOTE_ADDR=198.51.100.10
REMOTE_ADDR2=203.0.113.10
LAB_REG_CONFIG=$REG_DIR/lab-config.yml
LAB_REG_PIDFILE=$REG_DIR/lab-registry.pid
LAB_REG_LOG=$REG_DIR/lab-registry.log

IMAGES_ENV=$TESTBED_DIR/images.env
TESTBED_ENV=$TESTBED_DIR/env

# Where the runc v2 shim keeps runc state (its compiled-in default), and where every
# shim, whatever containerd started it, puts its socket.
RUNC_ROOT=/run/containerd/runc
SHIM_SOCKET_DIR=/run/containerd/s

die() {
	printf '%s: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

warn() {
	printf '%s: warning: %s\n' "${0##*/}" "$*" >&2
}

# A path written into a double-quoted TOML or YAML string.
check_path() {
	if [[ $1 == *[\"\\]* || $1 == *$'\n'* ]]; then
		die "unsupported character in path '$1' (set TESTBED_DIR to a plain path)"
	fi
}

# A unix socket path must fit sun_path (108 bytes including the NUL).
check_socket_path() {
	((${#1} < 108)) || die "socket path too long (${#1} bytes, max 107): $1 (set TESTBED_DIR to a shorter path)"
}

# lock FILE: take an exclusive lock on fd 9 for the rest of the script.
# Daemons started afterwards must get `9>&-`, or they keep the lock for their lifetime.
lock() {
	mkdir -p "$(dirname "$1")"
	exec 9>"$1"
	flock -w 300 9 || die "timed out waiting for lock $1"
}

# proc_is PID EXE NEEDLE: PID is alive, its argv[0] ends in /EXE (or is EXE), and one of
# its arguments is exactly NEEDLE. (A zombie has an empty cmdline: it is not a match.)
proc_is() {
	local pid=$1 exe=$2 needle=$3 a
	local -a argv=()
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	mapfile -d '' -t argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
	((${#argv[@]} > 0)) || return 1
	[[ ${argv[0]##*/} == "$exe" ]] || return 1
	for a in "${argv[@]:1}"; do
		[[ $a == "$needle" ]] && return 0
	done
	return 1
}

# find_procs EXE NEEDLE: print the pids matching proc_is, one a line.
find_procs() {
	local d pid
	for d in /proc/[0-9]*; do
		pid=${d#/proc/}
		proc_is "$pid" "$1" "$2" && printf '%s\n' "$pid"
	done
	return 0
}

# daemon_pid PIDFILE EXE NEEDLE: print the pid of the running daemon (pid file first, then a
# scan of /proc, which also repairs a lost pid file). Fails when none runs.
daemon_pid() {
	local pidfile=$1 exe=$2 needle=$3 pid=""
	if [[ -r $pidfile ]]; then read -r pid <"$pidfile" || true; fi
	if ! proc_is "$pid" "$exe" "$needle"; then
		pid=$(find_procs "$exe" "$needle" | head -n 1)
		[[ -n $pid ]] || return 1
		printf '%s\n' "$pid" >"$pidfile"
	fi
	printf '%s\n' "$pid"
}

# stop_pid PID EXE NEEDLE [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL.
stop_pid() {
	local pid=$1 exe=$2 needle=$3 grace=${4:-10} i
	proc_is "$pid" "$exe" "$needle" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		proc_is "$pid" "$exe" "$needle" || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		proc_is "$pid" "$exe" "$needle" || return 0
		sleep 0.1
	done
	die "$exe (pid $pid) survived SIGKILL"
}

# Print the last lines of a log file to stderr, indented.
log_tail() {
	[[ -r $1 ]] || return 0
	printf '%s: last lines of %s:\n' "${0##*/}" "$1" >&2
	tail -n "${2:-20}" "$1" | sed 's/^/    /' >&2
}

ctr_() {
	ctr --address "$CTRD_SOCK" --connect-timeout 2s "$@"
}

ctrd_answers() {
	[[ -S $CTRD_SOCK ]] && ctr --address "$CTRD_SOCK" --connect-timeout 1s --timeout 5s version >/dev/null 2>&1
}

registry_port() {
	local port=""
	if [[ -r $REG_PORTFILE ]]; then read -r port <"$REG_PORTFILE" || true; fi
	[[ $port =~ ^[0-9]+$ ]] || return 1
	printf '%s\n' "$port"
}

registry_answers() {
	curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/v2/"
}

# now_ms: wall clock in milliseconds (for the timing lines of BERTH_TESTBED_VERBOSE=1).
now_ms() {
	local t=${EPOCHREALTIME/./}
	printf '%s\n' "$((t / 1000))"
}

verbose() {
	[[ ${BERTH_TESTBED_VERBOSE:-0} == 1 ]] || return 0
	printf '%s: %s\n' "${0##*/}" "$*" >&2
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
	local dir=${1%/} mp
	while read -r _ _ _ _ mp _; do
		mp=$(printf '%b' "$mp") # mountinfo escapes space, tab, newline and backslash as \ooo
		if [[ $mp == "$dir" || $mp == "$dir"/* ]]; then
			printf '%s\n' "$mp"
		fi
	done </proc/self/mountinfo | sort -r
}

# unmount_under DIR: unmount everything mounted at or below DIR; fails if something stays.
unmount_under() {
	local mp
	while read -r mp; do
		[[ -n $mp ]] || continue
		umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
	done < <(mounts_under "$1")
	[[ -z $(mounts_under "$1") ]] || die "could not unmount everything under $1"
}

# env_images_refresh: rewrite the image lines of $TESTBED_ENV (if it exists) from images.env,
# keeping its other lines. Callers hold $IMAGES_ENV.lock.
env_images_refresh() {
	[[ -f $TESTBED_ENV ]] || return 0
	local line
	{
		grep -v '^export BERTH_TEST_IMAGE_' "$TESTBED_ENV" || true
		if [[ -f $IMAGES_ENV ]]; then
			while IFS= read -r line; do
				if [[ $line == BERTH_TEST_IMAGE_*=* ]]; then
					printf 'export %s=%q\n' "${line%%=*}" "${line#*=}"
				fi
			done <"$IMAGES_ENV"
		fi
	} >"$TESTBED_ENV.tmp"
	mv -f "$TESTBED_ENV.tmp" "$TESTBED_ENV"
}
