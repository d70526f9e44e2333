"""Compression benchmark (issue 3): our frozen and compressed versions against the peers, on the same trained model.

For each data set and tokenizer (MR and TREC, word 300-d and BPE), one run: train a checkpoint
(``lifecycle.workflows.run_train``), freeze it, compress it with each recipe, and build the peers from the SAME
trained Keras model: Keras ``.keras`` (no optimizer), a TF SavedModel (``model.export``), the TFLite converter
(float32, float16, dynamic-range int8), ONNX (tf2onnx) with ONNX Runtime's ``quantize_dynamic``, and TF-MOT 80%
magnitude pruning (fine-tuned) + the TFLite converter's dynamic-range int8. Then, for every variant:

- size of the model file(s), raw and gzip -6; for our versions the tokenizer directory too (listed apart);
- test accuracy on the same test split: our versions through the Predictor on their own tokenizer's ids (checked
  against ``run_evaluate``), the peers on the same padded id arrays as the checkpoint's tokenizer makes;
- load time, first call, batch-1 p50/p99, throughput (batch 256) and memory, each measured in a FRESH worker
  process per variant (``--worker``): RSS before the runtime import, after it (the baseline: TensorFlow plus an empty
  session for graph.pb, the bare interpreter for LiteRT, onnxruntime for ONNX), after load and after the calls.

Plus the field report's fixed-size case (``field-30k``): MR with a 30,000-token BPE vocabulary (real text; a word
vocabulary of MR reaches only 17.7k) and a 300-d embedding, for the graph.pb first-call and memory criteria, and ten
int8 copies served from one process (our serving form, and the TFLite dynamic-range peer).

Results go to benchmarks/out/compress.json and README.md between the ``bench:compress`` markers.

    .venv/bin/python benchmarks/compress_bench.py --quick                # smoke run: trec-word + field-30k, tiny
    .venv/bin/python benchmarks/compress_bench.py                        # everything (~45 min on 2 quiet cores)
    .venv/bin/python benchmarks/compress_bench.py --only mr-word,field-30k --no-readme
    .venv/bin/python benchmarks/compress_bench.py --readme-only          # re-render README from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from readme import cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifecycle.procstat import memory_status  # noqa: E402  (stdlib only: safe before any baseline reading)

OUT = ROOT / "benchmarks" / "out"
RESULTS = OUT / "compress.json"
WORK = OUT / "compress-work"
README_START, README_END = "<!-- bench:compress:start -->", "<!-- bench:compress:end -->"

# (run name, config, --set overrides). The word configs already say 300-d; the override keeps it so if they change.
RUNS: list[tuple[str, str, list[str]]] = [
    ("mr-word", "mr-word.yaml", ["model.embedding_dim=300"]),
    ("mr-bpe", "mr-bpe.yaml", ["model.embedding_dim=300"]),
    ("trec-word", "trec-word.yaml", ["model.embedding_dim=300"]),
    ("trec-bpe", "trec-bpe.yaml", ["model.embedding_dim=300"]),
]
# The field report's 30k x 300 model: MR's training split supports a BPE vocabulary of exactly 30,000 tokens.
# Its accuracy is beside the point (first call and memory are), so it trains for at most 3 epochs.
FIELD = ("field-30k", "mr-bpe.yaml", ["tokenizer.bpe.vocab_size=30000", "model.embedding_dim=300", "train.epochs=3"])
FIELD_VOCAB = 30000
ALL_RUNS = [name for name, *_ in RUNS] + [FIELD[0]]
QUICK_RUNS = ["trec-word", FIELD[0]]
# Our recipes, each applied to the frozen float32 version. Steps this build does not know are skipped with a note.
DEFAULT_RECIPES = (
    "fp16",
    "int8",
    "int8@exact",  # the same int8 version with the serving form's kernels dequantized at load (exact)
    "int8:embedding=table",  # one scale for the embedding table, as the converter's dynamic-range int8 has
    "int8,int8-act",
    "prune:0.8,int8",
    "vocab:coverage=0.97,prune:0.85,tune:5,int8",
)
# The recipe the ">= 15x at <= 1 point" criterion is judged on, the same for every data set (when a run has it).
CRITERIA_RECIPE = "vocab:coverage=0.97,prune:0.85,tune:5,int8"
QUICK_OVERRIDES = ["data.limit=600", "train.epochs=1"]
TEN = 10
TFMOT_SPARSITY = 0.8
ONNX_OPSET = 17


# ----------------------------------------------------------------------------------------------- memory and sizes


def _rss_mb() -> float:
    return memory_status()["VmRSS"] / 2**20


def _anon_mb() -> float:
    return memory_status()["RssAnon"] / 2**20


def _sizes(paths: list[Path]) -> tuple[int, int]:
    """Raw bytes and gzip -6 bytes (each file compressed alone, summed) of files and directories."""
    from lifecycle.artifacts import dir_bytes, gzip_bytes

    return sum(dir_bytes(path) for path in paths), gzip_bytes(paths)


# ------------------------------------------------------------------------------------------------------- worker
# A worker is this script run as `--worker KIND PATH...` in a fresh process: it imports one runtime, loads one model
# (or ten, for the `ten-*` kinds), times it and writes a JSON result. Nothing heavy is imported before the first
# RSS reading, so the figures split into runtime (import + empty session) and model (load + calls).


def _tf_session_baseline() -> dict[str, Any]:
    """TensorFlow imported and an empty session that has run once (thread pools exist): graph.pb's baseline."""
    from lifecycle.backend import tf_module

    tf = tf_module()
    graph = tf.Graph()
    with graph.as_default():
        noop = tf.constant(0)
    session = tf.compat.v1.Session(graph=graph)
    session.run(noop)
    return {"tf": tf, "session": session}


def _tf_eager_baseline() -> dict[str, Any]:
    """TensorFlow and Keras imported, one eager op run: the baseline of the Keras and SavedModel peers."""
    from lifecycle.backend import tf_module

    tf = tf_module()
    import keras  # noqa: F401

    (tf.constant(0) + 1).numpy()
    return {"tf": tf}


def _import_runtime(kind: str) -> dict[str, Any]:
    """Import what ``kind`` needs to run a model, and nothing of the model itself."""
    if kind in ("ours-graph", "graph-plain"):
        from lifecycle.inference import Predictor

        return {"Predictor": Predictor, **_tf_session_baseline()}
    if kind in ("ours-serving", "ten-serving"):
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401

        from lifecycle.inference import Predictor

        return {"Predictor": Predictor}
    if kind in ("keras", "savedmodel"):
        return _tf_eager_baseline()
    if kind in ("tflite", "ten-tflite"):
        from ai_edge_litert.interpreter import Interpreter

        return {"Interpreter": Interpreter}
    if kind == "onnx":
        import onnxruntime

        return {"ort": onnxruntime}
    raise SystemExit(f"unknown worker kind {kind!r}")


def _make_predictor(runtime: dict[str, Any], path: Path, which: str) -> Any:
    """A lifecycle Predictor on ``path`` using graph.pb (``graph``) or the serving form (``litert``)."""
    import inspect

    from lifecycle.artifacts import load_version

    version = load_version(path)  # sha256 of every file: part of our loader, so part of the load time
    predictor_class = runtime["Predictor"]
    if "runtime" in inspect.signature(predictor_class).parameters:
        return predictor_class(version, runtime=which)
    if which == "litert":
        raise SystemExit("this lifecycle's Predictor has no serving-form runtime")
    return predictor_class(version)


