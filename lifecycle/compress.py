"""Compression recipes: parsing, and the step table, in which each step owns its effects (weights, graph, serving).

A recipe is a comma-separated list of steps applied in order (``--recipe int8``, ``--recipe prune:0.8,int8``). The
storage of every tensor is recorded in the version's manifest, so restore knows how to read it back.

- ``fp16``: float16 storage, cast to float32 inside the graph (the embedding after its gather).
- ``int8``: symmetric int8 codes with a float32 scale per output channel (conv and dense kernels) or per row
  (embedding), dequantized inside the graph; the embedding is gathered as int8 first, so memory stays int8.
  Biases stay float32: they are a fraction of a percent of the bytes and carry the most precision per byte.
  ``int8:embedding=table`` gives the embedding one scale for the whole table instead (what TFLite's dynamic-range
  converter does): 4 bytes per row smaller, each row quantized against the largest value of the table.
- ``int4``: symmetric 4-bit codes in [-7, 7] with float16 scales along int8's axes (per row of the embedding, per
  output channel of a kernel), two codes per byte in graph.pb, unpacked inside the graph; the embedding is gathered
  packed, then unpacked, so memory holds half a byte per weight. Biases stay float32, as for int8. About half the
  bytes of int8 (the scales halve too); the serving form widens the codes to int8 (``lifecycle.storage.Int4Storage``);
  pruned, its codes may take the ``bitmask-nibbles`` sparse layout (a bit per code, not per byte).
- ``int3``: as ``int4`` with codes in [-3, 3], three bits a weight in graph.pb (three bit planes per row,
  ``lifecycle.storage.Int3Storage``); served widened to int8 like int4.
- ``prune:S``: magnitude pruning of each kernel and the embedding to sparsity S, stored in the sparse layout
  (nonzero codes plus a 1-bit-per-element mask, ``storage.encode_sparse``) wherever that makes the smaller file:
  on large tensors from about 3% zeros for float32 and 12.5% for int8; a tensor of a few KB stays dense, as its
  decode nodes would cost more than they save. The zeros are the mask a later retrain keeps. A storage step after
  (or before) ``prune`` keeps a sparse tensor sparse while that still saves bytes; each step's report records the
  layout of every tensor it changed.

Two steps need more than the weights: the parent's tokenizer and training data, handed to them as a
:class:`RecipeContext` (the steps above ignore it).

- ``vocab:N`` / ``vocab:coverage=C``: vocabulary pruning. Keep the embedding rows of the N ids most frequent in the
  training split (N counts the 4 special ids, which are always kept), or of the fewest ids that encode a fraction C of
  the training tokens; drop the rest and renumber. The tokenizer follows: a word tokenizer writes the shorter
  vocab.txt, a bpe tokenizer stores the kept ids beside its model (youtokentome's file cannot be edited) and maps
  after encoding; dropped tokens encode as unk. The graph's ``input_ids`` narrows with the vocabulary.
- ``tune:E``: fine-tune for at most E epochs on the training split to recover accuracy: the stored weights are
  dequantized into a trainable Keras model, trained with every zero kept at zero, and stored again as they were
  (int8 and int4 are re-quantized from the tuned float values along the same axes), so ``prune:0.8,tune:1,int8`` and
  ``prune:0.8,int8,tune:1`` both end as sparse int8 (the training loop is ``lifecycle.finetune``).

Each step's manifest entry holds its parameters, bytes before and after, and for these two a report (rows and
coverage of training tokens before and after, the test split's unk rate; epochs, loss and accuracy before and after).

Every step is one :class:`Step` of ``STEPS``: its parser and its effects as hooks. ``apply_recipe`` runs the weight
hooks; the compress workflow then runs, over the version's whole recipe (an ancestor's steps included), the graph
hooks on the graph written over the final weights (``fold``: ``apply_graph_steps``) and the serving hook that asks
for a full-integer LiteRT form calibrated on training rows (``int8-act``: ``serving_calibration``). How each storage
is encoded, written and read back is ``lifecycle.storage``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.errors import ConfigError, DataError, ModelError
from lifecycle.storage import (
    LAYOUTS,
    STORAGES,
    StoredTensor,
    Weights,
    carry_layout,
    int8_axis,
    smaller_layout,
    tensor_entry,
)

if TYPE_CHECKING:
    from pathlib import Path

    from lifecycle.config import Config
    from lifecycle.corpus import Corpus
    from lifecycle.dataset import Arrays
    from tokenization.base import Tokenizer

log = logging.getLogger(__name__)


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
    layouts: dict[str, str] = field(default_factory=dict)  # changed tensor -> dense | sparse
    details: dict[str, Any] = field(default_factory=dict)  # what a data-aware step measured (vocab, tune)

    def as_dict(self) -> dict[str, Any]:
        """The manifest's ``recipe`` entry."""
        return {"name": self.name, "params": self.params, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "tensors": list(self.tensors), "layouts": dict(self.layouts),
                **({"report": dict(self.details)} if self.details else {})}


