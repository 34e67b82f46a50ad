"""A warm trainer: tenants join and leave a running trainer between steps; the base is loaded once."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex.e2e.waiting import wait_until
from loraplex.worker.trainer import data, training
from loraplex.worker.trainer import warm as warm_module
from loraplex.worker.trainer.config import AdapterJob, TrainerConfig
from loraplex.worker.trainer.progress import Event, Recorder
from loraplex.worker.trainer.store import LocalStore
from loraplex.worker.trainer.training import StopFlag, Trainer
from loraplex.worker.trainer.warm import WarmTrainer, plan_tenancy
from tests.trainer.conftest import adapter_job


class Tenancy:
    """A tenants file, a warm trainer on it in a thread, and the events it printed."""

    def __init__(self, tmp_path: Path, make_config: Callable[..., TrainerConfig], **extra: Any) -> None:
        self.tmp_path = tmp_path
        self.file = tmp_path / "tenants.yaml"
        self.write()
        self.events = Recorder()
        self.stop = StopFlag()
        config = make_config(
            tenantsFile=str(self.file), idleSeconds=1.0, pollSeconds=0.05, progressEverySteps=1, **extra
        )
        self.trainer = WarmTrainer(config, self._sink, self.stop)
        self.hooks: list[Callable[[Event], None]] = []
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sink(self, event: Event) -> None:
        self.events(event)
        for hook in self.hooks:
            hook(event)

    def _run(self) -> None:
        self.code = self.trainer.run()

    def write(self, *jobs: dict[str, Any]) -> None:
        tenants = [{"checkpointUri": (self.tmp_path / "ck" / job["name"]).as_uri(), **job} for job in jobs]
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"tenants": tenants}))
        tmp.replace(self.file)  # atomic, as the kubelet swaps a ConfigMap volume's files

    def step_of(self, name: str) -> int:
        return max((e.step or 0 for e in self.events.of("progress", name)), default=0)

    def exited(self, timeout: float = 120) -> int:
        self.thread.join(timeout)
        assert self.code is not None, "the warm trainer did not exit"
        return self.code


def training_alone(t: Tenancy, job: dict[str, Any], steps: int) -> Tenancy:
    """`t` started with `job` as its one tenant, once the job has trained `steps` steps."""
    t.write(job)
    t.thread.start()
    wait_until(lambda: t.step_of(job["name"]) >= steps, 120, f"{job['name']} training")
    return t


@pytest.fixture
def warm(tmp_path: Path, make_config: Callable[..., TrainerConfig]) -> Iterator[Callable[..., Tenancy]]:
    made: list[Tenancy] = []

    def make(**extra: Any) -> Tenancy:
        tenancy = Tenancy(tmp_path, make_config, **extra)
        made.append(tenancy)
        return tenancy

    yield make
    for tenancy in made:
        tenancy.stop.request()
        tenancy.thread.join(60)


def test_tenants_join_and_leave_a_running_trainer_which_loads_the_base_once(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[Path] = []
    load_base = Trainer._load_base

    def counting(self: Trainer, base: Path) -> Any:
        loads.append(base)
        return load_base(self, base)

    monkeypatch.setattr(Trainer, "_load_base", counting)
    out = tmp_path / "out"
    sql = adapter_job("sql", dataset("sql"), out, steps=400, interval=1000)
    greet = adapter_job("greet", dataset("greet"), out, steps=6, batchSize=3)
    t = training_alone(warm(), sql, steps=3)

    t.write(sql, greet)  # greet joins the running trainer
    wait_until(lambda: t.events.of("published", "greet"), 120, "greet published")
    at_join = next(e.step for e in t.events.of("started", "greet"))
    assert at_join == 0
    assert t.step_of("sql") > 3  # sql went on training beside greet, without a restart
    assert [e.message for e in t.events.of("started", "sql")] == ["started from scratch"]

    t.write(greet)  # sql leaves at once, with a checkpoint of where it was
    (left,) = wait_until(lambda: t.events.of("left", "sql"), 60, "sql left")
    assert left.step is not None
    assert left.uri is not None
    assert left.uri.endswith(f"step-{left.step:09d}")
    assert not t.events.of("published", "sql")
    assert t.exited() == 0  # idle: nothing in flight for idleSeconds
    assert len(loads) == 1
    reports = t.events.of("tenants")
    assert reports[-1].tenants == [
        {
            "name": "greet",
            "checkpointUri": (tmp_path / "ck" / "greet").as_uri(),
            "phase": "Succeeded",
            "step": 6,
            "totalSteps": 6,
            "uri": t.events.of("published", "greet")[0].uri,
            "sha256": t.events.of("published", "greet")[0].sha256,
            "loss": t.events.of("progress", "greet")[-1].loss,
        }
    ]


def test_a_joining_tenants_data_is_read_while_the_others_go_on_training(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow dataset (a large remote one being copied and tokenised) holds up only its own tenant:
    it is reported as Preparing meanwhile, and one that leaves before it is ready never starts."""
    reading = {"greet": threading.Event(), "slow": threading.Event()}
    read = threading.Event()  # the slow one's reading ended (read, or stopped as its tenant left)
    release = threading.Event()
    load = training.load_dataset

    def slow_for_some(spec: Any, *args: Any, **kwargs: Any) -> Any:
        for name, entered in reading.items():
            if f"/{name}-" in spec.uri:
                entered.set()
                assert release.wait(120)
        try:
            return load(spec, *args, **kwargs)
        finally:
            if "/slow-" in spec.uri:
                read.set()

    monkeypatch.setattr(training, "load_dataset", slow_for_some)
    out = tmp_path / "out"
    sql = adapter_job("sql", dataset("sql"), out, steps=100_000, interval=100_000)
    greet = adapter_job("greet", dataset("greet"), out, steps=6, batchSize=3)
    t = training_alone(warm(), sql, steps=2)

    t.write(sql, greet)
    wait_until(reading["greet"].is_set, 30, "greet's data being read")
    steps = t.step_of("sql")
    wait_until(lambda: t.step_of("sql") >= steps + 3, 60, "sql training while greet's data is read")
    last = t.events.of("tenants")[-1].tenants
    assert last is not None
    assert [(s["name"], s["phase"]) for s in last] == [("greet", "Preparing"), ("sql", "Running")]
    assert not t.events.of("started", "greet")

    release.set()
    wait_until(lambda: t.events.of("published", "greet"), 120, "greet published")

    # A tenant that leaves while its data is read is never started, nor reported.
    release.clear()
    gone = adapter_job("gone", dataset("slow"), out, steps=6)
    t.write(sql, greet, gone)
    wait_until(reading["slow"].is_set, 30, "gone's data being read")
    t.write(sql, greet)

    def listed() -> list[object]:
        return [state["name"] for state in t.events.of("tenants")[-1].tenants or []]

    wait_until(lambda: listed() == ["greet", "sql"], 30, "gone left")
    release.set()
    wait_until(read.is_set, 30, "gone's data reading ended")
    steps = t.step_of("sql")
    wait_until(lambda: t.step_of("sql") >= steps + 3, 60, "sql training on")
    assert not t.events.of("started", "gone")
    assert listed() == ["greet", "sql"]


