"""The loraplex.dev/v1alpha1 API: typed models of each kind's spec and status.

These models are the one source of truth for the API: `crds/*.yaml` is
generated from them (`loraplex crds generate`) and a test keeps the two equal.
"""

GROUP = "loraplex.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
