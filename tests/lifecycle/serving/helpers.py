"""Helpers for the serving tests that run a real ``lifecycle serve`` process (importable as
``tests.lifecycle.serving.helpers``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


def start_serve(config: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``lifecycle serve --config CONFIG`` in a subprocess (stderr to ``log``); returns it and its base URL.

    The URL is read from the first line the server prints, once every model is loaded and the port listens.
    """
    with log.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "lifecycle", "serve", "--config", str(config)],
                                   stdout=subprocess.PIPE, stderr=err, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"on (http://\S+)", line)
    if not found:
        process.kill()
        process.wait(10)
        pytest.fail(f"lifecycle serve did not start: {line!r} {log.read_text()[-2000:]}")
    return process, found.group(1)
