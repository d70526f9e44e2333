"""The peers of the compression benchmark, all made from the same trained Keras model as our versions: the converters'
files (Keras ``.keras``, a TF SavedModel, the TFLite converter's float32 / float16 / dynamic-range int8, tf2onnx with
ONNX Runtime's ``quantize_dynamic``) and TF-MOT magnitude pruning, which runs in its own process (``--tfmot``)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from compress_setup import ONNX_OPSET, TFMOT_SPARSITY, first_line, run_script


def converted_peers(checkpoint: Path, peers_dir: Path, max_len: int, only: set[str] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """The converters' peers (Keras, SavedModel, TFLite, ONNX), all from ``checkpoint``'s trained Keras model, written
    into ``peers_dir``; each {path, how, build_s} or {error, how}. ``only``: those names (default: all)."""
    from lifecycle.artifacts import KERAS_FILE
    from lifecycle.backend import tf_module

    tf = tf_module()
    import keras

    peers_dir.mkdir(exist_ok=True)
    model = keras.saving.load_model(checkpoint / KERAS_FILE, compile=False)
    peers: dict[str, dict[str, Any]] = {}

    def attempt(name: str, how: str, make: Any) -> None:
        if only is not None and name not in only:
            return
        started = time.perf_counter()
        try:
            path = make()
            peers[name] = {"path": path, "how": how, "build_s": time.perf_counter() - started}
        except Exception as exc:
            peers[name] = {"error": f"{type(exc).__name__}: {first_line(str(exc))}", "how": how}
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
        spec = (tf.TensorSpec((None, max_len), tf.int32, name="input_ids"),)
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
    return peers


def tfmot_peer(name: str, checkpoint: Path, work: Path, train: Any, epochs: int) -> dict[str, Any]:
    """TF-MOT's pruned peer, made by this script's ``--tfmot`` in a subprocess (:func:`tfmot_main`) from
    ``checkpoint`` and ``work``/train.npz with ``train`` (the run's TrainConfig) and ``epochs`` fine-tune epochs."""
    peers_dir = work / "peers"
    how = (f"TF-MOT prune_low_magnitude ConstantSparsity({TFMOT_SPARSITY}) on a tf-keras twin with the same "
           f"weights, {epochs} fine-tune epoch(s) (Adam {train.learning_rate:g}, batch "
           f"{train.batch_size}), strip_pruning, TFLiteConverter optimizations=[Optimize.DEFAULT]")
    print(f"== {name}: TF-MOT pruning in a subprocess", flush=True)
    path = peers_dir / "tfmot-prune0.8-dr-int8.tflite"
    started = time.perf_counter()
    result = run_script(["--tfmot", str(checkpoint / "model.keras"), str(work / "train.npz"),
                          str(path), "--result", str(peers_dir / "tfmot.json"), "--epochs", str(epochs),
                          "--batch-size", str(train.batch_size),
                          "--learning-rate", str(train.learning_rate),
                          "--seed", str(train.seed)],
                         peers_dir / "tfmot.log", peers_dir / "tfmot.json")
    if "error" in result:
        print(f"   peer tfmot failed: {result['error']}", flush=True)
        return {"error": result["error"], "how": how}
    return {"path": path, "how": how, "build_s": time.perf_counter() - started, "details": result}


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
