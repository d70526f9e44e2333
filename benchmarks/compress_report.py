"""The compression benchmark's report: the per-run tables, the issue-3 criteria, where a peer wins, and the README
block (between the ``bench:compress`` markers) written from benchmarks/out/compress.json."""

from __future__ import annotations

from typing import Any

from compress_setup import ALL_RUNS, BUDGET_RATIO, CRITERIA_RECIPE, FIELD, PAIR_ROUNDS
from readme import write_block


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

    def budget_pick(name: str, run: dict[str, Any]) -> tuple[str, bool | None] | None:
        searched = run.get("budget")
        if searched is None:
            return None
        label = f"ours budget {searched['points']:g}: {searched['recipe']}"
        graph, serving = _find(run, label, "graph"), _find(run, label, "serving")
        frozen_graph, frozen_serving = _frozen_row(run), _frozen_row(run, "serving")
        ratios = [(f["model_bytes"] + f["tokenizer_bytes"]) / (v["model_bytes"] + v["tokenizer_bytes"])
                  for f, v in ((frozen_serving, serving), (frozen_graph, graph))]
        drop = 100 * (frozen_graph["test_accuracy"] - graph["test_accuracy"])
        ok = min(ratios) >= BUDGET_RATIO and drop <= searched["points"] + 1e-9
        return (f"{searched['recipe']} ({searched['trials']} trials, {searched['seconds'] / 60:.1f} min): "
                f"{ratios[0]:.1f}x served ({serving['files']}) / {ratios[1]:.1f}x graph.pb, both + tokenizer; "
                f"{_drop_text(drop)}", ok)

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
    add(f"`compress --budget` pick >= {BUDGET_RATIO:g}x smaller than frozen float32 (serving + tokenizer and graph.pb +"
        " tokenizer) at test accuracy within the budget (issue 15)", budget_pick)
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
