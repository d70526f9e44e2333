"""``dim:R``'s factorization of E W against the projection of E alone (what the step did until 2026-12-03), on the
validation split, through the budget search's own evaluator (so the figures are what the search would see), and
the factorization with each token's row weighted by its training count (``reduce_dim(..., row_weights)``, tried
2026-12-03 and not taken: ``--fidelity`` compares the two without int4 or tune, by agreement with the parent and KL).

For each set: the frozen float32 parent of benchmarks/budget_bench.py (trained there from the shipped config, seed
13, when missing), then each recipe once per projection (``--projection``): today's ``dim`` (factorized), the
count-weighted factorization, and E projected on its own top R right singular vectors (E P, P^T W; kept here as the
reference). Prints one line per (set, recipe, projection) with the
validation accuracy and the points lost against the parent, and writes benchmarks/out/dim_projection.json; the
README is not rewritten (its `dim:R` table quotes these lines).

    .venv/bin/python benchmarks/dim_projection.py                      # TREC BPE and MR, the README's recipes
    .venv/bin/python benchmarks/dim_projection.py --only trec-bpe --recipe vocab:coverage=0.99,dim:152,int4
    .venv/bin/python benchmarks/dim_projection.py --fidelity 40,64,96,152 \
        --only trec-bpe,mr-word,trec-word,banking77-word,stackoverflow-word
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = ROOT / "benchmarks" / "out" / "dim_projection.json"
RECIPES = {
    "trec-bpe": ["vocab:coverage=0.99,dim:152,int4", "vocab:coverage=0.99,dim:88,int4",
                 "vocab:coverage=0.99,dim:152,tune:3,int4", "vocab:coverage=0.99,dim:88,tune:3,int4"],
    "mr-word": ["vocab:coverage=0.99,dim:152,int4", "vocab:coverage=0.99,dim:88,int4",
                "vocab:coverage=0.99,dim:96,tune:3,int4"],
}


def count_weighted(weights: Any, context: Any, rank: int) -> tuple[Any, tuple[str, ...], dict]:
    """The factorization of E W with each token's row weighted by its count in the training split, plus one."""
    from lifecycle.compress import EMBEDDING, reduce_dim
    from tokenization.vocab import count_ids

    counts = count_ids(context.token_ids("train", "dim"), int(weights[EMBEDDING].shape[0]))
    return (*reduce_dim(weights, rank, counts.astype(float) + 1.0), {})


def projected_alone(weights: Any, rank: int) -> tuple[Any, tuple[str, ...]]:
    """The reference: E P and P^T W, P the top ``rank`` right singular vectors of E alone."""
    import numpy as np

    from lifecycle.compress import EMBEDDING
    from lifecycle.storage import StoredTensor

    table = weights[EMBEDDING].dequantize().astype(np.float64)
    if rank >= table.shape[1]:
        return weights, ()
    projection = np.linalg.svd(table, full_matrices=False)[2][:rank].T
    out = dict(weights)
    out[EMBEDDING] = StoredTensor("float32", (table @ projection).astype(np.float32))
    kernels = [name for name in weights if name.startswith("weights/conv_") and name.endswith("/kernel")]
    for name in kernels:
        kernel = weights[name].dequantize().astype(np.float64)
        out[name] = StoredTensor("float32", np.einsum("dr,wdf->wrf", projection, kernel).astype(np.float32))
    return out, (EMBEDDING, *kernels)


