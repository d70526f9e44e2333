"""``compress --budget``: the search for the smallest recipe whose metric loss stays within a budget.

Pure logic over two callbacks, so it is tested without TensorFlow: ``evaluate(recipe)`` measures one recipe (a tuple
of step texts such as ``("vocab:coverage=0.95", "prune:0.8", "int8")``) on the validation split, and
:class:`PrefixCache` runs a recipe's steps so that recipes sharing a prefix share its work.

The search is greedy, one axis at a time, each axis's values tried from the most aggressive to the least, keeping the
first value within budget (a smaller recipe is then kept only if it is also within budget):

1. the weight storage alone (``int4`` when the build has it, ``int8``, ``fp16``); if none is within budget, stop;
2. vocabulary coverage, in front of that storage, down to ``coverage=1``: only the ids no training text encodes to
   are dropped (a BPE model's intermediate merges; a word vocabulary has none, so the step saves nothing there). A
   coverage whose trial is no smaller than the storage alone is not kept;
3. the embedding width (``dim:R``, every multiple of 8 from an eighth to half of the parent's: ``dims_for``), each
   with ``tune:E`` after it, since a narrower embedding loses what a short fine-tune wins back (measured on TREC's
   word model: dim:64,int4 lost 2.4 test points, dim:64,tune:3,int4 0.2). The widths are bisected, not walked: the
   widest first (none kept if it is over budget), then the middle of the widths still open, so 15 widths cost at
   most 5 trials and the kept width is the narrowest within budget up to the metric's noise between neighbours.
   When no width is within budget behind the coverage kept, the widths are bisected again without it: the coverage
   may have spent the budget that a width, the larger saving, needs (the smallest trial within budget is still the
   pick, so a coverage-only trial that comes out smaller still wins);
4. sparsity, after the width (with its tune when a width was kept);
5. with fine-tuning (``tune:E`` before the storage), when no width was kept: the sparsities more aggressive than
   step 4 kept;
6. a finer storage (``int3`` after ``int4``, ``SearchSpace.finer``) in place of the storage of the ``refine``
   smallest trials within budget, smallest first: the same prefix (cached, so each costs a quantization and a
   validation pass), fewer bits. A wider trial in a finer storage may be smaller than the narrowest in the first.

Steps come in the order the shipped recipes use (``vocab:coverage=C,dim:R,prune:S,tune:E,int8``). The chosen
recipe is the smallest trial within budget (serving size, then graph.pb size, then metric), whichever phase found it.
The search stops early at ``max_trials`` trials or once ``timeout`` seconds have passed (the running trial finishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from lifecycle.errors import ConfigError

METRICS = ("accuracy", "macro_f1")
Recipe = tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    """How much of the parent's validation figure a recipe may lose.

    Attributes:
        amount: absolute points (1.0 = one accuracy point) or, with ``relative``, percent of the parent's figure.
        metric: ``accuracy`` or ``macro_f1``.
        relative: ``amount`` is percent of the parent's figure.
    """

    amount: float
    metric: str = "accuracy"
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.amount >= 0.0 or self.amount == float("inf"):  # also refuses nan
            raise ConfigError(f"--budget must be a finite number >= 0 (points lost, or percent with --relative). "
                              f"Received: {self.amount!r}.")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r} is not a metric lifecycle logs; use one of "
                              f"{', '.join(METRICS)}.")

    @property
    def unit(self) -> str:
        return "% of the parent's" if self.relative else "points"

    def loss(self, parent: float, trial: float) -> float:
        """What a trial lost against the parent, in the budget's unit (negative: it gained)."""
        if self.relative:
            return 100.0 * (parent - trial) / parent if parent > 0 else 0.0
        return 100.0 * (parent - trial)

    def allows(self, loss: float) -> bool:
        return loss <= self.amount + 1e-9  # a float rounding of an exactly-met budget still meets it


