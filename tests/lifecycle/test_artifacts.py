"""A version's manifest covers itself: its digest, every field the code reads, every file in the directory.

Each tampering case is refused at load with one ModelError line. Cases marked "resealed" recompute the files' sha256
and the digest after the edit (``tests.helpers.reseal``), so the check behind the digest is the one that answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifecycle import artifacts
from lifecycle.errors import ModelError
from tests.helpers import reseal

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoint(trained: dict, tmp_path: Path) -> Path:
    """A copy of the session's checkpoint version, free to tamper with."""
    return Path(shutil.copytree(trained["outcome"].version, tmp_path / "checkpoint"))


@pytest.fixture
def frozen_copy(frozen: dict, tmp_path: Path) -> Path:
    """A copy of the session's frozen version (graph.pb and model.tflite), free to tamper with."""
    return Path(shutil.copytree(frozen["outcome"].version, tmp_path / "frozen"))


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / artifacts.MANIFEST).read_text(encoding="utf-8"))


def _write(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest as an editor would: no digest recomputed."""
    (path / artifacts.MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _refused(path: Path, pattern: str) -> str:
    with pytest.raises(ModelError, match=pattern) as caught:
        artifacts.load_version(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_new_version_carries_a_digest_over_its_manifest(frozen: dict) -> None:
    manifest = _manifest(frozen["outcome"].version)
    assert manifest["format"] == artifacts.FORMAT_VERSION == 2
    assert manifest[artifacts.DIGEST_FIELD] == artifacts.manifest_digest(manifest)
    assert list(manifest)[-1] == artifacts.DIGEST_FIELD
    version = artifacts.load_version(frozen["outcome"].version)
    assert version.manifest.to_dict() == manifest


def test_the_typed_manifest_keeps_the_json_it_was_read_from(frozen: dict, frozen_copy: Path) -> None:
    path = frozen["outcome"].version / artifacts.MANIFEST
    version = artifacts.load_version(frozen["outcome"].version)
    # Written back, it is the same bytes, so every existing version's digest still holds.
    assert (json.dumps(version.manifest.to_dict(), indent=2) + "\n").encode() == path.read_bytes()
    assert artifacts.manifest_digest(version.manifest.to_dict()) == version.manifest.digest
    assert version.manifest.input is not None and version.manifest.input.to_dict() == _manifest(
        frozen["outcome"].version)["input"]
    # A field this release does not know (one a later release adds) is kept, and a copy never edits the version.
    reseal(frozen_copy, lambda m: m.update(later={"field": [1, 2]}))
    copy = artifacts.load_version(frozen_copy).manifest
    assert copy.to_dict()["later"] == {"field": [1, 2]}
    copy.to_dict()["later"]["field"].append(3)
    assert copy.to_dict()["later"] == {"field": [1, 2]}
    with pytest.raises(TypeError):
        copy.sizes["graph_bytes"] = 0  # type: ignore[index]


def test_deleted_files_table_is_refused(checkpoint: Path) -> None:
    manifest = _manifest(checkpoint)
    del manifest["files"]
    _write(checkpoint, manifest)
    _refused(checkpoint, "does not match its digest")
    reseal(checkpoint, lambda m: m.pop("files", None))
    _refused(checkpoint, "files must be a non-empty table")
    reseal(checkpoint, lambda m: m.update(files={}))
    _refused(checkpoint, "files must be a non-empty table")


def test_edited_file_with_the_table_intact_is_refused(frozen_copy: Path) -> None:
    data = bytearray((frozen_copy / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (frozen_copy / "model.tflite").write_bytes(bytes(data))
    _refused(frozen_copy, r"model\.tflite: sha256 does not match")


def test_edited_or_missing_digest_is_refused(checkpoint: Path) -> None:
    manifest = _manifest(checkpoint)
    manifest[artifacts.DIGEST_FIELD] = "sha256:" + "0" * 64
    _write(checkpoint, manifest)
    _refused(checkpoint, "manifest.json: does not match its digest")
    del manifest[artifacts.DIGEST_FIELD]
    _write(checkpoint, manifest)
    _refused(checkpoint, "manifest.json: has no digest")


def test_edited_label_names_are_caught_by_the_digest(checkpoint: Path) -> None:
    manifest = _manifest(checkpoint)
    manifest["labels"] = list(reversed(manifest["labels"]))  # same count: only the digest can tell
    _write(checkpoint, manifest)
    _refused(checkpoint, "does not match its digest")


@pytest.mark.parametrize(("labels", "pattern"), [
    (["negative", "positive", "neutral"], r"labels must name one class per output of the model \(2.*names 3"),
    (["negative"], "labels must be a list of at least 2 non-empty strings"),
    (["positive", "positive"], "labels must be distinct; 'positive' repeats"),
    (["negative", 1], "labels must be a list of at least 2 non-empty strings"),
    ("negative,positive", "labels must be a list"),
])
def test_labels_that_do_not_fit_the_model_are_refused(labels: Any, pattern: str, frozen_copy: Path) -> None:
    reseal(frozen_copy, lambda m: m.update(labels=labels))
    _refused(frozen_copy, pattern)


def test_label_count_is_checked_for_checkpoints_too(checkpoint: Path) -> None:
    reseal(checkpoint, lambda m: m.update(labels=[*m["labels"], "neutral"]))
    _refused(checkpoint, "labels must name one class per output")


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda m: m.update(max_len=41), r"input\.shape must be \[null, max_len\] with max_len 41"),
    (lambda m: m.update(max_len="40"), "max_len must be a positive whole number"),
    (lambda m: m.update(max_len=0), "max_len must be a positive whole number"),
    (lambda m: m.update(max_len=2), r"input\.shape must be|max_len must be at least the widest kernel"),
])
def test_edited_max_len_is_refused(edit: Callable[[dict], None], pattern: str, frozen_copy: Path) -> None:
    reseal(frozen_copy, edit)
    _refused(frozen_copy, pattern)


def test_max_len_edited_with_its_input_shape_is_caught_by_the_model_files(frozen_copy: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import load_graph_version

    reseal(frozen_copy, lambda m: (m.update(max_len=41), m["input"].update(shape=[None, 41])))
    version = artifacts.load_version(frozen_copy)  # consistent with itself: the model files tell
    with pytest.raises(ModelError, match=r"model\.tflite: input shape \[-1, 40\] does not take rows of max_len=41"):
        Predictor(version, runtime="litert")
    with pytest.raises(ModelError, match=r"graph\.pb: input 'input_ids' is uint16 \[-1, 40\], but the manifest says "
                       r"uint16 \[-1, 41\]"):
        load_graph_version(version)  # what compress, restore and retrain read


@pytest.mark.parametrize(("which", "kind", "pattern"), [
    ("checkpoint", "frozen", "kind frozen needs graph.pb"),
    ("checkpoint", "tokenizer", "kind tokenizer holds no model.keras"),
    ("frozen", "checkpoint", "kind checkpoint needs model.keras"),
    ("frozen", "sealed", "kind must be one of tokenizer, checkpoint, frozen, compressed"),
])
def test_edited_kind_is_refused(which: str, kind: str, pattern: str, checkpoint: Path, frozen_copy: Path) -> None:
    path = checkpoint if which == "checkpoint" else frozen_copy
    reseal(path, lambda m: m.update(kind=kind))
    _refused(path, pattern)


def test_frozen_edited_to_compressed_is_caught_by_the_digest(frozen_copy: Path) -> None:
    manifest = _manifest(frozen_copy)
    manifest["kind"] = "compressed"  # both kinds hold the same files
    _write(frozen_copy, manifest)
    _refused(frozen_copy, "does not match its digest")


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda m: m["input"].update(dtype="float32"), "input.dtype must be one of uint8, uint16, int32"),
    (lambda m: m.update(recipe=[{"name": "exec", "params": {}}]), r"recipe steps must be among .* Received: \"exec\""),
    (lambda m: m.update(recipe="int8"), "recipe must be a list of steps"),
    (lambda m: m["serving"].update(file="../elsewhere.tflite"), "serving must describe the one serving file"),
    (lambda m: m["serving"].update(bytes=1), "serving.bytes must equal the listed size of model.tflite"),
    (lambda m: m["architecture"].update(kernel_sizes=[3, "4"]), "architecture.kernel_sizes must be a non-empty list"),
    (lambda m: m["tensors"].pop("weights/output/bias"), "tensors must hold the output layer's bias"),
    (lambda m: m["files"].update({"../outside": {"bytes": 1, "sha256": "0" * 64}}),
     "files must list paths inside the version"),
    (lambda m: m.pop("input"), "input must be a table"),
])
def test_fields_the_code_reads_are_checked(edit: Callable[[dict], None], pattern: str, frozen_copy: Path) -> None:
    reseal(frozen_copy, edit)
    _refused(frozen_copy, pattern)


def test_an_unlisted_file_is_refused(frozen_copy: Path) -> None:
    (frozen_copy / "tokenizer" / "vectors.pkl").write_bytes(b"\x80\x04N.")
    message = _refused(frozen_copy, r"tokenizer/vectors\.pkl: not listed in .*manifest\.json")
    assert "Remove it" in message


def test_finder_metadata_is_the_one_unlisted_file_ignored(frozen_copy: Path) -> None:
    (frozen_copy / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (frozen_copy / "tokenizer" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert artifacts.load_version(frozen_copy).kind == "frozen"


def _with_custom_op(content: bytes, name: str) -> bytes:
    """The flatbuffer with its SOFTMAX opcode turned into a custom op called ``name``."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    code = next(c for c in model.operatorCodes if max(c.builtinCode, c.deprecatedBuiltinCode) == 25)  # SOFTMAX
    code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
    code.customCode = name
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@pytest.mark.parametrize("op", ["DELEGATE", "CAST"])
def test_a_custom_op_in_the_serving_form_is_refused(op: str, frozen_copy: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.litert import LiteRunner

    content = _with_custom_op((frozen_copy / "model.tflite").read_bytes(), op)
    with pytest.raises(ModelError, match=rf"<serving flatbuffer>: serving form uses custom op\(s\) '{op}'"):
        LiteRunner(content, 40, "uint16")
    (frozen_copy / "model.tflite").write_bytes(content)
    reseal(frozen_copy, lambda m: m["serving"].update(bytes=len(content)))
    version = artifacts.load_version(frozen_copy)
    with pytest.raises(ModelError, match=rf"model\.tflite: serving form uses custom op\(s\) '{op}'") as caught:
        Predictor(version, runtime="litert")
    assert "\n" not in str(caught.value)


def test_the_exported_serving_form_needs_no_custom_op(frozen: dict) -> None:
    from lifecycle import litert

    ops = litert.serving_ops(frozen["outcome"].version / litert.SERVING_FILE)
    assert set(ops) <= litert.ALLOWED_LITE_OPS and "DELEGATE" not in ops


def test_a_damaged_flatbuffer_is_refused_before_the_runtime_sees_it() -> None:
    from lifecycle import litert

    for content in (b"", b"\xff" * 64):
        with pytest.raises(ModelError, match="not a LiteRT model"):
            litert.serving_ops(content)


def _as_format_1(path: Path) -> dict[str, Any]:
    """Rewrite a version's manifest as lifecycle wrote it before digests (format 1)."""
    manifest = _manifest(path)
    del manifest[artifacts.DIGEST_FIELD]
    manifest["format"] = 1
    _write(path, manifest)
    return manifest


def test_format_1_is_refused_and_upgraded(frozen_copy: Path) -> None:
    old = _as_format_1(frozen_copy)
    old_sha = artifacts.sha256_file(frozen_copy / artifacts.MANIFEST)
    message = _refused(frozen_copy, "manifest format 1 has no digest")
    assert f"lifecycle upgrade {frozen_copy}" in message and "upgrade_version" in message
    version = artifacts.upgrade_version(frozen_copy)
    assert version.manifest.format == 2 and version.manifest.upgraded["manifest_sha256"] == old_sha
    assert {k: v for k, v in version.manifest.to_dict().items() if k not in ("format", "upgraded", "digest")} == {
        k: v for k, v in old.items() if k != "format"}
    assert artifacts.load_version(frozen_copy).manifest.to_dict() == version.manifest.to_dict()
    assert sorted(p.name for p in frozen_copy.iterdir()) == sorted(
        ["config.yaml", "graph.pb", "manifest.json", "model.tflite", "tokenizer", "weight_map.json"])  # no temp file
    again = artifacts.upgrade_version(frozen_copy)
    assert again.manifest.to_dict() == version.manifest.to_dict()  # a second upgrade changes nothing


def test_an_upgrade_killed_before_its_rename_is_run_again(frozen_copy: Path) -> None:
    _as_format_1(frozen_copy)
    (frozen_copy / ".manifest.json.0123abcd.tmp").write_text("{", encoding="utf-8")  # what the kill left
    _refused(frozen_copy, "manifest format 1")
    assert artifacts.upgrade_version(frozen_copy).manifest.format == 2
    assert not (frozen_copy / ".manifest.json.0123abcd.tmp").exists()


@pytest.mark.parametrize(("tamper", "pattern"), [
    (lambda p, m: m.pop("files"), "has no files table"),
    (lambda p, m: (p / "weight_map.json").write_text("{}"), r"weight_map\.json: sha256 does not match"),
    (lambda p, m: (p / "extra.pkl").write_bytes(b"N."), r"extra\.pkl: not listed"),
    (lambda p, m: m.update(labels=["a", "b", "c"]), "labels must name one class per output"),
])
def test_upgrade_refuses_a_version_it_cannot_vouch_for(tamper: Callable[[Path, dict], Any], pattern: str,
                                                       frozen_copy: Path) -> None:
    manifest = _as_format_1(frozen_copy)
    tamper(frozen_copy, manifest)
    _write(frozen_copy, manifest)
    before = (frozen_copy / artifacts.MANIFEST).read_bytes()
    with pytest.raises(ModelError, match=pattern):
        artifacts.upgrade_version(frozen_copy)
    assert (frozen_copy / artifacts.MANIFEST).read_bytes() == before


def test_cli_refuses_a_tampered_version_in_one_line(checkpoint: Path) -> None:
    manifest = _manifest(checkpoint)
    manifest["labels"] = ["negative", "positive", "neutral"]
    _write(checkpoint, manifest)
    done = subprocess.run([sys.executable, "-m", "lifecycle", "predict", str(checkpoint), "a fine film"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("Error:") and "manifest.json: does not match its digest" in lines[0]


def test_loading_stays_light(frozen: dict) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from lifecycle.artifacts import load_version\n"
        f"load_version(Path({str(frozen['outcome'].version)!r}))\n"
        "print(sorted(m for m in ('pydantic', 'yaml', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_names_spelled_in_artifacts_agree_with_their_modules() -> None:
    from lifecycle import compress, freeze, litert

    assert artifacts.GRAPH_FILE == freeze.GRAPH_FILE and artifacts.SERVING_FILE == litert.SERVING_FILE
    assert artifacts.RECIPE_STEPS == set(compress.STEPS) | set(compress.CONTEXT_STEPS)
    assert artifacts.SERVING_KERNELS == litert.KERNELS
    assert {freeze.input_dtype_for(n) for n in (10, 1000, 100_000)} == set(artifacts.INPUT_DTYPES)
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    assert all(getattr(BuiltinOperator, name) == code for code, name in litert._ALLOWED_CODES.items())
    assert BuiltinOperator.CUSTOM == litert._CUSTOM


def test_upgrade_command_seals_a_format_1_version_and_refuses_mlflow_uris(frozen_copy: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    _as_format_1(frozen_copy)
    done = CliRunner().invoke(app, ["upgrade", str(frozen_copy)])
    assert done.exit_code == 0, done.output
    assert "manifest format 2" in done.output and artifacts.load_version(frozen_copy).manifest.format == 2
    refused = CliRunner().invoke(app, ["upgrade", "models:/default/1"])
    assert refused.exit_code == 2 and "download the version" in refused.output
