"""The compression benchmark's runs: for one data set and tokenizer, train a checkpoint, freeze it, compress it with
each recipe, build the peers from the same model and measure every variant in a fresh worker process (``Bench``);
the fixed runs (``bench_dataset``, the 30k field case ``bench_field``) and the partial re-runs (``add_pairs``,
``add_recipes``)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compress_peers import converted_peers, tfmot_peer
from compress_setup import FIELD, FIELD_VOCAB, QUICK_OVERRIDES, ROOT, RUNS, TEN, WORK, first_line, run_script, sizes


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
        self.searched: dict[str, Any] | None = None  # the --budget search, when it ran and met its budget

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
        return run_script(argv, out / f"{label}.log", out / f"{label}.json")

    def _accuracy(self, label: str) -> float | None:
        import numpy as np

        from lifecycle import evaluate

        path = self.work / "measure" / f"{label}.npy"
        if not path.is_file():
            return None
        return float(evaluate.evaluate_probabilities(np.load(path), self.y, self.labels).accuracy)

    def _row(self, name: str, family: str, runtime: str, files: list[Path], measured: dict[str, Any] | None,
             label: str | None, **extra: Any) -> dict[str, Any]:
        raw, packed = sizes(files)
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
                note = f"recipe {recipe!r} failed: {type(exc).__name__}: {first_line(str(exc))}"
                print(f"   {note}", flush=True)
                self.notes.append(note)
                continue
            made.append((recipe, outcome.version))
        return made

    def budget(self, points: float) -> list[tuple[str, Path]]:
        """``compress --budget POINTS`` on the frozen version: the pick as ``("budget P: RECIPE", path)``, its search
        (trials, seconds, validation loss) in ``self.searched``; a budget no trial meets is a note."""
        from lifecycle.artifacts import load_version
        from lifecycle.compress import step_text
        from lifecycle.workflows.budgeting import BudgetNotMetError, BudgetRequest, run_compress_budget

        out = self.work / "budget"
        shutil.rmtree(out, ignore_errors=True)
        print(f"== {self.name}: compress --budget {points:g}", flush=True)
        try:
            searched = run_compress_budget(str(self.frozen), BudgetRequest(points), out, versions_dir=self.work,
                                           track=self.args.track)
        except BudgetNotMetError as exc:
            self.notes.append(f"--budget {points:g}: {first_line(str(exc))}")
            return []
        path = Path(searched.outcome.version)
        recipe = "+".join(step_text(s.name, dict(s.params)) for s in load_version(path).manifest.recipe)
        result = searched.result
        self.searched = {"points": points, "recipe": recipe, "trials": len(result.trials),
                         "seconds": round(result.seconds, 1), "stopped": result.stopped,
                         "validation_loss_points": result.chosen.loss if result.chosen else None}
        return [(f"budget {points:g}: {recipe}", path)]

    def test_data(self) -> None:
        import numpy as np

        from lifecycle.artifacts import load_version
        from lifecycle.corpus import load_corpus
        from lifecycle.dataset import encode_examples
        from tokenization.factory import load_tokenizer

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
        peers = converted_peers(self.checkpoint, self.work / "peers", self.max_len, only)
        if only is None or "tfmot" in only:
            peers["tfmot"] = tfmot_peer(self.name, self.checkpoint, self.work, self.cfg.train, self.args.tfmot_epochs)
        return peers

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
            tok_raw, tok_gzip = sizes([path / TOKENIZER_DIR])
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
            serving = path / (manifest.serving.file if manifest.serving else "model.tflite")  # or the .pack
            if serving.is_file():
                measured = self._worker(f"ours-{slug}-serving", "ours-serving", [path], ours=True)
                auto = self._row(f"ours {label}", "ours", "serving form (LiteRT)", [serving], measured,
                                 f"ours-{slug}-serving", **common)
            else:
                self.notes.append(f"{label}: no serving file in the version (no serving form in this build)")
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
        recorded = manifest.sizes  # (not `sizes`: that is the file-size helper called below)
        raw, packed = sizes([self.checkpoint / "model.keras"])
        tok_raw, tok_gzip = sizes([self.checkpoint / "tokenizer"])
        return {"model_bytes": raw, "model_gzip_bytes": packed, "optimizer_bytes": recorded.get("optimizer_bytes"),
                "weights_bytes": recorded.get("weights_bytes"), "tokenizer_bytes": tok_raw,
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
                "budget": self.searched, "notes": self.notes}


def bench_dataset(name: str, config: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(name, config, overrides, args)
    bench.train()
    bench.test_data()
    versions = [("", bench.frozen), *bench.compress(args.recipe)]
    if args.budget >= 0:
        versions += bench.budget(args.budget)
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
