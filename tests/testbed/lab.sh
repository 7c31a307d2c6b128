#!/usr/bin/env bash
# The network lab of the e2e tests: two network namespaces bound to files, nothing in the host's
# own network namespace, so several testbeds can run at once.
#
#   lab     $TESTBED_DIR/netns/lab: lo, lab0 198.51.100.1/24 (MTU 1400), default route via the
#           remote end. berth's network tests run here (its bridge and nft rules stay in here),
#           with a second, read-only registry instance on the lab's 127.0.0.1 at the testbed
#           registry's port and storage, so the BERTH_TEST_IMAGE_* refs work unchanged.
#   remote  $TESTBED_DIR/netns/remote: "the internet". remote0 198.51.100.10/24, 203.0.113.10/32
#           on lo, and no route anywhere else: it answers only 198.51.100.0/24, so a workspace
#           reaches it only through berth's masquerade. An HTTP server on 0.0.0.0:80 serves
#           $TESTBED_DIR/remote/www: /hello.txt, /blob-100m, a flat apt repo at /apt/ and a
#           PEP 503 index at /simple/.
#
#   lab.sh start     create and start what is missing (needs the testbed registry running)
#   lab.sh stop      stop the servers, kill whatever else still runs in the namespaces, unmount
#   lab.sh status    print one line; exit 0 if everything runs, 3 if not
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

umask 022
export LC_ALL=C

START_TIMEOUT=20
REGISTRY_BIN=/usr/bin/docker-registry
# Debian's interpreter, not whatever python3 comes first on PATH (a pyenv shim, say).
PYTHON=/usr/bin/python3
LINK_MTU=1400

WWW_DIR=$REMOTE_DIR/www
BLOB=$REMOTE_DIR/blob-100m
BLOB_SIZE=$((100 * 1024 * 1024))
HTTP_PIDFILE=$REMOTE_DIR/http.pid
HTTP_LOG=$REMOTE_DIR/http.log

usage() {
	die "usage: ${0##*/} start|stop|status"
}

in_lab() {
	nsenter --net="$LAB_NETNS" "$@"
}

in_remote() {
	nsenter --net="$REMOTE_NETNS" "$@"
}

# is_netns FILE: FILE is a bind mount of a network namespace.
is_netns() {
	[[ $(stat -f -c %T "$1" 2>/dev/null) == nsfs ]]
}

# netns_procs FILE: pids of the processes in that network namespace, one a line.
netns_procs() {
	local want d
	is_netns "$1" || return 0
	want="net:[$(stat -L -c %i "$1")]"
	for d in /proc/[0-9]*; do
		[[ $(readlink "$d/ns/net" 2>/dev/null) == "$want" ]] && printf '%s\n' "${d#/proc/}"
	done
	return 0
}