def _is_bias(name: str) -> bool:
    return name.endswith("/bias")


def _refuse_requantize(name: str, stored: StoredTensor, step: str) -> None:
    if stored.spec.final:
        raise ModelError(
            f"{step}: tensor {name} is already stored as {stored.storage}; compressing it again only adds error. "
            f"Apply {step} to the frozen (float32) ancestor of this version instead."
        )


def quantize_fp16(weights: Weights) -> tuple[Weights, tuple[str, ...]]:
    """Store every float32 weight as float16."""
    out: Weights = {}
    changed = []
    for name, stored in weights.items():
        _refuse_requantize(name, stored, "fp16")
        if stored.storage == "float32":
            out[name] = carry_layout(stored, STORAGES["float16"].encode(stored.value), name)
            changed.append(name)
        else:
            out[name] = stored
    return out, tuple(changed)


EMBEDDING_SCALES = ("rows", "table")


def quantize_int8(weights: Weights, embedding: str = "rows") -> tuple[Weights, tuple[str, ...]]:
    """Store kernels and the embedding as int8 codes plus float32 scales; biases are left as they are.

    ``embedding``: ``rows`` (a scale per row) or ``table`` (one scale for the whole embedding).
    """
    out: Weights = {}
    changed = []
    for name, stored in weights.items():
        _refuse_requantize(name, stored, "int8")
        if _is_bias(name):
            out[name] = stored
            continue
        axis = None if name == "weights/embedding" and embedding == "table" else int8_axis(name)
        # Survivors below half a step of their channel's scale round to code 0 and leave the mask.
        out[name] = carry_layout(stored, STORAGES["int8"].encode(stored.dequantize(), axis), name)
        changed.append(name)
    return out, tuple(changed)


def quantize_int4(weights: Weights, storage: str = "int4") -> tuple[Weights, tuple[str, ...]]:
    """Store kernels and the embedding as 4-bit codes in [-7, 7] (two per byte) with float16 scales: one per
    embedding row, one per output channel; biases are left as they are, as ``int8`` leaves them. ``storage="int3"``:
    3-bit codes in [-3, 3] instead (``quantize_int3``)."""
    out: Weights = {}
    changed = []
    for name, stored in weights.items():
        _refuse_requantize(name, stored, storage)
        if _is_bias(name):
            out[name] = stored
            continue
        out[name] = carry_layout(stored, STORAGES[storage].encode(stored.dequantize(), int8_axis(name)), name)
        changed.append(name)
    return out, tuple(changed)


def quantize_int3(weights: Weights) -> tuple[Weights, tuple[str, ...]]:
    """Store kernels and the embedding as 3-bit codes in [-3, 3] with float16 scales (as ``int4``)."""
    return quantize_int4(weights, "int3")


