"""Import: a TF1-style frozen graph (the field report's layout) and converter-made TFLite CNNs become trainable.

The TF1 graph is built here with tf.compat.v1 as cnn-text-classification-tf builds it (placeholders input_x and
dropout_keep_prob, Conv2D over the expanded embedding, output/scores and output/predictions), trained a few steps
on an MR slice and frozen with convert_variables_to_constants; its vocabulary is a VocabularyProcessor-style vocab.txt
(id 0 pads and stands for unknown words, other words numbered by first appearance).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from lifecycle import artifacts
from lifecycle.errors import ConfigError, ModelError, TokenizerError
from tests.helpers import mr_config

L, D, F, WIDTHS = 40, 16, 8, (3, 4, 5)
PATTERN = r"[\w']+|[^\w\s]"


def _foreign_ids(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    """VocabularyProcessor-style ids: lower-cased regex tokens, unknown words and padding both 0."""
    out = np.zeros((len(texts), L), dtype=np.int32)
    for row, text in enumerate(texts):
        ids = [vocab.get(token, 0) for token in re.findall(PATTERN, text.lower())][:L]
        out[row, : len(ids)] = ids
    return out


def _build_tf1_graph(x: np.ndarray, labels: np.ndarray, vocab_size: int) -> object:
    """The report's model in TF1 graph mode, trained 30 Adam steps on ``x`` (foreign ids), frozen to a GraphDef."""
    from lifecycle.backend import tf_module

    tf = tf_module()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(7)
        input_x = v1.placeholder(tf.int32, [None, L], name="input_x")
        input_y = v1.placeholder(tf.float32, [None, 2], name="input_y")
        keep = v1.placeholder(tf.float32, name="dropout_keep_prob")
        with v1.name_scope("embedding"):
            table = v1.Variable(v1.random_uniform([vocab_size, D], -1.0, 1.0), name="W")
            expanded = tf.expand_dims(v1.nn.embedding_lookup(table, input_x), -1)
        pooled = []
        for width in WIDTHS:
            with v1.name_scope(f"conv-maxpool-{width}"):
                kernel = v1.Variable(v1.truncated_normal([width, D, 1, F], stddev=0.1), name="W")
                bias = v1.Variable(v1.constant(0.1, shape=[F]), name="b")
                conv = v1.nn.conv2d(expanded, kernel, strides=[1, 1, 1, 1], padding="VALID", name="conv")
                relu = v1.nn.relu(v1.nn.bias_add(conv, bias), name="relu")
                pooled.append(v1.nn.max_pool(relu, ksize=[1, L - width + 1, 1, 1], strides=[1, 1, 1, 1],
                                             padding="VALID", name="pool"))
        flat = v1.reshape(v1.concat(pooled, 3), [-1, F * len(WIDTHS)])
        with v1.name_scope("dropout"):
            dropped = v1.nn.dropout(flat, keep)
        with v1.name_scope("output"):
            w = v1.Variable(v1.glorot_uniform_initializer()([F * len(WIDTHS), 2]), name="W")
            b = v1.Variable(v1.constant(0.1, shape=[2]), name="b")
            scores = v1.nn.xw_plus_b(dropped, w, b, name="scores")
            v1.argmax(scores, 1, name="predictions")
        loss = v1.reduce_mean(v1.nn.softmax_cross_entropy_with_logits_v2(logits=scores, labels=input_y))
        step = v1.train.AdamOptimizer(1e-3).minimize(loss)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            onehot = np.eye(2, dtype=np.float32)[labels]
            for i in range(30):
                rows = slice((i * 64) % len(x), (i * 64) % len(x) + 64)
                session.run(step, {input_x: x[rows], input_y: onehot[rows], keep: 0.5})
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(),
                                                                  ["output/scores", "output/predictions"])
    return frozen


