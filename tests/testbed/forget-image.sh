#!/usr/bin/env bash
# forget-image.sh NAMESPACE IMAGE: removes IMAGE from NAMESPACE of the testbed's containerd and
# collects its content and snapshots synchronously, so the next pull downloads its layers again
# (layers still used by another image or namespace stay). SDK tests use it to see pull bytes grow.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# -eq 2 ]] || die "usage: forget-image.sh NAMESPACE IMAGE"
ctr --address "$CTRD_SOCK" --namespace "$1" images rm --sync "$2" >/dev/null 2>&1 || true
