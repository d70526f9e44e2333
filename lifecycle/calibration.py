"""Calibrated probabilities: temperature scaling fitted on the validation split, the expected calibration error
(ECE), a reliability diagram, and abstaining under a probability threshold.

Every version's model ends in a softmax, so its output is ``p = softmax(z)``. Temperature scaling (Guo et al. 2017)
replaces it by ``softmax(z / T)``; since ``log p = z - logsumexp(z)`` and a softmax ignores a constant shift, that is
exactly ``softmax(log(p) / T)``, computed here from the probabilities any runtime returns (Keras, graph.pb, LiteRT).
So no graph changes: T lives in the version's manifest (``calibration.temperature``; absent means T = 1) and
``lifecycle.inference.Predictor`` applies it. T > 1 softens over-confident probabilities; the argmax, hence accuracy,
never changes.

T minimises the negative log-likelihood (NLL) on the validation split: a bounded 1-D search over log T (the NLL is
convex in 1/T, so the search finds the global minimum). The ECE uses 15 equal-width bins of the top probability
(``(0, 1/15], ..., (14/15, 1]``), weighted by the share of texts in each bin, as Guo et al. report it.

Numpy only, plus scipy's bounded scalar minimiser for the fit (scipy comes with scikit-learn) and matplotlib for the
diagram, both imported when used: a serving process applies T with numpy alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lifecycle.manifest import Manifest

BINS = 15
# What predict and serve answer for a text whose calibrated top probability is under the abstain threshold.
UNKNOWN = "unknown"
# The temperature search's range: T outside it would mean the probabilities carry almost no information (T -> inf) or
# a model trained far past over-confidence's opposite; both are clipped to the bound rather than trusted.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The guard on a fitted T (``held_out_gain``): T is kept only when, fitted on the other folds of the validation split,
# it lowers the held-out NLL by more than GUARD_Z standard errors of the per-text gain (a one-sided test at 5%).
# On a small or already calibrated validation split the in-sample fit always "improves" the NLL it was fitted on;
# the held-out gain says whether it will on new texts.
GUARD_FOLDS = 5
GUARD_Z = 1.645
GUARD_SEED = 0
# log(0) for probabilities a float32 softmax rounded to 0: the smallest normal float32, so log p stays finite.
_TINY = float(np.finfo(np.float32).tiny)


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _TINY, None))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (float64 inside)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row, as float32 (T = 1 returns the input unchanged)."""
    probabilities = np.asarray(probabilities)
    if temperature == 1.0 or probabilities.size == 0:
        return probabilities.astype(np.float32, copy=False)
    return softmax(_log_probabilities(probabilities) / temperature).astype(np.float32)


