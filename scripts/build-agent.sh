#!/usr/bin/env bash
# Builds berth-agent, the process agent berth runs inside every workspace, and puts it next to
# the berth binaries (target/debug, target/release), where berth looks for it. It is linked
# statically (+crt-static: glibc's static libc, which libc6-dev has), so it runs in any image.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --release --quiet -p berth-agent --features static --target "$triple"
for profile in debug release; do
  mkdir -p "target/$profile"
  install -m 0755 "target/$triple/release/berth-agent" "target/$profile/berth-agent"
done
