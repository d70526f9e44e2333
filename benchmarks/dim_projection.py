"""``dim:R``'s factorization of E W against the projection of E alone (what the step did until 2026-12-03), on the
validation split, through the budget search's own evaluator (so the figures are what the search would see).

For each set: the frozen float32 parent of benchmarks/budget_bench.py (trained there from the shipped config, seed
13, when missing), then each recipe, once with today's ``dim`` and once with E projected on its own top R right
singular vectors (E P, P^T W; kept here as the reference). Prints one line per (set, recipe, projection) with the
validation accuracy and the points lost against the parent, and writes benchmarks/out/dim_projection.json; the
README is not rewritten (its `dim:R` table quotes these lines).

    .venv/bin/python benchmarks/dim_projection.py                      # TREC BPE and MR, the README's recipes
    .venv/bin/python benchmarks/dim_projection.py --only trec-bpe --recipe vocab:coverage=0.99,dim:152,int4
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated sets (default: trec-bpe,mr-word)")
    parser.add_argument("--recipe", action="append", help="a recipe instead of the set's defaults (repeatable)")
    args = parser.parse_args()
    from budget_bench import _parents

    from lifecycle import artifacts, compress
    from lifecycle.workflows.budgeting import _Evaluator
    from lifecycle.workflows.graphs import serving_kernels_of

    factorized = compress.STEPS["dim"]
    rows = []
    for name in (args.only.split(",") if args.only else RECIPES):
        parent = artifacts.load_version(_parents(name)[0])
        for label, step in (("factorized", factorized), ("E alone", replace(factorized, transform=projected_alone))):
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
    OUT.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
