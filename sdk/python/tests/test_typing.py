"""The SDK's types are real: mypy --strict catches mistakes in code using it, and the typed user
program runs against the server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_mypy_catches_mistakes(tmp_path: Path) -> None:
    program = HERE / "typed_user_mistakes.py"
    expected = {
        (number, match.group(1))
        for number, line in enumerate(program.read_text().splitlines(), start=1)
        if (match := re.search(r"# error: ([a-z-]+)$", line))
    }
    assert len(expected) >= 5
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(HERE / "mypy-user.ini"),
            "--cache-dir", str(tmp_path / "cache"),
            "--no-error-summary", "--show-error-codes",
            str(program),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    reported = {
        (int(match.group(1)), match.group(2))
        for match in re.finditer(r":(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M)
    }
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported == expected, result.stdout


def test_typed_user_program_runs(server: str) -> None:
    result = subprocess.run(
        [sys.executable, str(HERE / "typed_user_program.py"), server],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sync: NOT_FOUND WORKSPACE_NOT_FOUND: " in result.stdout, result.stdout
    assert "aio: NOT_FOUND WORKSPACE_NOT_FOUND: " in result.stdout, result.stdout
