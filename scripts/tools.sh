#!/usr/bin/env bash
# Installs the code generators and SDK test tools, pinned, into the repo (.tools/ and
# sdk/typescript/node_modules): a Python venv (grpcio-tools, mypy-protobuf, pytest, mypy),
# protoc-gen-go and protoc-gen-go-grpc, grpcurl, and the npm packages of the TypeScript SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

GO_PROTOBUF=v1.36.12
GO_GRPC_PLUGIN=v1.6.2
GRPCURL=v1.9.4

mkdir -p .tools/bin
if [ ! -x .tools/venv/bin/python ] || [ sdk/python/requirements-dev.txt -nt .tools/venv/.installed ]; then
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check -r sdk/python/requirements-dev.txt
  touch .tools/venv/.installed
fi
if [ ! -x .tools/bin/protoc-gen-go ]; then
  GOBIN="$PWD/.tools/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$GO_PROTOBUF"
fi
if [ ! -x .tools/bin/protoc-gen-go-grpc ]; then
  GOBIN="$PWD/.tools/bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$GO_GRPC_PLUGIN"
fi
if [ ! -x .tools/bin/grpcurl ]; then
  GOBIN="$PWD/.tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL"
fi
if [ ! -x sdk/typescript/node_modules/.bin/protoc-gen-es ] || [ sdk/typescript/package.json -nt sdk/typescript/node_modules/.package-lock.json ]; then
  (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error)
fi