def fidelity(name: str, widths: list[int]) -> list[dict]:
    """``dim:R`` alone (float32, no tune) against the parent on the validation split, per weighting: how often the
    argmax agrees, the mean KL(parent || narrowed) and accuracy. Less noisy than accuracy alone."""
    import numpy as np
    from budget_bench import _parents

    from lifecycle import artifacts
    from lifecycle.compress import EMBEDDING, reduce_dim
    from lifecycle.freeze import FrozenGraph, emit_graph, input_dtype_for
    from lifecycle.workflows.budgeting import _Evaluator
    from lifecycle.workflows.graphs import _graph_probabilities, serving_kernels_of
    from tokenization.vocab import count_ids

    parent = artifacts.load_version(_parents(name)[0])
    evaluator = _Evaluator(parent, "accuracy", serving_kernels_of(parent))
    source, validation = evaluator.source, evaluator.context.arrays("validation", "dim")

    def probabilities(weights: Any) -> Any:
        dtype = input_dtype_for(weights[EMBEDDING].shape[0])
        graph = emit_graph(weights, source.kernel_sizes, source.max_len, dtype)
        frozen = FrozenGraph(graph, weights, source.kernel_sizes, source.weight_map, dtype, source.max_len)
        return _graph_probabilities(frozen, validation.x)

    before = probabilities(source.weights)
    counts = count_ids(evaluator.context.token_ids("train", "dim"), int(source.weights[EMBEDDING].shape[0]))
    rows = []
    for width in widths:
        for label, row_weights in (("alike (the step)", None), ("training counts + 1", counts + 1.0)):
            after = probabilities(reduce_dim(source.weights, width, row_weights)[0])
            row = {"set": name, "width": width, "weighting": label,
                   "agreement": float((after.argmax(1) == before.argmax(1)).mean()),
                   "kl": float((before * (np.log(before + 1e-12) - np.log(after + 1e-12))).sum(1).mean()),
                   "validation": float((after.argmax(1) == validation.y).mean())}
            print(f"{name} dim:{width} [{label}]: agreement {100 * row['agreement']:.1f}%, KL {row['kl']:.4f}, "
                  f"accuracy {100 * row['validation']:.2f}%", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated sets (default: trec-bpe,mr-word)")
    parser.add_argument("--recipe", action="append", help="a recipe instead of the set's defaults (repeatable)")
    parser.add_argument("--projection", help="comma-separated: factorized (the step), count-weighted, E alone "
                        "(default: all)")
    parser.add_argument("--fidelity", help="comma-separated widths: dim:R alone against the parent (agreement, KL) "
                        "per row weighting, instead of the recipes; writes benchmarks/out/dim_fidelity.json")
    args = parser.parse_args()
    sets = args.only.split(",") if args.only else list(RECIPES)
    if args.fidelity:
        widths = [int(w) for w in args.fidelity.split(",")]
        target = OUT.with_name("dim_fidelity.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps([row for name in sets for row in fidelity(name, widths)], indent=1))
        return
    from budget_bench import _parents

    from lifecycle import artifacts, compress
    from lifecycle.workflows.budgeting import _Evaluator
    from lifecycle.workflows.graphs import serving_kernels_of

    factorized = compress.STEPS["dim"]
    variants = {"factorized": factorized, "count-weighted": replace(factorized, needs_context=True,
                                                                     transform=count_weighted),
                "E alone": replace(factorized, transform=projected_alone)}
    chosen = args.projection.split(",") if args.projection else list(variants)
    rows = []
    for name in sets:
        parent = artifacts.load_version(_parents(name)[0])
        for label, step in ((label, variants[label]) for label in chosen):
            compress.STEPS["dim"] = step
            evaluator = _Evaluator(parent, "accuracy", serving_kernels_of(parent))
            before = evaluator.parent_metric()
            for recipe in args.recipe or RECIPES[name]:
                measured = evaluator(tuple(recipe.split(",")))
                row = {"set": name, "recipe": recipe, "projection": label, "parent": before,
                       "validation": measured.metric, "loss_points": 100 * (before - measured.metric),
                       "size_bytes": measured.size_bytes}
                print(f"{name} {recipe} [{label}]: {100 * measured.metric:.2f}% "
                      f"(parent {100 * before:.2f}%, lost {row['loss_points']:.2f})", flush=True)
                rows.append(row)
        compress.STEPS["dim"] = factorized
    OUT.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(OUT.read_text()) if OUT.is_file() else []
    keys = {(r["set"], r["recipe"], r["projection"]) for r in rows}
    OUT.write_text(json.dumps([r for r in previous if (r["set"], r["recipe"], r["projection"]) not in keys] + rows,
                              indent=1))


if __name__ == "__main__":
    main()
