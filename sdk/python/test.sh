#!/usr/bin/env bash
# Tests of the Python SDK against a live berth (scripts/test-sdks.sh runs it with the testbed's
# environment): installs the package into the repo's venv, runs `mypy --strict` on the package
# and on a user program, then pytest (sync and grpc.aio clients).
#
# Needs BERTH_TEST_SERVER, BERTH_TEST_SDK_NAMESPACE and BERTH_TEST_IMAGE_MULTILAYER.
set -euo pipefail
cd "$(dirname "$0")"
: "${BERTH_TEST_SERVER:?BERTH_TEST_SERVER must name a live berth server (http://127.0.0.1:PORT)}"

../../scripts/tools.sh
venv=../../.tools/venv
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# A real (non-editable) install, so that the checks below see what users get: py.typed, the
# generated modules and their .pyi stubs. setuptools comes from requirements-dev.txt.
rm -rf build src/*.egg-info  # stale build/lib could ship removed modules
"${pip[@]}" install --quiet --no-build-isolation .
rm -rf build src/*.egg-info

echo "mypy --strict: the berth package"
"$venv/bin/mypy" --strict -p berth
echo "mypy --strict: the tests"
"$venv/bin/mypy" --strict --exclude typed_user_mistakes tests
echo "mypy --strict: a user program (berth as installed, a user's config)"
"$venv/bin/mypy" --config-file tests/mypy-user.ini --cache-dir .mypy_cache/user tests/typed_user_program.py

status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
