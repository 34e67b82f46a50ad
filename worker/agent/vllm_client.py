"""The agent's client of vLLM's OpenAI server and its runtime LoRA API.

Calls carry the worker's API key. `adapters()` reads `/v1/models`, the
engine's own list of registered adapters (id, the engine name, and the path
each was loaded from), which is what the agent checks its residency record
against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp


class VllmError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"vLLM answered {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class EngineAdapter:
    name: str
    path: str


class VllmClient:
    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self._client().request(method, self.base_url + path, json=body) as response:
            text = await response.text()
            if response.status >= 400:
                raise VllmError(response.status, _error_message(text))
            if response.content_type == "application/json":
                return await response.json()
            return text

    async def healthy(self) -> bool:
        try:
            async with self._client().get(self.base_url + "/health") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def models(self) -> list[dict[str, Any]]:
        data = await self._call("GET", "/v1/models")
        return list(data.get("data", []))

    async def adapters(self) -> list[EngineAdapter]:
        """Adapters registered in the engine (entries of /v1/models that have a parent)."""
        return [
            EngineAdapter(str(model["id"]), str(model.get("root") or ""))
            for model in await self.models()
            if model.get("parent")
        ]

    async def served_model(self) -> str:
        for model in await self.models():
            if not model.get("parent"):
                return str(model["id"])
        raise VllmError(500, "vLLM lists no base model")

    async def metrics_text(self) -> str:
        """vLLM's Prometheus exposition (`/metrics`), as text."""
        async with self._client().get(self.base_url + "/metrics") as response:
            text = await response.text()
            if response.status >= 400:
                raise VllmError(response.status, text[:500])
            return text

    async def load(self, name: str, path: str) -> None:
        """Register an adapter under a name vLLM does not have yet. Never `load_inplace`: vLLM keeps
        that flag on the adapter, and every later request for it reloads its files (vLLM issue 33791);
        a new revision goes under a name of its own (the agent's residency plan)."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        await self._call("POST", "/v1/load_lora_adapter", body)

    async def unload(self, name: str) -> None:
        try:
            await self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        except VllmError as error:
            if error.status != 404:  # already gone: the goal is reached
                raise

    async def warm(self, name: str) -> None:
        """Run a one-token request so the engine activates the adapter in a GPU slot."""
        await self._call("POST", "/v1/completions", {"model": name, "prompt": " ", "max_tokens": 1})


def _error_message(text: str) -> str:
    import json

    try:
        payload = json.loads(text)
    except ValueError:
        return text[:500]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", text))[:500]
    return str(payload)[:500]