# kill_netns_procs FILE: SIGTERM every process in that namespace, SIGKILL after 5 s.
kill_netns_procs() {
	local pids i
	mapfile -t pids < <(netns_procs "$1")
	((${#pids[@]} > 0)) || return 0
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		mapfile -t pids < <(netns_procs "$1")
		((${#pids[@]} > 0)) || return 0
		sleep 0.1
	done
	kill -KILL "${pids[@]}" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		mapfile -t pids < <(netns_procs "$1")
		((${#pids[@]} > 0)) || return 0
		sleep 0.1
	done
	die "processes ${pids[*]} in $1 survived SIGKILL"
}

# drop_netns FILE: kill its processes, unmount it, remove the file.
drop_netns() {
	kill_netns_procs "$1"
	if is_netns "$1"; then
		umount "$1" 2>/dev/null || umount -l "$1" || die "could not unmount $1"
	fi
	rm -f "$1"
}

# --- namespaces ------------------------------------------------------------------------------

netns_configured() {
	is_netns "$LAB_NETNS" && is_netns "$REMOTE_NETNS" || return 1
	in_lab ip -o -4 addr show dev lab0 2>/dev/null | grep -q " inet $LAB_ADDR/24 " || return 1
	in_lab ip -o link show dev lab0 2>/dev/null | grep -q 'state UP' || return 1
	in_lab ip -o link show dev lo 2>/dev/null | grep -q '<LOOPBACK,UP' || return 1
	in_lab ip -4 route show default 2>/dev/null | grep -q "via $REMOTE_ADDR dev lab0" || return 1
	in_remote ip -o -4 addr show dev remote0 2>/dev/null | grep -q " inet $REMOTE_ADDR/24 " || return 1
	in_remote ip -o -4 addr show dev lo 2>/dev/null | grep -q " inet $REMOTE_ADDR2/32 " || return 1
}

# Both namespaces from scratch (a half-configured pair is thrown away first). The interface
# names live inside the namespaces, so they never clash with another testbed's or the host's
# (and they do not start with "veth", which berth's bridge ports do).
create_netns() {
	drop_netns "$LAB_NETNS"
	drop_netns "$REMOTE_NETNS"
	mkdir -p "$NETNS_DIR"
	touch "$LAB_NETNS" "$REMOTE_NETNS"
	unshare --net="$LAB_NETNS" true || die "unshare --net=$LAB_NETNS failed"
	unshare --net="$REMOTE_NETNS" true || die "unshare --net=$REMOTE_NETNS failed"
	{
		in_lab ip link set lo up &&
			in_remote ip link set lo up &&
			in_lab ip link add lab0 mtu "$LINK_MTU" type veth peer name remote0 mtu "$LINK_MTU" netns "$REMOTE_NETNS" &&
			in_lab ip addr add "$LAB_ADDR/24" dev lab0 &&
			in_remote ip addr add "$REMOTE_ADDR/24" dev remote0 &&
			in_remote ip addr add "$REMOTE_ADDR2/32" dev lo &&
			in_lab ip link set lab0 up &&
			in_remote ip link set remote0 up &&
			in_lab ip route add default via "$REMOTE_ADDR" dev lab0
	} || die "configuring the lab namespaces failed"
}

# --- the remote web server's content ---------------------------------------------------------

# What www is generated from: this script. www/.source holds it; a match means up to date.
www_stamp() {
	sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
}

# 100 MiB of incompressible, deterministic bytes (AES-CTR keystream of a fixed key), made once.
ensure_blob() {
	[[ -f $BLOB && $(stat -c %s "$BLOB") == "$BLOB_SIZE" ]] && return 0
	mkdir -p "$REMOTE_DIR"
	head -c "$BLOB_SIZE" /dev/zero |
		openssl enc -aes-128-ctr -nosalt -K 101112131415161718191a1b1c1d1e1f \
			-iv 00000000000000000000000000000000 >"$BLOB.tmp"
	mv -f "$BLOB.tmp" "$BLOB"
}

# build_deb DIR: berth-test-hello_1.0_all.deb in DIR.
build_deb() {
	local dir=$1 root=$1/.root
	mkdir -p "$root/DEBIAN" "$root/usr/bin"
	printf '#!/bin/sh\necho "hello from the remote repo"\n' >"$root/usr/bin/berth-test-hello"
	chmod 0755 "$root/usr/bin/berth-test-hello"
	cat >"$root/DEBIAN/control" <<-'EOF'
		Package: berth-test-hello
		Version: 1.0
		Architecture: all
		Maintainer: berth testbed <testbed@berth.invalid>
		Installed-Size: 1
		Section: misc
		Priority: optional
		Description: berth testbed package
		 Installs /usr/bin/berth-test-hello. Served by the testbed's remote namespace.
	EOF
	find "$root" -exec touch -h -d @0 {} +
	SOURCE_DATE_EPOCH=0 dpkg-deb --root-owner-group -Zgzip -b "$root" "$dir/berth-test-hello_1.0_all.deb" >/dev/null
	rm -rf "$root"
}

# apt_index DIR: Packages, Packages.gz and an (unsigned) Release for the .debs in DIR, as
# dpkg-scanpackages would write them; the repo is `deb [trusted=yes] http://ADDR/apt ./`.
apt_index() {
	local dir=$1 deb f size
	: >"$dir/Packages"
	for deb in "$dir"/*.deb; do
		size=$(stat -c %s "$deb")
		{
			dpkg-deb -f "$deb"
			printf 'Filename: ./%s\nSize: %s\nMD5sum: %s\nSHA1: %s\nSHA256: %s\n\n' "${deb##*/}" "$size" \
				"$(md5sum <"$deb" | cut -d' ' -f1)" "$(sha1sum <"$deb" | cut -d' ' -f1)" \
				"$(sha256sum <"$deb" | cut -d' ' -f1)"
		} >>"$dir/Packages"
	done
	gzip -n -9 -c "$dir/Packages" >"$dir/Packages.gz"
	{
		printf 'Origin: berth-testbed\nLabel: berth-testbed\nDate: Thu, 01 Jan 1970 00:00:00 UTC\n'
		printf 'MD5Sum:\n'
		for f in Packages Packages.gz; do
			printf ' %s %s %s\n' "$(md5sum <"$dir/$f" | cut -d' ' -f1)" "$(stat -c %s "$dir/$f")" "$f"
		done
		printf 'SHA256:\n'
		for f in Packages Packages.gz; do
			printf ' %s %s %s\n' "$(sha256sum <"$dir/$f" | cut -d' ' -f1)" "$(stat -c %s "$dir/$f")" "$f"
		done
	} >"$dir/Release"
}

# pip_index DIR: DIR/index.html and DIR/berth-test-wheel/ (a pure wheel and its page).
pip_index() {
	"$PYTHON" - "$1" <<-'EOF'
		import base64, hashlib, pathlib, sys, zipfile

		simple = pathlib.Path(sys.argv[1])
		project = simple / "berth-test-wheel"
		project.mkdir(parents=True)
		dist_info = "berth_test_wheel-1.0.dist-info"
		files = {
		    "berth_test_wheel/__init__.py": b"GREETING = 'hello from the remote index'\n",
		    f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: berth-test-wheel\nVersion: 1.0\n"
		    b"Summary: berth testbed wheel, served by the testbed's remote namespace\n",
		    f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: berth-testbed\n"
		    b"Root-Is-Purelib: true\nTag: py3-none-any\n",
		}

		def digest(data):
		    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

		record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items())
		files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
		wheel = project / "berth_test_wheel-1.0-py3-none-any.whl"
		with zipfile.ZipFile(wheel, "w") as archive:
		    for path, data in files.items():
		        info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
		        info.external_attr = 0o644 << 16
		        info.compress_type = zipfile.ZIP_DEFLATED
		        archive.writestr(info, data)
		sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
		page = "<!DOCTYPE html>\n<html><body>\n{}\n</body></html>\n"
		(simple / "index.html").write_text(page.format('<a href="berth-test-wheel/">berth-test-wheel</a>'))
		(project / "index.html").write_text(page.format(f'<a href="{wheel.name}#sha256={sha}">{wheel.name}</a>'))
	EOF
}

# Regenerates www when this script changed (atomically: the server may be running).
ensure_www() {
	local stamp tmp
	stamp=$(www_stamp)
	ensure_blob
	[[ -f $WWW_DIR/.source && $(cat "$WWW_DIR/.source") == "$stamp" && -f $WWW_DIR/blob-100m ]] && return 0
	rm -rf "$REMOTE_DIR/www.tmp" "$REMOTE_DIR/www.old"
	tmp=$REMOTE_DIR/www.tmp
	mkdir -p "$tmp/apt" "$tmp/simple"
	printf 'hello from the remote namespace\n' >"$tmp/hello.txt"
	ln "$BLOB" "$tmp/blob-100m"
	build_deb "$tmp/apt"
	apt_index "$tmp/apt"
	pip_index "$tmp/simple" || die "building the pip index failed"
	printf '%s\n' "$stamp" >"$tmp/.source"
	[[ ! -e $WWW_DIR ]] || mv "$WWW_DIR" "$REMOTE_DIR/www.old"
	mv "$tmp" "$WWW_DIR"
	rm -rf "$REMOTE_DIR/www.old"
}

# --- servers ---------------------------------------------------------------------------------

http_pid() {
	daemon_pid "$HTTP_PIDFILE" python3 "$WWW_DIR"
}

# http_answers ADDR: the remote web server answers from the lab namespace.
http_answers() {
	in_lab curl -sf -o /dev/null --max-time 2 "http://$1/hello.txt" 2>/dev/null
}

# wait_for TIMEOUT_S PID LOG WHAT CHECK...: poll CHECK until it succeeds; die (with the log)
# when PID exits or the time is up.
wait_for() {
	local timeout=$1 pid=$2 log=$3 what=$4 i
	shift 4
	for ((i = 0; i < timeout * 10; i++)); do
		"$@" && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			log_tail "$log"
			die "$what exited during start (log: $log)"
		fi
		sleep 0.1
	done
	log_tail "$log"
	die "$what did not answer within ${timeout}s (log: $log)"
}

ensure_http() {
	local pid
	if pid=$(http_pid) && http_answers "$REMOTE_ADDR"; then
		return 0
	fi
	[[ -z ${pid:-} ]] || stop_pid "$pid" python3 "$WWW_DIR" 5
	mkdir -p "$REMOTE_DIR"
	printf '=== %s lab.sh start\n' "$(date -Is)" >>"$HTTP_LOG"
	(cd / && exec setsid nsenter --net="$REMOTE_NETNS" "$PYTHON" -m http.server --bind 0.0.0.0 \
		--directory "$WWW_DIR" 80 </dev/null >>"$HTTP_LOG" 2>&1 9>&-) &
	pid=$!
	printf '%s\n' "$pid" >"$HTTP_PIDFILE"
	wait_for "$START_TIMEOUT" "$pid" "$HTTP_LOG" "the remote web server" http_answers "$REMOTE_ADDR"
	http_answers "$REMOTE_ADDR2" || die "the remote web server does not answer on $REMOTE_ADDR2"
	http_pid >/dev/null || die "the remote web server runs but is not $PYTHON serving $WWW_DIR"
}

lab_registry_pid() {
	daemon_pid "$LAB_REG_PIDFILE" docker-registry "$LAB_REG_CONFIG"
}

# lab_registry_answers PORT
lab_registry_answers() {
	in_lab curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/v2/" 2>/dev/null
}

# The configured port of the running lab registry (from its config file).
lab_registry_port() {
	sed -n 's/^  addr: "127\.0\.0\.1:\([0-9]*\)"$/\1/p' "$LAB_REG_CONFIG" 2>/dev/null
}

# Same storage as registry.sh's instance; read-only, so the two never write at once.
write_lab_registry_config() {
	check_path "$REG_DIR"
	cat >"$LAB_REG_CONFIG.tmp" <<-EOF
		# Generated by tests/testbed/lab.sh: the lab namespace's view of the testbed registry.
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		storage:
		  filesystem:
		    rootdirectory: "$REG_DIR/data"
		  maintenance:
		    uploadpurging:
		      enabled: false
		    readonly:
		      enabled: true
		http:
		  addr: "127.0.0.1:$1"
		  secret: berth-testbed-lab
	EOF
	mv -f "$LAB_REG_CONFIG.tmp" "$LAB_REG_CONFIG"
}

ensure_lab_registry() {
	local port pid
	port=$(registry_port) && registry_answers "$port" ||
		die "the testbed registry is not running (run tests/testbed/registry.sh start first)"
	if pid=$(lab_registry_pid); then
		if [[ $(lab_registry_port) == "$port" ]] && lab_registry_answers "$port"; then
			return 0
		fi
		stop_pid "$pid" docker-registry "$LAB_REG_CONFIG" 10
	fi
	[[ -x $REGISTRY_BIN ]] || die "$REGISTRY_BIN not installed (run tests/testbed/install-deps.sh)"
	write_lab_registry_config "$port"
	printf '=== %s lab.sh start on the lab'\''s 127.0.0.1:%s\n' "$(date -Is)" "$port" >>"$LAB_REG_LOG"
	(cd / && exec setsid nsenter --net="$LAB_NETNS" "$REGISTRY_BIN" serve "$LAB_REG_CONFIG" \
		</dev/null >>"$LAB_REG_LOG" 2>&1 9>&-) &
	pid=$!
	printf '%s\n' "$pid" >"$LAB_REG_PIDFILE"
	wait_for "$START_TIMEOUT" "$pid" "$LAB_REG_LOG" "the lab registry" lab_registry_answers "$port"
}

# --- commands --------------------------------------------------------------------------------

cmd_start() {
	local tool
	for tool in nsenter unshare ip curl openssl dpkg-deb gzip; do
		command -v "$tool" >/dev/null || die "$tool not installed (run tests/testbed/install-deps.sh)"
	done
	[[ -x $PYTHON ]] || die "$PYTHON not installed (run tests/testbed/install-deps.sh)"
	((EUID == 0)) || die "creating network namespaces needs root"
	check_path "$TESTBED_DIR"
	lock "$NETNS_DIR/lock"
	netns_configured || create_netns
	ensure_www
	ensure_http
	ensure_lab_registry
}

cmd_stop() {
	local pid
	[[ -d $NETNS_DIR || -d $REMOTE_DIR ]] || return 0
	lock "$NETNS_DIR/lock"
	if pid=$(lab_registry_pid); then
		stop_pid "$pid" docker-registry "$LAB_REG_CONFIG" 10
	fi
	rm -f "$LAB_REG_PIDFILE"
	if pid=$(http_pid); then
		stop_pid "$pid" python3 "$WWW_DIR" 5
	fi
	rm -f "$HTTP_PIDFILE"
	# Whatever else still runs in there (a berth a test left behind, say).
	drop_netns "$LAB_NETNS"
	drop_netns "$REMOTE_NETNS"
}

cmd_status() {
	local http reg port
	if ! netns_configured; then
		printf 'stopped\n'
		return 3
	fi
	http=$(http_pid 2>/dev/null) && http_answers "$REMOTE_ADDR" || http=""
	port=$(lab_registry_port) || port=""
	reg=$(lab_registry_pid 2>/dev/null) && [[ -n $port ]] && lab_registry_answers "$port" || reg=""
	if [[ -n $http && -n $reg ]]; then
		printf 'running (lab %s, remote %s, http pid %s on %s and %s, lab registry pid %s on 127.0.0.1:%s)\n' \
			"$LAB_NETNS" "$REMOTE_NETNS" "$http" "$REMOTE_ADDR" "$REMOTE_ADDR2" "$reg" "$port"
		return 0
	fi
	printf 'incomplete (namespaces up; http %s, lab registry %s)\n' "${http:-not answering}" "${reg:-not answering}"
	return 3
}

(($# == 1)) || usage
case $1 in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) usage ;;
esac
