"""The fidelity bounds live in lifecycle.fidelity, with the values the steps have always checked against."""

from __future__ import annotations

from lifecycle import fidelity, importers, litert
from lifecycle.workflows import graphs


def test_bounds_keep_their_values() -> None:
    assert fidelity.freeze_bound("float32") == 1e-5
    assert fidelity.freeze_bound("mixed_bfloat16") == 2e-2
    assert fidelity.freeze_bound("float16") == 2e-2
    assert fidelity.RESTORE == 1e-5
    assert fidelity.SERVING_EXACT == 1e-5
    assert fidelity.SERVING_HYBRID == 0.05
    assert fidelity.IMPORT == {"float32": 1e-5, "float16": 1e-5, "int8": 1e-2}
    assert fidelity.WARMUP_SUM == 1e-3


def test_import_limit_allows_argmax_flips_only_for_int8() -> None:
    assert fidelity.import_limit("logits", 1e-2) == 1e-2
    assert fidelity.import_limit("probabilities", 1e-5) == 1e-5
    assert fidelity.import_limit("predictions", fidelity.IMPORT["float16"]) == 0.0
    assert fidelity.import_limit("predictions", fidelity.IMPORT["int8"]) == 0.01


def test_steps_read_the_named_bounds() -> None:
    assert graphs.SERVING_BOUND is fidelity.SERVING_EXACT
    assert litert.HYBRID_BOUND is fidelity.SERVING_HYBRID
    assert importers.BOUNDS is fidelity.IMPORT