@dataclass(frozen=True)
class SearchSpace:
    """The values tried on each axis, most aggressive first; the first storage applies on its own first."""

    storages: tuple[str, ...] = ("int8", "fp16")
    coverages: tuple[float, ...] = (0.8, 0.9, 0.95, 0.97, 0.99, 1.0)
    sparsities: tuple[float, ...] = (0.9, 0.8, 0.7, 0.5, 0.3)
    tune_epochs: int = 3  # 0: never fine-tune
    dims: tuple[int, ...] = ()  # embedding widths (dim:R), narrowest first; () leaves the width alone
    finer: tuple[str, ...] = ()  # storages tried last in place of the first one (phase 6), most aggressive first
    refine: int = 3  # how many of the smallest trials within budget phase 6 tries them on

    def with_storage_first(self, storage: str) -> SearchSpace:
        """The space with ``storage`` (``int4``, when the build has it) tried before the others."""
        return replace(self, storages=(storage, *(s for s in self.storages if s != storage)))

    def with_dims_for(self, width: int) -> SearchSpace:
        """The space with the embedding widths ``dims_for(width)``."""
        return replace(self, dims=dims_for(width))


def dims_for(width: int) -> tuple[int, ...]:
    """The embedding widths the search may try below ``width``, narrowest first: every multiple of 8 from an eighth
    to half of it (each end rounded to a multiple of 8, at least 8). The search bisects them (``_narrowest_within``),
    so a fine grid costs trials only logarithmically."""
    low, high = (max(8, 8 * round(width * fraction / 8)) for fraction in (1 / 8, 1 / 2))
    return tuple(d for d in range(low, high + 1, 8) if d < width)


@dataclass(frozen=True)
class Measurement:
    """What ``evaluate`` measured on one recipe."""

    size_bytes: int  # the serving form (model.tflite) + tokenizer: what predict and serve load
    graph_size_bytes: int  # graph.pb + tokenizer
    metric: float  # on the validation split, a fraction


@dataclass(frozen=True)
class Trial:
    """One evaluated recipe (``error``: it could not be made, e.g. a step refused the weights)."""

    number: int
    recipe: Recipe
    size_bytes: int | None
    graph_size_bytes: int | None
    metric: float | None
    loss: float | None
    within: bool
    seconds: float
    error: str | None = None

    @property
    def label(self) -> str:
        """The recipe as the manifest's label prints it: ``prune:0.8+int8``."""
        return "+".join(self.recipe)

    def row(self) -> dict[str, object]:
        """The trial as a row of the trials table."""
        return {"trial": self.number, "recipe": self.label, "size_bytes": self.size_bytes,
                "graph_size_bytes": self.graph_size_bytes, "validation_metric": self.metric, "loss": self.loss,
                "within_budget": self.within, "seconds": round(self.seconds, 3), "error": self.error}


@dataclass(frozen=True)
class SearchResult:
    """The trials in the order they ran, the chosen one (None: no trial was within budget) and why it stopped."""

    budget: Budget
    parent_metric: float
    trials: tuple[Trial, ...]
    chosen: Trial | None
    stopped: str  # searched | max_trials | timeout
    seconds: float

    def closest(self) -> Trial | None:
        """The measured trial that lost least (ties: the smaller), for a budget no trial met."""
        measured = [t for t in self.trials if t.loss is not None]
        return min(measured, key=lambda t: (t.loss, t.size_bytes)) if measured else None

    def why_not(self) -> str:
        """One line for a budget no trial met: the closest trial and by how much it missed."""
        budget = self.budget
        closest = self.closest()
        stop = {"max_trials": " (stopped at --max-trials)", "timeout": " (stopped at --timeout)"}.get(self.stopped, "")
        if closest is None:
            return f"no recipe could be measured in {len(self.trials)} trials{stop}."
        assert closest.loss is not None and closest.metric is not None and closest.size_bytes is not None
        return (f"no recipe loses at most {budget.amount:g} {budget.unit} validation {budget.metric} in "
                f"{len(self.trials)} trials{stop}; closest: {closest.label} ({closest.size_bytes / 1e6:.2f} MB) "
                f"lost {closest.loss:.2f} ({100 * self.parent_metric:.1f}% -> {100 * closest.metric:.1f}%). Raise "
                f"--budget{', or --max-trials/--timeout' if stop else ''}.")


