#!/usr/bin/env bash
# Runs every command of examples/grpcurl.md against BERTH_TEST_SERVER: each must succeed, and
# each line marked `# fails: X` must fail and show X, as must each line marked
# `# --network none: X` (scripts/test-sdks.sh runs the server without networking).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a running berth}"
export PATH="$PWD/.tools/bin:$PWD/node_modules/.bin:$PATH"
export BERTH=${BERTH_TEST_SERVER#http://} ID=docs-$RANDOM$RANDOM IMAGE=$BERTH_TEST_IMAGE_BUSYBOX NEXT_IMAGE=$BERTH_TEST_IMAGE_MULTILAYER
passed=0
failed=0
# Command lines of the sh blocks, except the block that sets the variables.
mapfile -t commands < <(awk '/^```sh$/{block++; next} /^```$/{next} block>1 && /^(npx |grpcurl )/' examples/grpcurl.md)
[ ${#commands[@]} -ge 15 ] || { echo "grpcurl.md: found only ${#commands[@]} commands" >&2; exit 1; }
for command in "${commands[@]}"; do
  expected=$(sed -n -e 's/.*# fails: \([A-Za-z_]*\)$/\1/p' -e 's/.*# --network none: \([A-Za-z_]*\)$/\1/p' <<<"$command")
  set +e
  output=$(eval "${command%%#*}" 2>&1)
  status=$?
  set -e
  if [ -z "$expected" ] && [ $status -eq 0 ]; then
    passed=$((passed + 1))
  elif [ -n "$expected" ] && [ $status -ne 0 ] && grep -qi "$expected" <<<"$output"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf 'FAILED (exit %s): %s\n%s\n' "$status" "$command" "$output" >&2
  fi
done
echo "grpcurl.md: $passed passed, $failed failed"
[ $failed -eq 0 ]
