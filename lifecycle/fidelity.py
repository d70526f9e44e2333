"""How close a derived model must stay to the one it was made from, at every step that re-expresses weights.

Each bound is the largest absolute difference allowed between two models' outputs on a check set (the test split,
or seeded id rows for imports) before the step writes anything; a step that misses its bound raises ModelError and
leaves no version behind. The values were measured on the MR and TREC models; a real bug (a kernel transposed or put
in the wrong place, a wrong mapping) misses them by orders of magnitude, not by a little. Stdlib only: the serving
path and the CLI import this without TensorFlow.
"""

from __future__ import annotations

# Freeze: graph.pb against the checkpoint's Keras model (probabilities). In float32 both compute with the same
# values, so only float rounding differs; a mixed-precision model was computed by Keras in 16 bits.
FREEZE_FLOAT32 = 1e-5
FREEZE_MIXED_PRECISION = 2e-2

# Restore: the restored Keras model against the graph it came from (probabilities). It computes with exactly the
# dequantized values the graph uses, whatever the storage (float16, int8 with scales, pruned zeros).
RESTORE = 1e-5

# Serving form (model.tflite) against graph.pb (probabilities), checked at export. Weight-only forms with exact
# kernels compute with the very values graph.pb does. Hybrid int8 kernels (LiteRT's dynamic-range kernels) round
# each call's activations to int8: measured 0.004-0.006 on MR and TREC; a kernel put in the wrong place gives
# differences near 1. The full-integer form (int8-act) has no bound: its agreement is measured and recorded.
SERVING_EXACT = 1e-5
SERVING_HYBRID = 0.05

# Import: our rebuilt CNN against the foreign file, by the weakest storage in the file (logits relative to their
# scale above 1, probabilities absolute). float16 constants are widened once at load, so the arithmetic is float32
# either way. Dynamic-range int8 runs hybrid kernels that also quantize each row's activations: measured 5.5e-4 on a
# small CNN; a wrong mapping (transposed kernel, swapped widths) is off by 1e-1 and more.
IMPORT = {"float32": 1e-5, "float16": 1e-5, "int8": 1e-2}
# Share of id rows whose argmax may change on import: none for float files; for int8, near-ties its activation
# rounding flips (at most 1% of rows).
IMPORT_FLIPS_INT8 = 0.01

# A served model's warm-up prediction: its probabilities must sum to 1 within this (softmax in float32).
WARMUP_SUM = 1e-3


def freeze_bound(precision: str) -> float:
    """The freeze check's bound for a checkpoint trained in ``precision`` (``train.precision``)."""
    return FREEZE_FLOAT32 if precision == "float32" else FREEZE_MIXED_PRECISION


def import_limit(kind: str, bound: float) -> float:
    """The limit on an import's difference of ``kind`` (logits, probabilities, or ``predictions``: the share of rows
    whose argmax changed) for a file whose weakest storage has ``bound`` (see :data:`IMPORT`)."""
    if kind != "predictions":
        return bound
    return 0.0 if bound <= IMPORT["float32"] else IMPORT_FLIPS_INT8