def negative_log_likelihood(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p[y]`` over the rows (probabilities rounded to 0 count as float32's smallest normal value)."""
    y = np.asarray(y, dtype=np.int64)
    if not len(y):
        return 0.0
    return float(-np.mean(_log_probabilities(probabilities)[np.arange(len(y)), y]))


def fit_temperature(probabilities: np.ndarray, y: np.ndarray) -> float:
    """The T in ``TEMPERATURE_BOUNDS`` that minimises the NLL of ``softmax(log(p) / T)`` against label ids ``y``.

    Returns 1.0 when there is nothing to fit on (no rows).
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if not len(y):
        return 1.0
    logp = _log_probabilities(probabilities)
    picked = logp[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        top = z.max(axis=1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return float(np.mean(lse - picked / math.exp(log_t)))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


@dataclass(frozen=True)
class HeldOutGain:
    """What temperature scaling gains on texts it was not fitted on: the mean per-text NLL drop under T fitted on
    the other folds, its standard error, and whether that clears the guard."""

    gain: float
    standard_error: float
    folds: int
    z: float
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return {"held_out_nll_gain": self.gain, "standard_error": self.standard_error, "folds": self.folds,
                "z": self.z, "kept": self.kept}


def held_out_gain(probabilities: np.ndarray, y: np.ndarray, folds: int = GUARD_FOLDS, z: float = GUARD_Z,
                  seed: int = GUARD_SEED) -> HeldOutGain:
    """Cross-validated NLL gain of temperature scaling on a labelled split (``folds`` seeded folds).

    Each fold's texts are scored under T fitted on the other folds, against T = 1; the per-text differences
    ``-log p[y] (T=1) - (-log p[y] (T))`` give a mean and its standard error. ``kept`` is ``gain > z * se``: T is
    worth applying only when it pays on held-out texts beyond their noise. Fewer than ``2 * folds`` rows: not kept.
    """
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if n < 2 * folds:
        return HeldOutGain(0.0, 0.0, folds, z, False)
    logp = _log_probabilities(probabilities)
    picked = logp[np.arange(n), y]
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    gains = np.empty(n, dtype=np.float64)
    for fold in range(folds):
        held = fold_of == fold
        temperature = fit_temperature(probabilities[~held], y[~held])
        z_held = logp[held] / temperature
        top = z_held.max(axis=1)
        nll_t = top + np.log(np.exp(z_held - top[:, None]).sum(axis=1)) - picked[held] / temperature
        gains[held] = -picked[held] - nll_t
    gain = float(gains.mean())
    se = float(gains.std(ddof=1) / math.sqrt(n))
    return HeldOutGain(gain, se, folds, z, gain > z * se)


@dataclass(frozen=True)
class Reliability:
    """Per-bin counts, mean top probability and accuracy over equal-width bins of the top probability."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        total = int(self.counts.sum())
        if not total:
            return 0.0
        return float(np.sum(self.counts / total * np.abs(self.accuracy - self.confidence)))


def reliability(probabilities: np.ndarray, y: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin the rows by their top probability into ``bins`` equal-width bins ``(lo, hi]`` (the first one [0, 1/bins])."""
    probabilities = np.asarray(probabilities)
    y = np.asarray(y, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    confidence = np.zeros(bins)
    accuracy = np.zeros(bins)
    if len(y):
        top = probabilities.max(axis=1).astype(np.float64)
        correct = (probabilities.argmax(axis=1) == y).astype(np.float64)
        index = np.clip(np.ceil(top * bins).astype(np.int64) - 1, 0, bins - 1)
        counts = np.bincount(index, minlength=bins)
        filled = counts > 0
        confidence[filled] = np.bincount(index, weights=top, minlength=bins)[filled] / counts[filled]
        accuracy[filled] = np.bincount(index, weights=correct, minlength=bins)[filled] / counts[filled]
    return Reliability(edges, counts, confidence, accuracy)


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """``sum_b |B_b|/n * |accuracy(B_b) - confidence(B_b)|`` over equal-width bins of the top probability."""
    return reliability(probabilities, y, bins).ece


@dataclass(frozen=True)
class Selective:
    """What abstaining under ``threshold`` does on a labelled split: the share of texts answered and the accuracy
    on those (``answered_accuracy`` is None when none is answered)."""

    threshold: float
    coverage: float
    answered_accuracy: float | None
    answered: int
    n: int


def abstains(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """True for the rows whose top probability is under ``threshold`` (None or 0: never)."""
    probabilities = np.asarray(probabilities)
    if not threshold:
        return np.zeros(len(probabilities), dtype=bool)
    return probabilities.max(axis=1) < threshold


def selective(probabilities: np.ndarray, y: np.ndarray, threshold: float) -> Selective:
    """Coverage and accuracy on answered texts when texts under ``threshold`` are refused."""
    probabilities = np.asarray(probabilities)
    y = np.asarray(y, dtype=np.int64)
    answered = ~abstains(probabilities, threshold)
    count = int(answered.sum())
    accuracy = float(np.mean(probabilities[answered].argmax(axis=1) == y[answered])) if count else None
    return Selective(float(threshold), count / len(y) if len(y) else 0.0, accuracy, count, int(len(y)))


def check_threshold(value: Any, where: str) -> float | None:
    """An abstain threshold as a float in [0, 1] (None stays None).

    Raises:
        ValueError: naming ``where``, the rule and the value received.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where} must be a probability in [0, 1] (texts whose calibrated top probability is under "
                         f"it get the label {UNKNOWN!r}). Received: {value!r}.")
    return float(value)


def split_scores(probabilities: np.ndarray, y: np.ndarray, temperature: float,
                 abstain_threshold: float | None = None) -> dict[str, Any]:
    """NLL and ECE of a labelled split before and after ``temperature``, and with ``abstain_threshold`` the share of
    texts answered (``coverage``) and the accuracy on them (``answered_accuracy``), on calibrated probabilities."""
    after = apply_temperature(probabilities, temperature)
    scores: dict[str, Any] = {
        "nll_before": negative_log_likelihood(probabilities, y), "nll_after": negative_log_likelihood(after, y),
        "ece_before": expected_calibration_error(probabilities, y),
        "ece_after": expected_calibration_error(after, y), "n": int(len(y))}
    if abstain_threshold:
        chosen = selective(after, y, abstain_threshold)
        scores.update({"coverage": chosen.coverage, "answered_accuracy": chosen.answered_accuracy})
    return scores


def fit_calibration(validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None = None,
                    abstain_threshold: float | None = None, fit: bool = True, guard: bool = True
                    ) -> dict[str, Any]:
    """The manifest's ``calibration`` entry: T fitted on ``validation`` (probabilities, label ids), NLL and ECE
    before and after on both splits, and what ``abstain_threshold`` does on the test split.

    ``fit=False`` keeps T = 1 and only measures (``calibration.temperature: false`` in the config). A fitted T
    that does not clear ``held_out_gain``'s guard is recorded as ``fitted_temperature`` and T = 1 is used, unless
    ``guard`` is False (``calibration.guard: false``).
    """
    val_p, val_y = validation
    fitted = fit_temperature(val_p, val_y) if fit and len(val_y) else 1.0
    held_out = held_out_gain(val_p, val_y) if fit and len(val_y) else None
    temperature = fitted if held_out is None or held_out.kept or not guard else 1.0
    entry: dict[str, Any] = {
        "method": "temperature" if fit else "none",
        "temperature": temperature,
        "fitted_on": "validation split",
        "bins": BINS,
        "abstain_threshold": abstain_threshold,
        "validation": split_scores(val_p, val_y, temperature),
    }
    if held_out is not None:
        entry["fitted_temperature"] = fitted
        entry["guard"] = {**held_out.to_dict(), "enabled": guard}
    if test is not None and len(test[1]):
        entry["test"] = split_scores(test[0], test[1], temperature, abstain_threshold)
    return entry


def entry_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of a calibration entry: ``calibration.temperature``, ``calibration.ece_before`` /
    ``ece_after`` and ``nll_before`` / ``nll_after`` (on the test split when measured there, else validation),
    ``calibration.val_*`` for the validation split, and the abstain threshold's coverage and answered accuracy."""
    metrics = {"calibration.temperature": float(entry["temperature"])}
    if entry.get("guard"):
        metrics["calibration.fitted_temperature"] = float(entry["fitted_temperature"])
        metrics["calibration.held_out_nll_gain"] = float(entry["guard"]["held_out_nll_gain"])
    split = entry.get("test") or entry.get("validation") or {}
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        if key in split:
            metrics[f"calibration.{key}"] = float(split[key])
        if key in entry.get("validation", {}):
            metrics[f"calibration.val_{key}"] = float(entry["validation"][key])
    if entry.get("abstain_threshold") is not None:
        metrics["calibration.abstain_threshold"] = float(entry["abstain_threshold"])
        for key in ("coverage", "answered_accuracy"):
            if split.get(key) is not None:
                metrics[f"calibration.{key}"] = float(split[key])
    return metrics


def temperature_of(manifest: Manifest) -> float:
    """A version's temperature: its manifest's ``calibration.temperature``, 1.0 for versions made without one."""
    return manifest.temperature


def abstain_threshold_of(manifest: Manifest) -> float | None:
    """A version's default abstain threshold (``calibration.abstain_threshold``), None when it has none."""
    return manifest.abstain_threshold


def plot_reliability(probabilities: np.ndarray, y: np.ndarray, temperature: float, path: Path, title: str) -> Path:
    """A reliability diagram: accuracy against mean top probability per bin, before and after temperature scaling,
    with the share of texts per bin below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = reliability(probabilities, y)
    after = reliability(apply_temperature(probabilities, temperature), y)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, alpha=0.6, label="perfectly calibrated")
    for found, name, marker in ((before, f"raw (ECE {before.ece:.3f})", "o-"),
                                (after, f"T = {temperature:.2f} (ECE {after.ece:.3f})", "s-")):
        filled = found.counts > 0
        ax.plot(found.confidence[filled], found.accuracy[filled], marker, markersize=4, label=name)
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\n{BINS} equal-width bins of the top probability, n={len(y)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    width = 1.0 / BINS
    n = max(int(before.counts.sum()), 1)
    hist.bar(before.edges[:-1] + width * 0.25, before.counts / n, width=width * 0.45, align="edge", label="raw")
    hist.bar(after.edges[:-1] + width * 0.55, after.counts / n, width=width * 0.45, align="edge", label="scaled")
    hist.set_xlabel("top probability")
    hist.set_ylabel("share of texts")
    hist.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
