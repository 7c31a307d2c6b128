#!/usr/bin/env bash
# Builds the test images from Debian packages (nothing is downloaded but .debs for debootstrap) as
# OCI layouts under $TESTBED_DIR/images and pushes them to the testbed registry with skopeo.
# An image whose tag already points at the same digest is not pushed again.
#
#   images.sh small       berth-test/busybox:latest and berth-test/multilayer:latest (seconds)
#   images.sh debian      berth-test/debian:bookworm (debootstrap minbase plus curl, iproute2 and
#                         python3-pip: minutes the first time; the rootfs tarball is cached in
#                         $TESTBED_DIR/cache)
#   images.sh all         both
#   images.sh busybox|multilayer|users|manylayers
#
# Refs and digests go to $TESTBED_DIR/images.env (KEY=VALUE lines).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

umask 022
export LC_ALL=C

IMG_DIR=$TESTBED_DIR/images
CACHE_DIR=$TESTBED_DIR/cache
# Packages on top of minbase, for the network tests (apt, pip, curl and ip inside a workspace).
# They name the cached rootfs, so changing the list rebuilds it.
DEBIAN_INCLUDE=(curl iproute2 python3-pip)
DEBIAN_CACHE=$CACHE_DIR/debian-bookworm-minbase$(printf -- '-%s' "${DEBIAN_INCLUDE[@]}").tar

MT_INDEX=application/vnd.oci.image.index.v1+json
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_CONFIG=application/vnd.oci.image.config.v1+json
MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

BUSYBOX_ENV='["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]'
DEBIAN_ENV='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'

# Deterministic tar of small, generated trees: fixed owner and mtime.
NORMALIZE=(--owner=0 --group=0 --mtime=@0)

usage() {
	die "usage: ${0##*/} small|debian|all|busybox|multilayer|users|manylayers"
}

# Temporary directories removed at exit (after unmounting anything left inside).
TMP_DIRS=()
cleanup() {
	local d
	for d in "${TMP_DIRS[@]}"; do
		[[ -d $d ]] || continue
		unmount_under "$d" || continue
		rm -rf --one-file-system "$d"
	done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# tmp_dir VAR PARENT: create a temporary directory in PARENT, store its path in VAR.
# (Not usable in $(...): the directory would not be registered for cleanup.)
tmp_dir() {
	local d
	mkdir -p "$2"
	d=$(mktemp -d "$2/.tmp.XXXXXX")
	TMP_DIRS+=("$d")
	printf -v "$1" '%s' "$d"
}

oci_arch() {
	local a
	a=$(dpkg --print-architecture)
	case $a in
	amd64 | arm64 | s390x | riscv64) printf '%s\n' "$a" ;;
	i386) printf '386\n' ;;
	ppc64el) printf 'ppc64le\n' ;;
	armhf | armel) printf 'arm\n' ;;
	*) die "unsupported architecture $a" ;;
	esac
}

sha256_of() {
	local h
	h=$(sha256sum "$1")
	printf 'sha256:%s\n' "${h%% *}"
}

# --- OCI layout helpers ----------------------------------------------------------------------

layout_init() {
	mkdir -p "$1/blobs/sha256"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$1/oci-layout"
}

# blob_add LAYOUT FILE MEDIATYPE: move FILE into the layout; print its descriptor (compact JSON).
blob_add() {
	local layout=$1 file=$2 mt=$3 digest size
	digest=$(sha256_of "$file")
	size=$(stat -c %s "$file")
	chmod 0644 "$file"
	mv -f "$file" "$layout/blobs/sha256/${digest#sha256:}"
	jq -cn --arg mt "$mt" --arg d "$digest" --argjson s "$size" '{mediaType: $mt, digest: $d, size: $s}'
}

# blob_json LAYOUT MEDIATYPE JSON: store a JSON document (exact bytes, no newline) as a blob.
blob_json() {
	local f
	f=$(mktemp "$1/.blob.XXXXXX")
	printf '%s' "$3" >"$f"
	blob_add "$1" "$f" "$2"
}

# tar_dir DIR OUT [TAR-OPTIONS...]: tar of DIR's content, names sorted, without a "./" prefix.
tar_dir() {
	local src=$1 out=$2
	shift 2
	(cd "$src" && find . -mindepth 1 -printf '%P\0' | sort -z) |
		tar -C "$src" --format=gnu --numeric-owner --no-recursion --null --verbatim-files-from \
			-T - "$@" -cf "$out"
}

