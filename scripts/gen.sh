#!/usr/bin/env bash
# Regenerates the TypeScript, Go and Python SDK code from proto/ (generated code is committed;
# `make test` runs this and fails when the result differs from what is checked in).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
rm -rf sdk/typescript/src/gen sdk/go/berth/workspace sdk/python/src/berth/workspace
node_modules/.bin/buf generate
# Python packages for the generated modules.
touch sdk/python/src/berth/workspace/__init__.py sdk/python/src/berth/workspace/v1/__init__.py
