"""A warm trainer: the base loaded once, adapters (tenants) joining and leaving between steps.

`loraplex trainer` with `tenantsFile` in its config runs a `WarmTrainer`. The
file (`Tenants`: `tenants: [adapter, ...]`, each an `AdapterJob` with its own
`checkpointUri`) is the desired state, level-based: the operator writes it
into a ConfigMap that the pod mounts, and the trainer reads it at most every
`pollSeconds`, between steps. What `plan_tenancy` finds changed is carried out
before the next step:

- a new tenant joins: its stores and data are opened (its checkpoint pulled,
  a remote dataset copied and tokenised, its `initRevision` pulled) on a
  background thread (`Preparer`: up to PARALLEL_PREPARATIONS tenants at once)
  while the others go on stepping, reported as
  `Preparing`; once that is done its weights are made (or restored from its
  checkpoint, or its `initRevision`) between two steps and it is in the next
  combined step (with nothing training, tenants ready within
  START_TOGETHER_SECONDS start together);
- a tenant no longer listed (its job finished elsewhere, was deleted or moved)
  leaves at once (one still being prepared: its copy or read stops at the next
  chunk or record, and it never starts): a checkpoint if it stepped since its
  last one, a `left` event, its weights and optimizer state dropped;
- a tenant listed with other settings leaves and joins again.

A tenant that finishes publishes and leaves the batch as in a one-shot run;
its result stays in the reports while it is listed. After every change the
trainer prints a `tenants` event, and again at least every 30 s while it
trains: every listed tenant's phase and step (the level the operator reads;
earlier events may have scrolled out of the log's tail). SIGTERM checkpoints
every tenant in flight and exits 75 (main.py); with no tenant in flight for
`idleSeconds` it exits 0, and the base goes with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraplex.api.trainer import (
    EXIT_FAILED,
    EXIT_PREEMPTED,
    EXIT_SUCCEEDED,
    TENANT_PREPARING,
    TENANT_RUNNING,
)
from loraplex.worker.trainer import checkpoint
from loraplex.worker.trainer.config import AdapterJob, ConfigError, Tenants, TrainerConfig
from loraplex.worker.trainer.progress import Event, ProgressSink
from loraplex.worker.trainer.training import AdapterRun, Prepared, StopFlag, Trainer

REPORT_EVERY_SECONDS = 30.0  # a `tenants` report at least this often, so one is always in the log's tail
# With nothing training, the first tenant ready waits this long for the others being prepared, so
# tenants listed together (a new or resumed trainer's) start in one combined step: a tenant's
# numerics depend on the batch it shares, so a resumed trainer then repeats an uninterrupted one.
START_TOGETHER_SECONDS = 10.0
# Joining tenants opened at once: their checkpoints pulled and remote datasets copied side by side,
# their records read and tokenised in turns (CPU work, under one interpreter lock).
PARALLEL_PREPARATIONS = 4


@dataclass(frozen=True)
class TenancyChange:
    join: list[AdapterJob]
    leave: list[str]

    @property
    def empty(self) -> bool:
        return not (self.join or self.leave)


def plan_tenancy(desired: Mapping[str, AdapterJob], admitted: Mapping[str, AdapterJob]) -> TenancyChange:
    """What to do so the admitted tenants are the desired ones: a tenant whose settings changed
    leaves and joins again; one that stays the same is left alone, in flight or done."""
    leave = sorted(name for name, job in admitted.items() if desired.get(name) != job)
    join = [job for name, job in sorted(desired.items()) if admitted.get(name) != job]
    return TenancyChange(join, leave)


@dataclass(eq=False)
class Preparation:
    """A joining tenant's stores and data being opened off the training thread."""

    job: AdapterJob
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)  # it left: skipped, or stopped
    prepared: Prepared | None = None  # None when done: finished already, or failed (as reported)
    error: BaseException | None = None  # an unexpected error, raised again on the training thread


