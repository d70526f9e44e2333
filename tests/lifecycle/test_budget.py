"""compress --budget: the search (pure, over a fake evaluator), its prefix cache, and one real run on the MR slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle import artifacts
from lifecycle.budget import Budget, Measurement, PrefixCache, SearchSpace, search
from lifecycle.errors import ConfigError, ModelError

SPACE = SearchSpace(storages=("int8", "fp16"), coverages=(0.9, 0.97), sparsities=(0.9, 0.8, 0.5), tune_epochs=2)


def fake_evaluate(recipe: tuple[str, ...]) -> Measurement:
    """Sizes shrink and accuracy falls with each aggressive step: int8 -0.2 points, coverage 0.9 -3, 0.97 -0.5,
    sparsity 0.9 -4, 0.8 -2 (halved by tuning), 0.5 -0.3."""
    size, accuracy = 1000.0, 0.80
    costs = {"int8": (0.25, 0.002), "fp16": (0.5, 0.0), "vocab:coverage=0.9": (0.5, 0.03),
             "vocab:coverage=0.97": (0.7, 0.005), "prune:0.9": (0.3, 0.04), "prune:0.8": (0.4, 0.02),
             "prune:0.5": (0.7, 0.003)}
    tuned = any(step.startswith("tune:") for step in recipe)
    for step in recipe:
        factor, loss = costs.get(step, (1.0, 0.0))
        size *= factor
        accuracy -= loss / 2 if tuned and step.startswith("prune:") else loss
    return Measurement(int(size), int(size) + 10, accuracy)


def test_search_picks_the_smallest_trial_within_budget() -> None:
    result = search(fake_evaluate, 0.80, Budget(1.0), SPACE)
    within = [t for t in result.trials if t.within]
    assert result.chosen is not None and within
    assert result.chosen.size_bytes == min(t.size_bytes for t in within)
    # int8 (0.2) + coverage 0.97 (0.5) = 0.7 points; prune:0.8 alone would add 2, but tuned it adds 1 (> budget);
    # prune:0.5 adds 0.3: 1.0 points, exactly the budget.
    assert result.chosen.recipe == ("vocab:coverage=0.97", "prune:0.5", "int8")
    assert all(t.loss is not None and t.loss > 1.0 + 1e-9 for t in result.trials if not t.within)
    assert result.stopped == "searched"
    assert len({t.recipe for t in result.trials}) == len(result.trials)  # no recipe evaluated twice


def test_a_looser_budget_buys_a_smaller_version_and_relative_budgets_scale() -> None:
    tight = search(fake_evaluate, 0.80, Budget(1.0), SPACE).chosen
    loose = search(fake_evaluate, 0.80, Budget(3.0), SPACE).chosen
    assert tight is not None and loose is not None and loose.size_bytes < tight.size_bytes
    relative = Budget(1.25, relative=True)  # 1.25% of 80% = 1 point
    assert relative.loss(0.80, 0.79) == pytest.approx(1.25)
    chosen = search(fake_evaluate, 0.80, relative, SPACE).chosen
    assert chosen is not None and chosen.recipe == tight.recipe


def test_max_trials_and_timeout_stop_the_search() -> None:
    result = search(fake_evaluate, 0.80, Budget(1.0), SPACE, max_trials=3)
    assert len(result.trials) == 3 and result.stopped == "max_trials"
    ticks = iter(range(100))
    timed = search(fake_evaluate, 0.80, Budget(1.0), SPACE, timeout=4, clock=lambda: float(next(ticks)))
    assert timed.stopped == "timeout" and len(timed.trials) < len(result.trials) + 10


def test_a_budget_no_trial_meets_names_the_closest() -> None:
    result = search(lambda recipe: Measurement(100, 110, 0.5), 0.80, Budget(1.0), SPACE)
    assert result.chosen is None
    message = result.why_not()
    assert "closest: int8" in message and "lost 30.00" in message and "Raise --budget" in message


def test_refused_trials_are_recorded_and_the_search_goes_on() -> None:
    def evaluate(recipe: tuple[str, ...]) -> Measurement:
        if recipe == ("int8",):
            raise ModelError("int8: tensor already int8")
        return fake_evaluate(recipe)

    result = search(evaluate, 0.80, Budget(1.0), SPACE, refused=ModelError)
    assert result.trials[0].error == "int8: tensor already int8" and not result.trials[0].within
    assert result.chosen is not None and result.chosen.recipe[-1] == "fp16"


def test_prefixes_are_applied_once() -> None:
    calls: list[tuple[tuple[str, ...], str]] = []

    def apply(state: tuple[str, ...], step: str) -> tuple[str, ...]:
        calls.append((state, step))
        return (*state, step)

    cache = PrefixCache((), apply)
    assert cache.state(("vocab:coverage=0.9", "int8")) == ("vocab:coverage=0.9", "int8")
    assert cache.state(("vocab:coverage=0.9", "prune:0.8", "int8")) == ("vocab:coverage=0.9", "prune:0.8", "int8")
    assert cache.state(("vocab:coverage=0.9", "prune:0.8", "tune:2", "int8"))[-2:] == ("tune:2", "int8")
    assert cache.applied == 2 + 2 + 2 == len(calls)
    assert calls[2] == (("vocab:coverage=0.9",), "prune:0.8")  # started from the cached vocab prefix


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"amount": -1.0}, "--budget must be a finite number >= 0"),
    ({"amount": 1.0, "metric": "f1"}, "--metric 'f1' is not a metric lifecycle logs"),
])
def test_bad_budgets(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Budget(**kwargs)


def test_bad_limits() -> None:
    with pytest.raises(ConfigError, match="--max-trials must be at least 1"):
        search(fake_evaluate, 0.8, Budget(1.0), max_trials=0)
    with pytest.raises(ConfigError, match="--timeout must be"):
        search(fake_evaluate, 0.8, Budget(1.0), timeout=0)


# ------------------------------------------------------------------------------------------- the real search


@pytest.fixture(scope="module")
def searched(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real search on the frozen MR slice, recording which splits the steps and checks read, in order."""
    import lifecycle.corpus
    from lifecycle.workflows.budgeting import BudgetRequest, run_compress_budget

    reads: list[str] = []

    class Recording:
        def __init__(self, corpus: object) -> None:
            self._corpus = corpus

        def __getattr__(self, name: str) -> object:
            if name in ("train", "validation", "test"):
                reads.append(name)
            return getattr(self._corpus, name)

    original = lifecycle.corpus.load_corpus
    monkey = pytest.MonkeyPatch()
    monkey.setattr(lifecycle.corpus, "load_corpus", lambda *a, **k: Recording(original(*a, **k)))
    space = SearchSpace(storages=("int8", "fp16"), coverages=(0.9, 0.99), sparsities=(0.8, 0.5), tune_epochs=1)
    trials: list = []

    def on_trial(trial: object) -> None:
        trials.append(trial)
        reads.append(f"trial {len(trials)}")

    out = tmp_path_factory.mktemp("budget") / "b1"
    try:
        result = run_compress_budget(str(frozen["outcome"].version), BudgetRequest(2.0, max_trials=8), out,
                                     on_trial=on_trial, space=space)
    finally:
        monkey.undo()
    return {"result": result, "reads": reads, "trials": trials}


