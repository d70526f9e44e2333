"""The ``fold`` recipe step: Grappler constant folding and dead-node removal on a frozen graph, storage kept.

Folding a frozen graph blindly is how the field report's RAM doubled: Grappler computes every node whose inputs are
constants, so ``Cast(int8 codes) * scale`` becomes a float32 constant again (4x the bytes) and a sparse tensor's
decode becomes a dense one. Here folding is run once, offline, with those chains protected: every node that derives
from a weight stored as int8, float16 or sparse is kept as it is. A float32 weight may be folded into its consumer
(e.g. conv1d's ``ExpandDims`` of the kernel becomes a 4-D constant); the manifest then records the node that holds it
and restore reads it from there (same values, another shape), so nothing is lost for retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.errors import ModelError
from lifecycle.freeze import ALLOWED_OPS
from lifecycle.model import OUTPUT_NAME
from lifecycle.storage import Weights


@dataclass(frozen=True)
class Folded:
    """A folded graph, where each moved float32 weight now lives, and what folding changed."""

    graph_def: Any
    moved: dict[str, str]  # weight name -> Const node holding its values (reshaped) after folding
    report: dict[str, Any]


def _input_name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _constant_closure(graph_def: Any) -> set[str]:
    """Nodes whose value depends on constants only (what Grappler may fold)."""
    nodes = {node.name: node for node in graph_def.node}
    known: dict[str, bool] = {}

    def constant(name: str) -> bool:
        if name not in known:
            known[name] = False  # cycles are impossible in a GraphDef, but guard the recursion anyway
            node = nodes[name]
            if node.op == "Const":
                known[name] = True
            elif node.op == "Placeholder":
                known[name] = False
            else:
                known[name] = bool(node.input) and all(constant(_input_name(ref)) for ref in node.input)
        return known[name]

    return {name for name in nodes if constant(name)}


def _protected(graph_def: Any, weights: Weights, tensors: dict[str, dict[str, Any]]) -> set[str]:
    """Every constant-valued node fed (directly or not) by a weight stored as int8, float16 or sparse."""
    foldable = _constant_closure(graph_def)
    consumers: dict[str, list[str]] = {}
    for node in graph_def.node:
        for ref in node.input:
            consumers.setdefault(_input_name(ref), []).append(node.name)
    protected: set[str] = set()
    for name, stored in weights.items():
        if stored.plain:
            continue
        frontier = list(tensors[name]["nodes"])
        while frontier:
            node = frontier.pop()
            if node in protected or node not in foldable:
                continue
            protected.add(node)
            frontier += consumers.get(node, [])
    # ...and the constants those nodes read besides the weight (an ExpandDims' axis), which must travel with them.
    nodes = {node.name: node for node in graph_def.node}
    frontier = list(protected)
    while frontier:
        for ref in nodes[frontier.pop()].input:
            name = _input_name(ref)
            if name in foldable and name not in protected:
                protected.add(name)
                frontier.append(name)
    return protected


def _grappler(graph_def: Any, keep: set[str]) -> Any:
    """Grappler's constant folding, dependency and pruning passes, with the ``keep`` nodes cut out of its reach.

    Listing a node as a fetch is not enough to keep its consumers from folding (Grappler then folds a constant copy
    of it), so each kept chain is taken out of the graph first: the nodes of the chain that feed the rest of the
    graph are stood in for by placeholders of the same name, dtype and shape, and put back afterwards.
    """
    from lifecycle.backend import grappler_optimizer, rewriter_protos, tf_module

    tf = tf_module()
    config_pb2, rewriter_config_pb2 = rewriter_protos()
    tf_optimizer = grappler_optimizer()

    with tf.Graph().as_default() as original:
        tf.graph_util.import_graph_def(graph_def, name="")
    kept = [node for node in graph_def.node if node.name in keep]
    boundary = {_input_name(ref) for node in graph_def.node if node.name not in keep for ref in node.input} & keep
    cut = tf.compat.v1.GraphDef()
    cut.versions.CopyFrom(graph_def.versions)
    cut.node.extend(node for node in graph_def.node if node.name not in keep)
    for name in sorted(boundary):
        tensor = original.get_tensor_by_name(f"{name}:0")
        stand_in = cut.node.add(name=name, op="Placeholder")
        stand_in.attr["dtype"].type = tensor.dtype.as_datatype_enum
        stand_in.attr["shape"].shape.CopyFrom(tensor.shape.as_proto())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(cut, name="")
        meta = tf.compat.v1.train.export_meta_graph(graph=graph)
    # Grappler never removes the fetch nodes listed in the "train_op" collection.
    meta.collection_def["train_op"].node_list.value.extend([OUTPUT_NAME, *sorted(boundary)])
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(["constfold", "dependency", "pruning"])
    rewrite.min_graph_nodes = -1
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    optimized = tf_optimizer.OptimizeGraph(config, meta)
    result = tf.compat.v1.GraphDef()
    result.versions.CopyFrom(graph_def.versions)
    result.node.extend(node for node in optimized.node if node.name not in boundary)
    result.node.extend(kept)
    return result


def fold_graph(graph_def: Any, weights: Weights, tensors: dict[str, dict[str, Any]], source: Path | str
               ) -> Folded:
    """Fold what can be folded without changing any weight's storage; refuse a result that grew or gained ops.

    Args:
        graph_def: a graph written by ``freeze.emit_graph``.
        weights: its stored weights.
        tensors: its manifest ``tensors`` entries (``storage.tensor_entry``), for the nodes holding each weight.
        source: named in errors.
    """
    from lifecycle.backend import tf_module

    tf = tf_module()
    keep = _protected(graph_def, weights, tensors)
    plain = [name for name, stored in weights.items() if stored.plain]
    while True:
        folded = _grappler(graph_def, keep)
        consts = {node.name: node for node in folded.node if node.op == "Const"}
        moved: dict[str, str] = {}
        lost = None
        for name in plain:
            if name in consts:
                continue
            want = weights[name].value.ravel()
            match = next((node_name for node_name, node in consts.items()
                          if node.attr["dtype"].type == tf.float32.as_datatype_enum
                          and int(np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim])) == want.size
                          and np.array_equal(tf.make_ndarray(node.attr["value"].tensor).ravel(), want)), None)
            if match is None:
                lost = name
                break
            moved[name] = match
        if lost is None:
            return _finish(graph_def, folded, moved, source)
        # Folded into something that is not a plain reshape of it: keep that weight as its own Const.
        keep.add(lost)


def _finish(before: Any, after: Any, moved: dict[str, str], source: Path | str) -> Folded:
    new_ops = sorted({node.op for node in after.node} - ALLOWED_OPS)
    if new_ops:
        raise ModelError(f"{source}: folding produced op(s) outside the allow-list ({', '.join(new_ops)}); "
                         "not applying fold.")
    bytes_before, bytes_after = before.ByteSize(), after.ByteSize()
    if bytes_after > bytes_before * 1.001 + 1024:
        raise ModelError(f"{source}: folding would grow the graph from {bytes_before:,} to {bytes_after:,} bytes; "
                         "not applying fold.")
    report = {
        "nodes_before": len(before.node), "nodes_after": len(after.node),
        "graph_bytes_before": bytes_before, "graph_bytes_after": bytes_after,
        "ops_removed": sorted(_op_counts(before, after)),
        "moved": dict(moved),
    }
    return Folded(after, moved, report)


def _op_counts(before: Any, after: Any) -> list[str]:
    from collections import Counter

    removed = Counter(node.op for node in before.node) - Counter(node.op for node in after.node)
    return [f"{op} x{count}" for op, count in removed.items()]
