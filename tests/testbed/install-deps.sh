#!/usr/bin/env bash
# Installs the Debian packages the testbed needs, only those missing. Safe without stdin (CI),
# waits for a dpkg/apt lock held by another apt run instead of failing on it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Everything is installed with --no-install-recommends, so whatever a package only recommends but
# the build or the tests use is listed here by name (checked with `apt-cache depends`):
# debootstrap verifies the mirror's Release file with debian-archive-keyring and gpgv, which it
# only recommends (through gnupg); chromium only recommends fonts-liberation. protoc needs no
# libprotobuf-dev: containerd-client vendors the well-known types and berth-api compiles its
# protos with protox.
PACKAGES=(
	containerd runc catatonit docker-registry skopeo protobuf-compiler
	debootstrap debian-archive-keyring gpgv
	busybox-static jq
	# the browser test of examples/web (headless, driven by playwright-core)
	chromium fonts-liberation
	# used by the scripts themselves
	curl openssl ca-certificates
	# the export/import tests decode and build archives with the system tools
	zstd
	# workspace networking (berth runs the CNI plugins and nft) and the network lab (lab.sh:
	# namespaces, the remote web server, the .deb it serves)
	nftables containernetworking-plugins iproute2 python3
	# berth-agent is linked statically against glibc (libc.a); the Rust toolchain's linker
	# usually brings it along, but nothing here may depend on that
	libc6-dev
)

installed() {
	[[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == "ii "* ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
	installed "$p" || missing+=("$p")
done
((${#missing[@]} > 0)) || exit 0

((EUID == 0)) || die "missing packages (${missing[*]}) and not root: run as root or install them"
command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"

export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp /tmp/berth-install-deps.XXXXXX)
trap 'rm -f "$LOG"' EXIT

APT=(apt-get -y -q -o DPkg::Lock::Timeout=600
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# apt_run ARGS...: run apt-get, retrying for up to 10 minutes while another apt/dpkg holds a lock.
apt_run() {
	local deadline=$((SECONDS + 600))
	while true; do
		if "${APT[@]}" "$@" </dev/null >>"$LOG" 2>&1; then
			return 0
		fi
		if ((SECONDS < deadline)) && tail -n 5 "$LOG" | grep -qiE 'could not get lock|unable to lock|is another process using it'; then
			sleep 5
			continue
		fi
		return 1
	done
}

apt_run update || {
	log_tail "$LOG"
	die "apt-get update failed"
}
if ! apt_run install --no-install-recommends "${missing[@]}"; then
	# A fresh machine can stop on an unmet dependency (seen: libnss-systemd) or an
	# interrupted dpkg run: repair, then retry once.
	dpkg --configure -a </dev/null >>"$LOG" 2>&1 || true
	apt_run -f install || true
	apt_run install --no-install-recommends "${missing[@]}" || {
		log_tail "$LOG"
		die "apt-get install ${missing[*]} failed"
	}
fi
for p in "${missing[@]}"; do
	installed "$p" || die "package $p still not installed after apt-get install"
done