def test_the_search_never_reads_the_test_split_before_the_end(searched: dict) -> None:
    reads = searched["reads"]
    last_trial = max(i for i, read in enumerate(reads) if read.startswith("trial "))
    assert "test" in reads and reads.index("test") > last_trial
    assert "validation" in reads[:last_trial]


def test_the_chosen_version_is_within_budget_on_validation_with_a_budget_record(searched: dict) -> None:
    from lifecycle import evaluate
    from lifecycle.corpus import load_corpus
    from lifecycle.dataset import encode_examples
    from lifecycle.inference import Predictor
    from lifecycle.workflows import recipe_label

    outcome = searched["result"]
    result = outcome.result
    assert result.chosen is not None and result.chosen.within
    version = artifacts.load_version(outcome.outcome.version)
    record = version.manifest.to_dict()["budget"]
    assert record["chosen"] == result.chosen.label == recipe_label(version.manifest.recipe_dicts())
    assert record["budget"] == 2.0 and record["metric"] == "accuracy" and record["trials"] == len(result.trials)
    assert record["validation"]["loss"] <= 2.0
    # The written version, re-applied from the parent, is within budget on validation too.
    corpus = load_corpus(version.config.data, version.config.name)
    predictor = Predictor(version, runtime="graph")
    probs = predictor.predict_proba(list(corpus.validation.texts))
    y = encode_examples(corpus.validation, predictor.tokenizer, version.labels, version.max_len, corpus.source).y
    accuracy = evaluate.evaluate_probabilities(probs, y, version.labels).accuracy
    assert 100 * (result.parent_metric - accuracy) <= 2.0 + 1e-9
    sizes = version.manifest.sizes
    assert sizes["serving_bytes"] + sizes["tokenizer_bytes"] == result.chosen.size_bytes