# layer_add LAYOUT TAR: gzip TAR (deterministically) into the layout.
# Prints "<diff_id> <descriptor>".
layer_add() {
	local layout=$1 tar=$2 diff gz
	diff=$(sha256_of "$tar")
	gz=$(mktemp "$layout/.layer.XXXXXX")
	gzip -n -c "$tar" >"$gz"
	printf '%s %s\n' "$diff" "$(blob_add "$layout" "$gz" "$MT_LAYER")"
}

# image_add LAYOUT ARCH VARIANT ENV_JSON CMD_JSON LAYER_LINE...: write config and manifest
# blobs for the layers (lines from layer_add); print the manifest descriptor with its platform.
# IMAGE_USER, when set, becomes the config's User.
image_add() {
	local layout=$1 arch=$2 variant=$3 env=$4 cmd=$5 line user=${IMAGE_USER:-}
	shift 5
	local diffs='[]' layers='[]' cfg manifest desc
	for line in "$@"; do
		diffs=$(jq -c --arg d "${line%% *}" '. + [$d]' <<<"$diffs")
		layers=$(jq -c --argjson l "${line#* }" '. + [$l]' <<<"$layers")
	done
	cfg=$(jq -cn --arg arch "$arch" --arg variant "$variant" --argjson env "$env" \
		--argjson cmd "$cmd" --argjson diffs "$diffs" --arg user "$user" '
		{created: "1970-01-01T00:00:00Z", architecture: $arch}
		+ (if $variant == "" then {} else {variant: $variant} end)
		+ {os: "linux", config: ({Env: $env, Cmd: $cmd, WorkingDir: "/"}
		                         + (if $user == "" then {} else {User: $user} end)),
		   rootfs: {type: "layers", diff_ids: $diffs}}')
	cfg=$(blob_json "$layout" "$MT_CONFIG" "$cfg")
	manifest=$(jq -cn --arg mt "$MT_MANIFEST" --argjson cfg "$cfg" --argjson layers "$layers" \
		'{schemaVersion: 2, mediaType: $mt, config: $cfg, layers: $layers}')
	desc=$(blob_json "$layout" "$MT_MANIFEST" "$manifest")
	jq -c --arg arch "$arch" --arg variant "$variant" '. + {platform:
		({architecture: $arch, os: "linux"} + (if $variant == "" then {} else {variant: $variant} end))}' \
		<<<"$desc"
}

# layout_finish LAYOUT TAG DESCRIPTOR DEST: write index.json naming DESCRIPTOR as TAG, then
# replace DEST with the layout.
layout_finish() {
	local layout=$1 tag=$2 desc=$3 dest=$4
	jq -cn --argjson d "$desc" --arg tag "$tag" \
		'{schemaVersion: 2, manifests: [$d + {annotations: {"org.opencontainers.image.ref.name": $tag}}]}' \
		>"$layout/index.json"
	rm -rf "$dest"
	mv "$layout" "$dest"
}

# layout_digest LAYOUT: digest of the layout's (only) top-level descriptor.
layout_digest() {
	jq -r '.manifests[0].digest' "$1/index.json"
}

# --- registry --------------------------------------------------------------------------------

REGISTRY=""
need_registry() {
	local port
	if ! port=$(registry_port) || ! registry_answers "$port"; then
		die "the testbed registry is not running (run tests/testbed/registry.sh start)"
	fi
	REGISTRY=127.0.0.1:$port
}

# remote_digest NAME TAG: digest the registry serves for NAME:TAG, empty if none.
remote_digest() {
	curl -sfI --max-time 10 -H "Accept: $MT_INDEX" -H "Accept: $MT_MANIFEST" \
		"http://$REGISTRY/v2/$1/manifests/$2" 2>/dev/null |
		tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" { print $2 }' || true
}

