"""What the terminal shows: no LiteRT INFO line, flags without a type, human units, a bench table that fits."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from lifecycle import console, render
from lifecycle.cli import app

REPO = Path(__file__).resolve().parents[2]


def _commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in getattr(group, "commands", {}).items():
        found.append((*prefix, name))
        found.extend(_commands(command, (*prefix, name)))
    return found


def test_boolean_flags_show_no_type_in_help() -> None:
    runner = CliRunner()
    flags = 0
    for path in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        for line in result.stdout.splitlines():
            if any(f"--{name}" in line for name in ("json", "fresh", "no-track", "dry-run", "relative", "help")):
                flags += 1
                assert "<bool>" not in line, (path, line)
    assert flags >= 6  # the check read the flags' lines


def test_native_stderr_filter_drops_only_the_litert_line(capfd: pytest.CaptureFixture[str]) -> None:
    with console.native_stderr_filtered():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"a real warning\n")
    assert capfd.readouterr().err == "a real warning\n"


def test_predict_inspect_and_bench_print_no_litert_info_line(frozen: dict) -> None:
    version = str(frozen["outcome"].version)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["predict", version, "a fine film", "--json"], ["inspect", version],
                 ["bench", version, "--calls", "10", "--runtime", "litert"]):
        done = subprocess.run([sys.executable, "-m", "lifecycle", *args], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert "XNNPACK" not in done.stderr + done.stdout, args
        if args[0] == "bench":
            assert "measuring 1/1:" in done.stderr  # progress, as a plain line off a terminal
        if args[0] == "predict":
            assert len(done.stdout.splitlines()) == 1 and done.stdout.startswith("{")  # NDJSON


def test_step_summary_shows_megabytes_and_percentages() -> None:
    outcome = SimpleNamespace(metrics={"test_accuracy": 0.81234, "size_bytes": 3_684_000.0,
                                       "size_ratio_vs_checkpoint": 0.0634, "accuracy_delta_vs_parent": -0.0042,
                                       "size_checkpoint_bytes": 8_040_000.0, "params_total": 1234567.0,
                                       "train_seconds": 14.631, "latency_p50_ms": 0.4567},
                              facts={}, run_id=None, registered=None)
    shown = {field.name: field.text for field in render.outcome_fields(outcome)}
    assert shown == {"test_accuracy": "81.2%", "accuracy_delta_vs_parent": "-0.4 points",
                     "size deployed": "3.68 MB", "size_ratio_vs_checkpoint": "6.3%", "size checkpoint": "8.04 MB",
                     "params_total": "1,234,567", "train_seconds": "14.6 s", "latency_p50_ms": "0.46 ms"}


def test_bench_table_fits_100_columns_and_keeps_paths_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buffer, width=100, soft_wrap=True))
    path = "/home/someone/projects/lifecycle/versions/default-compressed-20261201-233000-2"
    row = {"version": path, "kind": "compressed", "runtime": "litert",
           "recipe": "vocab:coverage=0.97+prune:0.85+tune:3+int8", "size_bytes": 412_345.0, "test_accuracy": 0.8123,
           "load_seconds": 0.05, "first_call_ms": 0.7, "latency_p50_ms": 0.5, "latency_p99_ms": 1.2,
           "throughput_per_s": 2100.0, "rss_mb": 31.0}
    render.bench([row, {**row, "recipe": "int8"}], as_json=False)
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 100
    assert f"1  {path}" in lines and f"2  {path}" in lines
    assert any("81.2%" in line and "0.41 MB" in line for line in lines)
    assert any(line.strip().startswith("+prune:0.85+tune:3") for line in lines)  # broken between steps