def test_trials_share_prefixes_and_are_nested_runs(searched: dict) -> None:
    import mlflow

    outcome = searched["result"]
    trials = outcome.result.trials
    assert len(trials) == len(searched["trials"]) <= 8
    client = mlflow.tracking.MlflowClient()
    parent = client.get_run(outcome.run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    names = {run.data.tags.get("lifecycle.step") for run in children}
    assert names == {"budget-trial", "compress"}
    assert sum(run.data.tags["lifecycle.step"] == "budget-trial" for run in children) == len(trials)
    artifacts_logged = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"trials.json", "chosen.json", "size_vs_validation.png"} <= artifacts_logged
    chosen = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id,
                                                                 artifact_path="chosen.json")).read_text())
    assert chosen["recipe"] == outcome.result.chosen.label


def test_budget_errors_name_the_flag(frozen: dict, trained: dict) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    ref = str(frozen["outcome"].version)
    cases = [
        ([ref, "--budget", "-1"], 2, "--budget must be a finite number >= 0"),
        ([ref, "--budget", "1", "--metric", "f1"], 2, "--metric 'f1'"),
        ([ref, "--budget", "1", "--max-trials", "0"], 2, "--max-trials must be at least 1"),
        ([str(trained["outcome"].version), "--budget", "1", "--no-track"], 4, "--budget: "),
        ([ref, "--budget", "1", "--recipe", "int8"], 2, "exactly one of --recipe R"),
        ([ref], 2, "Received: neither"),
    ]
    for argv, code, message in cases:
        result = CliRunner().invoke(app, ["compress", *argv])
        assert result.exit_code == code, (argv, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_budget_no_trial_meets_exits_non_zero_and_writes_nothing(frozen: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from lifecycle import budget
    from lifecycle.cli import app

    def evaluate_badly(evaluate, parent_metric, wanted, space=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        return search(lambda recipe: Measurement(1000, 1100, parent_metric - 0.05), parent_metric, wanted,
                      SearchSpace(storages=("int8",), coverages=(), sparsities=(), tune_epochs=0), **kwargs)

    monkeypatch.setattr(budget, "search", evaluate_badly)
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["compress", str(frozen["outcome"].version), "--budget", "1", "--no-track",
                                      "--output", str(out)])
    assert result.exit_code == 4, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]  # after the trial lines
    assert len(errors) == 1 and "closest: int8 (0.00 MB) lost 5.00" in errors[0], result.output
    assert result.output.strip().splitlines()[-1] == errors[0]
    assert not out.exists()


def test_a_vocabulary_coverage_that_saves_nothing_is_not_kept() -> None:
    """coverage=1 drops only the ids no training text encodes to: a shrink for a BPE model (kept in front of what
    follows), nothing for a word vocabulary (the recipe does not carry the idle step)."""
    def evaluate(shrinks: bool):
        def measure(recipe: tuple[str, ...]) -> Measurement:
            size, accuracy = 1000.0, 0.80
            for step in recipe:
                factor, loss = {"int8": (0.25, 0.002), "vocab:coverage=0.9": (0.5, 0.03),
                                "vocab:coverage=1": (0.8 if shrinks else 1.0, 0.0), "prune:0.5": (0.7, 0.003)}.get(
                                    step, (1.0, 0.0))
                size, accuracy = size * factor, accuracy - loss
            return Measurement(int(size), int(size) + 10, accuracy)
        return measure

    space = SearchSpace(storages=("int8",), coverages=(0.9, 1.0), sparsities=(0.5,), tune_epochs=0)
    bpe = search(evaluate(True), 0.80, Budget(1.0), space).chosen
    word = search(evaluate(False), 0.80, Budget(1.0), space).chosen
    assert bpe is not None and bpe.recipe == ("vocab:coverage=1", "prune:0.5", "int8")
    assert word is not None and word.recipe == ("prune:0.5", "int8")


def test_widths_are_tried_without_the_coverage_when_it_spent_the_budget() -> None:
    """The coverage kept loses 0.9 of a 1-point budget, so no width fits behind it; a width alone loses 0.6 and is
    the larger saving (dim:16 loses 0.96), so the widths are bisected again alone and the narrowest is chosen, with
    the sparsities tried after it."""
    def measure(recipe: tuple[str, ...]) -> Measurement:
        points, size = 0.0, 1000.0
        for step in recipe:
            if step.startswith("vocab:"):
                points, size = points + 0.9, size * 0.8
            elif step.startswith("dim:"):
                width = int(step[4:])
                points, size = points + (64 - width) * 0.02, size * width / 64
            elif step.startswith("prune:"):
                points, size = points + 2.0, size * 0.5
        return Measurement(int(size), int(size) + 5, 0.80 - points / 100)

    space = SearchSpace(storages=("int4",), coverages=(0.9,), sparsities=(0.5,), tune_epochs=1, dims=(16, 32, 48))
    result = search(measure, 0.80, Budget(1.0), space)
    recipes = [t.recipe for t in result.trials]
    assert ("vocab:coverage=0.9", "dim:48", "tune:1", "int4") in recipes  # behind the coverage first: over budget
    assert result.chosen is not None and result.chosen.recipe == ("dim:16", "tune:1", "int4")
    assert ("dim:16", "prune:0.5", "tune:1", "int4") in recipes  # the sparsities follow the width kept


def test_a_finer_storage_is_tried_on_the_smallest_trials_within_budget() -> None:
    """Phase 6: int3 in place of int4 on the smallest trials within budget; here it loses too much on the narrowest
    one and fits on a wider one, which is then the smaller version."""
    def measure(recipe: tuple[str, ...]) -> Measurement:
        width = next((int(step[4:]) for step in recipe if step.startswith("dim:")), 64)
        bits = {"int4": 4, "int3": 3}[recipe[-1]]
        points = (64 - width) * 0.05 + (0.3 if bits == 3 else 0.0)  # dim:48,int4 0.8 lost; dim:48,int3 1.1
        size = width * bits * 10
        return Measurement(size, size + 5, 0.80 - points / 100)

    space = SearchSpace(storages=("int4",), coverages=(), sparsities=(), tune_epochs=0, dims=(16, 24, 32, 40, 48, 56),
                        finer=("int3",), refine=2)
    result = search(measure, 0.80, Budget(1.0), space)
    within4 = sorted((t for t in result.trials if t.within and t.recipe[-1] == "int4"), key=lambda t: t.size_bytes)
    tried3 = [t.recipe for t in result.trials if t.recipe[-1] == "int3"]
    assert tried3 == [(*t.recipe[:-1], "int3") for t in within4[:2]]
    assert result.chosen is not None and result.chosen.recipe[-1] == "int3"
    assert result.chosen.size_bytes < within4[0].size_bytes


def test_pipeline_refuses_max_trials_0_before_training(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lifecycle.cli import app

    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["pipeline", "--max-trials", "0", "--no-track", "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert "--max-trials must be at least 1" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
