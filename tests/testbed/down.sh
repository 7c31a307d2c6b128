#!/usr/bin/env bash
# Takes the testbed down (idempotent): stops the registry and the network lab (lab.sh); kills
# every task of the private containerd and purges the per-run berth-test-* namespaces; stops
# containerd; then kills shims (and their containers) still attached to this testbed's socket and
# unmounts whatever is still mounted under $TESTBED_DIR. Images, cache and registry data stay for
# the next up.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SHIM=containerd-shim-runc-v2

"$TESTBED_SCRIPTS/registry.sh" stop
"$TESTBED_SCRIPTS/lab.sh" stop

if ctrd_answers; then
	mapfile -t namespaces < <(ctr_ namespaces ls -q)
	for ns in "${namespaces[@]}"; do
		mapfile -t tasks < <(ctr_ -n "$ns" tasks ls -q)
		for t in "${tasks[@]}"; do
			ctr_ -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || warn "could not delete task $ns/$t"
		done
		if [[ $ns == berth-test-* ]]; then
			"$TESTBED_SCRIPTS/containerd.sh" purge "$ns" || true
			rmdir "$RUNC_ROOT/$ns" 2>/dev/null || true
		fi
	done
fi

"$TESTBED_SCRIPTS/containerd.sh" stop

# Shims that outlived containerd (or whose task could not be deleted): kill the container
# through runc, then the shim, then remove its socket.
while read -r pid; do
	[[ -n $pid ]] || continue
	mapfile -d '' -t argv <"/proc/$pid/cmdline" || continue
	ns="" id=""
	for ((i = 1; i + 1 < ${#argv[@]}; i++)); do
		case ${argv[i]} in
		-namespace) ns=${argv[i + 1]} ;;
		-id) id=${argv[i + 1]} ;;
		esac
	done
	if [[ -n $ns && -n $id ]]; then
		runc --root "$RUNC_ROOT/$ns" kill --all "$id" KILL >/dev/null 2>&1 || true
		runc --root "$RUNC_ROOT/$ns" delete --force "$id" >/dev/null 2>&1 || true
	fi
	stop_pid "$pid" "$SHIM" "$CTRD_SOCK" 5
	if [[ -n $ns && -n $id ]]; then
		hash=$(printf '%s' "$CTRD_SOCK/$ns/$id" | sha256sum)
		rm -f "$SHIM_SOCKET_DIR/${hash%% *}"
	fi
done < <(find_procs "$SHIM" "$CTRD_SOCK")

[[ ! -d $TESTBED_DIR ]] || unmount_under "$TESTBED_DIR"
