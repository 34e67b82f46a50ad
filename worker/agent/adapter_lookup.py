"""Where an agent finds a named adapter its WorkerPlacement does not list: the LoRAAdapter object.

The router sends a named adapter past its placement when every worker the
placement names is at the load bound (a hot adapter spilling over) or none of
them is healthy. Those other workers' agents never got its source from a
WorkerPlacement, so they read it from the LoRAAdapter itself: one GET per
on-demand load, made only when the router's ensure call says the adapter is
named, so catalog (tail) traffic never reaches the API server. An adapter of
another BaseModel, or one being deleted, is not found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from loraplex.api import GROUP, LORA_ADAPTERS, VERSION
from loraplex.api.adapter import AdapterSource, live_source

AdapterLookup = Callable[[str], Awaitable[AdapterSource | None]]


class LookupFailed(Exception):
    """The API server could not be asked (an answer other than found / not found)."""


class LoRAAdapterLookup:
    """Reads one LoRAAdapter of the agent's namespace by name (the worker role may `get` them)."""

    def __init__(self, api: Any, namespace: str, base_model: str) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api)
        self._namespace = namespace
        self._base_model = base_model

    async def __call__(self, name: str) -> AdapterSource | None:
        return await asyncio.to_thread(self._get, name)

    def _get(self, name: str) -> AdapterSource | None:
        from kubernetes.client.exceptions import ApiException

        try:
            body = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self._namespace, LORA_ADAPTERS, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            message = f"reading LoRAAdapter {name} answered {error.status}: {error.reason}"
            raise LookupFailed(message) from error
        except Exception as error:  # the API server cannot be reached
            raise LookupFailed(f"reading LoRAAdapter {name} failed: {error}") from error
        return live_source(body, self._base_model) if isinstance(body, dict) else None
