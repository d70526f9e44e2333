"""The models a server holds, one inference worker each, and the atomic switch to a new version.

A ``ModelSlot`` is a served name; its ``current`` ``LoadedModel`` is one verified version (sha256 of every file, the
LiteRT op allow-list, a warm-up prediction) with one worker thread that owns the interpreter (``LiteRunner`` is not
thread-safe) and runs queued requests together in micro-batches. A request takes the slot's current model and keeps
it until it has answered, so a switch never changes the version under a request in flight; the old model is
released (worker stopped, interpreter dropped, its downloaded folder deleted) when its last request is done.

The ``Registry`` loads every configured model at start and, for ``models:/name@alias`` sources, checks the alias
every ``poll_seconds`` and on SIGHUP. A new version that fails any check is refused, the old one keeps serving, and
the reason is logged and kept for ``/v1/models``.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import fidelity
from lifecycle.artifacts import load_version
from lifecycle.errors import EXPECTED_ERRORS, ModelError
from lifecycle.manifest import Manifest
from lifecycle.procstat import release_free_memory
from lifecycle.serving.config import BatchingConfig, ModelSpec, ServeConfig
from lifecycle.serving.sources import Fetched, Source, discard
from lifecycle.sizes import version_sizes

log = logging.getLogger(__name__)

_STOP = object()
# Probabilities of the warm-up prediction must sum to 1 within this (softmax in float32).
_SUM_TOLERANCE = fidelity.WARMUP_SUM


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class _Job:
    texts: list[str]
    future: Future


@dataclass(frozen=True)
class Refusal:
    """A version the server would not switch to, and why."""

    version: str
    reason: str
    at: str


def _recipe_text(manifest: Manifest) -> str:
    steps = []
    for step in manifest.recipe:
        params = step.params
        steps.append(step.name + (":" + ",".join(str(v) for v in params.values()) if params else ""))
    return "+".join(steps)


class LoadedModel:
    """One verified version in memory with its own inference worker thread.

    Raises (from the constructor):
        ModelError: a file fails its sha256, the version is not a frozen/compressed one with a serving form, the
            flatbuffer holds an op outside the allow-list, or the warm-up prediction is not a probability row.
    """

    def __init__(self, name: str, fetched: Fetched, threads: int, batching: BatchingConfig) -> None:
        from lifecycle.inference import Predictor

        self.name = name
        self.fetched = fetched
        version = load_version(fetched.path)
        if version.kind not in ("frozen", "compressed"):
            raise ModelError(f"{version.path}: a {version.kind} version cannot be served; serve a frozen or "
                             "compressed version (`lifecycle freeze`, `lifecycle compress`).")
        self.predictor: Any = Predictor(version, runtime="litert", threads=threads, max_batch=batching.max_batch,
                                        lean_tokenizer=True)
        self.labels = version.labels
        # The version's own default (manifest calibration.abstain_threshold); a served model's `abstain` overrides it.
        self.abstain_threshold = self.predictor.abstain_threshold
        self.temperature = self.predictor.temperature
        self._check_warm_up(version.path, batching.max_batch)
        manifest = version.manifest
        self.kind = version.kind
        self.recipe = _recipe_text(manifest)
        self.size_bytes = version_sizes(version, gzip=False).deployed  # serving form + tokenizer (lifecycle.sizes)
        assert manifest.serving is not None  # Predictor(runtime="litert") refuses a version without one
        self.serving_bytes = manifest.serving.bytes
        self.loaded_at = _now()
        self.served = 0
        self.texts_served = 0
        # Micro-batches: texts_served / batches_run is their mean size (one over max_batch runs as several calls).
        self.batches_run = 0
        self.in_flight = 0
        self.retired = False
        self._max_batch = batching.max_batch
        self._max_wait = batching.max_wait_ms / 1000.0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"infer-{name}", daemon=True)
        self._thread.start()

    @property
    def label(self) -> str:
        return self.fetched.label

    def _check_warm_up(self, path: Path, rows: int) -> None:
        # A full batch: the interpreter claims its activation memory for the largest batch now, at load, rather
        # than under load (it never shrinks, and a roll-out should see the new version's memory before switching).
        texts = (["lifecycle warm-up check", ""] * rows)[:max(2, rows)]
        probabilities = self.predictor.predict_proba(texts)
        expected = (len(texts), len(self.labels))
        if probabilities.shape != expected or not np.all(np.isfinite(probabilities)):
            raise ModelError(f"{path}: warm-up prediction gave shape {probabilities.shape} (finite: "
                             f"{bool(np.all(np.isfinite(probabilities)))}), expected finite {expected}; refusing it.")
        worst = float(np.max(np.abs(probabilities.sum(axis=1) - 1.0)))
        if worst > _SUM_TOLERANCE:
            raise ModelError(f"{path}: warm-up probabilities sum to 1 +- {worst:.3g}, not within {_SUM_TOLERANCE}; "
                             "refusing it.")

    def submit(self, texts: list[str]) -> Future:
        """Queue texts for the worker; the future gets their probability rows."""
        future: Future = Future()
        self._queue.put(_Job(texts, future))
        return future

    def _work(self) -> None:
        carry: Any = None
        stopping = False
        while not stopping:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if job is _STOP:
                break
            batch, rows = [job], len(job.texts)
            deadline = time.monotonic() + self._max_wait
            while rows < self._max_batch:
                wait = deadline - time.monotonic()
                try:
                    queued = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is _STOP:
                    stopping = True
                    break
                if rows + len(queued.texts) > self._max_batch:
                    carry = queued
                    break
                batch.append(queued)
                rows += len(queued.texts)
            try:
                self._run(batch)
            except Exception as exc:  # never let the worker die: every later request would wait forever
                log.exception("%s (%s): inference worker error", self.name, self.label)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
        self._release()

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [text for job in live for text in job.texts]
        self.batches_run += 1
        try:
            probabilities = self.predictor.predict_proba(texts)
        except Exception as exc:
            if len(live) > 1:  # one request's texts must not fail the others batched with it
                for job in live:
                    self._run_one(job)
                return
            live[0].future.set_exception(exc)
            return
        start = 0
        for job in live:
            job.future.set_result(probabilities[start:start + len(job.texts)])
            start += len(job.texts)

    def _run_one(self, job: _Job) -> None:
        try:
            job.future.set_result(self.predictor.predict_proba(job.texts))
        except Exception as exc:
            job.future.set_exception(exc)

    def close(self) -> None:
        """Stop the worker after the jobs already queued; it then drops the interpreter and owned files."""
        self._queue.put(_STOP)

    def _release(self) -> None:
        self.predictor = None
        discard(self.fetched)
        release_free_memory()
        log.info("%s: released %s", self.name, self.label)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


class ModelSlot:
    """A served name: the model answering now, where it comes from, and the record of its roll-outs."""

    def __init__(self, name: str, spec: ModelSpec, source: Source, model: LoadedModel) -> None:
        self.name = name
        self.spec = spec
        self.source = source
        self.current = model
        self.served = 0
        self.switches = 0
        self.last_refused: Refusal | None = None
        self.refusing = False  # the alias points at a version that was refused
        self.last_check: str | None = None
        self.last_check_error: str | None = None
        self._lock = threading.Lock()

    def acquire(self) -> LoadedModel:
        """The current model, held until ``release``: a switch meanwhile does not free it."""
        with self._lock:
            model = self.current
            model.in_flight += 1
            return model

    def release(self, model: LoadedModel, texts: int | None) -> None:
        """Give back a model taken by ``acquire``; ``texts`` served (None when the request failed)."""
        with self._lock:
            model.in_flight -= 1
            if texts is not None:
                model.served += 1
                model.texts_served += texts
                self.served += 1
            done = model.retired and model.in_flight == 0
        if done:
            model.close()

    def switch(self, new: LoadedModel) -> LoadedModel:
        """Make ``new`` current in one step; the old model is released once its requests are answered."""
        with self._lock:
            old, self.current = self.current, new
            old.retired = True
            self.switches += 1
            done = old.in_flight == 0
        if done:
            old.close()
        return old


class Registry:
    """Every served model, loaded at start and kept current with its registry alias."""

    def __init__(self, cfg: ServeConfig, work_dir: Path | None = None) -> None:
        self.cfg = cfg
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="lifecycle-serve-"))
        self.slots: dict[str, ModelSlot] = {}
        self.started = time.time()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._force = False
        self._check_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """Load every configured model; the first failure closes what was loaded and raises, naming the model."""
        try:
            for name, spec in self.cfg.models.items():
                try:
                    source = Source(spec.version, self.cfg.tracking_uri, self.work_dir)
                    model = self._load_model(name, spec, source, source.lookup())
                except EXPECTED_ERRORS as exc:
                    raise type(exc)(f"model {name!r} ({spec.version}): {exc.message}", exc.hint) from None
                self.slots[name] = ModelSlot(name, spec, source, model)
                log.info("%s: serving %s (%s, %d labels)", name, model.label, model.recipe or model.kind,
                         len(model.labels))
        except BaseException:
            self.close()
            raise

    def _load_model(self, name: str, spec: ModelSpec, source: Source, entry: Any) -> LoadedModel:
        fetched = source.fetch(entry)
        try:
            return LoadedModel(name, fetched, spec.threads or self.cfg.threads, self.cfg.batching)
        except BaseException:
            discard(fetched)
            raise

    @property
    def watched(self) -> list[ModelSlot]:
        return [slot for slot in self.slots.values() if slot.source.watched]

    def check(self, force: bool = False) -> dict[str, str]:
        """Check every watched alias now: ``unchanged``, ``switched``, ``refused`` or ``error`` per model.

        A version refused before is not tried again until the alias moves, unless ``force`` (SIGHUP).
        """
        with self._check_lock:
            return {slot.name: self._check_slot(slot, force) for slot in self.watched}

    def _check_slot(self, slot: ModelSlot, force: bool) -> str:
        slot.last_check = _now()
        try:
            entry = slot.source.lookup()
        except EXPECTED_ERRORS as exc:
            slot.last_check_error = str(exc)
            log.warning("%s: cannot read %s: %s", slot.name, slot.source.ref, exc)
            return "error"
        slot.last_check_error = None
        if entry is None or entry.version == slot.current.fetched.registered:
            slot.refusing = False
            return "unchanged"
        label = f"models:/{entry.name}/{entry.version}"
        if not force and slot.refusing and slot.last_refused is not None and slot.last_refused.version == label:
            return "refused"
        log.info("%s: %s now points at %s; loading it beside %s", slot.name, slot.source.ref, label,
                 slot.current.label)
        try:
            new = self._load_model(slot.name, slot.spec, slot.source, entry)
        except Exception as exc:  # whatever fails, the old version keeps serving
            reason = str(exc) if isinstance(exc, EXPECTED_ERRORS) else f"{type(exc).__name__}: {exc}"
            slot.last_refused = Refusal(label, reason, _now())
            slot.refusing = True
            log.error("%s: refused %s, still serving %s: %s", slot.name, label, slot.current.label, reason)
            return "refused"
        old = slot.switch(new)
        slot.refusing = False
        log.info("%s: switched to %s (was %s)", slot.name, new.label, old.label)
        return "switched"

    def request_check(self) -> None:
        """Ask the watcher for a forced check (safe to call from a signal handler)."""
        self._force = True
        self._wake.set()

    def start(self) -> None:
        """Start the watcher thread if any model follows an alias."""
        if self.watched and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="alias-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.cfg.poll_seconds or None)
            if self._closed.is_set():
                break
            self._wake.clear()  # before reading the flag, so a SIGHUP arriving now is not lost
            force, self._force = self._force, False
            try:
                self.check(force)
            except Exception:  # the watcher must outlive any surprise; the models keep serving
                log.exception("alias check failed")

    def close(self) -> None:
        """Stop watching and release every model."""
        self._closed.set()
        self._wake.set()
        for slot in self.slots.values():
            slot.current.close()
        for slot in self.slots.values():
            slot.current.join(timeout=5)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
