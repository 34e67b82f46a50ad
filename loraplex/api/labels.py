"""The labels and annotations loraplex puts on what it creates, and selects by.

The operator writes them; the router, the agent and the local fleet select by
them. Defined here once so a writer and a reader cannot spell one differently.
"""

from __future__ import annotations

MANAGED_BY = {"app.kubernetes.io/managed-by": "loraplex"}
PART_OF = {"app.kubernetes.io/part-of": "loraplex"}
COMPONENT_LABEL = "app.kubernetes.io/component"
BASE_MODEL_LABEL = "loraplex.dev/base-model"
TRAINING_JOB_LABEL = "loraplex.dev/training-job"
ATTEMPT_LABEL = "loraplex.dev/attempt"
WARM_TRAINER_LABEL = "loraplex.dev/warm-trainer"  # on a warm trainer's Job and pod: the trainer's name
TRAINER_GROUP_ANNOTATION = "loraplex.dev/trainer-group"  # on a warm trainer's Job: its TrainerGroup, JSON
TENANTS_ANNOTATION = "loraplex.dev/tenants"  # on a warm trainer's pod: its tenants file's hash (a nudge)
HASH_ANNOTATION = "loraplex.dev/content-hash"

# The values of COMPONENT_LABEL: which part of a BaseModel's fleet a pod is.
WORKER = "worker"
ROUTER = "router"
TRAINER = "trainer"
