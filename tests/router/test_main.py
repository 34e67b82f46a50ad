"""The router process in static mode: flags to settings, and serve() wiring sources, poller and proxy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from typing import Any

import aiohttp
import pytest

from loraplex.router.main import configure, serve, settings_from_args
from loraplex.router.settings import RouterSettings, StaticWorker

DEADLINE = 10.0


def test_static_workers_parse_from_flags_and_bad_ones_are_refused() -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--base-model", "llama", "--port", "9000", "--workers", "w0=http://h:8000/,http://h:8080"]
    )
    settings = settings_from_args(args)
    assert settings.static_workers == (StaticWorker("w0", "http://h:8000", "http://h:8080"),)
    assert settings.port == 9000
    assert settings.base_name == "llama"
    with pytest.raises(ValueError, match="name=vllm_url,agent_url"):
        StaticWorker.parse("w0=http://h:8000")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_static_router_learns_its_workers_and_serves(fleet: Any) -> None:
    port = free_port()
    workers = tuple(StaticWorker(w.name, w.vllm_url, w.agent_url) for w in fleet.workers.values())
    settings = RouterSettings(
        base_model="tiny-llama",
        host="127.0.0.1",
        port=port,
        static_workers=workers,
        load_interval_seconds=0.05,
    )
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready))
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.wait_for(ready.wait(), DEADLINE)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + DEADLINE
            while True:
                async with session.get(f"{url}/healthz") as response:
                    health = await response.json()
                if response.status == 200 and health["healthy"] == 2:
                    break
                assert time.monotonic() < deadline, health
                await asyncio.sleep(0.05)
            body = {"model": "sql-gen", "prompt": "x"}
            async with session.post(f"{url}/v1/completions", json=body) as response:
                assert response.status == 200
                assert (await response.json())["choices"][0]["text"].startswith("served by worker-")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