def prune_magnitude(weights: Weights, sparsity: float) -> tuple[Weights, tuple[str, ...]]:
    """Zero the smallest-magnitude ``sparsity`` fraction of each kernel and of the embedding (biases are kept).

    Works on any storage; entries are ranked by their dequantized magnitude. The zeros are the mask: a later
    retrain reads it back from the stored values. Each pruned tensor takes the smaller layout, sparse from a few
    percent of zeros on (``smaller_layout``), so the graph file shrinks raw, not only under gzip.
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
        out[name] = smaller_layout(replace(stored, value=value), name)
        changed.append(name)
    return out, tuple(changed)


EMBEDDING = "weights/embedding"


def reduce_dim(weights: Weights, rank: int, row_weights: np.ndarray | None = None) -> tuple[Weights, tuple[str, ...]]:
    """Narrow the embedding to ``rank`` columns, refactoring the conv kernels' input side to match.

    What the network computes from a token is its row of E W: the embedding E (V x D) times every conv kernel's
    per-position slice, side by side (W: D x C, C = the sum over widths of width x filters). The step replaces E and
    W by the best rank-``rank`` factorization of that product, E' W' (E': V x rank, W': rank x C), in the squared
    error of each token's row weighted by ``row_weights`` (V values > 0; None: all equal): W' spans the top ``rank``
    right singular vectors of diag(sqrt(w)) E W (their singular values split evenly between the two factors), and
    each row of E' is its token's row of E W projected there. By Eckart-Young this is the best such factorization,
    and unweighted it keeps every token's conv pre-activations closer, in total, than projecting E alone on its own
    top singular vectors (E P, P^T W), which ignores what the kernels read. The step ``dim:R`` weights every token
    alike: weighting each by its count in the training split kept the parent's outputs closer at wide widths and
    less close at narrow ones, with no accuracy gain on validation (benchmarks/dim_projection.py ``--fidelity``;
    figures in the README). E W is never formed: with diag(sqrt(w)) E = U S V^T (rank <= D), the SVD is of S V^T W,
    a D x C matrix. The result is the same CNN with an embedding ``rank`` wide: graph, serving form, restore and
    retrain need nothing new, and the conv layer does D / rank times fewer multiplications. What the dropped
    singular values cost, a later ``tune:E`` wins back.

    It runs on float32 dense weights only (before prune and the storage step: a factorization fills pruned zeros). A
    width at or above the embedding's leaves the weights as they are.
    """
    embedding = weights[EMBEDDING]
    dim = int(embedding.shape[1])
    if rank >= dim:  # already that narrow: `retrain` re-applies the recipe to the narrowed model it trained
        return weights, ()
    for name, stored in weights.items():
        if stored.storage != "float32" or stored.layout != "dense":
            raise ModelError(f"dim:{rank}: tensor {name} is {stored.storage} in the {stored.layout} layout; dim "
                             "projects float32 dense weights, so put it before prune and the storage step "
                             "(e.g. dim:64,prune:0.5,int4).")
    table = embedding.dequantize().astype(np.float64)
    kernels = {name: stored.dequantize().astype(np.float64) for name, stored in sorted(weights.items())
               if name.startswith("weights/conv_") and name.endswith("/kernel")}  # each [w, D, F]
    # W: D x C, each kernel's positions side by side (kernel[j] is the D x F slice that reads position j).
    side = np.concatenate([k.transpose(1, 0, 2).reshape(dim, -1) for k in kernels.values()], axis=1)
    scaled = table if row_weights is None else table * np.sqrt(np.asarray(row_weights, np.float64))[:, None]
    _, singular, right = np.linalg.svd(scaled, full_matrices=False)  # diag(sqrt(w)) E = U diag(singular) right
    _, values, outer = np.linalg.svd((singular[:, None] * right) @ side, full_matrices=False)
    root = np.sqrt(values[:rank])
    # E' = E W outer_r^T / root: each token's row of E W in the kept directions (a zero pad row stays zero).
    reads = np.divide(outer[:rank].T, root, out=np.zeros_like(outer[:rank].T), where=root > 0)
    out: Weights = dict(weights)
    out[EMBEDDING] = StoredTensor("float32", (table @ (side @ reads)).astype(np.float32))
    factor = root[:, None] * outer[:rank]  # rank x C
    changed = [EMBEDDING]
    column = 0
    for name, kernel in kernels.items():
        width, _, filters = kernel.shape
        block = factor[:, column:column + width * filters].reshape(rank, width, filters).transpose(1, 0, 2)
        column += width * filters
        out[name] = StoredTensor("float32", np.ascontiguousarray(block, dtype=np.float32))
        changed.append(name)
    return out, tuple(changed)


@dataclass
class RecipeContext:
    """What the data-aware steps (``vocab``, ``tune``) need beside the weights; the pure steps never see it.

    A step that renumbers token ids (``vocab``) replaces ``tokenizer``, so later steps and the version written at the
    end encode with the new ids. The parent's data is read only when a step asks for it, and the encoded splits are
    cached for the current tokenizer.

    Attributes:
        config: the parent version's resolved config (data section, training settings, seed).
        labels: class names; a label's id is its index.
        max_len: ids per text.
        kernel_sizes: the conv widths, to rebuild a trainable model (``tune``).
        weight_map: Keras weight path -> const name, to rebuild a trainable model (``tune``).
        tokenizer: the tokenizer whose ids the current weights' embedding rows follow.
        source: the parent version, named in messages.
        teacher: a distilled version's ``tune`` steps train on its teacher's soft targets too; False (retrain
            ``--no-teacher``) trains them on the labels alone and never loads the teacher.
    """

    config: Config
    labels: tuple[str, ...]
    max_len: int
    kernel_sizes: tuple[int, ...]
    weight_map: dict[str, str]
    tokenizer: Tokenizer
    source: str = "the parent version"
    teacher: bool = True
    _corpus: Corpus | None = field(default=None, init=False, repr=False)
    _encoded: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def corpus(self, step: str) -> Corpus:
        """The parent's data split as it was for training, read once.

        Raises:
            DataError: the data cannot be read; the message names ``step``, the data path and the fix.
        """
        if self._corpus is None:
            from lifecycle.corpus import load_corpus

            try:
                self._corpus = load_corpus(self.config.data, self.config.name)
            except DataError as exc:
                raise DataError(
                    f"recipe step {step} needs the training data of {self.source}, which cannot be read: {exc} "
                    f"Either fix that, or drop {step} from the recipe."
                ) from None
        return self._corpus

    @property
    def read_corpus(self) -> Corpus | None:
        """The parent's data if a step has read it already (else None: nothing is read here)."""
        return self._corpus

    def _cached(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        entry = self._encoded.get(key)
        if entry is None or entry[0] is not self.tokenizer:  # a step replaced the tokenizer: the ids changed
            entry = (self.tokenizer, make())
            self._encoded[key] = entry
        return entry[1]

    def token_ids(self, split: str, step: str) -> list[list[int]]:
        """Unpadded, untruncated ids of the texts of ``split`` (train, validation, test) under the current tokenizer."""
        examples = getattr(self.corpus(step), split)
        return self._cached((split, "ids"), lambda: self.tokenizer.tokenize_ids(list(examples.texts)))

    def arrays(self, split: str, step: str) -> Arrays:
        """Padded ids and label ids of ``split`` under the current tokenizer: what the model trains on."""
        from lifecycle.dataset import encode_examples

        corpus = self.corpus(step)
        return self._cached((split, "arrays"), lambda: encode_examples(
            getattr(corpus, split), self.tokenizer, self.labels, self.max_len, corpus.source))

    def calibration_ids(self, step: str, samples: int) -> np.ndarray:
        """A seeded sample of ``samples`` padded training rows under the current tokenizer."""
        x = self.arrays("train", step).x
        count = min(int(samples), len(x))
        rows = np.random.default_rng(self.config.train.seed).choice(len(x), size=count, replace=False)
        return x[np.sort(rows)]


def _take_rows(stored: StoredTensor, rows: np.ndarray) -> StoredTensor:
    """The embedding's stored rows ``rows`` in the same storage; per-row int8 scales follow their rows."""
    scale = stored.scale
    if scale is not None and stored.axis is not None and stored.axis % stored.value.ndim == 0:
        scale = scale[rows]
    return carry_layout(stored, replace(stored, value=stored.value[rows], scale=scale), EMBEDDING)


def _ids_for_coverage(counts: np.ndarray, coverage: float) -> int | None:
    """How many non-special ids, most frequent first, encode ``coverage`` of all tokens; None when none can."""
    from tokenization.base import N_SPECIAL

    total = int(counts.sum())
    ranked = np.sort(counts[N_SPECIAL:])[::-1]
    covered = np.cumsum(ranked)
    # The tolerance keeps coverage=1 reachable despite float rounding of coverage * total.
    index = int(np.searchsorted(covered, coverage * total - 1e-9 * total, side="left"))
    return None if index >= covered.size else index + 1


def prune_vocabulary(weights: Weights, context: RecipeContext, keep: int | None = None,
                     coverage: float | None = None) -> tuple[Weights, tuple[str, ...], dict[str, Any]]:
    """Keep the embedding rows of the ids most frequent in the training split; the tokenizer follows the rows.

    Exactly one of ``keep`` and ``coverage`` is given. The special ids (pad, unk, bos, eos) are always kept, and
    kept ids stay in their old order, so the embedding is ``matrix[kept_ids]``. ``context.tokenizer`` is replaced by
    one that encodes a dropped token as unk (word: a shorter vocab.txt; bpe: a kept-ids map applied after encoding).

    Args:
        weights: the stored weights; ``weights/embedding`` loses rows, in whatever storage it has.
        context: the parent's tokenizer and data (the training split is counted, the test split measured).
        keep: rows to keep, the 4 special ids included; at least the vocabulary keeps everything (noted in the report).
        coverage: keep the fewest most frequent ids whose tokens make up this fraction of all training tokens.

    Returns:
        The new weights, the changed tensors, and the report: rows before and after, training tokens covered (encoded
        as themselves, not unk) before and after, the test split's unk rate before and after.

    Raises:
        DataError: the parent's data cannot be read.
        ModelError: the tokenizer and the embedding disagree on the number of ids.
    """
    from tokenization.base import N_SPECIAL, UNK, coverage_stats
    from tokenization.vocab import count_ids, prune_vocab

    embedding = weights[EMBEDDING]
    rows = embedding.shape[0]
    tokenizer = context.tokenizer
    if tokenizer.vocab_size != rows:
        raise ModelError(f"vocab: the tokenizer of {context.source} has {tokenizer.vocab_size} ids but {EMBEDDING} "
                         f"has {rows} rows; they do not belong together. Re-freeze the version from its checkpoint.")
    counts = count_ids(context.token_ids("train", "vocab"), rows)
    total = max(int(counts.sum()), 1)
    note = None
    if coverage is not None:
        needed = _ids_for_coverage(counts, coverage)
        if needed is None:
            note = (f"coverage {coverage:g} is out of reach ({counts[UNK] / total:.2%} of training tokens are already "
                    "unk): all rows kept")
        keep = rows if needed is None else N_SPECIAL + needed
    assert keep is not None  # parse_recipe gives exactly one of keep and coverage
    if keep >= rows and note is None:
        note = f"vocab:{keep} is not below the {rows} ids of the vocabulary: all rows kept"
    if keep >= rows:
        log.warning("vocab: %s", note)
        kept_ids = np.arange(rows)
        new_tokenizer = tokenizer
    else:
        kept_ids, _ = prune_vocab(counts, keep)
        new_tokenizer = tokenizer.keep_ids(kept_ids)
    test_texts = list(context.corpus("vocab").test.texts)
    report: dict[str, Any] = {
        "rows_before": rows,
        "rows_after": int(kept_ids.size),
        "train_tokens": int(counts.sum()),
        "train_coverage_before": float((counts.sum() - counts[UNK]) / total),
        "train_coverage_after": float((counts[kept_ids].sum() - counts[UNK]) / total),
        "unseen_rows_kept": int(np.count_nonzero(counts[kept_ids][N_SPECIAL:] == 0)),
        "test_unk_rate_before": coverage_stats(tokenizer, test_texts, context.max_len).unk_rate,
        "test_unk_rate_after": coverage_stats(new_tokenizer, test_texts, context.max_len).unk_rate,
        **({"note": note} if note else {}),
    }
    if new_tokenizer is tokenizer:
        return weights, (), report
    context.tokenizer = new_tokenizer
    return {**weights, EMBEDDING: _take_rows(embedding, kept_ids)}, (EMBEDDING,), report


def _tune(weights: Weights, context: RecipeContext, epochs: int) -> tuple[Weights, tuple[str, ...], dict[str, Any]]:
    """``tune:E``: train the current weights at most E more epochs (``lifecycle.finetune.fine_tune``)."""
    from lifecycle import finetune

    return finetune.fine_tune(weights, context, epochs)


CALIBRATION_SAMPLES = 256


def int8_activations(weights: Weights, context: RecipeContext) -> tuple[Weights, tuple[str, ...], dict[str, Any]]:
    """``int8-act``: ask for a full-integer serving form (int8 activations too), calibrated on training texts.

    graph.pb, the retrainable master, is untouched: only the LiteRT serving form changes. Its calibration sample is
    drawn when the version is written (after every step, so it follows a vocabulary pruned later in the recipe; the
    step's serving hook, :func:`serving_calibration`), and its accuracy and agreement with graph.pb are measured there
    and recorded in ``manifest.serving``.
    """
    context.corpus("int8-act")  # fail now, with the step named, if the training data cannot be read
    return weights, (), {"calibration_samples": CALIBRATION_SAMPLES, "serving": "int8-full"}


def _calibration_rows(context: RecipeContext) -> np.ndarray:
    return context.calibration_ids("int8-act", CALIBRATION_SAMPLES)


def fold(weights: Weights) -> tuple[Weights, tuple[str, ...]]:
    """``fold``: nothing to do on the weights; the graph is folded when it is written (see ``lifecycle.fold``)."""
    return weights, ()


@dataclass(frozen=True)
class GraphEdit:
    """What a step's graph hook made of the emitted graph."""

    graph_def: Any
    moved: dict[str, str]  # weights now held in another node's constant (reshaped) -> that node
    report: dict[str, Any]  # recorded as the step's manifest report


def _fold_graph(graph_def: Any, weights: Weights, source: Path | str) -> GraphEdit:
    from lifecycle.fold import fold_graph

    tensors = {name: tensor_entry(name, stored) for name, stored in weights.items()}
    folded = fold_graph(graph_def, weights, tensors, source)
    return GraphEdit(folded.graph_def, folded.moved, folded.report)


def _parse_prune(arg: str, text: str) -> dict[str, Any]:
    try:
        sparsity = float(arg)
    except ValueError:
        raise ConfigError(f"--recipe {text!r}: prune needs a sparsity, e.g. prune:0.8. Received: {arg!r}.") from None
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--recipe {text!r}: prune sparsity must be in [0, 1). Received: {sparsity:g}.")
    return {"sparsity": sparsity}


def _whole_number(arg: str, text: str, needs: str) -> int:
    """A step's parameter that is a whole number >= 1 (ConfigError saying what the step ``needs`` otherwise)."""
    try:
        number = int(arg)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"--recipe {text!r}: {needs}. Received: {arg!r}.")
    return number