def check_limits(max_trials: int, timeout: float | None) -> None:
    """Refuse a trial limit below 1 or a timeout that is not a positive number of seconds (ConfigError)."""
    if max_trials < 1:
        raise ConfigError(f"--max-trials must be at least 1 (trials the search may run). Received: {max_trials}.")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be a number of seconds > 0. Received: {timeout!r}.")


class _Stop(Exception):
    """The trial limit or the timeout was reached."""


def search(evaluate: Callable[[Recipe], Measurement], parent_metric: float, budget: Budget,
           space: SearchSpace | None = None, *, max_trials: int = 24, timeout: float | None = None,
           on_trial: Callable[[Trial], None] | None = None, clock: Callable[[], float] = time.monotonic,
           refused: type[Exception] | tuple[type[Exception], ...] = ()) -> SearchResult:
    """Search ``space`` for the smallest recipe whose validation loss against ``parent_metric`` is within ``budget``.

    Args:
        evaluate: measures one recipe (size, validation metric); called once per distinct recipe.
        parent_metric: the parent's validation figure (a fraction).
        budget: the loss allowed.
        space: the values tried (default :class:`SearchSpace`).
        max_trials: at most this many recipes are evaluated (>= 1).
        timeout: no trial starts after this many seconds (None: no limit).
        on_trial: called with each finished trial (progress, tracking).
        clock: seconds, monotonic (injected by tests).
        refused: exceptions of ``evaluate`` that mark a trial as failed instead of ending the search.

    Raises:
        ConfigError: ``max_trials`` < 1 or ``timeout`` <= 0.
    """
    check_limits(max_trials, timeout)
    space = space or SearchSpace()
    started = clock()
    trials: dict[Recipe, Trial] = {}

    def run(recipe: Recipe) -> Trial:
        if recipe in trials:
            return trials[recipe]
        if len(trials) >= max_trials:
            raise _Stop("max_trials")
        if timeout is not None and clock() - started >= timeout:
            raise _Stop("timeout")
        begun = clock()
        try:
            measured = evaluate(recipe)
        except refused as exc:
            trial = Trial(len(trials) + 1, recipe, None, None, None, None, False, clock() - begun, str(exc))
        else:
            loss = budget.loss(parent_metric, measured.metric)
            trial = Trial(len(trials) + 1, recipe, measured.size_bytes, measured.graph_size_bytes, measured.metric,
                          loss, budget.allows(loss), clock() - begun)
        trials[recipe] = trial
        if on_trial is not None:
            on_trial(trial)
        return trial

    def first_within(recipes: Sequence[Recipe]) -> Recipe | None:
        for recipe in recipes:
            if run(recipe).within:
                return recipe
        return None

    def smaller(recipe: Recipe, than: Recipe) -> bool:
        size, other = trials[recipe].size_bytes, trials[than].size_bytes
        return size is not None and other is not None and size < other

    def narrowest_within(recipes: Sequence[Recipe]) -> Recipe | None:
        return _narrowest_within(recipes, lambda recipe: run(recipe).within)

    stopped = "searched"
    try:
        _greedy(space, first_within, narrowest_within, smaller)
        _finer(space, list(trials.values()), first_within)
    except _Stop as stop:
        stopped = str(stop)
    within = [t for t in trials.values() if t.within]
    # Equal serving sizes (a pruned serving form keeps dense codes): the smaller graph.pb, then the better metric.
    chosen = min(within, key=lambda t: (t.size_bytes, t.graph_size_bytes, -(t.metric or 0.0))) if within else None
    return SearchResult(budget, parent_metric, tuple(trials.values()), chosen, stopped, clock() - started)


