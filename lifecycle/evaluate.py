"""Classification metrics from predicted probabilities: accuracy, macro-F1, a per-class report, a confusion matrix.

scikit-learn computes the scores (well tested, handles absent classes); matplotlib draws the confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """Scores of one model on one labelled split."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray
    labels: tuple[str, ...]
    n: int

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """The stable metric names of DESIGN.md (``test_accuracy``, ``test_macro_f1``)."""
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_macro_f1": self.macro_f1}


def evaluate_probabilities(probabilities: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...]) -> Evaluation:
    """Score argmax predictions against label ids."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    y_pred = np.asarray(probabilities).argmax(axis=1)
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    present = sorted(set(np.asarray(y_true).tolist()) | set(y_pred.tolist()))
    return Evaluation(
        accuracy=float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        macro_f1=float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=ids),
        labels=labels,
        n=int(len(y_true)),
    )


def per_class_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The per-class report as table rows (for MLflow's log_table and the terminal)."""
    return [{"label": name, **scores} for name, scores in evaluation.per_class.items()]


def plot_confusion(evaluation: Evaluation, path: Path, title: str) -> Path:
    """Write the confusion matrix as a PNG (row-normalised colours, raw counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = evaluation.confusion
    n = len(evaluation.labels)
    size = max(5.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), evaluation.labels, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), evaluation.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {evaluation.accuracy:.3f}, macro-F1 {evaluation.macro_f1:.3f}, n={evaluation.n}",
                 fontsize=10)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    color = "white" if matrix[i, j] / rows[i, 0] > 0.5 else "black"
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_size_accuracy(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Deployed size (log axis) against test accuracy, one labelled point per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        if row.get("test_accuracy") is None or not row.get("size_bytes"):
            continue
        label = row["recipe"] if row["recipe"] != "-" else row["kind"]
        x, y = row["size_bytes"] / 1e6, 100 * row["test_accuracy"]
        ax.scatter([x], [y], s=40)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    _log_axis(ax, matplotlib)
    ax.set_xlabel("deployed size, MB (serving form or model.keras + tokenizer: lifecycle.sizes; log scale)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, plt, path)


def _log_axis(ax: Any, matplotlib: Any) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Log x axis, labels, grid and legend of an experiment plot, then save it."""
    import matplotlib
    import matplotlib.pyplot as plt

    _log_axis(ax, matplotlib)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_experiment_size_accuracy(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """An experiment's cells: deployed size (log axis) against test accuracy, one colour per tokenizer kind, the
    Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = [r for r in rows if r.get("test_accuracy") is not None and r.get("deployed_bytes")]
    for kind in sorted({r["kind"] for r in points}):
        mine = [r for r in points if r["kind"] == kind]
        ax.scatter([r["deployed_bytes"] / 1e6 for r in mine], [100 * r["test_accuracy"] for r in mine], s=42,
                   label=kind)
    for r in points:
        ax.annotate(r["cell"], (r["deployed_bytes"] / 1e6, 100 * r["test_accuracy"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    front = sorted((r for r in points if r.get("pareto")), key=lambda r: r["deployed_bytes"])
    if front:
        ax.plot([r["deployed_bytes"] / 1e6 for r in front], [100 * r["test_accuracy"] for r in front], "k--",
                linewidth=1, alpha=0.6, label="Pareto front")
    return _finish(fig, ax, path, title, "deployed size, MB (graph + tokenizer; log scale)", "test accuracy, %")


def plot_budget_search(result: Any, path: Path, title: str) -> Path:
    """A ``compress --budget`` search (``lifecycle.budget.SearchResult``): each trial's deployed size (serving form +
    tokenizer, log axis) against its validation metric, the Pareto front, the budget's line and the chosen trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lifecycle.experiment import pareto_front

    wanted = result.budget
    rows = [t.row() for t in result.trials if t.metric is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for within, colour, label in ((True, "tab:green", "within budget"), (False, "tab:red", "over budget")):
        mine = [r for r in rows if r["within_budget"] is within]
        ax.scatter([r["size_bytes"] / 1e6 for r in mine], [100 * r["validation_metric"] for r in mine], s=36,
                   color=colour, label=label)
    for r in rows:
        ax.annotate(str(r["trial"]), (r["size_bytes"] / 1e6, 100 * r["validation_metric"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = [rows[i] for i in pareto_front(rows, "size_bytes", "validation_metric")]
    if front:
        ax.plot([r["size_bytes"] / 1e6 for r in front], [100 * r["validation_metric"] for r in front], "k--",
                linewidth=1, alpha=0.6, label="Pareto front")
    parent = result.parent_metric
    floor = parent * (1 - wanted.amount / 100) if wanted.relative else parent - wanted.amount / 100
    ax.axhline(100 * floor, color="tab:orange", linewidth=1, label=f"budget: {wanted.amount:g} {wanted.unit}")
    ax.axhline(100 * parent, color="grey", linewidth=0.8, linestyle=":", label="parent")
    if result.chosen is not None:
        ax.scatter([result.chosen.size_bytes / 1e6], [100 * result.chosen.metric], s=140, facecolors="none",
                   edgecolors="black", label=f"chosen: {result.chosen.label}")
    return _finish(fig, ax, path, title, "deployed size, MB (model.tflite + tokenizer; log scale)",
                   f"validation {wanted.metric}, %")


def plot_oov_vocab(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Unk (out-of-vocabulary) rate on the test split against vocabulary size (log axis), one line per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    points = [r for r in rows if r.get("vocab_size") and r.get("test_unk_rate") is not None]
    for kind in sorted({r["kind"] for r in points}):
        mine = sorted((r for r in points if r["kind"] == kind), key=lambda r: r["vocab_size"])
        ax.plot([r["vocab_size"] for r in mine], [100 * r["test_unk_rate"] for r in mine], "o-", label=kind)
    return _finish(fig, ax, path, title, "vocabulary size (ids; log scale)", "unk tokens on test, %")