def _parse_dim(arg: str, text: str) -> dict[str, Any]:
    return {"rank": _whole_number(arg, text, "dim needs the embedding width to keep, a whole number >= 1, e.g. "
                                             "dim:64")}


def _parse_vocab(arg: str, text: str) -> dict[str, Any]:
    from tokenization.base import N_SPECIAL

    key, equals, value = arg.partition("=")
    if equals:
        if key.strip() != "coverage":
            raise ConfigError(f"--recipe {text!r}: vocab takes a size (vocab:20000) or a coverage "
                              f"(vocab:coverage=0.95). Received: {arg!r}.")
        try:
            coverage = float(value)
        except ValueError:
            coverage = float("nan")
        if not 0.0 < coverage <= 1.0:  # also refuses nan
            raise ConfigError(f"--recipe {text!r}: vocab coverage must be a fraction in (0, 1] of the training "
                              f"tokens, e.g. vocab:coverage=0.95. Received: {value!r}.")
        return {"coverage": coverage}
    try:
        keep = int(arg)
    except ValueError:
        raise ConfigError(f"--recipe {text!r}: vocab needs the number of ids to keep, e.g. vocab:20000, or a coverage, "
                          f"e.g. vocab:coverage=0.95. Received: {arg!r}.") from None
    if keep <= N_SPECIAL:
        raise ConfigError(f"--recipe {text!r}: vocab must keep more than the {N_SPECIAL} special ids (pad, unk, bos, "
                          f"eos), e.g. vocab:20000. Received: {keep}.")
    return {"keep": keep}