class Preparer:
    """Opens joining tenants off the training thread, up to `parallel` at once, so a large dataset
    being copied holds up only its own tenant. One adapter name's preparations run in the order they
    were submitted: a rejoin with other settings is opened after the run it replaces (their stores
    share the adapter's name). Daemon threads: a trainer that exits does not wait for a copy."""

    def __init__(
        self,
        prepare: Callable[[AdapterJob, threading.Event], Prepared | None],
        parallel: int = PARALLEL_PREPARATIONS,
    ) -> None:
        self._prepare = prepare
        self._slots = threading.BoundedSemaphore(parallel)
        self._lock = threading.Lock()
        self._last: dict[str, Preparation] = {}  # each name's latest preparation not yet done

    def submit(self, job: AdapterJob) -> Preparation:
        item = Preparation(job)
        with self._lock:
            before = self._last.get(job.name)
            self._last[job.name] = item
        name = f"prepare-{job.name}"
        threading.Thread(target=self._work, args=(item, before), name=name, daemon=True).start()
        return item

    def _work(self, item: Preparation, before: Preparation | None) -> None:
        try:
            if before is not None:
                before.done.wait()
            with self._slots:
                if not item.cancel.is_set():
                    item.prepared = self._prepare(item.job, item.cancel)
        except BaseException as error:  # handed to the training thread, raised there
            item.error = error
        finally:
            with self._lock:
                if self._last.get(item.job.name) is item:
                    del self._last[item.job.name]
            item.done.set()


class TenantsFile:
    """The desired tenants, read at most every `poll_seconds`; an unreadable or invalid file keeps the
    last good reading (a ConfigMap update is atomic, but a hand-edited file may be caught mid-write)."""

    def __init__(self, path: Path, poll_seconds: float, sink: ProgressSink) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.sink = sink
        self.desired: dict[str, AdapterJob] = {}
        self._next_read = 0.0
        self._last_error: str | None = None

    def read(self, now: float) -> dict[str, AdapterJob]:
        if now < self._next_read:
            return self.desired
        self._next_read = now + self.poll_seconds
        try:
            tenants = Tenants.load(self.path)
        except ConfigError as error:
            if str(error) != self._last_error:  # said once, not every poll
                self._last_error = str(error)
                self.sink(
                    Event("tenants", reason="ConfigInvalid", message=f"{error}; keeping the last tenants")
                )
            return self.desired
        self._last_error = None
        self.desired = {job.name: job for job in tenants.tenants}
        return self.desired


