"""The trainer process's exit codes, as the trainer exits with them and the operator reads them.

A failure is permanent for that adapter: running the same config again fails
the same way, so the operator marks the job `Failed` and does not restart it.
Preemption is not a failure: the process exits `EXIT_PREEMPTED` and the same
config resumes it. docs/trainer.md lists them.
"""

from __future__ import annotations

EXIT_SUCCEEDED = 0
EXIT_CRASHED = 1  # an unexpected error: retry with back-off; the last checkpoints stand
EXIT_CONFIG = 2  # the config file is missing or invalid: nothing ran
EXIT_FAILED = 3  # at least one adapter failed for good (its `failed` event names the reason)
EXIT_PREEMPTED = 75  # stopped on request after checkpointing (EX_TEMPFAIL): run the same config to resume
