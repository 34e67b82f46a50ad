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

# A warm trainer's `tenants` report: the phase of a tenant still in flight (a finished one's is its
# result's: Succeeded, Failed, Preempted). Preparing: its checkpoint and dataset are being read.
TENANT_PREPARING = "Preparing"
TENANT_RUNNING = "Running"

# The adapter store's S3 credentials, as a trainer pod gets them: each key of the BaseModel's store
# Secret that the trainer needs, as a file named after it, in the folder this variable names (a
# Secret volume with `items`, never the whole Secret as environment variables).
STORE_CREDENTIALS_ENV = "LORAPLEX_STORE_CREDENTIALS_DIR"
STORE_CREDENTIAL_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
)
