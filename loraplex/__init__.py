"""loraplex: a Kubernetes operator for adapter-aware LLM fleets.

The shared code lives here (the API models of the custom resources, the
command line); the deployables' code lives in the repository's operator/,
worker/ and e2e/ folders, reached as `loraplex.operator`, `loraplex.worker`
and `loraplex.e2e` (see DESIGN.md, "Code layout").
"""

__version__ = "0.1.0"