class _Lite:
    """A TFLite flatbuffer in the LiteRT interpreter, resized to the batch on demand (peers)."""

    def __init__(self, interpreter_class: Any, path: Path) -> None:
        self.interpreter = interpreter_class(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = int(self.input["shape"][0])
        self.max_len = int(self.input["shape"][1])

    def __call__(self, ids: Any) -> Any:
        import numpy as np

        if len(ids) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [len(ids), self.max_len], strict=False)
            self.interpreter.allocate_tensors()
            self.batch = len(ids)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(ids, dtype=self.input["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


def _load_model(kind: str, runtime: dict[str, Any], path: Path) -> tuple[Any, Any]:
    """(ids -> probabilities, the predictor for our kinds or None)."""
    import numpy as np

    if kind == "ours-graph":
        predictor = _make_predictor(runtime, path, "graph")
        return predictor.predict_ids, predictor
    if kind == "ours-serving":
        predictor = _make_predictor(runtime, path, "litert")
        return predictor.predict_ids, predictor
    if kind == "graph-plain":
        # What the field report did: import the GraphDef into a default session (Grappler on), no warm-up.
        from types import SimpleNamespace

        from lifecycle.artifacts import load_version
        from lifecycle.freeze import GRAPH_FILE, read_graph
        from tokenization.base import load_tokenizer

        tf = runtime["tf"]
        version = load_version(path)
        tokenizer = load_tokenizer(version.tokenizer_dir)
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(read_graph(path / GRAPH_FILE), name="")
        session = tf.compat.v1.Session(graph=graph)
        ids_in = graph.get_tensor_by_name("input_ids:0")
        probs = graph.get_tensor_by_name("probabilities:0")
        dtype = np.dtype(version.manifest.input.dtype)
        holder = SimpleNamespace(tokenizer=tokenizer, max_len=version.max_len, version=version, runtime="graph-plain",
                                 predict_proba=lambda texts: session.run(
                                     probs, {ids_in: tokenizer.encode(texts, version.max_len).astype(dtype)}))
        return (lambda ids: session.run(probs, {ids_in: ids.astype(dtype)})), holder
    if kind == "keras":
        import keras

        model = keras.saving.load_model(path, compile=False)
        return (lambda ids: np.asarray(model(ids, training=False))), None
    if kind == "savedmodel":
        tf = runtime["tf"]
        loaded = tf.saved_model.load(str(path))

        def serve(ids: Any) -> Any:
            # `loaded` must stay referenced: its variables die with it, and the endpoint would fail.
            return loaded.serve(tf.constant(ids, dtype=tf.int32)).numpy()

        return serve, None
    if kind == "tflite":
        return _Lite(runtime["Interpreter"], path), None
    if kind == "onnx":
        ort = runtime["ort"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda ids: session.run(None, {name: ids.astype(np.int32, copy=False)})[0]), None
    raise SystemExit(f"unknown worker kind {kind!r}")


def _time_model(run: Any, ids: Any, calls: int, batch: int, rounds: int) -> dict[str, float]:
    """First call, batch-1 latencies over ``calls`` rows (cycled), and throughput at ``batch`` rows."""
    import numpy as np

    started = time.perf_counter()
    run(ids[:1])
    first = 1e3 * (time.perf_counter() - started)
    latencies = np.empty(calls)
    for i in range(calls):
        row = ids[i % len(ids)][None, :]
        started = time.perf_counter()
        run(row)
        latencies[i] = 1e3 * (time.perf_counter() - started)
    big = ids[np.arange(batch) % len(ids)]
    run(big)  # one untimed call at this batch size: buffers sized, then steady state
    started = time.perf_counter()
    for _ in range(rounds):
        run(big)
    throughput = rounds * batch / (time.perf_counter() - started)
    return {"first_call_ms": first, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "throughput_per_s": throughput}


def _probabilities(run: Any, ids: Any, chunk: int = 256) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(run(ids[i:i + chunk]), dtype=np.float32) for i in range(0, len(ids), chunk)])


def _worker_ten(kind: str, paths: list[Path], runtime: dict[str, Any], ids: Any, texts: list[str] | None,
                mem: dict[str, float], tokenizer_dir: Path | None) -> dict[str, Any]:
    """Load every model in ``paths`` in this one process, call each at batch 1 then at batch 256.

    Our Predictors each load their version's tokenizer; for the peer, ``tokenizer_dir`` (the checkpoint's) is loaded
    once per model too, so both processes hold what serving ten models needs.
    """
    import numpy as np

    models = []
    tokenizers = []
    started = time.perf_counter()
    first = None
    for path in paths:
        if kind == "ten-serving":
            predictor = _make_predictor(runtime, path, "litert")
            first = first or predictor
            models.append(predictor.predict_ids)
        else:
            if tokenizer_dir is not None:
                from tokenization.base import load_tokenizer

                tokenizers.append(load_tokenizer(tokenizer_dir))
            models.append(_Lite(runtime["Interpreter"], path))
    load_seconds = time.perf_counter() - started
    mem["loaded"] = _rss_mb()
    if ids is None:  # ours: the copies share one tokenizer's ids
        ids = first.tokenizer.encode(texts[:256], first.max_len)
    for i, run in enumerate(models):
        run(ids[i % len(ids)][None, :])
    mem["after_batch1"] = _rss_mb()
    big = ids[np.arange(256) % len(ids)]
    for run in models:
        run(big)
    mem["after_batch256"] = _rss_mb()
    return {"models": len(models), "load_s": load_seconds, "tokenizers": len(tokenizers) or len(models)}


PAIR_ROUNDS = 10


def _worker_pair(paths: list[Path], ids: Any, texts: list[str], calls: int) -> dict[str, Any]:
    """Our serving form and a peer flatbuffer in ONE process, batch-1 calls timed in alternating rounds.

    Fresh processes of the same model give batch-1 p50s up to 30% apart from one run to the next (measured on
    mr-bpe: 0.71 and 0.55 ms for ours, 0.76 and 0.56 ms for the peer), more than the 1.1x criterion allows, so the
    criterion is judged on this paired measurement: the same ids, the same moment of the machine, the order swapped
    every round.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    predictor = _make_predictor(_import_runtime("ours-serving"), paths[0], "litert")
    peer = _Lite(Interpreter, paths[1])
    ours_ids = predictor.tokenizer.encode(texts, predictor.max_len)
    models = {"ours": (predictor.predict_ids, ours_ids), "peer": (peer, ids)}
    for run, rows in models.values():
        run(rows[:1])
    per_round = max(1, calls // PAIR_ROUNDS)
    latencies: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(PAIR_ROUNDS):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in order:
            run, rows = models[name]
            for i in range(per_round):
                row = rows[(round_index * per_round + i) % len(rows)][None, :]
                started = time.perf_counter()
                run(row)
                latencies[name].append(1e3 * (time.perf_counter() - started))
    return {"rounds": PAIR_ROUNDS, "calls_per_round": per_round,
            **{f"{name}_p50_ms": float(np.percentile(values, 50)) for name, values in latencies.items()},
            **{f"{name}_p99_ms": float(np.percentile(values, 99)) for name, values in latencies.items()}}


def worker_main(argv: list[str]) -> None:
    """Entry point of ``--worker``: measure one model (or ten) in this fresh process, write the JSON result."""
    parser = argparse.ArgumentParser(prog="compress_bench.py --worker")
    parser.add_argument("kind", choices=["ours-graph", "ours-serving", "graph-plain", "keras", "savedmodel", "tflite",
                                         "onnx", "ten-serving", "ten-tflite", "pair-serving"])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--ids", type=Path, help="padded test ids (.npy); our kinds encode --texts themselves")
    parser.add_argument("--texts", type=Path, help="test texts (.json list), for our kinds")
    parser.add_argument("--probs", type=Path, help="write the test probabilities here (.npy)")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, help="ten-tflite: a tokenizer to load beside each model")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    import numpy as np

    ours = args.kind in ("ours-graph", "ours-serving", "graph-plain", "ten-serving")
    ids = np.load(args.ids) if args.ids else None
    texts = json.loads(args.texts.read_text(encoding="utf-8")) if args.texts else None
    if args.kind == "pair-serving":
        args.result.write_text(json.dumps(_worker_pair(args.paths, ids, texts, args.calls), indent=1),
                               encoding="utf-8")
        return
    mem: dict[str, float] = {"start": _rss_mb()}
    started = time.perf_counter()
    runtime = _import_runtime(args.kind)
    import_seconds = time.perf_counter() - started
    mem["runtime"] = _rss_mb()
    anon = {"runtime": _anon_mb()}
    result: dict[str, Any] = {"kind": args.kind, "import_s": import_seconds}
    if args.kind.startswith("ten-"):
        result.update(_worker_ten(args.kind, args.paths, runtime, ids, texts, mem, args.tokenizer))
    else:
        started = time.perf_counter()
        run, predictor = _load_model(args.kind, runtime, args.paths[0])
        result["load_s"] = time.perf_counter() - started
        mem["loaded"] = _rss_mb()
        anon["loaded"] = _anon_mb()
        if ours:
            ids = predictor.tokenizer.encode(texts, predictor.max_len)
            result["predictor_runtime"] = getattr(predictor, "runtime", "graph")
        result.update(_time_model(run, ids, args.calls, 256, args.rounds))
        if args.probs:
            np.save(args.probs, _probabilities(run, ids))
        mem["after"] = _rss_mb()
        if ours:
            # End to end as a user calls it (tokenization included), then what one tokenizer copy costs in RSS.
            latencies = []
            for i in range(min(args.calls, 200)):
                started = time.perf_counter()
                predictor.predict_proba([texts[i % len(texts)]])
                latencies.append(1e3 * (time.perf_counter() - started))
            result["text_p50_ms"] = float(np.percentile(latencies, 50))
            from tokenization.base import load_tokenizer

            before = _rss_mb()
            spare = load_tokenizer(predictor.version.tokenizer_dir)
            spare.encode(texts[:1], predictor.max_len)
            result["tokenizer_rss_mb"] = _rss_mb() - before
    result["rss_mb"] = mem
    result["anon_mb"] = anon
    result["peak_rss_mb"] = memory_status()["VmHWM"] / 2**20
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    args.result.write_text(json.dumps(result, indent=1), encoding="utf-8")


# ------------------------------------------------------------------------------------------ TF-MOT (subprocess)
# TF-MOT needs Keras 2 (tf-keras) and switches tf.keras to it process-wide (TF_USE_LEGACY_KERAS), so it runs in its
# own process: the Keras 3 checkpoint's weights are copied into a tf-keras twin, checked equal, pruned and tuned.


def _tf_keras_twin(tf_keras: Any, model3: Any) -> Any:
    """The same CNN in tf-keras, with the Keras 3 model's weights (layer names as lifecycle.model builds them)."""
    embedding = model3.get_layer("embedding")
    output = model3.get_layer("output")
    max_len = int(model3.inputs[0].shape[1])
    inputs = tf_keras.Input((max_len,), dtype="int32", name="input_ids")
    embedded = tf_keras.layers.Embedding(embedding.input_dim, embedding.output_dim, name="embedding")(inputs)
    pooled = []
    convs = [layer for layer in model3.layers if layer.name.startswith("conv_")]
    for layer in convs:
        conv = tf_keras.layers.Conv1D(layer.filters, layer.kernel_size[0], activation="relu", name=layer.name)(embedded)
        pooled.append(tf_keras.layers.GlobalMaxPooling1D()(conv))
    features = pooled[0] if len(pooled) == 1 else tf_keras.layers.Concatenate()(pooled)
    dropout = next((layer.rate for layer in model3.layers if layer.name == "dropout"), 0.5)
    features = tf_keras.layers.Dropout(dropout)(features)
    constraint = getattr(output, "kernel_constraint", None)
    max_norm = getattr(constraint, "max_value", None)
    outputs = tf_keras.layers.Dense(output.units, activation="softmax", name="output",
                                    kernel_constraint=tf_keras.constraints.MaxNorm(max_norm, axis=0)
                                    if max_norm else None)(features)
    twin = tf_keras.Model(inputs, outputs)
    for name in ["embedding", *(layer.name for layer in convs), "output"]:
        twin.get_layer(name).set_weights(model3.get_layer(name).get_weights())
    return twin


