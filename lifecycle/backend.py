"""The only module that imports TensorFlow: CPU only, quiet logs, seeds, threads and a version check."""

from __future__ import annotations

import os
from typing import Any

from lifecycle.errors import DependencyError

SUPPORTED_TF = ("2.21",)
_configured: dict[str, Any] = {}


def tf_module() -> Any:
    """Import TensorFlow once, CPU only and quiet, and return it."""
    if "tf" in _configured:
        return _configured["tf"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise DependencyError(
            f"TensorFlow is not importable ({exc}).", "Install it: pip install 'tensorflow-cpu==2.21.0'."
        ) from None
    if not tf.__version__.startswith(SUPPORTED_TF):
        import warnings

        warnings.warn(
            f"lifecycle is tested with TensorFlow {', '.join(SUPPORTED_TF)}; found {tf.__version__}", stacklevel=2
        )
    tf.get_logger().setLevel("ERROR")
    _configured["tf"] = tf
    return tf


def configure(seed: int, threads: int = 0) -> Any:
    """Seed Python, numpy and TensorFlow and set CPU thread pools (0 keeps TF's default).

    Thread pools can only be set before TensorFlow runs its first op; later calls keep the first setting.
    """
    tf = tf_module()
    import keras

    if threads and "threads" not in _configured:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            _configured["threads"] = threads
        except RuntimeError:
            # TF is already initialised in this process (tests, benchmarks): the first setting stays.
            pass
    keras.utils.set_random_seed(seed)
    return tf


# TensorFlow internals a few steps need, imported here so no other module names tensorflow's packages.


def grappler_optimizer() -> Any:
    """``tensorflow.python.grappler.tf_optimizer`` (``OptimizeGraph``), for the offline fold step."""
    tf_module()
    from tensorflow.python.grappler import tf_optimizer

    return tf_optimizer


def rewriter_protos() -> tuple[Any, Any]:
    """``(config_pb2, rewriter_config_pb2)`` from ``tensorflow.core.protobuf``: Grappler's configuration messages."""
    tf_module()
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    return config_pb2, rewriter_config_pb2


def tflite_flatbuffers() -> tuple[Any, Any]:
    """``(schema_py_generated, flatbuffer_utils)`` of ``tensorflow.lite``: reading and editing a converted model."""
    tf_module()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils
