"""The loraplex.dev/v1alpha1 API: typed models of each kind's spec and status.

These models are the one source of truth for the API: `crds/*.yaml` is
generated from them (`loraplex crds generate`) and a test keeps the two equal.
"""

GROUP = "loraplex.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The kinds' plural resource names (the URL path segment, the kopf and client argument).
BASE_MODELS = "basemodels"
LORA_ADAPTERS = "loraadapters"
TRAINING_JOBS = "trainingjobs"
WORKER_PLACEMENTS = "workerplacements"
