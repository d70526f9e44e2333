"""Where the graph.pb loader's memory goes (issue 3's "RSS over TF + an empty session <= 1.5x weights"): in one
fresh process, RSS after TensorFlow and an empty session, after lifecycle's imports, after the first run of a tiny
graph of the same op kinds (the fixed cost of running anything in a session), and after loading the version with
GraphRunner (import, weights assigned, warm-up call).

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


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    version_dir = Path(sys.argv[1])
    stages = {"start": rss_mb()}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.Session()
    stages["tf + empty session"] = rss_mb()
    from lifecycle import artifacts
    from lifecycle.bench import release_free_memory
    from lifecycle.freeze import GraphRunner, read_graph, session_config

    stages["+ lifecycle imports"] = rss_mb()
    graph = tf.Graph()
    with graph.as_default():
        ids = tf.compat.v1.placeholder(tf.int32, (None, 8))
        embedded = tf.gather(tf.constant(np.ones((10, 4), np.float32)), ids)
        conv = tf.nn.conv2d(tf.expand_dims(embedded, 1), tf.constant(np.ones((1, 2, 4, 3), np.float32)), 1, "VALID")
        pooled = tf.reduce_max(conv, axis=[1, 2])
        probabilities = tf.nn.softmax(tf.matmul(pooled, tf.constant(np.ones((3, 2), np.float32))))
    tf.compat.v1.Session(graph=graph, config=session_config()).run(probabilities, {ids: np.zeros((1, 8), np.int32)})
    release_free_memory()
    stages["+ first run of a tiny graph"] = rss_mb()

    version = artifacts.load_version(version_dir)
    graph_def = read_graph(version_dir / "graph.pb")
    runner = GraphRunner(graph_def, version_dir / "graph.pb", version.max_len, version.manifest["input"]["dtype"])
    del graph_def
    gc.collect()
    release_free_memory()
    stages["+ model loaded and warmed up"] = rss_mb()
    assert runner.output is not None
    weights = version.manifest["sizes"]["weights_bytes"] / 2**20
    model = stages["+ model loaded and warmed up"] - stages["+ first run of a tiny graph"]
    total = stages["+ model loaded and warmed up"] - stages["tf + empty session"]
    print(json.dumps({"version": str(version_dir), "weights_mb": round(weights, 2),
                      **{k: round(v, 1) for k, v in stages.items()}, "model_mb": round(model, 1),
                      "model_x_weights": round(model / weights, 2),
                      "over_empty_session_x_weights": round(total / weights, 2)}))


if __name__ == "__main__":
    main()
