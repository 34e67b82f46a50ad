"""TrainingJob: a LoRA fine-tuning run in the GPU capacity serving leaves free."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from loraplex.api.common import (
    CONDITIONS_FIELD_EXTRA,
    DEFAULT_MODEL_CPU,
    DEFAULT_MODEL_MEMORY,
    NO_TRAVERSAL,
    AdapterSourceUriPattern,
    ApiModel,
    Condition,
    LabelName,
    Quantity,
    cel,
    validations,
)

TrainingPhase = Literal["Queued", "Running", "Preempted", "Succeeded", "Failed"]

TargetModule = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.]+$")]


def _cron_field(value: str) -> str:
    """One cron field: `*` or a value or a range, each with an optional step, comma-separated."""
    item = rf"(\*|({value})(-({value}))?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def _names(names: list[str]) -> str:
    return "|".join(names + [name.lower() for name in names])


# A 5-field cron expression (minute hour day-of-month month day-of-week) with each field's values in
# range, or an alias. What it admits, cronsim (the operator's evaluator) reads; the few it cannot
# tell (a backwards range, the 30th of February) fail the job at once with `ScheduleInvalid`.
CRON_SCHEDULE = (
    r"^(@(hourly|daily|weekly|monthly)|"
    + r"\s+".join(
        _cron_field(values)
        for values in (
            r"[0-5]?[0-9]",
            r"[01]?[0-9]|2[0-3]",
            r"0?[1-9]|[12][0-9]|3[01]",
            r"0?[1-9]|1[0-2]|" + _names(_MONTHS),
            r"[0-7]|" + _names(_DAYS),
        )
    )
    + r")$"
)


# Folders no dataset may be read from, whatever roots an admin declares: the node's and the pod's own
# system files, credentials (service-account tokens under /var/run/secrets, /run/secrets), home folders.
SYSTEM_PATHS = ("proc", "sys", "dev", "etc", "run", "var/run", "var/lib/kubelet", "root", "boot", "home")

# The rules admission can judge without knowing the admin's roots (operator/training_roots.py
# judges the rest and fails the job with DatasetOutsideRoots): no system folder, and only paths
# that are already normalized (no '//', no '.' segment, no query, fragment or backslash).
DatasetUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=AdapterSourceUriPattern,
        description=(
            "Where the training data is: file:///path, pvc://<claim>/<path>, https://... or s3://...; "
            "it must lie under one of the dataset roots the operator's admin declares "
            "(training.datasetRoots), or the job fails with DatasetOutsideRoots."
        ),
        json_schema_extra=validations(
            NO_TRAVERSAL,
            cel(
                f"!self.matches('^file:///({'|'.join(SYSTEM_PATHS)})(/.*)?$')",
                "must not name a system folder (" + ", ".join("/" + p for p in SYSTEM_PATHS) + ")",
                message_expression=(
                    "'spec.dataset.uri ' + self + ' names a system folder; datasets are read from the "
                    "dataset roots an admin declares'"
                ),
            ),
            cel(
                r"!self.matches('^[a-z0-9]+://.*//') && !self.matches('^[a-z0-9]+://.*/[.](/.*)?$')"
                r" && !self.matches('[?#\\\\]') && !self.lowerAscii().contains('%2f')"
                r" && !self.lowerAscii().contains('%5c')",
                "must be a normalized path: no '//', no '.' segment, no query, fragment, backslash or "
                "encoded slash",
            ),
        ),
    ),
]


class Dataset(ApiModel):
    """Training data: JSON Lines with a text field, or plain text one example per line."""

    uri: DatasetUri
    format: Literal["jsonl", "text"] = Field(
        default="jsonl", description="jsonl: one JSON object per line; text: one example per line."
    )
    text_field: str = Field(
        default="text",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Field of each JSON Lines object that holds the example's text.",
    )


class TrainingOutput(ApiModel):
    """The LoRAAdapter this job creates or updates with a new revision."""

    adapter_name: LabelName
    replicas: int = Field(default=1, ge=0, le=1000, description="replicas of the created LoRAAdapter.")


class LoraHyperparameters(ApiModel):
    """The adapter's shape."""

    rank: int = Field(
        default=8, ge=1, le=512, description="LoRA rank r; at most the base model's maxLoraRank."
    )
    alpha: float = Field(
        default=16.0, gt=0, le=4096, description="LoRA scaling alpha (the update is scaled by alpha/r)."
    )
    dropout: float = Field(default=0.05, ge=0, le=0.9, description="Dropout on the LoRA layers' input.")
    target_modules: list[TargetModule] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        max_length=32,
        description="Names of the base model's modules that get LoRA layers, e.g. q_proj, v_proj.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class TrainingSettings(ApiModel):
    """How long and how fast to train: set exactly one of steps and epochs."""

    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Optimizer learning rate.")
    steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Optimizer steps to train for.")
    epochs: int | None = Field(
        default=None, ge=1, le=1000, description="Passes over the dataset to train for."
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per optimizer step.")
    max_sequence_length: int = Field(
        default=512, ge=16, le=131072, description="Tokens per example; longer examples are truncated."
    )
    seed: int = Field(
        default=0, ge=0, le=2_147_483_647, description="Random seed of initialisation and shuffling."
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.steps) != has(self.epochs)",
                "set exactly one of training.steps and training.epochs",
                reason="FieldValueInvalid",
            ),
        )
    }


