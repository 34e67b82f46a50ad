"""The training loop: several adapters, one frozen base, one combined batch per step.

`Trainer.run()` loads the tokenizer and every adapter's data first (so a
missing dataset fails in seconds, before the base model is read), loads the
base once, restores each adapter from its last checkpoint when there is one,
and then steps all unfinished adapters together: one forward and one backward
pass through the shared base per step, each adapter's AdamW stepping only its
own parameters. An adapter that reaches its last step is published at once
and leaves the batch; the others go on. A stop request (SIGTERM, see main.py)
is honoured between steps: every unfinished adapter checkpoints and the run
ends `Preempted`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from loraplex.api.trainer import EXIT_FAILED, EXIT_PREEMPTED, EXIT_SUCCEEDED
from loraplex.worker.digest import tree_digest
from loraplex.worker.durable import write_atomic
from loraplex.worker.s3 import s3_client_from_env
from loraplex.worker.trainer import checkpoint
from loraplex.worker.trainer.config import AdapterJob, ConfigError, TrainerConfig
from loraplex.worker.trainer.data import (
    BatchStream,
    LoadedDataset,
    SerialTokenizer,
    Tokenizer,
    load_dataset,
)
from loraplex.worker.trainer.failures import PreparationCancelled, Reason, TrainingFailure
from loraplex.worker.trainer.multi_lora import AdapterWeights, MultiLoraModel
from loraplex.worker.trainer.progress import Event, JsonLines, ProgressSink
from loraplex.worker.trainer.publish import PEFT_PREFIX, WEIGHTS_FILE, publish
from loraplex.worker.trainer.remote_data import fetch_dataset, is_remote
from loraplex.worker.trainer.store import Store, open_store

RESULT = "result.json"

Phase = Literal["Succeeded", "Failed", "Preempted"]


class StopFlag:
    """Set from a signal handler; the loop checks it between steps."""

    def __init__(self) -> None:
        self.requested_at: float | None = None

    def request(self) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()

    @property
    def requested(self) -> bool:
        return self.requested_at is not None


@dataclass(frozen=True)
class AdapterResult:
    name: str
    phase: Phase
    step: int = 0
    total_steps: int | None = None
    uri: str | None = None
    sha256: str | None = None
    reason: Reason | None = None
    message: str | None = None
    checkpoint: str | None = None
    loss: float | None = None  # a success's: the mean loss of its last progress window


@dataclass(frozen=True)
class TrainerResult:
    adapters: list[AdapterResult]
    steps: int  # combined steps this process ran
    seconds: float  # wall time of run(), start-up included

    @property
    def exit_code(self) -> int:
        phases = {a.phase for a in self.adapters}
        if "Preempted" in phases:
            return EXIT_PREEMPTED
        return EXIT_FAILED if "Failed" in phases else EXIT_SUCCEEDED

    def by_name(self) -> dict[str, AdapterResult]:
        return {a.name: a for a in self.adapters}

    def to_json(self) -> dict[str, Any]:
        return {
            "exitCode": self.exit_code,
            "adapters": [
                {_camel(k): v for k, v in asdict(a).items() if v is not None} for a in self.adapters
            ],
        }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class Prepared:
    """An adapter whose data is loaded, before the base model is."""

    job: AdapterJob
    data: LoadedDataset
    folder: Path
    fingerprint: str
    total_steps: int
    published: Path | None = None  # initRevision's files, pulled and checked (none with a checkpoint)


@dataclass(eq=False)
class AdapterRun:
    """One adapter in flight."""

    job: AdapterJob
    folder: Path
    fingerprint: str
    total_steps: int
    weights: AdapterWeights
    optimizer: torch.optim.AdamW
    stream: BatchStream
    step: int = 0
    checkpointed_step: int = 0
    loss_sum: float = 0.0
    loss_steps: int = 0
    tokens: int = 0
    last_loss: float | None = None
    reported_loss: float | None = None  # the loss the last progress event carried
    window_start: float = field(default_factory=time.monotonic)


def resolve_device(config: TrainerConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def native_bfloat16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where a bfloat16
    base runs a batch's matrix products faster than float32; without it bfloat16 is emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(config: TrainerConfig, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on GPUs and on CPUs with native bfloat16, else float32 (LoRA weights and
    optimizer state are float32 either way)."""
    if config.dtype == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and native_bfloat16_cpu())
        return torch.bfloat16 if native else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]


