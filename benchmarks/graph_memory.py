"""Where the graph.pb loader's memory goes (issue 3's "RSS over TF + an empty session <= 1.5x weights"): in one
fresh process, RSS and private (anonymous) memory after TensorFlow and an empty session, after lifecycle's loader
imports, after the first run of a tiny graph of the same op kinds (the fixed cost of running anything in a session),
after the version's tokenizer, and after loading the version with GraphRunner (import, weights assigned, warm-up).
RSS also counts mapped files: the TensorFlow kernel code a first run pages in is shared with every other process.

    .venv/bin/python benchmarks/graph_memory.py VERSION_DIR      # one JSON line; run once per version
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifecycle.procstat import memory_status  # noqa: E402  (stdlib only: the "start" reading stays a baseline)


def memory_mb() -> tuple[float, float]:
    """(VmRSS, RssAnon) of this process in MB."""
    status = memory_status()
    return status["VmRSS"] / 2**20, status["RssAnon"] / 2**20


def main() -> None:
    version_dir = Path(sys.argv[1])
    stages = {"start": memory_mb()}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.Session()
    stages["tf + empty session"] = memory_mb()
    from lifecycle import artifacts
    from lifecycle.freeze import GraphRunner, read_graph, session_config
    from lifecycle.procstat import release_free_memory

    stages["+ lifecycle imports"] = memory_mb()
    graph = tf.Graph()
    with graph.as_default():
        ids = tf.compat.v1.placeholder(tf.int32, (None, 8))
        embedded = tf.gather(tf.constant(np.ones((10, 4), np.float32)), ids)
        conv = tf.nn.conv2d(tf.expand_dims(embedded, 1), tf.constant(np.ones((1, 2, 4, 3), np.float32)), 1, "VALID")
        pooled = tf.reduce_max(conv, axis=[1, 2])
        probabilities = tf.nn.softmax(tf.matmul(pooled, tf.constant(np.ones((3, 2), np.float32))))
    tf.compat.v1.Session(graph=graph, config=session_config()).run(probabilities, {ids: np.zeros((1, 8), np.int32)})
    release_free_memory()
    stages["+ first run of a tiny graph"] = memory_mb()

    version = artifacts.load_version(version_dir)
    from tokenization.factory import load_tokenizer

    tokenizer = load_tokenizer(version.tokenizer_dir)
    tokenizer.encode(["warm up"], version.max_len)
    stages["+ tokenizer"] = memory_mb()
    graph_def = read_graph(version_dir / "graph.pb")
    runner = GraphRunner(graph_def, version_dir / "graph.pb", version.max_len, version.manifest.input.dtype)
    del graph_def
    gc.collect()
    release_free_memory()
    stages["+ model loaded and warmed up"] = memory_mb()
    assert runner.output is not None
    weights = version.manifest.sizes["weights_bytes"] / 2**20
    out: dict[str, object] = {"version": str(version_dir), "weights_mb": round(weights, 2)}
    for label, (rss, anon) in stages.items():
        out[label] = {"rss": round(rss, 1), "anon": round(anon, 1)}
    for which, index in (("rss", 0), ("anon", 1)):
        model = stages["+ model loaded and warmed up"][index] - stages["+ tokenizer"][index]
        total = stages["+ model loaded and warmed up"][index] - stages["tf + empty session"][index]
        out[f"model_{which}_mb"] = round(model, 1)
        out[f"model_{which}_x_weights"] = round(model / weights, 2)
        out[f"over_empty_session_{which}_x_weights"] = round(total / weights, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
