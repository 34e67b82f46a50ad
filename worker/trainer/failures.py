"""How a training run ends: failure reasons a TrainingJob's status can carry, and exit codes.

A failure is permanent for that adapter: running the same config again fails
the same way, so the operator marks the job `Failed` with this reason and does
not restart it. Nothing is published for a failed adapter. Preemption is not a
failure: the process exits `EXIT_PREEMPTED` and the same config resumes it.
"""

from __future__ import annotations

from typing import Literal

# Exit codes of a trainer process (docs/trainer.md lists them).
EXIT_SUCCEEDED = 0
EXIT_CRASHED = 1  # an unexpected error: retry with back-off; the last checkpoints stand
EXIT_CONFIG = 2  # the config file is missing or invalid: nothing ran
EXIT_FAILED = 3  # at least one adapter failed for good (its `failed` event names the reason)
EXIT_PREEMPTED = 75  # stopped on request after checkpointing (EX_TEMPFAIL): run the same config to resume

Reason = Literal[
    "DatasetNotFound",
    "DatasetInvalid",
    "BaseModelNotFound",
    "NonFiniteLoss",
    "CheckpointMismatch",
    "ConfigInvalid",
]


class TrainingFailure(Exception):
    """A permanent failure of one adapter (or of every adapter, for base-model trouble)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason
        self.message = message
