"""The trainer's settings: one typed object, read once at start.

A trainer process fine-tunes one or several adapters of one base model. Each
adapter is an `AdapterJob`, whose `dataset`, `lora`, `training` and
`checkpoint` fields are the TrainingJob spec's own models (camelCase on the
wire), so an operator builds a trainer config by copying those fields of each
admitted TrainingJob verbatim and adding where the base model, checkpoints and
outputs live. Files are YAML or JSON; `TrainerConfig.load` reads either.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import unquote, urlparse

import yaml
from pydantic import Field, model_validator

from loraplex.api.common import ApiModel, LabelName
from loraplex.api.trainingjob import CheckpointSettings, Dataset, LoraHyperparameters, TrainingSettings

M = TypeVar("M", bound=ApiModel)
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


class ConfigError(ValueError):
    """The trainer's config is unusable; the message names the field."""


def local_path(uri: str, field: str) -> Path:
    """The local path of a `file:///...` URI (or of a plain path)."""
    if "://" not in uri:
        return Path(uri)
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ConfigError(
            f"{field}: {uri!r} is not a local file:// URI (mount pvc:// volumes into the pod and pass "
            "file:// paths; checkpoints and outputs may also be s3://<bucket>/<prefix>)"
        )
    return Path(unquote(parsed.path))


class AdapterJob(ApiModel):
    """One adapter to train: its data, its shape, how long, where its results go."""

    name: LabelName = Field(description="Unique within the trainer; names its checkpoint folder.")
    dataset: Dataset
    dataset_root: str | None = Field(
        default=None,
        description="Local folder the dataset must stay under once symlinks are resolved "
        "(the operator sets the dataset root that admitted it); none: no check.",
    )
    lora: LoraHyperparameters = Field(default_factory=LoraHyperparameters)
    training: TrainingSettings
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    output_uri: str = Field(
        min_length=1,
        max_length=2048,
        description="file:// folder or s3:// prefix; the adapter is published into <outputUri>/<sha256>/.",
    )
    checkpoint_uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="This adapter's own checkpointUri (it checkpoints under <checkpointUri>/<name>/); "
        "default: the trainer's. A warm trainer's tenants each have their own.",
    )
    init_revision: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="A revision published earlier into <outputUri>/<initRevision>/ to start from instead of "
        "fresh weights (a checkpoint, when there is one, still wins); its rank and modules must match.",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> AdapterJob:
        if (self.training.steps is None) == (self.training.epochs is None):
            raise ValueError(f"adapter {self.name}: set exactly one of training.steps and training.epochs")
        return self

    def total_steps(self, examples: int) -> int:
        """Optimizer steps for this adapter, given how many examples its dataset has."""
        if self.training.steps is not None:
            return self.training.steps
        assert self.training.epochs is not None
        return max(1, math.ceil(self.training.epochs * examples / self.training.batch_size))


def unique_names(jobs: list[AdapterJob], field: str) -> None:
    names = [job.name for job in jobs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{field}: names must be unique, repeated: {', '.join(duplicates)}")


class Tenants(ApiModel):
    """A warm trainer's desired tenants: the file (a ConfigMap's key) the operator writes, level-based."""

    tenants: list[AdapterJob] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _unique_names(self) -> Tenants:
        unique_names(self.tenants, "tenants")
        return self

    @classmethod
    def load(cls, path: Path) -> Tenants:
        """Read the file; ConfigError naming the field when it is unreadable or invalid."""
        return _validated(cls, _read_yaml_or_json(path, "tenants file"), "tenants file")


class TrainerConfig(ApiModel):
    """Everything one trainer process needs."""

    base_model: str = Field(
        min_length=1,
        description="Local folder (or file:// URI) of the base model: weights, config, tokenizer.",
    )
    checkpoint_uri: str = Field(
        min_length=1,
        description="file:// folder or s3:// prefix; each adapter checkpoints under <checkpointUri>/<name>/.",
    )
    scratch_dir: str | None = Field(
        default=None, description="Local folder mirroring s3:// stores (default: a temporary folder)."
    )
    adapters: list[AdapterJob] = Field(
        default_factory=list,
        max_length=256,
        description="The adapters to train, then exit; empty for a warm trainer (tenantsFile).",
    )
    tenants_file: str | None = Field(
        default=None,
        min_length=1,
        description="Warm trainer: a YAML/JSON file (`tenants: [adapter, ...]`) the trainer reads every "
        "pollSeconds and follows, adapters joining and leaving between steps (warm.py).",
    )
    idle_seconds: float = Field(
        default=300.0, ge=0, description="Warm trainer: exit 0 after this long with no tenant in flight."
    )
    poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Warm trainer: the least time between two reads of tenantsFile."
    )
    device: Device = "auto"
    dtype: DType = Field(
        default="auto",
        description="The frozen base's dtype; auto: bfloat16 on GPU and on CPUs with native bfloat16 "
        "(AVX512-BF16, AMX), else float32.",
    )
    lora_kernel: Literal["auto", "stacked", "segments"] = Field(
        default="auto", description="How the LoRA products run (multi_lora.py); auto: stacked on GPU."
    )
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch CPU threads (default: torch's)."
    )
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="Per-adapter gradient clipping.")
    keep_checkpoints: int = Field(default=2, ge=1, le=100, description="Checkpoints kept per adapter.")
    progress_every_steps: int = Field(default=10, ge=1, description="Emit a progress event every N steps.")
    grace_period_seconds: float = Field(
        default=25.0, gt=0, description="After SIGTERM, the time the final checkpoint must fit in."
    )
    result_path: str | None = Field(
        default=None,
        description="Also write the final summary (JSON) here, e.g. /dev/termination-log for the operator.",
    )

    @model_validator(mode="after")
    def _adapters_or_tenants(self) -> TrainerConfig:
        unique_names(self.adapters, "adapters")
        if not self.adapters and self.tenants_file is None:
            raise ValueError("adapters: list at least one adapter, or set tenantsFile for a warm trainer")
        if self.adapters and self.tenants_file is not None:
            raise ValueError("adapters: a warm trainer (tenantsFile) takes its adapters from that file only")
        return self

    @property
    def base_model_path(self) -> Path:
        return local_path(self.base_model, "baseModel")

    @property
    def checkpoint_root(self) -> Path:
        """The checkpoint folder of a file:// checkpointUri."""
        return local_path(self.checkpoint_uri, "checkpointUri")

    @classmethod
    def load(cls, path: Path) -> TrainerConfig:
        """Read a YAML or JSON config file; a bad file raises ConfigError naming the field."""
        return cls.parse(_read_yaml_or_json(path, "config"))

    @classmethod
    def parse(cls, data: object) -> TrainerConfig:
        return _validated(cls, data, "trainer config")


def _read_yaml_or_json(path: Path, what: str) -> object:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from error
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{what} {path} is not valid YAML/JSON: {error}") from error


def _validated(model: type[M], data: object, what: str) -> M:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '<root>'}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"invalid {what}: {problems}") from error