class WarmTrainer:
    """Runs until idle or stopped, training whatever tenants the file lists."""

    def __init__(
        self,
        config: TrainerConfig,
        sink: ProgressSink,
        stop: StopFlag | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        assert config.tenants_file is not None
        self.config = config
        self.sink = sink
        self.stop = stop or StopFlag()
        self.trainer = Trainer(config, sink, self.stop)
        self.tenants = TenantsFile(Path(config.tenants_file), config.poll_seconds, sink)
        self.clock = clock
        self.sleep = sleep
        self.admitted: dict[str, AdapterJob] = {}
        self.preparing: dict[str, Preparation] = {}  # joined, stores and data still being opened
        self.active: dict[str, AdapterRun] = {}
        self.preparer = Preparer(self._prepare)
        self.steps = 0
        self._reported = 0.0
        self._ready_since: float | None = None  # when a ready tenant began to wait for the others

    def run(self) -> int:
        """Train until stopped (75) or idle for idleSeconds (0); 3 when the base cannot be loaded."""
        started = self.clock()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if not self._load():
            return self._finished(EXIT_FAILED, started)
        idle_since = self.clock()
        while True:
            now = self.clock()
            self._follow(self.tenants.read(now))
            self._collect()
            if self.stop.requested:
                self.trainer._stop(list(self.active.values()), True)
                self.active = {}
                self.preparing = {}
                self._report()
                return self._finished(EXIT_PREEMPTED, started)
            if not self.active:
                if self.preparing:
                    idle_since = now
                elif now - idle_since >= self.config.idle_seconds:
                    return self._finished(EXIT_SUCCEEDED, started)
                self.sleep(min(self.config.poll_seconds, 0.2))
                continue
            before = set(self.active)
            still = self.trainer._step(list(self.active.values()))
            self.steps += 1
            self.active = {run.job.name: run for run in still}
            idle_since = self.clock()
            if set(self.active) != before or idle_since - self._reported >= REPORT_EVERY_SECONDS:
                self._report()

    def _load(self) -> bool:
        """Tokenizer and base, once, before any tenant: the trainer is hot before work arrives."""
        if not self.trainer._load_tokenizer_or_fail([]):
            message = f"no model (config.json) at {self.config.base_model}"
            self.sink(Event("failed", reason="BaseModelNotFound", message=message))
            return False
        self.trainer.model = self.trainer._load_base(self.config.base_model_path)
        return True

    def _follow(self, desired: Mapping[str, AdapterJob]) -> None:
        change = plan_tenancy(desired, self.admitted)
        if change.empty:
            return
        for name in change.leave:
            self._leave(name)
        for job in change.join:
            self._join(job)
        self._report()

    def _join(self, job: AdapterJob) -> None:
        self.admitted[job.name] = job
        self.preparing[job.name] = self.preparer.submit(job)

    def _prepare(self, job: AdapterJob, cancel: threading.Event) -> Prepared | None:
        """On the preparer's thread: the job's stores and data (None: done already, reported again,
        failed, or left meanwhile). Its earlier result goes first, so a report never shows it as
        this run's."""
        self.trainer.results.pop(job.name, None)
        if not self.trainer._open(job):
            return None
        return self.trainer._prepared(job, cancel)

    def _collect(self) -> None:
        """Start the tenants whose preparation finished: weights made (or restored), in the next step.
        With nothing training, wait up to START_TOGETHER_SECONDS for the rest to start them together."""
        finished = [item for item in self.preparing.values() if item.done.is_set()]
        if not finished:
            return
        if not self.active and len(finished) < len(self.preparing):
            now = self.clock()
            self._ready_since = now if self._ready_since is None else self._ready_since
            if now - self._ready_since < START_TOGETHER_SECONDS:
                return
        self._ready_since = None
        for item in finished:
            del self.preparing[item.job.name]
            if item.error is not None:
                raise item.error
            run = self.trainer._started(item.prepared) if item.prepared is not None else None
            if run is not None:
                self.active[item.job.name] = run
        self._report()

    def _leave(self, name: str) -> None:
        del self.admitted[name]
        preparation = self.preparing.pop(name, None)
        if preparation is not None:  # its copy or read stops at the next chunk or record, unheeded
            preparation.cancel.set()
            return
        self.trainer.results.pop(name, None)
        run = self.active.pop(name, None)
        if run is None:
            return
        if run.step > run.checkpointed_step:
            self.trainer._checkpoint(run)
        saved = run.folder / checkpoint.step_name(run.checkpointed_step) if run.checkpointed_step else None
        store = self.trainer.checkpoint_stores[name]
        self.sink(
            Event(
                "left",
                name,
                step=run.step,
                total_steps=run.total_steps,
                uri=store.uri(saved) if saved else None,
                message="no longer listed in the tenants file",
            )
        )

    def _report(self) -> None:
        """Every listed tenant's state: the level the operator reads."""
        states: list[dict[str, object]] = []
        for name in sorted(self.admitted):
            # Which run of the job this is: the operator ignores a state of one it no longer wants.
            checkpoints = self.admitted[name].checkpoint_uri or self.config.checkpoint_uri
            state: dict[str, object] = {"name": name, "checkpointUri": checkpoints}
            if name in self.preparing:  # a result under its name is an earlier run's until then
                states.append({**state, "phase": TENANT_PREPARING})
                continue
            run = self.active.get(name)
            if run is not None:
                running = {"phase": TENANT_RUNNING, "step": run.step, "totalSteps": run.total_steps}
                states.append({**state, **running})
                continue
            result = self.trainer.results.get(name)
            if result is None:
                continue
            state.update(phase=result.phase, step=result.step)
            for key, value in (
                ("totalSteps", result.total_steps), ("uri", result.uri), ("sha256", result.sha256),
                ("reason", result.reason), ("message", result.message), ("checkpoint", result.checkpoint),
                ("loss", result.loss),
            ):  # fmt: skip
                if value is not None:
                    state[key] = value
            states.append(state)
        self.sink(Event("tenants", tenants=states))
        self._reported = self.clock()

    def _finished(self, code: int, started: float) -> int:
        seconds = self.clock() - started
        self.sink(
            Event(
                "finished",
                step=self.steps,
                exit_code=code,
                message=f"{self.steps} combined steps in {seconds:.1f}s",
            )
        )
        return code