def _parse_tune(arg: str, text: str) -> dict[str, Any]:
    return {"epochs": _whole_number(arg, text, "tune needs a whole number of epochs >= 1, e.g. tune:2")}


def _parse_int8(arg: str, text: str) -> dict[str, Any]:
    key, equals, value = arg.partition("=")
    if key.strip() != "embedding" or not equals or value.strip() not in EMBEDDING_SCALES:
        raise ConfigError(f"--recipe {text!r}: int8 takes no parameter (a scale per embedding row) or "
                          f"embedding=table (one scale for the whole embedding). Received: {arg!r}.")
    # ``rows`` is the default and is recorded as no parameter, so `int8` and `int8:embedding=rows` are one recipe.
    return {"embedding": "table"} if value.strip() == "table" else {}


StepResult = tuple[Weights, tuple[str, ...], dict[str, Any]]  # new weights, changed tensors, report details


@dataclass(frozen=True)
class Step:
    """A recipe step: how --recipe writes it, and its effects as hooks the workflow calls.

    Attributes:
        name: the step's name in --recipe and in the manifest.
        transform: what it does to the weights, ``transform(weights, **params)`` returning (weights, changed), or
            with ``needs_context`` ``transform(weights, context, **params)`` returning (weights, changed, details).
        needs_context: it needs the parent's tokenizer and data (a :class:`RecipeContext`).
        parse: reads the text after ``name:`` into params (None: the step takes no parameter).
        parameter: the name a one-parameter step's value is recorded under (``prune:0.8`` -> sparsity).
        optional: the parameter may be left out (``int8``).
        on_graph: run once on the graph emitted over the final weights of a version whose recipe (ancestors'
            included) holds the step: ``on_graph(graph_def, weights, source) -> GraphEdit``.
        on_serving: the same for the serving form: ``on_serving(context)`` returns the padded training rows a
            full-integer LiteRT form is calibrated on.
        summary: what the step's printed line adds after its recipe text, from its manifest report.
    """

    name: str
    transform: Callable[..., Any]
    needs_context: bool = False
    parse: Callable[[str, str], dict[str, Any]] | None = None
    parameter: str | None = None
    optional: bool = False
    on_graph: Callable[[Any, Weights, Path | str], GraphEdit] | None = None
    on_serving: Callable[[RecipeContext], np.ndarray] | None = None
    summary: Callable[[dict[str, Any]], str] | None = None

    def apply(self, weights: Weights, params: dict[str, Any], context: RecipeContext | None) -> StepResult:
        """The step's weight hook: new weights, the changed tensors and the report details (empty for pure steps)."""
        if not self.needs_context:
            out, changed = self.transform(weights, **params)
            return out, changed, {}
        if context is None:
            raise ModelError(f"recipe step {self.name} needs the version's tokenizer and data (a RecipeContext); "
                             "run it through `lifecycle compress` (workflows.run_compress).")
        result: StepResult = self.transform(weights, context, **params)
        return result


