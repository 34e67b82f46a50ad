"""The vLLM version loraplex is built and tested against: one place for it.

A BaseModel's default engine image is vLLM's official OpenAI server image of
this version, and the engine tests install the CPU build of the same version
(`constraints.txt` pins it); a unit test fails when the two drift apart.
"""

from __future__ import annotations

VLLM_VERSION = "0.32.0"
DEFAULT_ENGINE_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
