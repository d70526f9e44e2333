"""The registry client reads MLflow's registry without mlflow: it never imports it, nor does the serving package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import registry_client
from lifecycle.errors import ConfigError, TrackingError

SERVING_MODULES = ("lifecycle.registry_client", "lifecycle.serving", "lifecycle.serving.config",
                   "lifecycle.serving.sources", "lifecycle.serving.registry", "lifecycle.serving.metrics",
                   "lifecycle.serving.app")


def test_registry_client_and_serving_import_no_mlflow() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {SERVING_MODULES!r}:\n    importlib.import_module(name)\n"
        "print('LOADED=' + ','.join(m for m in ('mlflow', 'lifecycle.tracking') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == "LOADED="


def test_registry_client_has_no_mlflow_import_even_inside_functions() -> None:
    tree = ast.parse(Path(registry_client.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "mlflow" or name == "lifecycle.tracking"}


def test_parse_registry_ref_forms() -> None:
    assert registry_client.parse_registry_ref("models:/m@champion") == ("alias", "m", "champion")
    assert registry_client.parse_registry_ref("models:/m/3") == ("version", "m", "3")
    assert registry_client.parse_registry_ref("runs:/abc") == ("run", "abc", registry_client.VERSION_ARTIFACT)
    assert registry_client.parse_registry_ref("runs:/abc/other") == ("run", "abc", "other")
    for bad in ("models:/m", "models:/m/x", "runs:/", "m@champion"):
        with pytest.raises(ConfigError, match="not a registry reference"):
            registry_client.parse_registry_ref(bad)


def test_copy_source_copies_a_local_directory_and_refuses_what_needs_mlflow(tmp_path: Path) -> None:
    version = tmp_path / "version"
    (version / "tokenizer").mkdir(parents=True)
    (version / "manifest.json").write_text("{}", encoding="utf-8")
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    for source in (str(version), version.as_uri()):
        assert registry_client.copies_without_mlflow(source, uri)
        copied = registry_client.copy_source(source, tmp_path / f"copy-{len(source)}", uri)
        assert sorted(p.name for p in copied.iterdir()) == ["manifest.json", "tokenizer"]
    assert registry_client.copies_without_mlflow("mlflow-artifacts:/1/abc/artifacts/version", "http://host:5000")
    for source, store in (("mlflow-artifacts:/1/abc/artifacts/version", uri), ("s3://bucket/version", uri)):
        assert not registry_client.copies_without_mlflow(source, store)
        with pytest.raises(TrackingError, match="only the mlflow client"):
            registry_client.copy_source(source, tmp_path / "refused", store)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(TrackingError, match="directory is missing"):
        registry_client.copy_source(str(tmp_path / "gone"), tmp_path / "copy-gone", uri)
