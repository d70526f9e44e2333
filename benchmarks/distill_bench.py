"""Distillation benchmark: a packaged sentence-encoder teacher, its CNN student (plain, int8, whole-path compressed)
and the plain CNN-rand, on MR, TREC and Banking77.

For each set: `lifecycle train` of the shipped config (configs/<set>-word.yaml: CNN-rand) with and without
`teacher.enabled: true`, each frozen and compressed to int8 and along the whole path
(`vocab:coverage=0.97,prune:0.85,tune:5,int8`); test accuracy of every version; the teacher's own test accuracy and
the wall time of the teacher's part (encoder + fine-tuning + head, first run, empty cache); the serving p50 of the
student's and the plain model's int8 serving forms, measured side by side in one process (`lifecycle bench`).
Rows go to benchmarks/out/distill.json (finished sets are reused), the table into README.md between the
`bench:distill` markers.

    .venv/bin/python benchmarks/distill_bench.py                    # every set, seed 13
    .venv/bin/python benchmarks/distill_bench.py --only trec --no-readme
    .venv/bin/python benchmarks/distill_bench.py --only mr --set-for mr:teacher.fine_tune_epochs=1 \
        --reuse benchmarks/out/calibration-versions   # reuse checkpoints trained with the same config

The student runs use the schema's teacher defaults (augmented copies of the training texts labelled by the teacher,
teacher.augment) unless --set / --set-for say otherwise; the overrides used are kept in the row.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from readme import bench_parser, cpu_model, write_block  # noqa: E402  (benchmarks/readme.py, beside this script)

# benchmarks/tokenizers.py would shadow the Hugging Face `tokenizers` package that the teacher imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from lifecycle.artifacts import load_version  # noqa: E402
from lifecycle.config import load_config  # noqa: E402
from lifecycle.manifest import plain  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
SETS = {"mr": "mr-word.yaml", "trec": "trec-word.yaml", "banking77": "banking77-word.yaml"}
KIM_STATIC = {"mr": 81.0, "trec": 92.8}  # Kim (2014), CNN-static: word2vec trained on 100 billion words
KIM_RAND = {"mr": 76.1, "trec": 91.2}
WHOLE_PATH = "vocab:coverage=0.97,prune:0.85,tune:5,int8"


def reusable(cfg: object, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is a trained version of exactly ``cfg`` (tracking aside), so it can stand for a run."""
    manifest = checkpoint / "manifest.json"
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())
    if recorded.get("kind") != "checkpoint":
        return False
    want = json.loads(json.dumps(cfg.model_dump(mode="json")))  # type: ignore[attr-defined]
    # A key the schema gained since that checkpoint was trained had its default then: compare with the default.
    defaults = json.loads(json.dumps(type(cfg)().model_dump(mode="json")))
    config = recorded.get("config", {})
    config = {k: ({**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v)
              for k, v in config.items()}
    # A plain run's disabled teacher section does nothing (and gains new keys as the schema grows).
    if bool(config.get("teacher", {}).get("enabled")) != bool(want["teacher"]["enabled"]):
        return False
    ignored = ("tracking",) if want["teacher"]["enabled"] else ("tracking", "teacher")
    return ({k: v for k, v in config.items() if k not in ignored}
            == {k: v for k, v in want.items() if k not in ignored})


def run_set(name: str, seed: int, versions: Path, overrides: list[str], reuse: list[Path]) -> dict:
    from lifecycle.workflows import run_bench, run_compress, run_freeze, run_train

    row: dict = {"set": name, "seed": seed, "student_overrides": overrides,
                 "measured": datetime.now(UTC).strftime("%Y-%m-%d")}
    forms: dict[str, dict[str, str]] = {}
    cache = f"teacher.cache_dir={OUT / 'teacher-cache'}"  # kept between bench runs, so a re-run reads it
    for role, extra in (("plain", []), ("student", ["teacher.enabled=true", cache, *overrides])):
        cfg = load_config(ROOT / "configs" / SETS[name], [f"train.seed={seed}", "tracking.enabled=false", *extra])
        started = time.perf_counter()
        candidates = [path / SETS[name].removesuffix(".yaml") / "checkpoint" for path in reuse] + reuse
        earlier = next((path for path in candidates if reusable(cfg, path)), None)
        if earlier is not None:
            from types import SimpleNamespace

            version = load_version(earlier, verify=False)
            trained = SimpleNamespace(version=earlier, metrics={
                **version.manifest.metrics, "train_seconds": version.manifest.metrics.get("train_seconds", -1.0)})
            row[f"{role}_reused"] = str(earlier)
            print(f"{name}: {role} checkpoint reused from {earlier} (same config)", flush=True)
        else:
            trained = run_train(cfg, versions / f"{name}-{role}", versions_dir=versions, resume=False)
        wall = time.perf_counter() - started
        manifest = load_version(trained.version, verify=False).manifest
        frozen = run_freeze(str(trained.version), versions / f"{name}-{role}-frozen", track=False)
        int8 = run_compress(str(frozen.version), "int8", versions / f"{name}-{role}-int8", track=False)
        whole = run_compress(str(frozen.version), WHOLE_PATH, versions / f"{name}-{role}-whole", track=False)
        forms[role] = {"int8": str(int8.version), "whole": str(whole.version)}
        row[role] = {
            "test_accuracy": trained.metrics["test_accuracy"],
            "int8_test_accuracy": int8.metrics["test_accuracy"],
            "whole_test_accuracy": whole.metrics["test_accuracy"],
            "graph_bytes": (frozen.version / "graph.pb").stat().st_size,
            "train_wall_seconds": wall,
            "train_seconds": trained.metrics["train_seconds"],
            "epochs_run": manifest.training.epochs_run,
            "peak_epoch": manifest.training.peak_epoch,
        }
        if role == "student":
            row["teacher"] = plain(manifest.teacher)
            row["student"]["rows_per_epoch"] = (manifest.data or {}).get("train", 0) + manifest.teacher.get(
                "unlabelled_texts", 0) + manifest.teacher.get("augment", {}).get("texts", 0)
        print(json.dumps({name: row[role]}), flush=True)
    bench = run_bench([forms["student"]["int8"], forms["plain"]["int8"]], calls=500)
    row["student"]["int8_p50_ms"], row["plain"]["int8_p50_ms"] = (b["latency_p50_ms"] for b in bench)
    for version in versions.glob(f"{name}-*"):  # the figures are kept; the versions are not
        shutil.rmtree(version, ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    head = ("| set | teacher | teacher test % (val %) | teacher s | augmented texts (texts/s) | student % | "
            "student int8 % | "
            "student whole-path % | CNN-rand % | CNN-rand whole-path % | Kim static % | Kim rand % | "
            "p50 student / CNN-rand int8 ms | graph bytes student / CNN-rand |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        t, s, p = r["teacher"], r["student"], r["plain"]
        kind = (f"fine-tuned, {t['head']['epochs']} ep" if t["head"]["kind"] == "fine_tuned"
                else "frozen + logistic regression")
        if t.get("init_embeddings"):
            kind += ", student embedding from teacher"
        augmented = t.get("augment", {}).get("texts", 0)
        rate = t["texts_encoded"] / t["encoder_seconds"] if t.get("encoder_seconds") else None
        augment = f"{augmented}" + (f" ({rate:.0f})" if augmented and rate else "")
        if t["head"].get("from_cache"):
            kind += ", weights from cache"
        lines.append(
            f"| {r['set']} ({r.get('measured', 'an earlier run')}) | {kind} | "
            f"{100 * t['test_accuracy']:.1f} ({100 * t['validation_accuracy']:.1f}) | "
            f"{t['seconds']:.0f} | {augment} | {100 * s['test_accuracy']:.1f} | {100 * s['int8_test_accuracy']:.1f} | "
            f"{100 * s['whole_test_accuracy']:.1f} | {100 * p['test_accuracy']:.1f} | "
            f"{100 * p['whole_test_accuracy']:.1f} | {KIM_STATIC.get(r['set'], '-')} | {KIM_RAND.get(r['set'], '-')} | "
            f"{s['int8_p50_ms']:.2f} / {p['int8_p50_ms']:.2f} | {s['graph_bytes']} / {p['graph_bytes']} |")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__, "distill.json", "comma-separated sets (default: mr,trec,banking77)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="an extra --set override of the student runs, e.g. teacher.fine_tune_epochs=0")
    parser.add_argument("--set-for", action="append", default=[], metavar="SET:KEY=VALUE",
                        help="an override of one set's student run, e.g. mr:teacher.fine_tune_epochs=1")
    parser.add_argument("--reuse", type=Path, action="append", default=[],
                        help="a checkpoint version, or a folder of <config name>/checkpoint versions: a checkpoint "
                        "trained with exactly a run's config (tracking aside) is reused instead of trained again")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "distill.json"
    previous = {r["set"]: r for r in json.loads(results_file.read_text())} if results_file.is_file() else {}
    versions = OUT / f"distill-versions-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    for name in (args.only.split(",") if args.only else SETS):
        if args.readme_only:
            break
        print(f"== {name} seed {args.seed}", flush=True)
        per_set = [o.split(":", 1)[1] for o in args.set_for if o.split(":", 1)[0] == name]
        row = run_set(name, args.seed, versions, [*args.overrides, *per_set], args.reuse)
        # Read again before writing: another bench process (one set each) may have added its row meanwhile.
        previous = {r["set"]: r for r in json.loads(results_file.read_text())} if results_file.is_file() else {}
        previous[name] = row
        results_file.write_text(json.dumps(list(previous.values()), indent=1))
    rows = [previous[n] for n in SETS if n in previous]
    print(table(rows))
    if not args.no_readme:
        stamp = datetime.fromtimestamp(results_file.stat().st_mtime, UTC).strftime("%Y-%m-%d")
        meta = (f"Measured {stamp} on {cpu_model()} ({os.cpu_count()} cores, shared with other jobs), "
                f"`python benchmarks/distill_bench.py`, one seed (13). Teacher s: wall time of the teacher's part of "
                "the student's `train` (encoder load, fine-tuning, labelling every text not in the cache; "
                "\"weights from cache\": the fine-tuned teacher was read from the cache, so this is labelling "
                "alone); augmented texts: the copies the teacher labelled (its labelling rate, texts/s, in "
                "brackets). p50: one text per call, int8 serving forms side by side.")
        write_block("distill", f"{meta}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
