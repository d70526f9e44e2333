"""import: a foreign Kim CNN (TF1 frozen .pb or TFLite flatbuffer) -> a trainable lifecycle checkpoint version."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from lifecycle import artifacts, fidelity
from lifecycle.errors import ModelError
from lifecycle.workflows.common import StepOutcome, _write_checkpoint
from lifecycle.workflows.publish import publish_version, step_tracker

log = logging.getLogger(__name__)


def run_import(source: Path, mapping: Path, tokenizer: Path, output: Path | None = None, *,
               versions_dir: Path | None = None, track: bool = True) -> StepOutcome:
    """Import a foreign Kim CNN as a checkpoint version that ``retrain``, ``freeze`` and ``compress`` accept.

    The weights are read as the file stores them (float32, float16, int8 with scales) and mapped into our CNN (conv
    kernels ``[w, D, 1, F]`` or TFLite's ``[F, 1, w, D]`` -> ``[w, D, F]``; dense ``[C, in]`` -> ``[in, C]``; embedding
    rows permuted to our tokenizer's ids). Before anything is written, our model must reproduce the foreign one on
    seeded id rows covering the whole vocabulary: within 1e-5 for float32 and float16 files (logits relative to
    their scale above 1, probabilities absolute, argmax identical), within 1e-2 for dynamic-range int8 (its
    runtime quantizes activations too); the differences are recorded in the manifest.

    Args:
        source: the ``.pb`` or ``.tflite`` file.
        mapping: the mapping YAML (labels; node names for a .pb; optional tensor names for a .tflite).
        tokenizer: a lifecycle tokenizer directory, or a directory holding a foreign ``vocab.txt`` (or the file).
        output: the new version's directory (default: a new folder under versions/).

    Raises:
        ConfigError: a mapping that is malformed or lacks a field the format needs.
        ModelError: a file that is not the format, an op outside the import allow-list, a node or tensor the mapping
            names but the file lacks, shapes that do not fit one Kim CNN, or a restored model that does not reproduce
            the file.
        TokenizerError: a vocabulary that does not match the embedding.
    """
    from lifecycle.backend import configure
    from lifecycle.importers import (
        build_imported_model,
        check_ids,
        compare,
        import_report,
        import_tokenizer,
        imported_config,
        load_mapping,
        read_foreign,
    )

    source = source.expanduser().resolve()
    spec = load_mapping(mapping)
    output = artifacts.check_output(output) if output else None
    cnn = read_foreign(source, spec, mapping)
    try:
        imported = import_tokenizer(tokenizer, spec.tokenizer, cnn.embedding.shape[0], mapping)
        cfg = imported_config(cnn, spec, mapping, imported.tokenizer)
        configure(cfg.train.seed, cfg.train.threads)
        model = build_imported_model(cnn, imported, cfg, len(spec.labels))
        foreign_ids, our_ids = check_ids(cnn, imported, cfg.train.seed)
        differences = compare(model, cnn, foreign_ids, our_ids)
    finally:
        cnn.close()
    bound = cnn.bound
    for kind, difference in differences.items():
        # An argmax must not change, except where int8 activations flip a near-tie (at most 1% of rows).
        limit = fidelity.import_limit(kind, bound)
        if difference > limit:
            raise ModelError(f"{source}: the rebuilt CNN differs from the file's {kind} by {difference:.2e} (> "
                             f"{limit:g}) on {len(our_ids)} id rows; nothing written. Check the mapping ({mapping}): "
                             "conv widths, dense kernel and labels must match the graph.")
    model.optimizer.build(model.trainable_variables)  # Adam's slots exist, so sizes compare with a trained checkpoint
    output, unique = artifacts.resolve_output(output, cfg.name, "checkpoint", versions_dir)
    tracker = step_tracker(cfg, track)
    sha = artifacts.sha256_file(source)
    report = import_report(cnn)
    tags = {"lifecycle.parent_run": "", "lifecycle.parent": str(source), "lifecycle.imported": cnn.format}
    with tracker.run("import", f"import-{source.name}", tags):
        tracker.log_params({"source": str(source), "source_sha256": sha, "format": cnn.format,
                            "mapping": str(mapping), "tokenizer": imported.source,
                            "storage": ",".join(sorted(set(cnn.storage.values())))})

        def write(run_id: str | None) -> artifacts.Version:
            with tempfile.TemporaryDirectory(prefix="lifecycle-import-") as folder:
                tokenizer_dir = Path(folder) / "tokenizer"
                imported.tokenizer.save(tokenizer_dir)
                return _write_checkpoint(output, model, tokenizer_dir, cfg, spec.labels, cnn.max_len, {
                    "parent": {"version": str(source), "run_id": None, "sha256": sha, "kind": cnn.format},
                    "imported_from": {**report, "mapping": str(mapping), "tokenizer": imported.source},
                    "run_id": run_id,
                    "metrics": {},
                    "check": {"max_abs_diff_vs_parent": max(differences.values()), "differences": differences,
                              "bound": bound, "compared_on": "random ids", "n": int(len(our_ids))},
                }, unique=unique)

        def import_metrics(version: artifacts.Version) -> dict[str, float]:
            metrics = {f"max_abs_diff_{kind}": value for kind, value in differences.items()}
            metrics.update({"max_abs_diff_vs_parent": max(differences.values()),
                            "params_total": version.manifest.params_total})
            return metrics

        published = publish_version(tracker, cfg.name, write, metrics=import_metrics,
                                    register={"lifecycle.kind": "checkpoint", "lifecycle.imported": cnn.format,
                                              "lifecycle.parent_run": ""})
    storages = ", ".join(f"{name.removeprefix('weights/')}: {kind}" for name, kind in cnn.storage.items())
    return published.outcome({"format": cnn.format, "labels": len(spec.labels), "vocab": imported.tokenizer.vocab_size,
                              "kernel sizes": list(cnn.kernel_sizes), "storage": storages,
                              "compared on": f"random ids ({len(our_ids)})"})