class TrainerResources(ApiModel):
    """What the trainer pod requests."""

    gpu: int = Field(default=1, ge=0, le=16, description="GPUs the trainer pod requests (0: train on CPU).")
    cpu: Quantity | None = Field(
        default=None, description=f"CPU the trainer requests (default: {DEFAULT_MODEL_CPU})."
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            f"Memory the trainer requests and is limited to (default: a {DEFAULT_MODEL_MEMORY} request, "
            "no limit)."
        ),
    )


class CheckpointSettings(ApiModel):
    """How often the trainer saves what it needs to resume."""

    interval_steps: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Steps between checkpoints; a resumed run loses at most this many.",
    )


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob."""

    base_model: LabelName = Field(description="Name of the BaseModel (same namespace) to fine-tune.")
    dataset: Dataset
    output: TrainingOutput
    lora: LoraHyperparameters = Field(default_factory=LoraHyperparameters)
    training: TrainingSettings
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Higher is admitted first; ties go by age."
    )
    preemptible: bool = Field(
        default=True, description="Serving may take the GPUs back; the job resumes later."
    )
    resources: TrainerResources = Field(default_factory=TrainerResources)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    schedule: str | None = Field(
        default=None,
        max_length=128,
        pattern=CRON_SCHEDULE,
        description=(
            "Cron schedule to retrain from fresh data, in UTC: 5 fields (minute 0-59, hour 0-23, "
            "day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; each '*', a value "
            "or a range, with an optional /step, comma-separated) or @hourly, @daily, @weekly, @monthly."
        ),
    )
    queue_name: LabelName | None = Field(
        default=None,
        description="Kueue LocalQueue that admits this job instead of the operator.",
    )
    sharing: Literal["shared", "dedicated"] = Field(
        default="shared",
        description=(
            "shared: the job is a tenant of a warm trainer that keeps the base model loaded and trains "
            "several jobs' adapters in one combined batch (docs/training.md); dedicated: a trainer pod "
            "of its own for each attempt. A job with queueName always runs dedicated."
        ),
    )
    init_from: Literal["scratch", "published"] = Field(
        default="scratch",
        description=(
            "Where a run's weights start: scratch (fresh LoRA weights) or published (the output "
            "LoRAAdapter's current revision in the training store, when there is one; continual "
            "learning). A resumed attempt starts from its checkpoint either way."
        ),
    )


class TrainingProgress(ApiModel):
    """Where the run is."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps the run takes in all.")
    loss: float | None = Field(default=None, description="Training loss at the last reported step.")
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput of this job."
    )


class TrainingPlacement(ApiModel):
    """Where the trainer runs."""

    node: str | None = Field(default=None, max_length=253, description="Node the trainer pod runs on.")
    pod: str | None = Field(default=None, max_length=253, description="Name of the trainer pod.")
    trainer: str | None = Field(
        default=None,
        max_length=253,
        description="The warm trainer (its Job) the job is a tenant of; none for a dedicated trainer.",
    )


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the operator last acted on; Ready speaks for that generation.",
    )
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_FIELD_EXTRA)
    phase: TrainingPhase | None = Field(
        default=None, description="Queued, Running, Preempted, Succeeded or Failed, for humans."
    )
    progress: TrainingProgress | None = None
    placement: TrainingPlacement | None = None
    checkpoint_uri: str | None = Field(
        default=None, max_length=2048, description="Where the last checkpoint is; a resumed run starts there."
    )
    adapter_revision: str | None = Field(
        default=None, max_length=64, description="sha256 of the adapter revision the job produced."
    )
    init_revision: str | None = Field(
        default=None,
        max_length=64,
        description="sha256 of the published revision the current run started from (initFrom: published).",
    )
    attempts: int | None = Field(default=None, ge=0, description="Times the trainer started this run.")
    start_time: datetime | None = Field(default=None, description="When the current run started.")
    completion_time: datetime | None = Field(default=None, description="When the run succeeded or failed.")
    run: int | None = Field(
        default=None, ge=0, description="Runs spec.schedule started so far (0: none; the job's first run)."
    )
    next_run_time: datetime | None = Field(
        default=None, description="When spec.schedule runs the job again (set once the current run succeeds)."
    )
