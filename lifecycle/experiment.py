"""Experiment grids: the YAML schema of ``lifecycle experiment tokenizers``, its expansion into cells, each cell's
config hash, and the Pareto front of the results. Pure: no TensorFlow, no MLflow (the runner is
``lifecycle.workflows.experiment``).

```yaml
name: mr-tokenizers
base: ../mr-word.yaml            # a training config, relative to this file (default: the schema defaults)
set: {train.epochs: 10}          # dotted overrides applied to every cell
grid:                            # sub-grids; in each, a list is an axis and a scalar is fixed
  - {label: "bpe-{vocab_size}", tokenizer.kind: bpe, tokenizer.max_len: 80,
     tokenizer.bpe.vocab_size: [1000, 4000, 8000, 16000]}
  - {label: "word-min{min_count}", tokenizer.kind: word, tokenizer.word.min_count: [1, 2, 5]}
compress: int8                   # recipe applied to the frozen cell; null: freeze only
freeze: true                     # false: checkpoints only
workers: auto                    # cells in parallel (auto: one per core, one TF thread each)
```
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lifecycle.config import Config, load_config, merge, read_yaml, set_dotted, validate, validate_schema
from lifecycle.errors import ConfigError

# Keys that change how fast a cell runs but not what it computes: left out of the cell hash, so a grid rerun with
# other workers still finds its finished cells.
HASH_EXCLUDED = ("train.threads", "tracking", "data.max_text_chars")  # the last: a bound on input, not what is computed
LABEL_KEY = "label"


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Experiment name (MLflow experiment "
                      "and the folder of its cells under versions/experiments/).")
    base: str | None = Field(None, description="Training config every cell starts from, relative to this file; "
                             "default the schema defaults (the embedded chatterbot corpus).")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides for every cell.")
    grid: list[dict[str, Any]] = Field(..., min_length=1, description="Sub-grids: dotted key -> value or list of "
                                       "values (an axis); optional `label`, a format string over the keys' last parts.")
    freeze: bool = Field(True, description="Freeze each trained cell (deployed size and accuracy need it).")
    compress: str | None = Field("int8", description="Recipe applied to each frozen cell; null: none.")
    workers: int | Literal["auto"] = Field("auto", description="Cells run at once, each in its own process; auto: "
                                           "one per core (capped by the cells to run).")
    register_model: bool = Field(False, description="Register each cell's versions in the model registry.")

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or auto")
        return value


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its label, the dotted overrides that make it, its resolved config and hash."""

    label: str
    overrides: dict[str, Any]
    config: Config
    hash: str

    def params(self) -> dict[str, str]:
        """What the MLflow UI groups by: kind, vocabulary size asked for, min count, dims, and every override."""
        cfg = self.config
        tok = cfg.tokenizer
        requested = tok.bpe.vocab_size if tok.kind == "bpe" else tok.word.max_size
        params = {
            "cell.label": self.label,
            "cell.kind": tok.kind if tok.kind == "bpe" or not tok.word.word2vec.enabled else "word2vec",
            "cell.vocab_size_requested": "-" if requested is None else str(requested),
            "cell.min_count": str(tok.word.min_count) if tok.kind == "word" else "-",
            "cell.dim": str(cfg.model.embedding_dim),
            "cell.embedding_init": cfg.model.embedding_init,
            "cell.max_len": str(tok.max_len),
            "cell.hash": self.hash,
        }
        params.update({f"cell.set.{key}": json.dumps(value) for key, value in self.overrides.items()})
        return params


def load_experiment(path: Path) -> ExperimentConfig:
    """Read and validate an experiment file; errors name the file and the key."""
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return validate_schema(ExperimentConfig, data, str(path),
                           f"Allowed: {', '.join(ExperimentConfig.model_fields)}.")


def _dotted(mapping: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Dotted keys -> a nested mapping, the form the config schema validates."""
    nested: dict[str, Any] = {}
    for key, value in mapping.items():
        parts = str(key).split(".")
        if not all(parts):
            raise ConfigError(f"{source}: {key!r} is not a dotted key like tokenizer.bpe.vocab_size.")
        set_dotted(nested, str(key), value, source)
    return nested


def _label(template: str | None, overrides: Mapping[str, Any], source: str) -> str:
    names = {key.split(".")[-1]: value for key, value in overrides.items()}
    if template is None:
        parts = [str(value) if key.endswith(".kind") else f"{key.split('.')[-1]}={value}"
                 for key, value in overrides.items()]
        return " ".join(parts) or "base"
    try:
        return template.format_map(names)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConfigError(f"{source}: label {template!r} names {exc}, which is not a key of this sub-grid "
                          f"(available: {', '.join(names) or 'none'}).") from None


def cell_hash(cfg: Config, stages: Mapping[str, Any]) -> str:
    """12 hex digits over what a cell computes: its config (less HASH_EXCLUDED) and the stages after training."""
    data = cfg.to_dict()
    for dotted in HASH_EXCLUDED:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    payload = json.dumps({"config": data, "stages": dict(stages)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def expand(exp: ExperimentConfig, source: Path) -> list[Cell]:
    """Every cell of the grid, in file order: each sub-grid's axes crossed, the base config, ``set`` and the cell's
    own values merged (in that order) and validated. Two cells that compute the same thing are an error."""
    base_path = (source.parent / exp.base).resolve() if exp.base else None
    base = load_config(base_path) if base_path else Config()
    base_data = merge(base.to_dict(), _dotted(exp.set, f"{source}: set"))
    stages = {"freeze": exp.freeze, "compress": exp.compress if exp.freeze else None}
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for index, sub in enumerate(exp.grid):
        where = f"{source}: grid[{index}]"
        template = sub.get(LABEL_KEY)
        if template is not None and not isinstance(template, str):
            raise ConfigError(f"{where}: label must be a string like \"bpe-{{vocab_size}}\".")
        fixed = {k: v for k, v in sub.items() if k != LABEL_KEY}
        axes = {k: v for k, v in fixed.items() if isinstance(v, list)}
        for key, values in axes.items():
            if not values:
                raise ConfigError(f"{where}: {key} is an empty list; give at least one value.")
        for combo in itertools.product(*axes.values()):
            overrides = {k: (dict(zip(axes, combo, strict=True))[k] if k in axes else v) for k, v in fixed.items()}
            label = _label(template, overrides, where)
            data = merge(base_data, _dotted(overrides, where))
            data["name"] = f"{exp.name}-{_slug(label)}"
            data = merge(data, {"tracking": {"experiment": exp.name, "register_model": exp.register_model}})
            cfg = validate(data, f"{where} ({label})")
            digest = cell_hash(cfg, stages)
            if digest in seen:
                raise ConfigError(f"{where}: cell {label!r} computes the same as cell {seen[digest]!r}; drop one.")
            seen[digest] = label
            cells.append(Cell(label, overrides, cfg, digest))
    return cells


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in label).strip("-") or "cell"


def pareto_front(rows: Sequence[Mapping[str, Any]], size_key: str, score_key: str) -> list[int]:
    """Indices of the rows no other row beats: none is at most as large and at least as accurate, and strictly
    better in one. Rows missing either value are left out. Sorted by size."""
    points = [(i, float(r[size_key]), float(r[score_key])) for i, r in enumerate(rows)
              if r.get(size_key) is not None and r.get(score_key) is not None]
    front = [i for i, size, score in points
             if not any(s <= size and a >= score and (s < size or a > score) for _, s, a in points)]
    return sorted(front, key=lambda i: float(rows[i][size_key]))