def _tune_summary(report: dict[str, Any]) -> str:
    if "epochs_run" not in report:
        return ""
    peak = "start kept" if report.get("kept_start") else f"peak {report['peak_epoch']}"
    return f" ({report['epochs_run']} epochs, {peak}, {report['stop_reason']})"


STEPS: dict[str, Step] = {step.name: step for step in (
    Step("fp16", quantize_fp16),
    Step("int8", quantize_int8, parse=_parse_int8, optional=True),
    Step("int4", quantize_int4),
    Step("int3", quantize_int3),
    Step("prune", prune_magnitude, parse=_parse_prune, parameter="sparsity"),
    Step("dim", reduce_dim, parse=_parse_dim, parameter="rank"),
    Step("fold", fold, on_graph=_fold_graph),
    # ``vocab`` also takes coverage=C, recorded under its own name.
    Step("vocab", prune_vocabulary, needs_context=True, parse=_parse_vocab, parameter="keep"),
    Step("tune", _tune, needs_context=True, parse=_parse_tune, parameter="epochs", summary=_tune_summary),
    Step("int8-act", int8_activations, needs_context=True, on_serving=_calibration_rows),
)}
# Steps that need the parent's tokenizer and data: they return a report (recorded in the manifest) beside the weights.
CONTEXT_STEPS = frozenset(name for name, step in STEPS.items() if step.needs_context)
# Steps that take one parameter (``prune:0.8``) and the name it is recorded under.
PARAMETERS: dict[str, str] = {name: step.parameter for name, step in STEPS.items() if step.parameter}
# Steps that choose the storage of the weights: a recipe holds at most one.
STORAGE_STEPS = ("fp16", "int8", "int4", "int3")
# How each step is written in --recipe, for messages.
USAGE = ("fp16, int8, int8:embedding=table, int4, int3, prune:S, dim:R, vocab:N, vocab:coverage=C, tune:E, int8-act, "
         "fold")