def tfmot_main(argv: list[str]) -> None:
    """Entry point of ``--tfmot``: 80% magnitude pruning with a short fine-tune, then TFLite dynamic-range int8."""
    parser = argparse.ArgumentParser(prog="compress_bench.py --tfmot")
    parser.add_argument("checkpoint", type=Path, help="the trained model.keras")
    parser.add_argument("data", type=Path, help=".npz with x_train, y_train, x_val, y_val")
    parser.add_argument("output", type=Path, help="the .tflite to write")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    import numpy as np
    import tensorflow as tf

    result: dict[str, Any] = {}
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as exc:
        result["error"] = (f"TF-MOT cannot be imported ({exc}); install it with `make install-bench` "
                           "(tensorflow-model-optimization and tf-keras with --no-deps)")
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return
    import keras

    model3 = keras.saving.load_model(args.checkpoint, compile=False)
    data = np.load(args.data)
    twin = _tf_keras_twin(tf_keras, model3)
    probe = data["x_val"][:256]
    result["twin_max_abs_diff"] = float(np.max(np.abs(twin(probe).numpy() - np.asarray(model3(probe)))))
    tf_keras.utils.set_random_seed(args.seed)
    steps = max(1, int(np.ceil(len(data["x_train"]) / args.batch_size)))
    # ConstantSparsity: 80% from the first step, masks re-ranked ten times an epoch (every step on tiny data).
    schedule = tfmot.sparsity.keras.ConstantSparsity(TFMOT_SPARSITY, begin_step=0, frequency=max(1, steps // 10))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(twin, pruning_schedule=schedule)
    pruned.compile(optimizer=tf_keras.optimizers.Adam(args.learning_rate), loss="sparse_categorical_crossentropy",
                   metrics=["accuracy"])
    started = time.perf_counter()
    history = pruned.fit(data["x_train"], data["y_train"], batch_size=args.batch_size, epochs=args.epochs,
                         validation_data=(data["x_val"], data["y_val"]), verbose=0,
                         callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    result["tune_seconds"] = time.perf_counter() - started
    result["val_accuracy"] = [float(v) for v in history.history.get("val_accuracy", [])]
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    result["sparsity"] = {w.name: float(np.mean(w.numpy() == 0)) for w in stripped.weights if "bias" not in w.name}
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    args.output.write_bytes(converter.convert())
    result.update({"epochs": args.epochs, "frequency": max(1, steps // 10), "tfmot": tfmot.__version__,
                   "tf_keras": tf_keras.__version__})
    args.result.write_text(json.dumps(result, indent=1), encoding="utf-8")


# -------------------------------------------------------------------------------------------------- orchestration


def _first_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def _subprocess(args: list[str], log: Path, result: Path, timeout: float = 1800) -> dict[str, Any]:
    """Run this script in a fresh process; its JSON result, or {"error": ...} naming the failure."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", "KERAS_BACKEND": "tensorflow",
           "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    with log.open("w", encoding="utf-8") as handle:
        try:
            code = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], stdout=handle,
                                  stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (log: {log})"}
    if code != 0 or not result.is_file():
        tail = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        return {"error": f"exit {code}: {(tail[-1] if tail else '')[:300]} (log: {log.relative_to(ROOT)})"}
    return json.loads(result.read_text(encoding="utf-8"))


class Bench:
    """One data set / tokenizer run: trains, freezes, compresses, builds peers, measures every variant."""

    def __init__(self, name: str, config: str, overrides: list[str], args: argparse.Namespace) -> None:
        self.name = name
        self.config = config
        self.overrides = [*overrides, *(QUICK_OVERRIDES if args.quick and name != FIELD[0] else []),
                          *(["train.epochs=1"] if args.quick and name == FIELD[0] else []),
                          f"tracking.enabled={str(args.track).lower()}"]
        self.args = args
        self.work = WORK / name
        self.started = time.perf_counter()
        self.notes: list[str] = []
        self.variants: list[dict[str, Any]] = []

    # ---- helpers

    def _worker(self, label: str, kind: str, paths: list[Path], *, ours: bool, probs: bool = True,
                extra: tuple[str, ...] = ()) -> dict[str, Any]:
        out = self.work / "measure"
        out.mkdir(parents=True, exist_ok=True)
        argv = ["--worker", kind, *map(str, paths), "--result", str(out / f"{label}.json"),
                "--calls", str(self.args.calls), "--rounds", str(self.args.rounds)]
        argv += ["--texts", str(self.work / "test_texts.json")] if ours else ["--ids", str(self.work / "test_ids.npy")]
        if probs:
            argv += ["--probs", str(out / f"{label}.npy")]
        argv += extra
        print(f"   measuring {label} ({kind}) in a fresh process", flush=True)
        return _subprocess(argv, out / f"{label}.log", out / f"{label}.json")

    def _accuracy(self, label: str) -> float | None:
        import numpy as np

        from lifecycle import evaluate

        path = self.work / "measure" / f"{label}.npy"
        if not path.is_file():
            return None
        return float(evaluate.evaluate_probabilities(np.load(path), self.y, self.labels).accuracy)

    def _row(self, name: str, family: str, runtime: str, files: list[Path], measured: dict[str, Any] | None,
             label: str | None, **extra: Any) -> dict[str, Any]:
        raw, packed = _sizes(files)
        row: dict[str, Any] = {"name": name, "family": family, "runtime": runtime,
                               "files": " + ".join(p.name + ("/" if p.is_dir() else "") for p in files),
                               "model_bytes": raw, "model_gzip_bytes": packed, **extra}
        if measured is not None:
            if "error" in measured:
                row["error"] = measured["error"]
            else:
                memory = measured["rss_mb"]
                row.update({k: measured[k] for k in ("load_s", "first_call_ms", "p50_ms", "p99_ms",
                                                     "throughput_per_s", "peak_rss_mb", "tensorflow_imported")})
                row.update({k: measured[k] for k in ("text_p50_ms", "tokenizer_rss_mb", "predictor_runtime")
                            if k in measured})
                row["rss_mb"] = memory
                row["runtime_rss_mb"] = memory["runtime"] - memory["start"]
                row["model_rss_mb"] = memory["after"] - memory["runtime"]
                row["loaded_rss_mb"] = memory["loaded"] - memory["runtime"]
                row["process_rss_mb"] = memory["after"]
                anon = measured.get("anon_mb", {})
                if "loaded" in anon:
                    row["loaded_anon_mb"] = anon["loaded"] - anon["runtime"]
                row["test_accuracy"] = self._accuracy(label) if label else None
        self.variants.append(row)
        return row

    # ---- steps

    def train(self) -> None:
        from lifecycle.config import load_config
        from lifecycle.workflows import run_freeze, run_train

        self.cfg = load_config(ROOT / "configs" / self.config, self.overrides)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        track = self.args.track
        print(f"== {self.name}: training {self.config} ({' '.join(self.overrides)})", flush=True)
        started = time.perf_counter()
        trained = run_train(self.cfg, self.work / "checkpoint", versions_dir=self.work, resume=False)
        self.train_seconds = time.perf_counter() - started
        self.checkpoint = trained.version
        print(f"== {self.name}: freezing", flush=True)
        self.frozen = run_freeze(str(self.checkpoint), self.work / "frozen", versions_dir=self.work,
                                 track=track).version

    def compress(self, recipes: list[str]) -> list[tuple[str, Path]]:
        from lifecycle.compress import parse_recipe
        from lifecycle.errors import ConfigError
        from lifecycle.workflows import run_compress

        made = []
        for recipe in recipes:
            # "RECIPE@KERNELS": the same recipe with the int8 serving form's kernels chosen (hybrid is the default).
            steps, _, kernels = recipe.partition("@")
            try:
                parse_recipe(steps)
            except ConfigError as exc:
                note = f"recipe {recipe!r} skipped: {exc}"
                print(f"   {note}", flush=True)
                self.notes.append(note)
                continue
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", recipe).strip("-")
            print(f"== {self.name}: compress {recipe}", flush=True)
            try:
                outcome = run_compress(str(self.frozen), steps, self.work / f"compressed-{slug}",
                                       versions_dir=self.work, track=self.args.track,
                                       serving_kernels=kernels or None)
            except Exception as exc:  # a step that fails here is a finding to report, not a reason to stop
                note = f"recipe {recipe!r} failed: {type(exc).__name__}: {_first_line(str(exc))}"
                print(f"   {note}", flush=True)
                self.notes.append(note)
                continue
            made.append((recipe, outcome.version))
        return made

    def test_data(self) -> None:
        import numpy as np

        from lifecycle.artifacts import load_version
        from lifecycle.corpus import load_corpus
        from lifecycle.dataset import encode_examples
        from tokenization.base import load_tokenizer

        version = load_version(self.checkpoint)
        self.labels = version.labels
        self.max_len = version.max_len
        corpus = load_corpus(self.cfg.data, self.cfg.name)
        tokenizer = load_tokenizer(version.tokenizer_dir)
        self.vocab_size = int(tokenizer.vocab_size)
        test = encode_examples(corpus.test, tokenizer, self.labels, self.max_len, corpus.source)
        self.y = test.y
        np.save(self.work / "test_ids.npy", test.x)
        (self.work / "test_texts.json").write_text(json.dumps(list(corpus.test.texts)), encoding="utf-8")
        train = encode_examples(corpus.train, tokenizer, self.labels, self.max_len, corpus.source)
        validation = encode_examples(corpus.validation, tokenizer, self.labels, self.max_len, corpus.source)
        np.savez(self.work / "train.npz", x_train=train.x, y_train=train.y, x_val=validation.x, y_val=validation.y)
        self.n_test = len(test.y)

    def build_peers(self, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """The peers, all from the checkpoint's trained Keras model; each {path, how} or {error}."""
        from lifecycle.artifacts import KERAS_FILE
        from lifecycle.backend import tf_module

        tf = tf_module()
        import keras

        peers_dir = self.work / "peers"
        peers_dir.mkdir(exist_ok=True)
        model = keras.saving.load_model(self.checkpoint / KERAS_FILE, compile=False)
        peers: dict[str, dict[str, Any]] = {}

        def attempt(name: str, how: str, make: Any) -> None:
            if only is not None and name not in only:
                return
            started = time.perf_counter()
            try:
                path = make()
                peers[name] = {"path": path, "how": how, "build_s": time.perf_counter() - started}
            except Exception as exc:
                peers[name] = {"error": f"{type(exc).__name__}: {_first_line(str(exc))}", "how": how}
                print(f"   peer {name} failed: {peers[name]['error']}", flush=True)

        def save_keras() -> Path:
            path = peers_dir / "model.keras"
            model.save(path)  # loaded with compile=False: no optimizer, so no Adam slots in the file
            return path

        saved = peers_dir / "saved_model"

        def save_savedmodel() -> Path:
            model.export(str(saved), format="tf_saved_model", verbose=False)
            return saved

        def tflite(name: str, mode: str) -> Any:
            def make() -> Path:
                if not saved.is_dir():
                    save_savedmodel()
                converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
                if mode in ("fp16", "dr-int8"):
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                if mode == "fp16":
                    converter.target_spec.supported_types = [tf.float16]
                path = peers_dir / f"{name}.tflite"
                path.write_bytes(converter.convert())
                return path
            return make

        def onnx_fp32() -> Path:
            import tf2onnx

            path = peers_dir / "model.onnx"
            spec = (tf.TensorSpec((None, self.max_len), tf.int32, name="input_ids"),)
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))
            return path

        def onnx_int8() -> Path:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            source = peers_dir / "model.onnx"
            if not source.is_file():
                onnx_fp32()
            path = peers_dir / "model.int8.onnx"
            quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8)
            return path

        attempt("keras", "keras.Model.save (.keras zip, loaded with compile=False: no optimizer)", save_keras)
        attempt("savedmodel", "keras.Model.export(format='tf_saved_model')", save_savedmodel)
        attempt("tflite-fp32", "TFLiteConverter.from_saved_model, no optimizations", tflite("tflite-fp32", "fp32"))
        attempt("tflite-fp16", "TFLiteConverter.from_saved_model, optimizations=[Optimize.DEFAULT], "
                "supported_types=[float16]", tflite("tflite-fp16", "fp16"))
        attempt("tflite-dr-int8", "TFLiteConverter.from_saved_model, optimizations=[Optimize.DEFAULT] "
                "(dynamic-range int8)", tflite("tflite-dr-int8", "dr-int8"))
        attempt("onnx-fp32", f"tf2onnx.convert.from_keras, opset {ONNX_OPSET}", onnx_fp32)
        attempt("onnx-int8", "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8), defaults otherwise "
                "(per tensor, no pre-processing)", onnx_int8)
        if only is None or "tfmot" in only:
            peers["tfmot"] = self._tfmot(peers_dir)
        return peers

    def _tfmot(self, peers_dir: Path) -> dict[str, Any]:
        epochs = self.args.tfmot_epochs
        how = (f"TF-MOT prune_low_magnitude ConstantSparsity({TFMOT_SPARSITY}) on a tf-keras twin with the same "
               f"weights, {epochs} fine-tune epoch(s) (Adam {self.cfg.train.learning_rate:g}, batch "
               f"{self.cfg.train.batch_size}), strip_pruning, TFLiteConverter optimizations=[Optimize.DEFAULT]")
        print(f"== {self.name}: TF-MOT pruning in a subprocess", flush=True)
        path = peers_dir / "tfmot-prune0.8-dr-int8.tflite"
        started = time.perf_counter()
        result = _subprocess(["--tfmot", str(self.checkpoint / "model.keras"), str(self.work / "train.npz"),
                              str(path), "--result", str(peers_dir / "tfmot.json"), "--epochs", str(epochs),
                              "--batch-size", str(self.cfg.train.batch_size),
                              "--learning-rate", str(self.cfg.train.learning_rate),
                              "--seed", str(self.cfg.train.seed)],
                             peers_dir / "tfmot.log", peers_dir / "tfmot.json")
        if "error" in result:
            print(f"   peer tfmot failed: {result['error']}", flush=True)
            return {"error": result["error"], "how": how}
        return {"path": path, "how": how, "build_s": time.perf_counter() - started, "details": result}

    def measure_ours(self, versions: list[tuple[str, Path]], graph_plain: bool = False) -> None:
        from lifecycle.artifacts import TOKENIZER_DIR, load_version
        from lifecycle.workflows import run_evaluate

        for recipe, path in versions:
            version = load_version(path)
            manifest = version.manifest
            label = recipe or "float32"
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")
            evaluated = run_evaluate(str(path), track=False).metrics["test_accuracy"]
            common = {"recipe": label, "kind": version.kind, "weights_bytes": manifest.sizes["weights_bytes"],
                      "version": str(path.relative_to(ROOT)), "evaluate_accuracy": evaluated,
                      "manifest_accuracy": manifest.metrics.get("test_accuracy"),
                      "vocab_rows": manifest.architecture.vocab_size if manifest.architecture else None}
            tok_raw, tok_gzip = _sizes([path / TOKENIZER_DIR])
            common.update({"tokenizer_bytes": tok_raw, "tokenizer_gzip_bytes": tok_gzip})
            if "@" not in label:  # RECIPE@KERNELS: only its serving form differs from RECIPE's version
                measured = self._worker(f"ours-{slug}-graph", "ours-graph", [path], ours=True)
                self._row(f"ours {label}", "ours", "graph.pb (TF session)", [path / "graph.pb"], measured,
                          f"ours-{slug}-graph", **common)
            if graph_plain:
                measured = self._worker(f"ours-{slug}-plain", "graph-plain", [path], ours=True)
                self._row(f"ours {label}", "reference", "graph.pb, plain session (Grappler on, no warm-up)",
                          [path / "graph.pb"], measured, f"ours-{slug}-plain", **common)
            auto = self.variants[-1] if "@" not in label else {}
            serving = path / "model.tflite"
            if serving.is_file():
                measured = self._worker(f"ours-{slug}-serving", "ours-serving", [path], ours=True)
                auto = self._row(f"ours {label}", "ours", "serving form (LiteRT)", [serving], measured,
                                 f"ours-{slug}-serving", **common)
            else:
                self.notes.append(f"{label}: no model.tflite in the version (no serving form in this build)")
            # The Predictor's default form must score exactly what `lifecycle evaluate` reports.
            if auto.get("test_accuracy") is not None and abs(auto["test_accuracy"] - evaluated) > 1e-9:
                self.notes.append(f"{label}: {auto['runtime']} scored {100 * auto['test_accuracy']:.2f}% in the "
                                  f"worker, run_evaluate {100 * evaluated:.2f}%")

    def pair(self, int8: Path | None, peer: Path | None) -> dict[str, Any] | None:
        """Our int8 serving form against the converter's dynamic-range int8, timed in one process (``_worker_pair``)."""
        if int8 is None or peer is None or not (int8 / "model.tflite").is_file():
            return None
        measured = self._worker("pair-int8-serving", "pair-serving", [int8, peer], ours=True, probs=False,
                                extra=("--ids", str(self.work / "test_ids.npy")))
        return None if "error" in measured else measured

    def measure_peers(self, peers: dict[str, dict[str, Any]]) -> None:
        kinds = {"keras": "keras", "savedmodel": "savedmodel", "tflite-fp32": "tflite", "tflite-fp16": "tflite",
                 "tflite-dr-int8": "tflite", "onnx-fp32": "onnx", "onnx-int8": "onnx", "tfmot": "tflite"}
        runtimes = {"keras": "Keras 3", "savedmodel": "TF SavedModel", "tflite": "LiteRT", "onnx": "ONNX Runtime"}
        for name, peer in peers.items():
            if "error" in peer:
                self.variants.append({"name": f"peer {name}", "family": "peer", "how": peer["how"],
                                      "error": peer["error"]})
                continue
            measured = self._worker(f"peer-{name}", kinds[name], [peer["path"]], ours=False)
            extra = {"how": peer["how"], "build_s": peer["build_s"]}
            if "details" in peer:
                extra["details"] = peer["details"]
            self._row(f"peer {name}", "peer", runtimes[kinds[name]], [peer["path"]], measured, f"peer-{name}",
                      **extra)

    def ten(self, int8_version: Path, peer_tflite: Path | None) -> dict[str, Any]:
        """Ten copies of the int8 version (our serving form) and of the peer's file, each in one process."""
        copies = self.work / "ten"
        shutil.rmtree(copies, ignore_errors=True)
        copies.mkdir()
        ours = []
        for i in range(TEN):
            shutil.copytree(int8_version, copies / f"ours-{i}")
            ours.append(copies / f"ours-{i}")
        out: dict[str, Any] = {}
        if (int8_version / "model.tflite").is_file():
            out["ours"] = self._worker("ten-ours-serving", "ten-serving", ours, ours=True, probs=False)
        if peer_tflite is not None:
            peers = []
            for i in range(TEN):
                shutil.copy(peer_tflite, copies / f"peer-{i}.tflite")
                peers.append(copies / f"peer-{i}.tflite")
            out["tflite-dr-int8"] = self._worker("ten-peer-tflite", "ten-tflite", peers, ours=False, probs=False,
                                                 extra=("--tokenizer", str(self.checkpoint / "tokenizer")))
        shutil.rmtree(copies, ignore_errors=True)
        return out

    def reference(self) -> dict[str, Any]:
        """The training checkpoint (with Adam slots): the size everything is compared with."""
        from lifecycle.artifacts import load_version

        manifest = load_version(self.checkpoint).manifest
        sizes = manifest.sizes
        raw, packed = _sizes([self.checkpoint / "model.keras"])
        tok_raw, tok_gzip = _sizes([self.checkpoint / "tokenizer"])
        return {"model_bytes": raw, "model_gzip_bytes": packed, "optimizer_bytes": sizes.get("optimizer_bytes"),
                "weights_bytes": sizes.get("weights_bytes"), "tokenizer_bytes": tok_raw,
                "tokenizer_gzip_bytes": tok_gzip, "test_accuracy": manifest.metrics.get("test_accuracy"),
                "train_seconds": self.train_seconds}

    def summary(self) -> dict[str, Any]:
        data = self.cfg.data
        return {"name": self.name, "measured": {"date": datetime.now(UTC).strftime("%Y-%m-%d"),
                                                 "quick": self.args.quick, "calls": self.args.calls,
                                                 "seconds": time.perf_counter() - self.started},
                "config": self.config, "overrides": self.overrides, "data": data.format,
                "tokenizer": self.cfg.tokenizer.kind, "embedding_dim": self.cfg.model.embedding_dim,
                "vocab_size": self.vocab_size, "max_len": self.max_len, "n_test": self.n_test,
                "labels": len(self.labels), "checkpoint": self.reference(), "variants": self.variants,
                "notes": self.notes}


def bench_dataset(name: str, config: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(name, config, overrides, args)
    bench.train()
    bench.test_data()
    versions = [("", bench.frozen), *bench.compress(args.recipe)]
    print(f"== {name}: building peers", flush=True)
    peers = bench.build_peers()
    print(f"== {name}: measuring", flush=True)
    bench.measure_ours(versions)
    bench.measure_peers(peers)
    result = bench.summary()
    int8 = next((path for recipe, path in versions if recipe == "int8"), None)
    result["pair_int8_serving"] = bench.pair(int8, peers.get("tflite-dr-int8", {}).get("path"))
    _track(bench, result)
    return result


def add_pairs(previous: dict[str, Any], name: str, args: argparse.Namespace) -> None:
    """--pairs-only: the paired int8 serving measurement over an earlier run's versions and peer."""
    config, overrides = next(((c, o) for n, c, o in RUNS if n == name), (FIELD[1], FIELD[2]))
    bench = Bench(name, config, overrides, args)
    peer = bench.work / "peers" / "tflite-dr-int8.tflite"
    previous["runs"][name]["pair_int8_serving"] = bench.pair(bench.work / "compressed-int8", peer)


def add_recipes(previous: dict[str, Any], name: str, args: argparse.Namespace) -> None:
    """--add-recipe: more recipes over the same frozen version of an earlier run, their rows added (or replaced)."""
    from lifecycle.config import load_config

    config, overrides = next((c, o) for n, c, o in RUNS if n == name)
    run = previous["runs"][name]
    bench = Bench(name, config, overrides, args)
    bench.cfg = load_config(ROOT / "configs" / config, bench.overrides)
    bench.checkpoint, bench.frozen = bench.work / "checkpoint", bench.work / "frozen"
    bench.test_data()
    for recipe in args.add_recipe:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", recipe).strip("-")
        shutil.rmtree(bench.work / f"compressed-{slug}", ignore_errors=True)
    bench.measure_ours(bench.compress(args.add_recipe))
    added = {row["name"] for row in bench.variants}
    run["variants"] = [v for v in run["variants"] if v["name"] not in added] + bench.variants
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    run["notes"] = [*run.get("notes", []), *bench.notes,
                    f"{', '.join(args.add_recipe)}: added {day} with --add-recipe over the same frozen version "
                    f"(the other rows were measured {run['measured']['date']}; timings of the added rows come from "
                    "another moment of the machine)"]
    meta = previous.setdefault("meta", {})
    meta["recipes"] = [*meta.get("recipes", []), *(r for r in args.add_recipe if r not in meta.get("recipes", []))]
    command = "python benchmarks/compress_bench.py" + " ".join([""] + sys.argv[1:])
    meta["added"] = [*(a for a in meta.get("added", []) if a["command"] != command), {"date": day, "command": command}]


def bench_field(args: argparse.Namespace) -> dict[str, Any]:
    """The 30k x 300 case: graph.pb first call and memory, serving form, ten int8 models in one process."""
    name, config, overrides = FIELD
    bench = Bench(name, config, overrides, args)
    bench.train()
    bench.test_data()
    if bench.vocab_size != FIELD_VOCAB:
        bench.notes.append(f"the BPE vocabulary reached {bench.vocab_size} tokens, not {FIELD_VOCAB}")
    versions = [("", bench.frozen), *bench.compress(["int8", "int8:embedding=table"])]
    peers = bench.build_peers({"tflite-dr-int8"})
    bench.measure_ours(versions, graph_plain=True)
    bench.measure_peers(peers)
    result = bench.summary()
    int8 = next((path for recipe, path in versions if recipe == "int8"), None)
    result["pair_int8_serving"] = bench.pair(int8, peers.get("tflite-dr-int8", {}).get("path"))
    if int8 is not None:
        print(f"== {name}: ten int8 models in one process", flush=True)
        result["ten"] = bench.ten(int8, peers.get("tflite-dr-int8", {}).get("path"))
        result["measured"]["seconds"] = time.perf_counter() - bench.started
    _track(bench, result)
    return result


def _track(bench: Bench, result: dict[str, Any]) -> None:
    """With --track: one MLflow run per benchmark run, every variant's figures as metrics, the JSON as artifact."""
    if not bench.args.track:
        return
    from lifecycle.tracking import make_tracker

    tracker = make_tracker(bench.cfg.tracking, bench.cfg.name)
    with tracker.run("bench", f"compress-bench-{bench.name}", {"lifecycle.bench": "compress"}):
        metrics = {}
        for row in result["variants"]:
            key = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{row['name']}.{row.get('runtime', '')}").strip("_")
            for metric in ("model_bytes", "model_gzip_bytes", "test_accuracy", "load_s", "first_call_ms", "p50_ms",
                           "p99_ms", "throughput_per_s", "model_rss_mb"):
                if isinstance(row.get(metric), int | float):
                    metrics[f"{key}.{metric}"] = float(row[metric])
        tracker.log_metrics(metrics)
        tracker.log_dict(result, "compress_bench.json")


# ------------------------------------------------------------------------------------------------------ report


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value / 1e6:.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _frozen_row(run: dict[str, Any], runtime_prefix: str = "graph.pb") -> dict[str, Any] | None:
    return next((v for v in run["variants"] if v["name"] == "ours float32" and v.get("family") == "ours"
                 and v.get("runtime", "").startswith(runtime_prefix)), None)


def _find(run: dict[str, Any], name: str, runtime_prefix: str = "") -> dict[str, Any] | None:
    return next((v for v in run["variants"] if v["name"] == name and v.get("family") != "reference"
                 and v.get("runtime", "").startswith(runtime_prefix) and "error" not in v), None)


def _steps(recipe: str) -> set[str]:
    return {part.split(":")[0] for part in recipe.split(",") if part}


def _best_vocab_recipe(run: dict[str, Any]) -> dict[str, Any] | None:
    """Our graph row of CRITERIA_RECIPE, else the first whose recipe has vocab, prune and int8 (with tune first)."""
    rows = [v for v in run["variants"] if v.get("family") == "ours" and v.get("runtime", "").startswith("graph")
            and {"vocab", "prune", "int8"} <= _steps(v.get("recipe", "").replace("+", ","))]
    rows.sort(key=lambda v: (v.get("recipe") != CRITERIA_RECIPE, "tune" not in v.get("recipe", "")))
    return rows[0] if rows else None


def run_table(run: dict[str, Any]) -> str:
    frozen = _frozen_row(run)
    base_acc = frozen.get("test_accuracy") if frozen else None
    base_bytes = frozen["model_bytes"] if frozen else None
    head = ("| variant | runtime | model MB | gzip MB | tokenizer KB | x smaller than frozen (raw / gzip) | test acc % "
            "| Δ pt | load ms | first call ms | p50 ms | p99 ms | rows/s @256 | text p50 ms | +RSS MB loaded / after "
            "calls | RSS MB runtime | TF imported |")
    lines = [head, "|" + "---|" * 17]
    ck = run["checkpoint"]
    ck_acc = _num(100 * ck["test_accuracy"], 1) if ck.get("test_accuracy") is not None else ""
    ck_ratio = f"{base_bytes / ck['model_bytes']:.2f} / {frozen['model_gzip_bytes'] / ck['model_gzip_bytes']:.2f}" \
        if frozen else ""
    lines.append(f"| training checkpoint (with Adam slots) | Keras 3 | {_mb(ck['model_bytes'])} | "
                 f"{_mb(ck['model_gzip_bytes'])} | {ck['tokenizer_bytes'] / 1e3:.0f} | {ck_ratio} | {ck_acc} |"
                 + " |" * 10)
    frozen_gzip = frozen["model_gzip_bytes"] if frozen else None
    for v in run["variants"]:
        if "error" in v and "model_bytes" not in v:
            lines.append(f"| {v['name']} | failed: {v['error']} |" + " |" * 15)
            continue
        acc = v.get("test_accuracy")
        delta = 100 * (acc - base_acc) if acc is not None and base_acc is not None else None
        ratio = (f"{base_bytes / v['model_bytes']:.1f} / {frozen_gzip / v['model_gzip_bytes']:.1f}"
                 if base_bytes and frozen_gzip else "")
        tok = f"{v['tokenizer_bytes'] / 1e3:.0f}" if v.get("tokenizer_bytes") is not None else "-"
        if "error" in v:
            lines.append(f"| {v['name']} | {v['runtime']} | {_mb(v['model_bytes'])} | {_mb(v['model_gzip_bytes'])} | "
                         f"{tok} | {ratio} | failed: {v['error']} |" + " |" * 10)
            continue
        lines.append(
            f"| {v['name']} | {v['runtime']} | {_mb(v['model_bytes'])} | {_mb(v['model_gzip_bytes'])} | {tok} | "
            f"{ratio} | {_num(100 * acc, 1) if acc is not None else ''} | {_num(delta, 1)} | "
            f"{_num(1e3 * v['load_s'], 0)} | {_num(v['first_call_ms'])} | {_num(v['p50_ms'], 3)} | "
            f"{_num(v['p99_ms'], 3)} | {_num(v['throughput_per_s'], 0)} | {_num(v.get('text_p50_ms'), 3)} | "
            f"{_num(v.get('loaded_rss_mb'), 1)} / {_num(v['model_rss_mb'], 1)} | {_num(v['runtime_rss_mb'], 0)} | "
            f"{'yes' if v['tensorflow_imported'] else 'no'} |"
        )
    return "\n".join(lines)


def _drop_text(drop: float) -> str:
    return f"{drop:.2f} pt lost" if drop > 0 else f"{-drop:.2f} pt gained"


def criteria(runs: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, tuple[str, bool | None]]]]:
    """Each issue-3 criterion with, per run, (the measured figure, pass/fail/None when not measured)."""
    table: list[tuple[str, dict[str, tuple[str, bool | None]]]] = []

    def add(title: str, check: Any) -> None:
        cells = {}
        for name, run in runs.items():
            try:
                cell = check(name, run)
            except (KeyError, TypeError, ZeroDivisionError):
                cell = None
            if cell is not None:
                cells[name] = cell
        table.append((title, cells))

    def frozen_vs_checkpoint(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
        frozen = _frozen_row(run)
        ratio = frozen["model_bytes"] / run["checkpoint"]["model_bytes"]
        return f"{ratio:.3f}", ratio <= 1 / 3

    def int8_size(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
        int8 = _find(run, "ours int8", "graph")
        if int8 is None:
            return None
        ratio = int8["model_bytes"] / _frozen_row(run)["model_bytes"]
        return f"{ratio:.3f}", ratio <= 0.26

    def int8_drop(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
        int8 = _find(run, "ours int8", "graph")
        if int8 is None:
            return None
        drop = 100 * (_frozen_row(run)["evaluate_accuracy"] - int8["evaluate_accuracy"])
        return _drop_text(drop), drop <= 0.5

    def vocab_ratio(name: str, run: dict[str, Any]) -> tuple[str, bool | None] | None:
        if name == FIELD[0]:
            return None
        frozen = _frozen_row(run)
        best = _best_vocab_recipe(run)
        tfmot = _find(run, "peer tfmot")
        peer = (f"; TF-MOT peer {frozen['model_bytes'] / tfmot['model_bytes']:.1f}x / "
                f"{frozen['model_gzip_bytes'] / tfmot['model_gzip_bytes']:.1f}x") if tfmot else ""
        if best is None:
            return f"no prune + int8 + vocab version was made (see the notes){peer}", None
        deployed = frozen["model_bytes"] + frozen["tokenizer_bytes"]
        deployed_gz = frozen["model_gzip_bytes"] + frozen["tokenizer_gzip_bytes"]
        raw = deployed / (best["model_bytes"] + best["tokenizer_bytes"])
        packed = deployed_gz / (best["model_gzip_bytes"] + best["tokenizer_gzip_bytes"])
        return (f"{best['recipe']}: {raw:.1f}x raw / {packed:.1f}x gzip (graph + tokenizer; graph alone "
                f"{frozen['model_bytes'] / best['model_bytes']:.1f}x){peer}", raw >= 15)

    def vocab_drop(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
        best = _best_vocab_recipe(run)
        if best is None or name == FIELD[0]:
            return None
        drop = 100 * (_frozen_row(run)["evaluate_accuracy"] - best["evaluate_accuracy"])
        return _drop_text(drop), drop <= 1.0

    def first_call(recipe: str) -> Any:
        def check(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
            row = _find(run, f"ours {recipe}", "graph.pb (TF")
            if row is None:
                return None
            ratio = row["first_call_ms"] / row["p50_ms"]
            return f"{row['first_call_ms']:.2f} ms / {row['p50_ms']:.3f} ms = {ratio:.2f}x", ratio <= 3
        return check

    def graph_memory(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
        row = _find(run, "ours int8", "graph.pb (TF")
        if row is None:
            return None
        # "Holding the loaded model": after load (our loader's warm-up call included), before the benchmark's calls
        # (batch 256 leaves activation buffers that belong to no model); both figures are in the tables.
        ratio = row["loaded_rss_mb"] * 2**20 / row["weights_bytes"]
        private = ""
        if "loaded_anon_mb" in row:  # RSS less the shared-library and file pages the first calls touched
            private = (f"; private (anonymous) memory +{row['loaded_anon_mb']:.1f} MB = "
                       f"{row['loaded_anon_mb'] * 2**20 / row['weights_bytes']:.2f}x")
        return (f"+{row['loaded_rss_mb']:.1f} MB loaded (+{row['model_rss_mb']:.1f} after the calls) for "
                f"{row['weights_bytes'] / 2**20:.1f} MB of weights = {ratio:.2f}x{private}", ratio <= 1.5)

    def serving(metric: str) -> Any:
        def check(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
            ours = _find(run, "ours int8", "serving")
            peer = _find(run, "peer tflite-dr-int8")
            if ours is None:
                return None
            if metric == "first":
                return f"{ours['first_call_ms']:.2f} ms", ours["first_call_ms"] <= 2
            if peer is None:
                return None
            if metric == "size":
                text = f"{ours['model_bytes'] / 1e6:.3f} vs {peer['model_bytes'] / 1e6:.3f} MB"
                table = _find(run, "ours int8:embedding=table", "serving")
                if table is None:
                    return text, ours["model_bytes"] <= peer["model_bytes"]
                # The issue asks for per-row embedding scales and for this size; they cannot both hold (4 bytes a
                # row), so both are shown and the criterion is met only through the one-scale option.
                fits = table["model_bytes"] <= peer["model_bytes"]
                frozen = _frozen_row(run, "serving")
                accuracy = (f", {100 * table['test_accuracy']:.1f}% against {100 * frozen['test_accuracy']:.1f}% "
                            "float32" if frozen and table.get("test_accuracy") is not None
                            and frozen.get("test_accuracy") is not None else "")
                return (f"int8 (a scale per embedding row) {text}; int8:embedding=table "
                        f"{table['model_bytes'] / 1e6:.3f} MB{accuracy}", fits)
            pair = run.get("pair_int8_serving")
            if pair:  # judged on the paired measurement (same process, alternating rounds); the tables' rows beside
                ratio = pair["ours_p50_ms"] / pair["peer_p50_ms"]
                return (f"{pair['ours_p50_ms']:.3f} vs {pair['peer_p50_ms']:.3f} ms = {ratio:.3f}x paired "
                        f"({pair['rounds']} alternating rounds in one process; fresh processes: "
                        f"{ours['p50_ms']:.3f} vs {peer['p50_ms']:.3f} ms)", ratio <= 1.1)
            ratio = ours["p50_ms"] / peer["p50_ms"]
            return f"{ours['p50_ms']:.3f} vs {peer['p50_ms']:.3f} ms = {ratio:.3f}x", ratio <= 1.1
        return check

    def ten(name: str, run: dict[str, Any]) -> tuple[str, bool] | None:
        result = run.get("ten", {}).get("ours")
        if not result or "error" in result:
            return (f"failed: {result['error']}", False) if result else None
        mem = result["rss_mb"]
        peer = run["ten"].get("tflite-dr-int8", {})
        peer_text = (f"; TFLite DR int8 peer {peer['rss_mb']['after_batch1']:.0f} MB "
                     f"({peer['rss_mb']['after_batch256']:.0f} after batch 256)") if "rss_mb" in peer else ""
        ok = mem["after_batch1"] < 300 and not result["tensorflow_imported"]
        return (f"{mem['after_batch1']:.0f} MB after batch-1 calls ({mem['after_batch256']:.0f} after batch 256), "
                f"TensorFlow imported: {'yes' if result['tensorflow_imported'] else 'no'}{peer_text}", ok)

    add("frozen float32 graph.pb <= 1/3 of the training checkpoint with Adam slots (model files)", frozen_vs_checkpoint)
    add("int8 <= 0.26 x frozen float32 (graph.pb)", int8_size)
    add("int8 accuracy drop <= 0.5 pt", int8_drop)
    add("prune + int8 + vocab >= 15x smaller than frozen float32 (raw; gzip stated)", vocab_ratio)
    add("prune + int8 + vocab accuracy drop <= 1 pt", vocab_drop)
    add("graph.pb first call <= 3 x batch-1 p50 (frozen float32)", first_call("float32"))
    add("graph.pb first call <= 3 x batch-1 p50 (int8)", first_call("int8"))
    add("graph.pb int8: RSS over TF + empty session <= 1.5 x weight bytes", graph_memory)
    add("serving form int8 no larger than TFLite dynamic-range int8", serving("size"))
    add("serving form int8 batch-1 p50 <= 1.1 x TFLite dynamic-range int8", serving("p50"))
    add("serving form int8 first call <= 2 ms", serving("first"))
    add("ten int8 30k x 300 models in one serving process < 300 MB RSS, no TensorFlow", ten)
    return table


def criteria_table(runs: dict[str, dict[str, Any]]) -> str:
    names = list(runs)
    lines = ["| criterion | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for title, cells in criteria(runs):
        row = []
        for name in names:
            if name not in cells:
                row.append("")
                continue
            text, ok = cells[name]
            mark = {True: "**pass**", False: "**FAIL**", None: "not measured"}[ok]
            row.append(f"{text} {mark}")
        lines.append(f"| {title} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# Each peer against our variant of the same kind of storage; pruning peers against our best pruned recipe.
PEER_COUNTERPART = {"keras": "float32", "savedmodel": "float32", "tflite-fp32": "float32", "onnx-fp32": "float32",
                    "tflite-fp16": "fp16", "tflite-dr-int8": "int8", "onnx-int8": "int8", "tfmot": "pruned"}
# What counts as a win: sizes 1% smaller, timings, load and RSS 10% better (RSS also by 1 MB), any higher accuracy.
WIN_MARGIN = {"bytes": 0.01, "time": 0.10}


def _our_counterpart(run: dict[str, Any], kind: str) -> dict[str, Any] | None:
    if kind == "pruned":
        rows = [v for v in run["variants"] if v.get("family") == "ours" and "prune" in v.get("recipe", "")
                and "p50_ms" in v]
        rows.sort(key=lambda v: (not v.get("runtime", "").startswith("serving"), "vocab" not in v["recipe"],
                                 "tune" not in v["recipe"]))
        return rows[0] if rows else None
    return (_find(run, f"ours {kind}", "serving") or _find(run, f"ours {kind}", "graph"))


def _beats(key: str, peer: float, ours: float) -> bool:
    if key == "test_accuracy":
        return peer > ours
    if key == "throughput_per_s":
        return peer > ours * (1 + WIN_MARGIN["time"])
    if key.endswith("bytes"):
        return peer < ours * (1 - WIN_MARGIN["bytes"])
    if key == "model_rss_mb":
        return peer < ours * (1 - WIN_MARGIN["time"]) and ours - peer > 1
    return peer < ours * (1 - WIN_MARGIN["time"])


def peer_wins(run: dict[str, Any]) -> list[str]:
    """Where a peer beats our counterpart (same storage kind; serving form where there is one)."""
    checks = [("model_bytes", "smaller file"), ("model_gzip_bytes", "smaller gzip"),
              ("test_accuracy", "higher accuracy"), ("first_call_ms", "faster first call"),
              ("p50_ms", "lower batch-1 p50"), ("p99_ms", "lower batch-1 p99"),
              ("throughput_per_s", "higher throughput"), ("model_rss_mb", "less RSS"), ("load_s", "faster load")]
    wins = []
    for v in run["variants"]:
        name = v["name"].removeprefix("peer ")
        if v.get("family") != "peer" or "p50_ms" not in v or name not in PEER_COUNTERPART:
            continue
        ours = _our_counterpart(run, PEER_COUNTERPART[name])
        if ours is None:
            continue
        better = [f"{text} ({_fmt(key, v[key])} vs {_fmt(key, ours[key])})" for key, text in checks
                  if v.get(key) is not None and ours.get(key) is not None and _beats(key, v[key], ours[key])]
        if better:
            wins.append(f"{run['name']}: {name} beats ours {ours['recipe']} ({ours['runtime']}) on "
                        + ", ".join(better))
    return wins


def _fmt(key: str, value: float) -> str:
    if key.endswith("bytes"):
        return f"{value / 1e6:.3f} MB"
    if key == "test_accuracy":
        return f"{100 * value:.1f}%"
    if key == "load_s":
        return f"{1e3 * value:.0f} ms"
    if key == "throughput_per_s":
        return f"{value:.0f}/s"
    if key == "model_rss_mb":
        return f"{value:.1f} MB"
    return f"{value:.3f} ms"


QUICK_NOTE = " (QUICK smoke run: tiny data, 1 epoch, a busy machine; not the figures of record)"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    runs = {name: results["runs"][name] for name in ALL_RUNS if name in results["runs"]}
    parts = [
        f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores), {meta['versions_text']}, "
        f"`{meta['command']}`{QUICK_NOTE if meta['quick'] else ''}."
        f" Timings and memory: a fresh process per variant, {meta['calls']} batch-1 calls on test rows, "
        f"{meta['rounds']} rounds at batch 256; model ids in, probabilities out (our rows' `text p50` adds "
        "tokenization). Sizes: the model file(s) alone; our tokenizer is listed apart (peers need the same one to "
        "serve, but do not carry it). `+RSS loaded / after calls`: RSS after load, and after all the calls, minus "
        "RSS after the runtime import (`RSS runtime` is that import's own cost: TensorFlow + an empty session for "
        "graph.pb, TF + Keras for .keras/SavedModel, the interpreter for LiteRT, onnxruntime for ONNX; our LiteRT "
        "rows also import lifecycle's Predictor); our rows include the tokenizer. Every runtime runs with its "
        "default threads. Load: ours includes the sha256 check of every file, the tokenizer and the loader's "
        "warm-up call. Accuracy: the same test split, each variant on its own ids (ours through the Predictor, "
        "checked equal to `lifecycle evaluate`); Δ against our frozen float32."
        + "".join(f" Rows added {a['date']} over the same frozen versions: `{a['command']}`."
                  for a in meta.get("added", []))
        + (" The serving p50 criterion is judged on a paired measurement: our int8 serving form and the converter's "
           f"dynamic-range int8 in one process, batch-1 calls in {PAIR_ROUNDS} rounds whose order alternates "
           "(fresh processes of the same model differ by up to 30% from one run to the next)"
           + (f"; re-measured {meta['pairs']['date']} over the same versions with `{meta['pairs']['command']}`"
              if meta.get("pairs") else "") + "."
           if any(run.get("pair_int8_serving") for run in runs.values()) else ""),
        "",
        "Criteria (issue 3):",
        "",
        criteria_table(runs),
    ]
    for name, run in runs.items():
        stamp = run.get("measured", {})
        when = (f"; measured {stamp.get('date')}{', QUICK' if stamp.get('quick') else ''} in "
                f"{stamp.get('seconds', 0) / 60:.0f} min") if stamp else ""
        parts += ["", f"**{name}** ({run['data']}, {run['tokenizer']} tokenizer, vocabulary {run['vocab_size']} x "
                      f"{run['embedding_dim']}, max_len {run['max_len']}, {run['n_test']} test texts; checkpoint "
                      f"{100 * (run['checkpoint'].get('test_accuracy') or 0):.1f}% after "
                      f"{run['checkpoint']['train_seconds']:.0f} s of training{when}):", "", run_table(run)]
        ten = run.get("ten")
        if ten:
            for who, result in ten.items():
                if "rss_mb" in result:
                    mem = result["rss_mb"]
                    parts.append(f"\nTen int8 models in one process ({who}): {mem['runtime']:.0f} MB after the "
                                 f"runtime import, {mem['loaded']:.0f} MB loaded, {mem['after_batch1']:.0f} MB after "
                                 f"a batch-1 call each, {mem['after_batch256']:.0f} MB after a batch-256 call each; "
                                 f"TensorFlow imported: {'yes' if result['tensorflow_imported'] else 'no'}.")
                else:
                    parts.append(f"\nTen int8 models in one process ({who}): failed: {result.get('error')}")
    wins = [w for run in runs.values() for w in peer_wins(run)]
    if wins:
        parts += ["", "Where a peer wins, against our version of the same storage (float32, fp16, int8; TF-MOT "
                  "against our best pruned recipe), serving form where there is one; a win is any higher accuracy, a "
                  "file 1% smaller, or a time, load or RSS 10% better:", ""] + [f"- {w}" for w in wins]
    notes = [f"{name}: {n}" for name, run in runs.items() for n in run.get("notes", [])]
    how = {}
    for run in runs.values():
        for v in run["variants"]:
            if v.get("family") == "peer" and v.get("how"):
                how[v["name"].removeprefix("peer ")] = v["how"]
    parts += ["", "How the peers were made (all from the checkpoint's trained Keras model): "
              + "; ".join(f"{k}: {v}" for k, v in how.items()) + "."]
    if notes:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts)


def write_readme(text: str) -> None:
    write_block("compress", text)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime", "onnx", "tf2onnx",
                    "tensorflow-model-optimization", "tf-keras"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--tfmot"]:
        tfmot_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated runs (default: all: {', '.join(ALL_RUNS)}; with --quick: "
                        f"{', '.join(QUICK_RUNS)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: data.limit=600 and 1 epoch (the 30k case keeps all of MR for its vocabulary, "
                             "1 epoch), 200 calls, 3 rounds, 1 TF-MOT epoch")
    parser.add_argument("--recipe", action="append", help="a compression recipe (repeatable; default: "
                        + " | ".join(DEFAULT_RECIPES) + "); unknown steps are skipped with a note")
    parser.add_argument("--calls", type=int, help="batch-1 calls per variant (default 1000; --quick 200)")
    parser.add_argument("--rounds", type=int, help="timed batch-256 calls per variant (default 10; --quick 3)")
    parser.add_argument("--tfmot-epochs", type=int, help="TF-MOT fine-tune epochs (default 2; --quick 1)")
    parser.add_argument("--track", action="store_true", help="also log every step and the results to MLflow")
    parser.add_argument("--add-recipe", action="append",
                        help="compress the frozen versions of an earlier run (benchmarks/out/compress-work) with one "
                             "more recipe and measure only it, adding its rows to the results (repeatable)")
    parser.add_argument("--pairs-only", action="store_true",
                        help="only (re)measure our int8 serving form against the converter's dynamic-range int8 in "
                             "one process, over the versions of the last run")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    parser.add_argument("--readme-only", action="store_true",
                        help="rewrite README.md from benchmarks/out/compress.json")
    args = parser.parse_args()
    args.recipe = args.recipe or list(DEFAULT_RECIPES)
    args.calls = args.calls or (200 if args.quick else 1000)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.tfmot_epochs = args.tfmot_epochs or (1 if args.quick else 2)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    wanted = args.only.split(",") if args.only else (QUICK_RUNS if args.quick else ALL_RUNS)
    unknown = sorted(set(wanted) - set(ALL_RUNS))
    if unknown:
        parser.error(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(ALL_RUNS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {"runs": {}}
    if args.pairs_only and not args.readme_only:
        for name in wanted:
            if name in previous["runs"]:
                add_pairs(previous, name, args)
        previous.setdefault("meta", {})["pairs"] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"),
                                                    "command": "python benchmarks/compress_bench.py --pairs-only"}
        RESULTS.write_text(json.dumps(previous, indent=1, default=str), encoding="utf-8")
    elif args.add_recipe and not args.readme_only:
        for name in wanted:
            if name != FIELD[0] and name in previous["runs"]:
                add_recipes(previous, name, args)
                RESULTS.write_text(json.dumps(previous, indent=1, default=str), encoding="utf-8")
    elif not args.readme_only:
        started = time.perf_counter()
        for name, config, overrides in [*RUNS, FIELD]:
            if name not in wanted:
                continue
            if name == FIELD[0]:
                previous["runs"][name] = bench_field(args)
            else:
                previous["runs"][name] = bench_dataset(name, config, overrides, args)
            versions = _versions()
            previous["meta"] = {
                "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
                "python": platform.python_version(), "versions": versions,
                "versions_text": ", ".join(f"{k} {v}" for k, v in versions.items()),
                "command": "python benchmarks/compress_bench.py" + " ".join([""] + sys.argv[1:]),
                "quick": args.quick, "calls": args.calls, "rounds": args.rounds, "recipes": args.recipe,
                "tfmot_epochs": args.tfmot_epochs, "seconds": time.perf_counter() - started,
            }
            RESULTS.write_text(json.dumps(previous, indent=1, default=str), encoding="utf-8")
    if not previous.get("runs"):
        raise SystemExit(f"no results in {RESULTS}; run the benchmark first")
    text = render(previous)
    print(text)
    if not args.no_readme:
        write_readme(text)


if __name__ == "__main__":
    main()