# push LAYOUT NAME TAG [--all]: push unless the registry already has that digest for NAME:TAG.
push() {
	local layout=$1 name=$2 tag=$3 all=${4:-} digest log t0
	digest=$(layout_digest "$layout")
	[[ $(remote_digest "$name" "$tag") == "$digest" ]] && return 0
	t0=$(now_ms)
	log=$IMG_DIR/push-${name//\//_}.log
	if ! skopeo --insecure-policy copy --quiet --preserve-digests --dest-tls-verify=false ${all:+--all} \
		"oci:$layout:$tag" "docker://$REGISTRY/$name:$tag" </dev/null >"$log" 2>&1; then
		log_tail "$log"
		die "skopeo copy of $name:$tag to $REGISTRY failed"
	fi
	[[ $(remote_digest "$name" "$tag") == "$digest" ]] ||
		die "$REGISTRY/$name:$tag does not have digest $digest after the push"
	rm -f "$log"
	verbose "pushed $name:$tag: $(($(now_ms) - t0)) ms"
}

# env_set KEY=VALUE...: update images.env atomically (several images.sh may run at once), and
# the image lines of $TESTBED_ENV when up.sh wrote one. Refs of images not touched now are moved
# to the current registry address too.
env_set() {
	(
		flock -w 300 8 || die "timed out waiting for $IMAGES_ENV.lock"
		local tmp kv keys=""
		tmp=$(mktemp "$IMAGES_ENV.XXXXXX")
		for kv in "$@"; do
			keys+="${keys:+|}${kv%%=*}"
		done
		{
			if [[ -f $IMAGES_ENV ]]; then
				grep -vE "^($keys)=" "$IMAGES_ENV" |
					sed -E "s#=127\.0\.0\.1:[0-9]+/#=$REGISTRY/#" || true
			fi
			printf '%s\n' "$@"
		} | sort >"$tmp"
		mv -f "$tmp" "$IMAGES_ENV"
		env_images_refresh
	) 8>"$IMAGES_ENV.lock"
}

# --- images ----------------------------------------------------------------------------------

# The busybox layer tar (uncompressed), shared by busybox and multilayer.
busybox_tar() {
	local out=$1 root bb applet
	bb=/bin/busybox
	[[ $(dpkg-query -W -f='${db:Status-Abbrev}' busybox-static 2>/dev/null) == "ii "* && -x $bb ]] ||
		die "busybox-static is not installed (run tests/testbed/install-deps.sh)"
	tmp_dir root "$IMG_DIR"
	root+=/rootfs
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,data,root,var}
	install -m 0755 "$bb" "$root/bin/busybox"
	while read -r applet; do
		# Applets live in bin, sbin, usr/bin, usr/sbin (created above); skip /linuxrc.
		[[ $applet == */* && $applet != bin/busybox && -d $root/${applet%/*} ]] || continue
		ln -sfn /bin/busybox "$root/$applet"
	done < <("$bb" --list-full)
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\n' >"$root/etc/group"
	chmod 1777 "$root/tmp"
	chmod 0700 "$root/root"
	tar_dir "$root" "$out" "${NORMALIZE[@]}"
}

# small_stamp: what the small images are built from (this script and the busybox binary).
# A layout whose .source matches is up to date and not rebuilt.
small_stamp() {
	cat "${BASH_SOURCE[0]}" /bin/busybox | sha256sum | cut -d' ' -f1
}

# up_to_date NAME STAMP
up_to_date() {
	[[ -f $IMG_DIR/$1/index.json && $(cat "$IMG_DIR/$1/.source" 2>/dev/null) == "$2" ]]
}

build_busybox() {
	local stamp
	stamp=$(small_stamp)
	up_to_date busybox "$stamp" || {
		build_busybox_layout
		printf '%s\n' "$stamp" >"$IMG_DIR/busybox/.source"
	}
	push "$IMG_DIR/busybox" berth-test/busybox latest
	env_set "BERTH_TEST_IMAGE_BUSYBOX=$REGISTRY/berth-test/busybox:latest" \
		"BERTH_TEST_IMAGE_BUSYBOX_DIGEST=$(layout_digest "$IMG_DIR/busybox")"
}

build_busybox_layout() {
	local work layout desc
	tmp_dir work "$IMG_DIR"
	busybox_tar "$work/layer.tar"
	layout=$work/layout
	layout_init "$layout"
	desc=$(image_add "$layout" "$(oci_arch)" "" "$BUSYBOX_ENV" '["sh"]' \
		"$(layer_add "$layout" "$work/layer.tar")")
	layout_finish "$layout" latest "$(jq -c 'del(.platform)' <<<"$desc")" "$IMG_DIR/busybox"
}

build_multilayer() {
	local stamp index
	stamp=$(small_stamp)
	up_to_date multilayer "$stamp" || {
		build_multilayer_layout
		printf '%s\n' "$stamp" >"$IMG_DIR/multilayer/.source"
	}
	push "$IMG_DIR/multilayer" berth-test/multilayer latest --all
	index=$IMG_DIR/multilayer/blobs/sha256/$(layout_digest "$IMG_DIR/multilayer" | cut -d: -f2)
	env_set "BERTH_TEST_IMAGE_MULTILAYER=$REGISTRY/berth-test/multilayer:latest" \
		"BERTH_TEST_IMAGE_MULTILAYER_DIGEST=$(layout_digest "$IMG_DIR/multilayer")" \
		"BERTH_TEST_IMAGE_MULTILAYER_AMD64_DIGEST=$(jq -r '.manifests[] | select(.platform.architecture == "amd64") | .digest' "$index")" \
		"BERTH_TEST_IMAGE_MULTILAYER_ARM64_DIGEST=$(jq -r '.manifests[] | select(.platform.architecture == "arm64") | .digest' "$index")"
}

build_multilayer_layout() {
	local work layout l1 l2 l3 amd64 arm64 index desc
	tmp_dir work "$IMG_DIR"
	layout=$work/layout
	layout_init "$layout"
	busybox_tar "$work/l1.tar"
	# Layer 2 adds /etc/berth-layer2 and /opt/removed.
	mkdir -p "$work/l2/etc" "$work/l2/opt"
	printf 'berth multilayer image, layer 2\n' >"$work/l2/etc/berth-layer2"
	printf 'removed by a whiteout in layer 3\n' >"$work/l2/opt/removed"
	tar_dir "$work/l2" "$work/l2.tar" "${NORMALIZE[@]}"
	# Layer 3 removes /opt/removed (whiteout) and adds 4 MiB of incompressible but
	# deterministic data (AES-CTR keystream of a fixed key), so pull progress is visible.
	mkdir -p "$work/l3/etc" "$work/l3/opt"
	: >"$work/l3/opt/.wh.removed"
	printf 'berth multilayer image, layer 3\n' >"$work/l3/etc/berth-layer3"
	head -c 4194304 /dev/zero |
		openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
			-iv 00000000000000000000000000000000 >"$work/l3/opt/berth-random.bin"
	tar_dir "$work/l3" "$work/l3.tar" "${NORMALIZE[@]}"
	l1=$(layer_add "$layout" "$work/l1.tar")
	l2=$(layer_add "$layout" "$work/l2.tar")
	l3=$(layer_add "$layout" "$work/l3.tar")
	# Both platforms carry the same layers; only the config's architecture differs.
	amd64=$(image_add "$layout" amd64 "" "$BUSYBOX_ENV" '["sh"]' "$l1" "$l2" "$l3")
	arm64=$(image_add "$layout" arm64 v8 "$BUSYBOX_ENV" '["sh"]' "$l1" "$l2" "$l3")
	index=$(jq -cn --arg mt "$MT_INDEX" --argjson a "$amd64" --argjson b "$arm64" \
		'{schemaVersion: 2, mediaType: $mt, manifests: [$a, $b]}')
	desc=$(blob_json "$layout" "$MT_INDEX" "$index")
	layout_finish "$layout" latest "$desc" "$IMG_DIR/multilayer"
}

# berth-test/user:{bot,staff,uid,ghost}: busybox plus a layer with a non-root user `bot`
# (1000:1000, member of staff 50 and audio 29) and /home/bot; the tags differ only in the
# config's User: "bot", "bot:staff", "1000:staff" and "ghost" (not in /etc/passwd).
USER_TAGS=(bot:bot staff:bot:staff uid:1000:staff ghost:ghost)

build_users() {
	local stamp entry tag
	stamp=$(small_stamp)
	up_to_date user-bot "$stamp" || {
		build_users_layouts
		for entry in "${USER_TAGS[@]}"; do
			printf '%s\n' "$stamp" >"$IMG_DIR/user-${entry%%:*}/.source"
		done
	}
	local vars=()
	for entry in "${USER_TAGS[@]}"; do
		tag=${entry%%:*}
		push "$IMG_DIR/user-$tag" berth-test/user "$tag"
		vars+=("BERTH_TEST_IMAGE_USER_${tag^^}=$REGISTRY/berth-test/user:$tag")
	done
	env_set "${vars[@]}"
}

build_users_layouts() {
	local work entry tag l1 l2 layout desc
	tmp_dir work "$IMG_DIR"
	busybox_tar "$work/l1.tar"
	mkdir -p "$work/l2/etc" "$work/l2/home/bot"
	printf 'root:x:0:0:root:/root:/bin/sh\nbot:x:1000:1000:bot:/home/bot:/bin/sh\n' >"$work/l2/etc/passwd"
	printf 'root:x:0:\naudio:x:29:bot\nstaff:x:50:bot\nbot:x:1000:\n' >"$work/l2/etc/group"
	tar_dir "$work/l2" "$work/l2.tar" "${NORMALIZE[@]}"
	for entry in "${USER_TAGS[@]}"; do
		tag=${entry%%:*}
		layout=$work/layout-$tag
		layout_init "$layout"
		cp "$work/l1.tar" "$work/l1-$tag.tar"
		cp "$work/l2.tar" "$work/l2-$tag.tar"
		l1=$(layer_add "$layout" "$work/l1-$tag.tar")
		l2=$(layer_add "$layout" "$work/l2-$tag.tar")
		desc=$(IMAGE_USER=${entry#*:} image_add "$layout" "$(oci_arch)" "" "$BUSYBOX_ENV" '["sh"]' "$l1" "$l2")
		layout_finish "$layout" "$tag" "$(jq -c 'del(.platform)' <<<"$desc")" "$IMG_DIR/user-$tag"
	done
}

# berth-test/manylayers:latest: busybox plus 63 one-file layers (/layers/NN), more than the
# overlay lowerdir list of one page of mount options can name.
MANY_LAYERS=63

build_manylayers() {
	local stamp
	stamp=$(small_stamp)
	up_to_date manylayers "$stamp" || {
		build_manylayers_layout
		printf '%s\n' "$stamp" >"$IMG_DIR/manylayers/.source"
	}
	push "$IMG_DIR/manylayers" berth-test/manylayers latest
	env_set "BERTH_TEST_IMAGE_MANYLAYERS=$REGISTRY/berth-test/manylayers:latest"
}

build_manylayers_layout() {
	local work layout n desc lines=()
	tmp_dir work "$IMG_DIR"
	layout=$work/layout
	layout_init "$layout"
	busybox_tar "$work/l0.tar"
	lines+=("$(layer_add "$layout" "$work/l0.tar")")
	for ((n = 1; n <= MANY_LAYERS; n++)); do
		mkdir -p "$work/l$n/layers"
		printf 'layer %d\n' "$n" >"$work/l$n/layers/$(printf '%02d' "$n")"
		tar_dir "$work/l$n" "$work/l$n.tar" "${NORMALIZE[@]}"
		lines+=("$(layer_add "$layout" "$work/l$n.tar")")
	done
	desc=$(image_add "$layout" "$(oci_arch)" "" "$BUSYBOX_ENV" '["sh"]' "${lines[@]}")
	layout_finish "$layout" latest "$(jq -c 'del(.platform)' <<<"$desc")" "$IMG_DIR/manylayers"
}

# The Debian mirror apt uses on this machine (BERTH_TESTBED_DEBIAN_MIRROR overrides it).
debian_mirror() {
	local m=${BERTH_TESTBED_DEBIAN_MIRROR:-}
	if [[ -z $m ]]; then
		m=$({
			grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{ for (i = 2; i <= NF; i++) print $i }'
			grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
				awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }'
		} | grep -E '/debian/?$' | head -n 1) || true
	fi
	printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# debootstrap a minbase bookworm (plus DEBIAN_INCLUDE) and cache it as a tarball; a tarball of an
# older package list is removed.
debian_rootfs_tar() {
	local work rootfs mirror include t0 log=$CACHE_DIR/debootstrap.log
	command -v debootstrap >/dev/null || die "debootstrap not installed (run tests/testbed/install-deps.sh)"
	((EUID == 0)) || die "debootstrap needs root"
	tmp_dir work "$CACHE_DIR"
	rootfs=$work/rootfs
	mirror=$(debian_mirror)
	t0=$(now_ms)
	include=$(
		IFS=,
		printf '%s' "${DEBIAN_INCLUDE[*]}"
	)
	if ! debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" </dev/null >"$log" 2>&1; then
		log_tail "$log"
		die "debootstrap of bookworm from $mirror failed (log: $log)"
	fi
	verbose "debootstrap from $mirror: $(($(now_ms) - t0)) ms"
	# debootstrap mounts /proc, /sys (and /dev in a container) inside the target: none may
	# stay mounted while the tree is trimmed and packed.
	unmount_under "$rootfs"
	find "$rootfs/dev" "$rootfs/proc" "$rootfs/sys" "$rootfs/run" -mindepth 1 -xdev -delete 2>/dev/null || true
	find "$rootfs/var/lib/apt/lists" -maxdepth 1 -type f -name '*_*' -delete
	find "$rootfs/var/cache/apt" -type f \( -name '*.deb' -o -name '*.bin' \) -delete
	rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
	: >"$rootfs/etc/resolv.conf"
	: >"$rootfs/etc/hostname"
	t0=$(now_ms)
	tar_dir "$rootfs" "$work/rootfs.tar"
	mv -f "$work/rootfs.tar" "$DEBIAN_CACHE"
	find "$CACHE_DIR" -maxdepth 1 -name 'debian-bookworm-minbase*.tar' ! -path "$DEBIAN_CACHE" -delete
	verbose "rootfs tarball: $(($(now_ms) - t0)) ms"
	rm -f "$log"
}

build_debian() {
	local work layout desc stamp t0
	mkdir -p "$CACHE_DIR"
	[[ -s $DEBIAN_CACHE ]] || debian_rootfs_tar
	# Rebuild the layout only when the cached rootfs changed (gzip of ~100 MB takes a while).
	stamp=$(stat -c '%s %Y' "$DEBIAN_CACHE")
	if [[ ! -f $IMG_DIR/debian/index.json || $(cat "$IMG_DIR/debian/.source" 2>/dev/null) != "$stamp" ]]; then
		t0=$(now_ms)
		tmp_dir work "$IMG_DIR"
		layout=$work/layout
		layout_init "$layout"
		desc=$(image_add "$layout" "$(oci_arch)" "" "$DEBIAN_ENV" '["bash"]' \
			"$(layer_add "$layout" "$DEBIAN_CACHE")")
		printf '%s\n' "$stamp" >"$layout/.source"
		layout_finish "$layout" bookworm "$(jq -c 'del(.platform)' <<<"$desc")" "$IMG_DIR/debian"
		verbose "debian layout (gzip): $(($(now_ms) - t0)) ms"
	fi
	push "$IMG_DIR/debian" berth-test/debian bookworm
	env_set "BERTH_TEST_IMAGE_DEBIAN=$REGISTRY/berth-test/debian:bookworm" \
		"BERTH_TEST_IMAGE_DEBIAN_DIGEST=$(layout_digest "$IMG_DIR/debian")"
}

# with_image_lock NAME FUNCTION: one build of an image at a time.
with_image_lock() {
	exec 7>"$IMG_DIR/.$1.lock"
	flock -w 1800 7 || die "timed out waiting for $IMG_DIR/.$1.lock"
	"$2"
	exec 7>&-
}

(($# == 1)) || usage
case $1 in
small | debian | all | busybox | multilayer | users | manylayers) ;;
*) usage ;;
esac
check_path "$TESTBED_DIR"
[[ $TESTBED_DIR != *:* ]] || die "TESTBED_DIR must not contain ':' (skopeo's oci: references): $TESTBED_DIR"
for tool in jq skopeo curl openssl gzip; do
	command -v "$tool" >/dev/null || die "$tool not installed (run tests/testbed/install-deps.sh)"
done
mkdir -p "$IMG_DIR"
need_registry

case $1 in
busybox) with_image_lock busybox build_busybox ;;
multilayer) with_image_lock multilayer build_multilayer ;;
users) with_image_lock users build_users ;;
manylayers) with_image_lock manylayers build_manylayers ;;
small)
	with_image_lock busybox build_busybox
	with_image_lock multilayer build_multilayer
	with_image_lock users build_users
	with_image_lock manylayers build_manylayers
	;;
debian) with_image_lock debian build_debian ;;
all)
	with_image_lock busybox build_busybox
	with_image_lock multilayer build_multilayer
	with_image_lock users build_users
	with_image_lock manylayers build_manylayers
	with_image_lock debian build_debian
	;;
esac