def parse_recipe(text: str) -> list[RecipeStep]:
    """``"int8"``, ``"prune:0.8,tune:1,vocab:20000,int8"`` (comma-separated steps) -> steps.

    Raises:
        ConfigError: an unknown step, a missing or bad parameter, or two storages (fp16, int8, int4); the message
            names the step.
    """
    steps = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        name, _, arg = raw.partition(":")
        if name not in STEPS:
            raise ConfigError(f"--recipe {text!r}: unknown step {name!r}. Steps available in this build: {USAGE}.")
        spec = STEPS[name]
        if spec.parse is None:
            if arg:
                raise ConfigError(f"--recipe {text!r}: step {name!r} takes no parameter. Received: {arg!r}.")
            steps.append(RecipeStep(name))
            continue
        if spec.optional and not arg:
            steps.append(RecipeStep(name))
            continue
        steps.append(RecipeStep(name, spec.parse(arg.strip(), text)))
    if not steps:
        raise ConfigError(f"--recipe {text!r} names no step. Use e.g. --recipe int8 (steps: {USAGE}).")
    storages = [name for name in STORAGE_STEPS if name in {s.name for s in steps}]
    if len(storages) > 1:
        raise ConfigError(f"--recipe {text!r}: {' and '.join(storages)} are alternative storages; pick one.")
    return steps