def _narrowest_within(recipes: Sequence[Recipe], within: Callable[[Recipe], bool]) -> Recipe | None:
    """The first of ``recipes`` (ordered most aggressive first, the loss assumed to fall along them) within budget,
    found by bisection: the last one first (None if it is over budget), then the middle of those still open."""
    if not recipes or not within(recipes[-1]):
        return None
    low, best = 0, len(recipes) - 1  # recipes[best] is within; none before low is
    while low < best:
        middle = (low + best) // 2
        if within(recipes[middle]):
            best = middle
        else:
            low = middle + 1
    return recipes[best]


def _greedy(space: SearchSpace, first_within: Callable[[Sequence[Recipe]], Recipe | None],
            narrowest_within: Callable[[Sequence[Recipe]], Recipe | None],
            smaller: Callable[[Recipe, Recipe], bool] = lambda recipe, than: True) -> None:
    """The phases of the module docstring; ``first_within`` runs candidates until one is within budget,
    ``narrowest_within`` bisects them, ``smaller(a, b)``: trial ``a`` (run) is smaller than trial ``b`` (run)."""
    storage_recipe = first_within([(storage,) for storage in space.storages])
    if storage_recipe is None:
        return
    storage = storage_recipe[-1]
    vocab = first_within([(f"vocab:coverage={c:g}", storage) for c in space.coverages])
    head: Recipe = vocab[:1] if vocab and smaller(vocab, storage_recipe) else ()
    tune: Recipe = (f"tune:{space.tune_epochs}",) if space.tune_epochs else ()
    narrowed = narrowest_within([(*head, f"dim:{d}", *tune, storage) for d in space.dims])
    if not narrowed and head and space.dims:
        # The coverage kept may have spent the budget a width needs (a width is the larger saving): widths alone.
        narrowed = narrowest_within([(f"dim:{d}", *tune, storage) for d in space.dims])
        head = () if narrowed else head
    if narrowed:
        head = (*head, narrowed[len(head)])
        first_within([(*head, f"prune:{s:g}", *tune, storage) for s in space.sparsities])
        return
    pruned = first_within([(*head, f"prune:{s:g}", storage) for s in space.sparsities])
    if not space.tune_epochs:
        return
    kept = float(pruned[-2].partition(":")[2]) if pruned else 0.0
    tighter = [s for s in space.sparsities if s > kept]
    first_within([(*head, f"prune:{s:g}", f"tune:{space.tune_epochs}", storage) for s in tighter])


def _finer(space: SearchSpace, trials: Sequence[Trial],
           first_within: Callable[[Sequence[Recipe]], Recipe | None]) -> None:
    """Phase 6: each of ``space.finer`` in place of the first storage, on the smallest trials within budget."""
    if not space.finer or not space.storages:
        return
    within = sorted((t for t in trials if t.within and t.recipe[-1] == space.storages[0]),
                    key=lambda t: (t.size_bytes or 0, t.graph_size_bytes or 0))
    for trial in within[:space.refine]:
        first_within([(*trial.recipe[:-1], storage) for storage in space.finer])


State = TypeVar("State")


@dataclass
class PrefixCache(Generic[State]):
    """The state after each prefix of the recipes run so far: a recipe's steps run only past its longest cached
    prefix (``vocab:coverage=0.95,prune:0.8,int8`` after ``vocab:coverage=0.95,int8`` runs two steps, not three).

    Attributes:
        initial: the state before any step (the parent's weights and tokenizer).
        apply: runs one step on a state, returning a new one (the input is not modified).
        applied: how many steps ``apply`` has run, for reports and tests.
    """

    initial: State
    apply: Callable[[State, str], State]
    applied: int = 0
    _states: dict[tuple[Hashable, ...], State] = field(default_factory=dict, repr=False)

    def state(self, recipe: Recipe) -> State:
        """The state after all of ``recipe``'s steps."""
        done = len(recipe)
        while done and recipe[:done] not in self._states:
            done -= 1
        current = self._states[recipe[:done]] if done else self.initial
        for index in range(done, len(recipe)):
            current = self.apply(current, recipe[index])
            self.applied += 1
            self._states[recipe[:index + 1]] = current
        return current
