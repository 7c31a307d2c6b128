"""Fixtures of the berth Python SDK tests, which run against a live berth server.

Environment (set by scripts/test-sdks.sh; the tests fail, never skip, without them):
    BERTH_TEST_SERVER             address of the server, for example http://127.0.0.1:50700
    BERTH_TEST_SDK_NAMESPACE      containerd namespace the server uses (for forget-image.sh)
    BERTH_TEST_IMAGE_MULTILAYER   image to create workspaces from
    BERTH_TEST_TLS_SERVER         a second berth with tokens and TLS (https://localhost:PORT)
    BERTH_TEST_CA_FILE            the CA that signed its certificate (PEM)
    BERTH_TEST_TOKEN              an admin token of it
    BERTH_TEST_READ_TOKEN         a token that may read its workspace sdk-tls-reader only
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(
            f"{name} is not set: the berth SDK tests need a live server and the testbed "
            "(scripts/test-sdks.sh sets it)",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def server() -> str:
    """Address of the berth server under test."""
    return _required_env("BERTH_TEST_SERVER")


@dataclass(frozen=True)
class TlsServer:
    """The berth with a tokens file and TLS that scripts/test-sdks.sh starts."""

    addr: str
    ca: bytes
    token: str
    read_token: str


@pytest.fixture(scope="session")
def tls_server() -> TlsServer:
    """The berth with tokens and TLS."""
    return TlsServer(
        addr=_required_env("BERTH_TEST_TLS_SERVER"),
        ca=Path(_required_env("BERTH_TEST_CA_FILE")).read_bytes(),
        token=_required_env("BERTH_TEST_TOKEN"),
        read_token=_required_env("BERTH_TEST_READ_TOKEN"),
    )


@pytest.fixture(scope="session")
def image() -> str:
    """The multi-layer test image."""
    return _required_env("BERTH_TEST_IMAGE_MULTILAYER")


@pytest.fixture(scope="session")
def forget_image() -> Callable[[str], None]:
    """Removes an image from the server's containerd namespace, so the next create pulls it."""
    namespace = _required_env("BERTH_TEST_SDK_NAMESPACE")
    script = REPO_ROOT / "tests" / "testbed" / "forget-image.sh"

    def forget(ref: str) -> None:
        subprocess.run([str(script), namespace, ref], check=True, timeout=60)

    return forget