def step_text(name: str, params: dict[str, Any]) -> str:
    """One step as --recipe text, what :func:`parse_recipe` reads back: ``prune:0.8``, ``vocab:coverage=0.95``."""

    def number(value: Any) -> str:
        return str(value) if isinstance(value, int | str) else f"{value:g}"

    return name + "".join(f":{number(value)}" if key == PARAMETERS.get(name) else f":{key}={number(value)}"
                          for key, value in params.items())


def step_summary(entry: dict[str, Any]) -> str:
    """A manifest recipe entry as its printed line: ``prune:0.8``, or for a tune step what it ran:
    ``tune:5 (3 epochs, peak 1, plateau)``."""
    label = step_text(entry["name"], entry.get("params", {}))
    step = STEPS.get(entry["name"])
    if step is not None and step.summary is not None:
        label += step.summary(entry.get("report") or {})
    return label


def _total_bytes(weights: Weights) -> int:
    return sum(stored.nbytes for stored in weights.values())


def apply_recipe(weights: Weights, steps: list[RecipeStep], context: RecipeContext | None = None
                 ) -> tuple[Weights, list[StepReport]]:
    """Run the steps in order; the input is not modified.

    Args:
        weights: the stored weights to compress.
        steps: from :func:`parse_recipe`.
        context: the parent's tokenizer, data and architecture; needed only by ``vocab`` and ``tune``, and
            ``vocab`` replaces its tokenizer (the caller saves ``context.tokenizer`` with the new version).

    Raises:
        ModelError: a step that needs a context was given none, or a step cannot transform a tensor.
        DataError: a step that needs the parent's data cannot read it.
    """
    reports = []
    for step in steps:
        before = _total_bytes(weights)
        weights, changed, details = STEPS[step.name].apply(weights, step.params, context)
        reports.append(StepReport(step.name, step.params, before, _total_bytes(weights), changed,
                                  {name: LAYOUTS[weights[name].layout].manifest_name for name in changed}, details))
    return weights, reports


def _hooked(recipe: Sequence[dict[str, Any]], hook: str) -> list[Step]:
    """The steps of a manifest recipe that have ``hook``, each once, in recipe order."""
    names = dict.fromkeys(entry["name"] for entry in recipe if getattr(STEPS.get(entry["name"]), hook, None))
    return [STEPS[name] for name in names]


def apply_graph_steps(graph_def: Any, weights: Weights, recipe: list[dict[str, Any]], first_new: int,
                      source: Path | str) -> tuple[Any, dict[str, str] | None]:
    """Run the graph hooks (``fold``) of a version's recipe on the graph emitted over its final weights.

    Args:
        graph_def: the graph ``freeze.emit_graph`` wrote over ``weights``.
        weights: the version's stored weights.
        recipe: the version's manifest recipe, ancestors' steps first; entries from ``first_new`` on (this run's)
            get the report of their step's hook, an ancestor's stays as it was.
        first_new: how many entries of ``recipe`` an ancestor ran.
        source: named in errors.

    Returns:
        The graph, and the weights moved into another node's constant (None when no step has a graph hook).
    """
    moved: dict[str, str] | None = None
    for step in _hooked(recipe, "on_graph"):
        assert step.on_graph is not None
        edit = step.on_graph(graph_def, weights, source)
        graph_def, moved = edit.graph_def, {**(moved or {}), **edit.moved}
        for entry in recipe[first_new:]:
            if entry["name"] == step.name:
                entry["report"] = edit.report
    return graph_def, moved


def serving_calibration(recipe: Sequence[dict[str, Any]], context: RecipeContext) -> np.ndarray | None:
    """The calibration rows of a full-integer serving form, if a step of the recipe (``int8-act``, an ancestor's
    included) asks for one; None: the serving form keeps the weights' own storage."""
    for step in _hooked(recipe, "on_serving"):
        assert step.on_serving is not None
        return step.on_serving(context)
    return None