def test_a_joining_tenants_long_copy_holds_up_no_tenant_that_joins_after_it(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Joining tenants are opened side by side: one whose remote dataset takes long to copy does not
    keep a later joiner from training."""
    copying, release = threading.Event(), threading.Event()

    def slow_copy(spec: Any, *_args: Any, **_kwargs: Any) -> Any:
        copying.set()
        assert release.wait(120)
        return spec  # the "copy" is the local file itself

    monkeypatch.setattr(training, "is_remote", lambda spec: "/big-" in spec.uri)
    monkeypatch.setattr(training, "fetch_dataset", slow_copy)
    out = tmp_path / "out"
    sql = adapter_job("sql", dataset("sql"), out, steps=100_000, interval=100_000)
    big = adapter_job("big", dataset("big"), out, steps=4)
    t = training_alone(warm(), sql, steps=2)
    t.write(sql, big)
    wait_until(copying.is_set, 30, "big's dataset being copied")
    t.write(sql, big, adapter_job("small", dataset("greet"), out, steps=4, batchSize=3))
    wait_until(lambda: t.events.of("published", "small"), 120, "small trained while big is copied")
    assert not t.events.of("started", "big")
    release.set()
    wait_until(lambda: t.events.of("published", "big"), 120, "big trained once copied")


def test_a_tenant_that_leaves_while_its_data_is_read_stops_the_read_and_holds_up_no_joiner(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dataset that would take for ever to read (here: endless) stops being read once its tenant
    leaves, so the next tenant to join is opened and trains."""
    reading, stopped = threading.Event(), threading.Event()
    records = data._records

    def endless_for_slow(path: Path, spec: Any) -> Iterator[Any]:
        if "/slow-" not in str(path):
            yield from records(path, spec)
            return
        reading.set()
        try:
            for record in itertools.cycle(list(records(path, spec))):
                time.sleep(0.001)
                yield record
        finally:
            stopped.set()  # the reader let go of the file

    monkeypatch.setattr(data, "_records", endless_for_slow)
    out = tmp_path / "out"
    sql = adapter_job("sql", dataset("sql"), out, steps=100_000, interval=100_000)
    t = training_alone(warm(), sql, steps=2)
    t.write(sql, adapter_job("gone", dataset("slow"), out, steps=6))
    wait_until(reading.is_set, 30, "gone's data being read")
    t.write(sql, adapter_job("next", dataset("greet"), out, steps=4, batchSize=3))
    wait_until(stopped.is_set, 30, "gone's read stopped")
    wait_until(lambda: t.events.of("published", "next"), 120, "next trained and published")
    assert not t.events.of("started", "gone")
    assert not t.events.of("failed", "gone")


@pytest.mark.parametrize("sql_ready_within_the_wait", [True, False])
def test_tenants_listed_together_start_together_unless_one_takes_long(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sql_ready_within_the_wait: bool,
) -> None:
    monkeypatch.setattr(warm_module, "START_TOGETHER_SECONDS", 3.0)
    release = threading.Event()
    load = training.load_dataset

    def slow_sql(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if "/sql-" in spec.uri:  # read after greet's (tenants join in name order)
            release.wait(1.0 if sql_ready_within_the_wait else 120)
        return load(spec, *args, **kwargs)

    monkeypatch.setattr(training, "load_dataset", slow_sql)
    out = tmp_path / "out"
    t = warm()
    t.write(
        adapter_job("sql", dataset("sql"), out, steps=100_000, interval=100_000),
        adapter_job("greet", dataset("greet"), out, steps=100_000, interval=100_000),
    )
    t.thread.start()
    if sql_ready_within_the_wait:  # greet, ready first, waited: both in the first combined step
        wait_until(lambda: t.events.of("started", "sql"), 60, "sql started")
        first = [e.adapter for e in t.events.events if e.event in ("started", "progress")][:2]
        assert first == ["greet", "sql"]
    else:  # past START_TOGETHER_SECONDS greet trains alone; sql joins once its data is read
        wait_until(lambda: t.step_of("greet") >= 2, 60, "greet training alone")
        assert not t.events.of("started", "sql")
        release.set()
        wait_until(lambda: t.events.of("started", "sql"), 60, "sql started")


# Both LoRA kernels: the stacked one (GPUs' default) sums over the adapters where they sit in the
# batch, so it repeats a run only if the batch order does not depend on how tenants were listed.
@pytest.mark.parametrize("kernel", ["segments", "stacked"])
def test_a_stop_checkpoints_every_tenant_and_a_new_trainer_resumes_them_exactly(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    make_config: Callable[..., TrainerConfig],
    kernel: str,
) -> None:
    out = tmp_path / "out"
    jobs = (
        adapter_job("sql", dataset("sql"), out, steps=10, interval=4, lora={"dropout": 0.1}),
        adapter_job("greet", dataset("greet"), out, steps=8, batchSize=3, interval=3, lora={"rank": 4}),
    )
    first = warm(loraKernel=kernel)
    first.write(*jobs)
    first.hooks.append(
        lambda e: first.stop.request() if e.event == "progress" and (e.step or 0) >= 5 else None
    )
    first.thread.start()
    assert first.exited() == 75
    preempted = {e.adapter: e.step for e in first.events.of("preempted")}
    assert preempted == {"sql": 5, "greet": 5}  # listed together, they started together

    second = warm(loraKernel=kernel)
    second.write(*jobs)
    second.thread.start()
    assert second.exited() == 0
    assert {e.adapter: e.step for e in second.events.of("started")} == {"sql": 5, "greet": 5}
    resumed = {e.adapter: e.sha256 for e in second.events.of("published")}

    # The same adapters as one uninterrupted one-shot run of both (same batches, step for step).
    reference = [{**job, "outputUri": (tmp_path / "ref" / str(job["name"])).as_uri()} for job in jobs]
    config = make_config(*reference, checkpointUri=(tmp_path / "ref-ck").as_uri(), loraKernel=kernel)
    result = Trainer(config, Recorder()).run()
    assert resumed == {a.name: a.sha256 for a in result.adapters}


def test_the_next_run_of_a_job_trains_again_in_the_same_trainer_from_the_revision_the_last_published(
    warm: Callable[..., Tenancy], dataset: Callable[..., Path], tmp_path: Path
) -> None:
    first_run = adapter_job("sql", dataset("sql"), tmp_path / "out", steps=4)
    t = warm()
    t.write({**first_run, "checkpointUri": (tmp_path / "ck" / "r0").as_uri()})
    t.thread.start()
    (published,) = wait_until(lambda: t.events.of("published", "sql"), 120, "run 0 published")
    # The scheduled rerun: the same name, its own checkpoint folder, from run 0's revision.
    second_run = adapter_job("sql", dataset("sql", seed=1), tmp_path / "out", steps=4)
    t.write(
        {**second_run, "checkpointUri": (tmp_path / "ck" / "r1").as_uri(), "initRevision": published.sha256}
    )
    wait_until(lambda: len(t.events.of("published", "sql")) == 2, 120, "run 1 published")
    started = [e.message for e in t.events.of("started", "sql")]
    assert started == ["started from scratch", f"started from published revision {published.sha256[:12]}"]
    assert t.events.of("published", "sql")[1].sha256 != published.sha256
    last = t.events.of("tenants")[-1].tenants
    assert last is not None
    assert [(s["checkpointUri"], s["phase"]) for s in last] == [
        ((tmp_path / "ck" / "r1").as_uri(), "Succeeded")
    ]
    # Its final loss, as its last progress event said it (the operator may not have read that one).
    assert last[0]["loss"] == t.events.of("progress", "sql")[-1].loss


def test_a_joining_tenants_published_revision_is_pulled_while_the_others_go_on_training(
    warm: Callable[..., Tenancy],
    dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The revision a rerun starts from (an adapter's weights, from S3 in production) is brought
    down with the tenant's data, off the training thread: the tenant is Preparing meanwhile."""
    out = tmp_path / "out"
    busy = adapter_job("greet", dataset("greet"), out, steps=100_000, interval=100_000)
    first_run = {
        **adapter_job("sql", dataset("sql"), out, steps=2),
        "checkpointUri": (tmp_path / "r0").as_uri(),
    }
    t = warm()
    t.write(busy, first_run)
    t.thread.start()
    (published,) = wait_until(lambda: t.events.of("published", "sql"), 120, "run 0 published")

    pulling, release = threading.Event(), threading.Event()
    pull = LocalStore.pull_folder

    def slow_pull(self: LocalStore, relative: str) -> Path:
        pulling.set()
        assert release.wait(120)
        return pull(self, relative)

    monkeypatch.setattr(LocalStore, "pull_folder", slow_pull)
    second_run = adapter_job("sql", dataset("sql", seed=1), out, steps=2)
    rerun = {**second_run, "checkpointUri": (tmp_path / "r1").as_uri(), "initRevision": published.sha256}
    t.write(busy, rerun)
    wait_until(pulling.is_set, 30, "run 0's revision being pulled")
    steps = t.step_of("greet")
    wait_until(lambda: t.step_of("greet") >= steps + 3, 60, "greet training while it is pulled")
    last = t.events.of("tenants")[-1].tenants
    assert last is not None
    assert [(s["name"], s["phase"]) for s in last] == [("greet", "Running"), ("sql", "Preparing")]

    release.set()
    wait_until(lambda: len(t.events.of("published", "sql")) == 2, 120, "run 1 published")
    started = t.events.of("started", "sql")[-1].message
    assert started == f"started from published revision {published.sha256[:12]}"


def test_an_invalid_tenants_file_keeps_the_last_tenants_and_says_so_once(
    warm: Callable[..., Tenancy], dataset: Callable[..., Path], tmp_path: Path
) -> None:
    sql = adapter_job("sql", dataset("sql"), tmp_path / "out", steps=300, interval=1000)
    t = training_alone(warm(), sql, steps=2)
    t.file.write_text("tenants: [{name: broken}]\n")
    wait_until(lambda: [e for e in t.events.of("tenants") if e.reason == "ConfigInvalid"], 30, "said")
    steps = t.step_of("sql")
    wait_until(lambda: t.step_of("sql") > steps + 2, 60, "sql still training")
    assert len([e for e in t.events.of("tenants") if e.reason == "ConfigInvalid"]) == 1
    assert not t.events.of("left")


def _job(name: str, steps: int) -> AdapterJob:
    return AdapterJob.model_validate(
        {
            "name": name,
            "dataset": {"uri": "file:///d"},
            "training": {"steps": steps},
            "outputUri": "file:///o",
        }
    )


def test_the_preparer_opens_tenants_side_by_side_but_one_name_after_another() -> None:
    """A rejoin (same name, other settings) is opened after the run it replaces: they share stores."""
    release = {"x": threading.Event(), "y": threading.Event(), "x2": threading.Event()}
    entered: list[str] = []

    def prepare(job: AdapterJob, _cancel: threading.Event) -> None:
        label = f"{job.name}{job.training.steps}" if job.training.steps == 2 else job.name
        entered.append(label)
        assert release[label].wait(30)

    preparer = warm_module.Preparer(prepare)
    first, other, rejoin = (
        preparer.submit(_job("x", 1)),
        preparer.submit(_job("y", 1)),
        preparer.submit(_job("x", 2)),
    )
    wait_until(lambda: sorted(entered) == ["x", "y"], 10, "x and y opened side by side")
    time.sleep(0.2)
    assert "x2" not in entered  # x's rejoin waits for x
    release["x"].set()
    wait_until(lambda: "x2" in entered, 10, "x's rejoin opened once x is done")
    assert first.done.is_set()
    assert not other.done.is_set()
    release["y"].set()
    release["x2"].set()
    assert other.done.wait(10)
    assert rejoin.done.wait(10)


def test_plan_tenancy_joins_new_leaves_gone_and_rejoins_changed_tenants() -> None:
    a, b, b2, c = _job("a", 1), _job("b", 1), _job("b", 2), _job("c", 1)
    change = plan_tenancy({"a": a, "b": b2, "c": c}, {"a": a, "b": b, "d": _job("d", 1)})
    assert [job.name for job in change.join] == ["b", "c"]
    assert change.join[0] == b2
    assert change.leave == ["b", "d"]
    assert plan_tenancy({"a": a}, {"a": a}).empty


def test_loraplex_trainer_with_a_tenants_file_runs_warm_and_exits_when_idle(
    tmp_path: Path, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    tenants = tmp_path / "tenants.yaml"
    job = adapter_job("sql", dataset("sql"), tmp_path / "out", steps=4)
    tenants.write_text(yaml.safe_dump({"tenants": [job]}))
    config = make_config(tenantsFile=str(tenants), idleSeconds=1, threads=1)
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    done = subprocess.run(
        [sys.executable, "-m", "loraplex.cli", "trainer", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stderr[-2000:]
    assert [e["event"] for e in events if e.get("adapter") == "sql"][-1] == "published"
    assert events[-1]["event"] == "finished"
    last = [e for e in events if e["event"] == "tenants"][-1]
    assert [(t["name"], t["phase"]) for t in last["tenants"]] == [("sql", "Succeeded")]


def test_a_config_is_either_one_shot_adapters_or_a_warm_tenants_file(tmp_path: Path) -> None:
    from loraplex.worker.trainer.config import ConfigError

    base = {"baseModel": "/m", "checkpointUri": "file:///c"}
    job = _job("a", 1).model_dump(by_alias=True, exclude_none=True)
    with pytest.raises(ConfigError, match="tenantsFile"):
        TrainerConfig.parse(base)
    with pytest.raises(ConfigError, match="takes its adapters from that file only"):
        TrainerConfig.parse({**base, "adapters": [job], "tenantsFile": "/t.yaml"})
    assert TrainerConfig.parse({**base, "tenantsFile": "/t.yaml"}).idle_seconds == 300
