"""int4 scales per row/channel vs per group of G input elements: error against float32 on a frozen version's test
split (max and mean |probability difference|, accuracy, scale bytes), then int8 and int4 through `compress`.

    python benchmarks/int4_granularity.py FROZEN_VERSION OUTPUT_DIR

Groups are simulated in numpy (lifecycle stores int4 per row/channel only); the last two lines are real versions.
"""
import sys
from pathlib import Path

import numpy as np

from lifecycle import artifacts
from lifecycle.freeze import GraphRunner, emit_graph
from lifecycle.storage import StoredTensor, int8_axis, quantize_int8_array
from lifecycle.workflows import load_graph_version, run_compress
from lifecycle.workflows.graphs import _check_arrays
from tokenization.factory import load_tokenizer

src = sys.argv[1]
root = Path(sys.argv[2])
version = artifacts.load_version(Path(src))
frozen = load_graph_version(version)
arrays, on, _ = _check_arrays(version, load_tokenizer(version.tokenizer_dir))


def probs(weights):
    r = GraphRunner(emit_graph(weights, frozen.kernel_sizes, frozen.max_len, frozen.input_dtype), "m",
                    frozen.max_len, frozen.input_dtype)
    try:
        return r.run(arrays.x)
    finally:
        r.close()


base = probs(frozen.weights)


def grouped(values, axis, group):
    """Groups of ``group`` consecutive elements along the input axis (embedding: along a row; kernels: axis -2)."""
    v = np.moveaxis(values, 1 if values.ndim == 2 and axis == 0 else -2, -1)  # group axis last
    shp = v.shape
    n = shp[-1]
    pad = (-n) % group
    w = np.concatenate([v, np.zeros((*shp[:-1], pad), np.float32)], -1).reshape(*shp[:-1], -1, group)
    peak = np.abs(w).max(-1, keepdims=True)
    s = np.where(peak > 0, peak / 7, 1).astype(np.float32)
    q = np.clip(np.rint(w / s), -7, 7) * s
    q = q.reshape(*shp[:-1], -1)[..., :n]
    return np.moveaxis(q, -1, 1 if values.ndim == 2 and axis == 0 else -2), s.size * 4


def report(label, weights, extra):
    p = probs(weights)
    acc = float(np.mean(p.argmax(1) == arrays.y))
    print(f"{label:24s} max|dp| {np.abs(p - base).max():.4f} mean|dp| {np.abs(p - base).mean():.5f} "
          f"acc {acc:.4f} (f32 {np.mean(base.argmax(1) == arrays.y):.4f}) {extra}", flush=True)


def simulate(label, quantize):
    """Every weight but the biases through ``quantize(values, axis) -> (float32 values, scale bytes)``."""
    w = {}
    scale_bytes = 0
    for name, st in frozen.weights.items():
        if name.endswith("/bias"):
            w[name] = st
            continue
        q, sb = quantize(st.value, int8_axis(name))
        scale_bytes += sb
        w[name] = StoredTensor("float32", q.astype(np.float32))
    report(label, w, f"scale bytes {scale_bytes}")


def per_channel(top):
    def quantize(values, axis):
        codes, scale = quantize_int8_array(values, axis, top)
        return codes.astype(np.float32) * scale, scale.nbytes
    return quantize


simulate("int8 per-channel", per_channel(127))
simulate("int4 per-channel", per_channel(7))
for group in (128, 64, 32, 16):
    simulate(f"int4 group={group}", lambda values, axis, g=group: grouped(values, axis, g))
for recipe in ("int8", "int4"):
    out = run_compress(src, recipe, root / recipe, track=False)
    m = artifacts.load_version(out.version).manifest
    print(recipe, "graph.pb", (out.version / "graph.pb").stat().st_size, "model.tflite", m.serving.bytes,
          "weights_bytes", m.sizes["weights_bytes"], {k: round(v, 4) for k, v in out.metrics.items()
                                                      if k in ("test_accuracy", "max_abs_diff_vs_parent")},
          "serving diff", m.serving.max_abs_diff_vs_graph, flush=True)