@pytest.fixture(scope="module")
def tf1_model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lifecycle.corpus import load_corpus

    root = tmp_path_factory.mktemp("tf1")
    corpus = load_corpus(mr_config().data, "mr-slice")
    vocab: dict[str, int] = {"<UNK>": 0}
    for text in corpus.train.texts:
        for token in re.findall(PATTERN, text.lower()):
            vocab.setdefault(token, len(vocab))
    labels = np.array([corpus.labels.index(label) for label in corpus.train.labels])
    x = _foreign_ids(list(corpus.train.texts), vocab)
    graph_def = _build_tf1_graph(x, labels, len(vocab))
    (root / "model.pb").write_bytes(graph_def.SerializeToString())
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    mapping = {
        "input": "input_x", "dropout": "dropout_keep_prob", "output": ["output/scores", "output/predictions"],
        "embedding": "embedding/W",
        "conv": {w: {"kernel": f"conv-maxpool-{w}/W", "bias": f"conv-maxpool-{w}/b"} for w in WIDTHS},
        "dense": {"kernel": "output/W", "bias": "output/b"}, "labels": list(corpus.labels), "name": "report-cnn",
    }
    (root / "mapping.yaml").write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return {"root": root, "pb": root / "model.pb", "vocab": vocab, "mapping": mapping, "graph_def": graph_def,
            "texts": list(corpus.test.texts)}


def _mapping(tmp_path: Path, base: dict, **changes: object) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump({**base, **changes}, sort_keys=False), encoding="utf-8")
    return path


