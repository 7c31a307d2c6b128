#!/usr/bin/env bash
# Checks the toolchains berth's build and tests expect (they are not Debian packages the installer
# can add): root, Rust at least the workspace's rust-version, Node.js with npm, Go, and Python 3
# with venv. Prints one line naming what is missing and how to get it, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "make: $*" >&2
  exit 1
}

# at_least HAVE WANT: whether dotted version HAVE >= WANT.
at_least() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

[ "$(id -u)" -eq 0 ] || fail "berth's tests drive containerd, mounts and namespaces: run as root"

want_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
command -v cargo >/dev/null || fail "cargo not found: install Rust >= $want_rust (https://rustup.rs), then retry"
have_rust=$(rustc --version | awk '{print $2}')
at_least "$have_rust" "$want_rust" || fail "Rust $have_rust is older than the rust-version $want_rust: run 'rustup update'"

command -v node >/dev/null || fail "node not found: install Node.js >= 20 with npm (the TypeScript SDK and buf need it)"
have_node=$(node --version | tr -d v)
at_least "$have_node" 20 || fail "Node.js $have_node is older than 20: install Node.js >= 20"
command -v npm >/dev/null || fail "npm not found: install npm with Node.js >= 20"

command -v go >/dev/null || fail "go not found: install Go >= 1.22 (the Go SDK and its code generators need it)"
have_go=$(go env GOVERSION | tr -d go)
at_least "$have_go" 1.22 || fail "Go $have_go is older than 1.22: install Go >= 1.22"

command -v python3 >/dev/null || fail "python3 not found: install Python >= 3.9 with venv (Debian: python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
  fail "$(python3 --version) is older than 3.9: install Python >= 3.9"
python3 -c 'import ensurepip, venv' 2>/dev/null ||
  fail "python3 cannot create virtual environments: install python3-venv (Debian: apt-get install python3-venv)"
