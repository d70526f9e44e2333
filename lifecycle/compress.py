"""Compression steps: pure functions over a graph's stored weights, each returning the new weights and a report.

A recipe is a comma-separated list of steps applied in order (``--recipe int8``, ``--recipe prune:0.8,int8``). The
storage of every tensor is recorded in the version's manifest, so restore knows how to read it back.

- ``fp16``: float16 storage, cast to float32 inside the graph (the embedding after its gather).
- ``int8``: symmetric int8 codes with a float32 scale per output channel (conv and dense kernels) or per row
  (embedding), dequantized inside the graph; the embedding is gathered as int8 first, so memory stays int8.
  Biases stay float32: they are a fraction of a percent of the bytes and carry the most precision per byte.
- ``prune:S``: magnitude pruning of each kernel and the embedding to sparsity S (zeros, which gzip shrinks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifecycle.errors import ConfigError, ModelError
from lifecycle.freeze import StoredTensor, Weights

INT8_MAX = 127


@dataclass(frozen=True)
class RecipeStep:
    """One parsed step of a recipe: its name and parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepReport:
    """What a step did: bytes before and after, and which tensors it changed."""

    name: str
    params: dict[str, Any]
    bytes_before: int
    bytes_after: int
    tensors: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """The manifest's ``recipe`` entry."""
        return {"name": self.name, "params": self.params, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "tensors": list(self.tensors)}


def _is_bias(name: str) -> bool:
    return name.endswith("/bias")


def _refuse_requantize(name: str, stored: StoredTensor, step: str) -> None:
    if stored.storage == "int8":
        raise ModelError(
            f"{step}: tensor {name} is already stored as int8; compressing it again only adds error. Apply "
            f"{step} to the frozen (float32) ancestor of this version instead."
        )


def quantize_fp16(weights: Weights) -> tuple[Weights, tuple[str, ...]]:
    """Store every float32 weight as float16."""
    out: Weights = {}
    changed = []
    for name, stored in weights.items():
        _refuse_requantize(name, stored, "fp16")
        if stored.storage == "float32":
            out[name] = StoredTensor("float16", stored.value.astype(np.float16))
            changed.append(name)
        else:
            out[name] = stored
    return out, tuple(changed)


def int8_axis(name: str) -> int:
    """The axis int8 scales run along: rows for the embedding, output channels (last axis) for kernels."""
    return 0 if name == "weights/embedding" else -1


def quantize_int8_array(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: ``values ~= codes * scale``; |error| <= scale / 2 element-wise."""
    reduce_axes = tuple(i for i in range(values.ndim) if i != axis % values.ndim)
    peak = np.max(np.abs(values), axis=reduce_axes, keepdims=True)
    # A channel of zeros (pruned away, or a pad row) keeps scale 1 so it stays exactly zero without dividing by 0.
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(values / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    if axis % values.ndim == values.ndim - 1:
        scale = scale.reshape(values.shape[-1])  # broadcasts along the last axis as it is
    return codes, scale


def quantize_int8(weights: Weights) -> tuple[Weights, tuple[str, ...]]:
    """Store kernels and the embedding as int8 codes plus float32 scales; biases are left as they are."""
    out: Weights = {}
    changed = []
    for name, stored in weights.items():
        _refuse_requantize(name, stored, "int8")
        if _is_bias(name):
            out[name] = stored
            continue
        axis = int8_axis(name)
        codes, scale = quantize_int8_array(stored.dequantize(), axis)
        out[name] = StoredTensor("int8", codes, scale, axis)
        changed.append(name)
    return out, tuple(changed)


def prune_magnitude(weights: Weights, sparsity: float) -> tuple[Weights, tuple[str, ...]]:
    """Zero the smallest-magnitude ``sparsity`` fraction of each kernel and of the embedding (biases are kept).

    Works on any storage; entries are ranked by their dequantized magnitude. The zeros are the mask: a later
    retrain reads it back from the stored values, so nothing extra is stored. Storage stays dense: the bytes
    shrink under gzip, not raw (a sparse storage is future work).
    """
    out: Weights = {}
    changed = []
    for name, stored in weights.items():
        if _is_bias(name) or sparsity == 0.0:
            out[name] = stored
            continue
        magnitude = np.abs(stored.dequantize())
        k = int(np.floor(sparsity * magnitude.size))
        if k == 0:
            out[name] = stored
            continue
        # Rank by magnitude and zero exactly k entries, so ties at the threshold do not overshoot the target.
        order = np.argpartition(magnitude.ravel(), k - 1)[:k]
        value = stored.value.copy()
        value.reshape(-1)[order] = 0
        out[name] = StoredTensor(stored.storage, value, stored.scale, stored.axis)
        changed.append(name)
    return out, tuple(changed)


STEPS: dict[str, Callable[..., tuple[Weights, tuple[str, ...]]]] = {
    "fp16": quantize_fp16,
    "int8": quantize_int8,
    "prune": prune_magnitude,
}
# Steps that take one parameter (``prune:0.8``) and how to read it.
PARAMETERS: dict[str, str] = {"prune": "sparsity"}


def parse_recipe(text: str) -> list[RecipeStep]:
    """``"fp16"`` or ``"int8"`` (comma-separated steps) -> steps; unknown steps are a ConfigError naming them."""
    steps = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        name, _, arg = raw.partition(":")
        if name not in STEPS:
            raise ConfigError(
                f"--recipe {text!r}: unknown step {name!r}. Steps available in this build: fp16, int8, prune:S."
            )
        if name not in PARAMETERS:
            if arg:
                raise ConfigError(f"--recipe {text!r}: step {name!r} takes no parameter. Received: {arg!r}.")
            steps.append(RecipeStep(name))
            continue
        try:
            sparsity = float(arg)
        except ValueError:
            raise ConfigError(
                f"--recipe {text!r}: prune needs a sparsity, e.g. prune:0.8. Received: {arg!r}."
            ) from None
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"--recipe {text!r}: prune sparsity must be in [0, 1). Received: {sparsity:g}.")
        steps.append(RecipeStep(name, {PARAMETERS[name]: sparsity}))
    if not steps:
        raise ConfigError(f"--recipe {text!r} names no step. Use e.g. --recipe int8 (steps: {', '.join(STEPS)}).")
    if len({s.name for s in steps} & {"fp16", "int8"}) > 1:
        raise ConfigError(f"--recipe {text!r}: fp16 and int8 are alternative storages; pick one.")
    return steps


def _total_bytes(weights: Weights) -> int:
    return sum(stored.nbytes for stored in weights.values())


def apply_recipe(weights: Weights, steps: list[RecipeStep]) -> tuple[Weights, list[StepReport]]:
    """Run the steps in order; the input is not modified."""
    reports = []
    for step in steps:
        before = _total_bytes(weights)
        weights, changed = STEPS[step.name](weights, **step.params)
        reports.append(StepReport(step.name, step.params, before, _total_bytes(weights), changed))
    return weights, reports