def fingerprint(job: AdapterJob, data: LoadedDataset, base_config: bytes) -> str:
    """What a checkpoint must have been made from to be resumed: settings, data, base config."""
    settings = {
        "lora": job.lora.model_dump(mode="json"),
        "training": job.training.model_dump(mode="json"),
        "dataset": job.dataset.model_dump(mode="json"),
        "data": data.sha256,
        "base": hashlib.sha256(base_config).hexdigest(),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class Trainer:
    """Trains the adapters of one TrainerConfig; `run()` does the whole job once."""

    def __init__(self, config: TrainerConfig, sink: ProgressSink | None = None, stop: StopFlag | None = None):
        self.config = config
        self.sink: ProgressSink = sink or JsonLines()
        self.stop = stop or StopFlag()
        self.device = resolve_device(config)
        self.dtype = resolve_dtype(config, self.device)
        self.model: MultiLoraModel | None = None
        self.results: dict[str, AdapterResult] = {}
        self.checkpoint_stores: dict[str, Store] = {}  # adapter name -> its checkpointUri's store
        self.tokenizer: Tokenizer | None = None  # loaded once, with the base's config.json
        self.base_config = b""
        self.outputs: dict[str, Store] = {}  # adapter name -> the store its outputUri names
        self._s3: Any = None  # made on first use by an s3:// store or dataset
        self._s3_lock = threading.Lock()  # a warm trainer opens joining tenants on other threads
        self._scratch_lock = threading.Lock()
        self._scratch: Path | None = None

    def _open_store(self, uri: str, field: str, *scratch: str) -> Store:
        """The store `uri` names; s3:// stores mirror into <scratchDir>/<scratch...> and share one client."""
        local = Path(self.config.scratch_dir, *scratch) if self.config.scratch_dir else None
        return open_store(uri, field, local, self._s3_client)

    def _scratch_root(self) -> Path:
        """`scratchDir`, else a temporary folder made once for this trainer."""
        with self._scratch_lock:
            if self._scratch is None:
                configured = self.config.scratch_dir
                self._scratch = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="loraplex-"))
            return self._scratch

    def _s3_client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                self._s3 = s3_client_from_env()
            return self._s3

    # -- set-up -----------------------------------------------------------------------------

    def _fail(self, name: str, failure: TrainingFailure, step: int = 0, total: int | None = None) -> None:
        self.results[name] = AdapterResult(
            name, "Failed", step=step, total_steps=total, reason=failure.reason, message=failure.message
        )
        self.sink(
            Event(
                "failed", name, step=step, total_steps=total, reason=failure.reason, message=failure.message
            )
        )

    def _already_done(self, job: AdapterJob, folder: Path) -> bool:
        """A previous attempt published this adapter (or failed it for good): report that again."""
        self.checkpoint_stores[job.name].pull(job.name)
        path = folder / RESULT
        if not path.is_file():
            return False
        saved = json.loads(path.read_text())
        result = AdapterResult(**saved)
        output = self.outputs[job.name]
        if result.phase == "Succeeded" and not (result.uri and output.has_folder(result.uri)):
            return False  # the published folder is gone: train again
        self.results[job.name] = result
        if result.phase == "Succeeded":
            self.sink(
                Event(
                    "published",
                    job.name,
                    step=result.step,
                    total_steps=result.total_steps,
                    uri=result.uri,
                    sha256=result.sha256,
                )
            )
        else:
            self.sink(
                Event(
                    "failed",
                    job.name,
                    step=result.step,
                    total_steps=result.total_steps,
                    reason=result.reason,
                    message=result.message,
                )
            )
        return True

    def _load_tokenizer(self, base: Path) -> Tokenizer:
        from transformers import AutoTokenizer

        if not (base / "config.json").is_file():
            raise TrainingFailure("BaseModelNotFound", f"no model (config.json) at {base}")
        tokenizer: Tokenizer = AutoTokenizer.from_pretrained(base)
        return tokenizer

    def _load_base(self, base: Path) -> MultiLoraModel:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=self.dtype)
        kernel = None if self.config.lora_kernel == "auto" else self.config.lora_kernel
        return MultiLoraModel(model.to(self.device), self.device, kernel)

    def _prepare(self) -> list[AdapterRun]:
        """Every adapter of the config ready to step: data first (bad input fails in seconds), then
        the base, once."""
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        pending = [job for job in self.config.adapters if self._open(job)]
        if not pending or not self._load_tokenizer_or_fail(pending):
            return []
        runs = [prepared for job in pending if (prepared := self._prepared(job)) is not None]
        if not runs:
            return []
        self.model = self._load_base(self.config.base_model_path)
        return [run for prepared in runs if (run := self._started(prepared)) is not None]

    def _open(self, job: AdapterJob) -> bool:
        """Open the adapter's stores; False when it is done already (published or failed for good, as
        an earlier attempt recorded) or its stores are unusable (failed now)."""
        try:
            uri = job.checkpoint_uri or self.config.checkpoint_uri
            scratch = ("checkpoints",) if job.checkpoint_uri is None else ("tenants", job.name, "checkpoints")
            self.checkpoint_stores[job.name] = self._open_store(uri, "checkpointUri", *scratch)
            field = f"adapters[{job.name}].outputUri"
            self.outputs[job.name] = self._open_store(job.output_uri, field, "outputs", job.name)
        except ConfigError as error:
            self._fail(job.name, TrainingFailure("ConfigInvalid", str(error)))
            return False
        return not self._already_done(job, self.checkpoint_stores[job.name].root / job.name)

    def _load_tokenizer_or_fail(self, jobs: list[AdapterJob]) -> bool:
        """Load the tokenizer (and the base's config) once; on failure fail every job in `jobs`."""
        if self.tokenizer is not None:
            return True
        base = self.config.base_model_path
        try:
            self.tokenizer = SerialTokenizer(self._load_tokenizer(base))
        except TrainingFailure as failure:
            for job in jobs:
                self._fail(job.name, failure)
            return False
        self.base_config = (base / "config.json").read_bytes()
        return True

    def _prepared(self, job: AdapterJob, cancel: threading.Event | None = None) -> Prepared | None:
        """The adapter with its data loaded; None (and the adapter failed) when the data is unusable,
        or (nothing failed) when `cancel` was set meanwhile."""
        assert self.tokenizer is not None
        # An s3:// or https:// dataset is copied here first, and the copy deleted once read.
        copies = self._scratch_root() / "datasets" / job.name if is_remote(job.dataset) else None
        try:
            dataset = (
                fetch_dataset(job.dataset, copies, self._s3_client, cancel=cancel) if copies else job.dataset
            )
            max_length = job.training.max_sequence_length
            data = load_dataset(dataset, self.tokenizer, max_length, job.dataset_root, cancel)
        except PreparationCancelled:
            return None
        except ConfigError as error:
            self._fail(job.name, TrainingFailure("ConfigInvalid", str(error)))
            return None
        except TrainingFailure as failure:
            self._fail(job.name, failure)
            return None
        finally:
            if copies is not None:  # tokenised into memory: the copy is not read again
                shutil.rmtree(copies, ignore_errors=True)
        if cancel is not None and cancel.is_set():
            return None
        folder = self.checkpoint_stores[job.name].root / job.name
        total_steps = job.total_steps(len(data.examples))
        published = None
        if job.init_revision is not None and checkpoint.latest(folder) is None:
            try:  # here, not when it starts: a warm trainer's other tenants go on stepping meanwhile
                published = self._pull_published(job)
            except TrainingFailure as failure:
                self._fail(job.name, failure, 0, total_steps)
                return None
        return Prepared(job, data, folder, fingerprint(job, data, self.base_config), total_steps, published)

    def _started(self, prepared: Prepared) -> AdapterRun | None:
        assert self.model is not None
        try:
            return self._start(self.model, prepared)
        except TrainingFailure as failure:
            self._fail(prepared.job.name, failure, 0, prepared.total_steps)
            return None

    def _start(self, model: MultiLoraModel, prepared: Prepared) -> AdapterRun:
        """Fresh weights, or the adapter's last checkpoint when there is one."""
        job = prepared.job
        weights = model.new_adapter(job.name, job.lora, job.training.seed)
        optimizer = torch.optim.AdamW(weights.parameters(), lr=job.training.learning_rate, weight_decay=0.0)
        stream = BatchStream(prepared.data.examples, job.training.batch_size, job.training.seed)
        run = AdapterRun(
            job, prepared.folder, prepared.fingerprint, prepared.total_steps, weights, optimizer, stream
        )
        found = checkpoint.latest(run.folder)
        if found is not None:
            saved = checkpoint.load(found, self.device)
            if saved.state.fingerprint != run.fingerprint:
                raise TrainingFailure(
                    "CheckpointMismatch",
                    f"{found} was made with other settings, data or base model; "
                    "give the changed job a new checkpoint folder",
                )
            weights.load_state_dict(saved.weights)
            optimizer.load_state_dict(saved.optimizer)
            weights.generator.set_state(saved.generator)
            run.step = run.checkpointed_step = saved.state.step
            stream.position = saved.state.position
            run.last_loss = saved.state.loss
            message = f"resumed from step {run.step}"
        elif job.init_revision is not None:
            assert prepared.published is not None
            weights.load_state_dict(self._published_weights(prepared.published), "InitRevisionMismatch")
            message = f"started from published revision {job.init_revision[:12]}"
        else:
            message = "started from scratch"
        self.sink(
            Event(
                "started",
                job.name,
                step=run.step,
                total_steps=run.total_steps,
                uri=self.checkpoint_stores[job.name].uri(found) if found else None,
                message=message,
            )
        )
        return run

    def _pull_published(self, job: AdapterJob) -> Path:
        """The folder of the revision `job.init_revision` published into its output store, pulled and
        its files' digest checked."""
        assert job.init_revision is not None
        folder = self.outputs[job.name].pull_folder(job.init_revision)
        if not (folder / WEIGHTS_FILE).is_file() or tree_digest(folder) != job.init_revision:
            raise TrainingFailure(
                "InitRevisionNotFound",
                f"no intact published revision {job.init_revision} under {job.output_uri}; "
                "set spec.initFrom: scratch or republish it",
            )
        return folder

    def _published_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        """A published revision's LoRA matrices under our names (peft's, less the prefix)."""
        from safetensors.torch import load_file

        tensors = load_file(folder / WEIGHTS_FILE, device=str(self.device))
        return {key.removeprefix(PEFT_PREFIX): value.float() for key, value in tensors.items()}

    # -- the loop ---------------------------------------------------------------------------

    def run(self, *, max_steps: int | None = None, checkpoint_on_stop: bool = True) -> TrainerResult:
        """Train until every adapter is done, the stop flag is set, or `max_steps` combined steps ran.

        `max_steps` with `checkpoint_on_stop=False` simulates a hard kill (tests); with it
        True, a preemption that was given its grace period.
        """
        started = time.monotonic()
        active = self._prepare()
        steps = 0
        for run in active:
            run.window_start = time.monotonic()
        while active:
            if self.stop.requested or (max_steps is not None and steps >= max_steps):
                self._stop(active, checkpoint_on_stop)
                active = []
                break
            active = self._step(active)
            steps += 1
        result = TrainerResult(
            [self.results[job.name] for job in self.config.adapters], steps, time.monotonic() - started
        )
        self.sink(
            Event(
                "finished",
                step=steps,
                exit_code=result.exit_code,
                message=f"{steps} combined steps in {result.seconds:.1f}s",
            )
        )
        if self.config.result_path:
            Path(self.config.result_path).write_text(json.dumps(result.to_json()) + "\n")
        return result

    def _step(self, active: list[AdapterRun]) -> list[AdapterRun]:
        """One combined step; returns the adapters still in flight. The adapters go into the batch in
        name order: the stacked kernel's sums depend on where each adapter sits, so the same tenants
        give the same numbers however they were listed or joined (a resumed warm trainer repeats a
        one-shot run)."""
        assert self.model is not None
        active = sorted(active, key=lambda run: run.job.name)
        batches = [run.stream.next_batch() for run in active]
        weights = [run.weights for run in active]
        out = self.model.losses(weights, batches)
        values = torch.stack([loss.detach() for loss in out.losses]).tolist()
        finite = [math.isfinite(v) for v in values]
        kept = [loss for loss, ok in zip(out.losses, finite, strict=True) if ok]
        if kept:
            torch.autograd.backward(torch.stack(kept).sum())
        still: list[AdapterRun] = []
        for run, value, ok, tokens in zip(active, values, finite, out.input_tokens, strict=True):
            if ok and self.config.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(run.weights.parameters(), self.config.max_grad_norm)
                ok = bool(torch.isfinite(norm))
            if not ok:
                run.optimizer.zero_grad(set_to_none=True)
                self._fail(
                    run.job.name,
                    TrainingFailure(
                        "NonFiniteLoss", f"loss {value} at step {run.step + 1}; nothing was published"
                    ),
                    run.step,
                    run.total_steps,
                )
                self._record(run.folder, self.results[run.job.name])
                continue
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.step += 1
            run.loss_sum += value
            run.loss_steps += 1
            run.last_loss = value
            run.tokens += tokens
            if run.step >= run.total_steps:
                self._report(run)
                self._publish(run)
                continue
            if run.step % self.config.progress_every_steps == 0:
                self._report(run)
            if run.step % run.job.checkpoint.interval_steps == 0:
                self._checkpoint(run)
            still.append(run)
        return still

    def _report(self, run: AdapterRun) -> None:
        now = time.monotonic()
        elapsed = max(now - run.window_start, 1e-9)
        loss = run.loss_sum / run.loss_steps if run.loss_steps else run.last_loss
        run.reported_loss = round(loss, 6) if loss is not None else None
        self.sink(
            Event(
                "progress",
                run.job.name,
                step=run.step,
                total_steps=run.total_steps,
                loss=run.reported_loss,
                tokens_per_second=round(run.tokens / elapsed, 1),
            )
        )
        run.loss_sum, run.loss_steps, run.tokens, run.window_start = 0.0, 0, 0, now

    def _checkpoint(self, run: AdapterRun) -> Path:
        state = checkpoint.CheckpointState(
            step=run.step,
            total_steps=run.total_steps,
            position=run.stream.position,
            fingerprint=run.fingerprint,
            loss=run.last_loss,
        )
        before = set(checkpoint.complete(run.folder))
        path = checkpoint.save(
            run.folder,
            state,
            run.weights.state_dict(),
            run.optimizer.state_dict(),
            run.weights.generator.get_state(),
            self.config.keep_checkpoints,
        )
        # The checkpoint before the `latest` that names it; then what pruning removed.
        store = self.checkpoint_stores[run.job.name]
        uri = store.push(path)
        store.push(run.folder / checkpoint.LATEST)
        for pruned in before - set(checkpoint.complete(run.folder)):
            store.remove(pruned)
        run.checkpointed_step = run.step
        self.sink(Event("checkpoint", run.job.name, step=run.step, total_steps=run.total_steps, uri=uri))
        return path

    def _publish(self, run: AdapterRun) -> None:
        output = self.outputs[run.job.name]
        base_model = str(self.config.base_model_path)
        published = publish(output.root, run.weights.state_dict(), run.job.lora, base_model)
        uri = output.push(published.path)
        result = AdapterResult(
            run.job.name,
            "Succeeded",
            step=run.step,
            total_steps=run.total_steps,
            uri=uri,
            sha256=published.sha256,
            loss=run.reported_loss,
        )
        self._record(run.folder, result)
        self.results[run.job.name] = result
        self.sink(
            Event(
                "published",
                run.job.name,
                step=run.step,
                total_steps=run.total_steps,
                uri=uri,
                sha256=published.sha256,
            )
        )

    def _record(self, folder: Path, result: AdapterResult) -> None:
        write_atomic(folder / RESULT, json.dumps(asdict(result), indent=2) + "\n")
        self.checkpoint_stores[result.name].push(folder / RESULT)

    def _stop(self, active: list[AdapterRun], save: bool) -> None:
        for run in active:
            path = None
            if save and run.step > run.checkpointed_step:
                path = self._checkpoint(run)
            elif run.checkpointed_step:
                path = run.folder / checkpoint.step_name(run.checkpointed_step)
            self.results[run.job.name] = AdapterResult(
                run.job.name,
                "Preempted",
                step=run.checkpointed_step if not save else run.step,
                total_steps=run.total_steps,
                checkpoint=self.checkpoint_stores[run.job.name].uri(path) if path else None,
            )
            self.sink(
                Event(
                    "preempted",
                    run.job.name,
                    step=self.results[run.job.name].step,
                    total_steps=run.total_steps,
                    uri=self.checkpoint_stores[run.job.name].uri(path) if path else None,
                )
            )
