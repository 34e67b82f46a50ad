"""How a training run ends: failure reasons a TrainingJob's status can carry (exit codes: api.trainer).

A failure is permanent for that adapter: running the same config again fails
the same way, so the operator marks the job `Failed` with this reason and does
not restart it. Nothing is published for a failed adapter. Preemption is not a
failure: the process exits `EXIT_PREEMPTED` and the same config resumes it.
"""

from __future__ import annotations

from typing import Literal

Reason = Literal[
    "DatasetNotFound",
    "DatasetInvalid",
    "DatasetOutsideRoots",
    "BaseModelNotFound",
    "NonFiniteLoss",
    "CheckpointMismatch",
    "InitRevisionNotFound",
    "InitRevisionMismatch",
    "ConfigInvalid",
]


class TrainingFailure(Exception):
    """A permanent failure of one adapter (or of every adapter, for base-model trouble)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason
        self.message = message


class PreparationCancelled(Exception):
    """A warm tenant left while its data was being copied or read: the work stops, nothing failed."""