def _pb_probabilities(graph_def: object, ids: np.ndarray) -> np.ndarray:
    from lifecycle.backend import tf_module

    tf = tf_module()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        scores = session.run("output/scores:0", {"input_x:0": ids, "dropout_keep_prob:0": 1.0})
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_tf1_graph_imports_retrains_and_refreezes(tf1_model: dict, data_dir: Path, tmp_path: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import RetrainOptions, run_import, run_retrain
    from tests.lifecycle.test_retrain import _mr_csv

    imported = run_import(tf1_model["pb"], tf1_model["root"] / "mapping.yaml", tf1_model["root"] / "vocab",
                          tmp_path / "imported", track=False)
    version = artifacts.load_version(imported.version)
    manifest = version.manifest
    assert manifest.kind == "checkpoint"
    assert manifest.parent.kind == "tf1-graph"
    assert manifest.parent.sha256 == artifacts.sha256_file(tf1_model["pb"])
    assert set(manifest.check["differences"]) == {"logits", "predictions"}
    assert manifest.check["differences"]["logits"] <= 1e-5
    assert manifest.check["differences"]["predictions"] == 0.0
    assert manifest.imported_from["nodes"]["weights/conv_3/kernel"] == "conv-maxpool-3/W"
    assert version.config.model.kernel_sizes == WIDTHS and version.config.model.max_norm is None
    # Text to text: our tokenizer (specials first) on the same texts gives the .pb's probabilities.
    texts = tf1_model["texts"][:64] + ["a wholly unseen zyzzyva word", ""]
    expected = _pb_probabilities(tf1_model["graph_def"], _foreign_ids(texts, tf1_model["vocab"]))
    np.testing.assert_allclose(Predictor(version).predict_proba(texts), expected, atol=1e-5)

    new = _mr_csv(data_dir, tmp_path / "new.csv", 200)
    outcomes = run_retrain(str(imported.version), new, RetrainOptions(epochs=1), tmp_path / "next", track=False)
    checkpoint, frozen = (artifacts.load_version(o.version) for o in outcomes)
    assert frozen.kind == "frozen" and checkpoint.manifest.parent.sha256 == version.sha256
    assert frozen.manifest.architecture.kernel_sizes == tuple(WIDTHS)
    assert frozen.manifest.check["max_abs_diff_vs_parent"] <= 1e-5


def test_tf1_conv_order_is_traced_from_the_graph(tf1_model: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_import

    base = tf1_model["mapping"]
    reversed_conv = {w: base["conv"][w] for w in reversed(WIDTHS)}
    imported = run_import(tf1_model["pb"], _mapping(tmp_path, base, conv=reversed_conv), tf1_model["root"] / "vocab",
                          tmp_path / "imported", track=False)
    version = artifacts.load_version(imported.version)
    assert version.config.model.kernel_sizes == WIDTHS  # the graph's concat order, not the mapping's
    assert version.manifest.check["differences"]["logits"] <= 1e-5


def test_tf1_import_refuses_bad_graphs_and_mappings(tf1_model: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_import

    pb, vocab, base = tf1_model["pb"], tf1_model["root"] / "vocab", tf1_model["mapping"]
    out = tmp_path / "out"
    missing = {**base["conv"], 3: {"kernel": "conv-maxpool-9/W", "bias": "conv-maxpool-3/b"}}
    with pytest.raises(ModelError, match=r"model\.pb: mapping .*mapping\.yaml field conv\.3\.kernel names node "
                                         r"'conv-maxpool-9/W', which the graph lacks"):
        run_import(pb, _mapping(tmp_path, base, conv=missing), vocab, out, track=False)
    swapped = {**base["conv"], 4: {"kernel": "conv-maxpool-3/W", "bias": "conv-maxpool-3/b"}}
    with pytest.raises(ModelError, match=r"conv kernel 'conv-maxpool-3/W' has shape \[3, 16, 8\].*width 4"):
        run_import(pb, _mapping(tmp_path, base, conv=swapped), vocab, out, track=False)
    with pytest.raises(ModelError, match=r"do not fit 3 widths x 8 filters -> 3 labels"):
        run_import(pb, _mapping(tmp_path, base, labels=["a", "b", "c"]), vocab, out, track=False)
    with pytest.raises(ConfigError, match=r"mapping\.yaml: unknown key 'embeding'"):
        run_import(pb, _mapping(tmp_path, base, embeding="x"), vocab, out, track=False)
    with pytest.raises(ConfigError, match=r"mapping\.yaml: dense is required to import a \.pb"):
        run_import(pb, _mapping(tmp_path, {k: v for k, v in base.items() if k != "dense"}), vocab, out, track=False)
    short = tmp_path / "short"
    short.mkdir()
    (short / "vocab.txt").write_text("\n".join(list(tf1_model["vocab"])[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"vocab\.txt: has \d+ tokens but the model's embedding has \d+ rows"):
        run_import(pb, _mapping(tmp_path, base), short, out, track=False)

    evil = type(tf1_model["graph_def"])()
    evil.CopyFrom(tf1_model["graph_def"])
    node = evil.node.add(name="exfiltrate", op="ReadFile")
    node.input.append("embedding/W")
    (tmp_path / "evil.pb").write_bytes(evil.SerializeToString())
    with pytest.raises(ModelError, match=r"evil\.pb: graph uses op\(s\) outside the import allow-list: ReadFile "
                                         r"\(node 'exfiltrate'\)"):
        run_import(tmp_path / "evil.pb", _mapping(tmp_path, base), vocab, out, track=False)
    (tmp_path / "junk.pb").write_bytes(b"\x00not a graph at all")
    with pytest.raises(ModelError, match=r"junk\.pb: not a frozen GraphDef"):
        run_import(tmp_path / "junk.pb", _mapping(tmp_path, base), vocab, out, track=False)
    assert not out.exists()


def test_import_cli_reports_one_line_errors(tf1_model: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    base = tf1_model["mapping"]
    bad = _mapping(tmp_path, base, embedding="embedding/nowhere")
    result = CliRunner().invoke(app, ["import", str(tf1_model["pb"]), "--mapping", str(bad), "--tokenizer",
                                      str(tf1_model["root"] / "vocab"), "--output", str(tmp_path / "o"),
                                      "--no-track"])
    assert result.exit_code == 4, result.output
    assert "field embedding names node 'embedding/nowhere', which the graph lacks" in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(app, ["retrain", str(tf1_model["pb"]), "--data", str(tmp_path / "new.csv"),
                                      "--no-track"])
    assert result.exit_code == 2 and "needs --mapping and --tokenizer" in result.output


# ------------------------------------------------------------------------------------------------ TFLite


@pytest.fixture(scope="module")
def keras_cnn(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Keras CNN (16-d, 32 filters, widths 3 and 4, so the converter quantizes its kernels) and its tokenizer."""
    from lifecycle.backend import configure
    from lifecycle.corpus import load_corpus
    from lifecycle.dataset import encode_examples
    from lifecycle.model import build_model
    from tokenization.factory import train_tokenizer

    root = tmp_path_factory.mktemp("keras-cnn")
    cfg = mr_config("model.embedding_dim=16", "model.filters=32", "model.kernel_sizes=[3,4]")
    corpus = load_corpus(cfg.data, cfg.name)
    tokenizer = train_tokenizer(list(corpus.train.texts), cfg.tokenizer, seed=cfg.train.seed)
    tokenizer.save(root / "tokenizer")
    configure(cfg.train.seed)
    model = build_model(cfg.model, cfg.train, vocab_size=tokenizer.vocab_size, num_classes=2,
                        max_len=cfg.tokenizer.max_len)
    train = encode_examples(corpus.train, tokenizer, corpus.labels, cfg.tokenizer.max_len)
    model.fit(train.x, train.y, epochs=2, batch_size=32, verbose=0)
    (root / "mapping.yaml").write_text(yaml.safe_dump({"labels": list(corpus.labels), "name": "lite-cnn"}))
    return {"root": root, "model": model, "tokenizer": tokenizer, "texts": list(corpus.test.texts)}


def _convert(model: object, mode: str, path: Path) -> Path:
    from lifecycle.backend import tf_module

    tf = tf_module()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())
    return path


def test_dynamic_range_int8_tflite_imports_retrains_and_refreezes(keras_cnn: dict, data_dir: Path,
                                                                  tmp_path: Path) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.workflows import RetrainOptions, run_import, run_retrain
    from tests.lifecycle.test_retrain import _mr_csv

    lite = _convert(keras_cnn["model"], "int8", tmp_path / "model.tflite")
    imported = run_import(lite, keras_cnn["root"] / "mapping.yaml", keras_cnn["root"] / "tokenizer",
                          tmp_path / "imported", track=False)
    manifest = artifacts.load_version(imported.version).manifest
    storage = manifest.imported_from["storage"]
    assert storage["weights/conv_3/kernel"] == storage["weights/conv_4/kernel"] == "int8"
    assert storage["weights/embedding"] == "int8"
    assert 0 < manifest.check["differences"]["probabilities"] <= 1e-2
    assert manifest.check["bound"] == 1e-2
    # The weights are the file's int8 codes times its per-channel scales: within half a step of the Keras floats.
    ours = Predictor(artifacts.load_version(imported.version)).predict_proba(keras_cnn["texts"][:100])
    original = np.asarray(keras_cnn["model"](keras_cnn["tokenizer"].encode(keras_cnn["texts"][:100], 40)))
    assert np.mean(ours.argmax(1) == original.argmax(1)) >= 0.97

    new = _mr_csv(data_dir, tmp_path / "new.csv", 200)
    before = artifacts.load_version(imported.version)
    outcomes = run_retrain(str(imported.version), new, RetrainOptions(epochs=1), tmp_path / "next", track=False)
    checkpoint, frozen = (artifacts.load_version(o.version) for o in outcomes)
    assert checkpoint.manifest.parent.sha256 == before.sha256
    assert frozen.kind == "frozen" and frozen.manifest.architecture.kernel_sizes == (3, 4)


@pytest.mark.parametrize("mode", ["fp32", "fp16"])
def test_float_tflite_imports_within_1e5(keras_cnn: dict, mode: str, tmp_path: Path) -> None:
    from lifecycle.workflows import run_import

    lite = _convert(keras_cnn["model"], mode, tmp_path / f"{mode}.tflite")
    imported = run_import(lite, keras_cnn["root"] / "mapping.yaml", keras_cnn["root"] / "tokenizer",
                          tmp_path / "imported", track=False)
    manifest = artifacts.load_version(imported.version).manifest
    assert manifest.check["differences"]["probabilities"] <= 1e-5
    assert set(manifest.imported_from["storage"].values()) == {"float32" if mode == "fp32" else "float16"}


def test_tflite_mapping_naming_a_missing_tensor_fails(keras_cnn: dict, tmp_path: Path) -> None:
    from lifecycle.workflows import run_import

    lite = _convert(keras_cnn["model"], "fp32", tmp_path / "m.tflite")
    mapping = tmp_path / "named.yaml"
    mapping.write_text(yaml.safe_dump({"labels": ["negative", "positive"], "embedding": "no/such/tensor"}))
    with pytest.raises(ModelError, match=r"m\.tflite: mapping .*named\.yaml field embedding names tensor "
                                         r"'no/such/tensor', which the model lacks"):
        run_import(lite, mapping, keras_cnn["root"] / "tokenizer", tmp_path / "o", track=False)
    assert not (tmp_path / "o").exists()
