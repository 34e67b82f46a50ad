"""The router with authentication on (fake workers, conftest.py): 401s, hidden adapters, /v1/models."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from loraplex.api.access import AccessList, CatalogAccess, RouterAccess, key_digest
from loraplex.router.api_keys import ApiKeyStore
from loraplex.router.auth import Authenticator
from loraplex.router.proxy import make_app

KEYS = {"alice": "key-of-alice", "bob": "key-of-bob"}
ACCESS = RouterAccess(
    base_model=AccessList(subjects=["alice"]),
    catalog=CatalogAccess(owner="tail-{subject}"),
    adapters={"sql-gen": AccessList(subjects=["alice"])},
)


@pytest.fixture
async def secured(fleet: Any, tmp_path: Path) -> AsyncIterator[str]:
    for subject, key in KEYS.items():
        entry = {"sha256": key_digest(key), "subject": subject, "groups": []}
        (tmp_path / subject).write_text(json.dumps(entry))
    store = ApiKeyStore([tmp_path])
    store.reload()
    settings = dataclasses.replace(fleet.proxy.settings, access=ACCESS)
    proxy = dataclasses.replace(fleet.proxy, settings=settings, authenticator=Authenticator(store))
    server = TestServer(make_app(proxy))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def call(
    url: str, path: str, key: str | None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        request = (
            session.post(f"{url}{path}", json=body, headers=headers)
            if body
            else session.get(f"{url}{path}", headers=headers)
        )
        async with request as response:
            text = await response.text()
            return response.status, json.loads(text) if text.startswith("{") else {}, dict(response.headers)


@pytest.mark.parametrize("key", [None, "not-a-key", KEYS["alice"] + "x"])
async def test_a_missing_or_wrong_key_gets_401_in_openais_shape(secured: str, key: str | None) -> None:
    status, body, headers = await call(secured, "/v1/completions", key, {"model": "sql-gen", "prompt": "x"})
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await call(secured, "/v1/models", key)
    assert status == 401


async def test_health_and_metrics_stay_open(secured: str) -> None:
    assert (await call(secured, "/healthz", None))[0] == 200
    assert (await call(secured, "/metrics", None))[0] == 200


async def test_an_adapter_the_caller_may_not_use_looks_like_one_that_does_not_exist(
    fleet: Any, secured: str
) -> None:
    fleet.hold("worker-0", "sql-gen")
    asked = {"model": "sql-gen", "prompt": "x"}
    status, _, _ = await call(secured, "/v1/completions", KEYS["alice"], asked)
    assert status == 200
    hidden = await call(secured, "/v1/completions", KEYS["bob"], asked)
    missing = await call(secured, "/v1/completions", KEYS["bob"], {**asked, "model": "no-such"})
    assert hidden[0] == missing[0] == 404
    assert hidden[1] == json.loads(json.dumps(missing[1]).replace("no-such", "sql-gen"))
    assert fleet.workers["worker-0"].calls[-1]["model"] == "sql-gen"
    assert len(fleet.workers["worker-0"].calls) == 1  # bob's request reached no worker


async def test_catalog_adapters_follow_the_owner_template(fleet: Any, secured: str) -> None:
    for worker in fleet.workers.values():
        worker.known.add("tail-bob")  # in the catalog
    status, _, _ = await call(secured, "/v1/completions", KEYS["bob"], {"model": "tail-bob", "prompt": "x"})
    assert status == 200
    status, _, _ = await call(secured, "/v1/completions", KEYS["alice"], {"model": "tail-bob", "prompt": "x"})
    assert status == 404


async def test_models_lists_only_what_the_caller_may_use(fleet: Any, secured: str) -> None:
    fleet.hold("worker-0", "sql-gen")
    fleet.hold("worker-1", "chat-bot")
    fleet.hold("worker-1", "tail-bob", catalog=True)
    listed = {}
    for subject, key in KEYS.items():
        status, body, _ = await call(secured, "/v1/models", key)
        assert status == 200
        listed[subject] = {m["id"] for m in body["data"]}
    assert listed["alice"] == {"tiny-llama", "sql-gen", "chat-bot"}
    assert listed["bob"] == {"chat-bot", "tail-bob"}


async def test_one_model_is_retrievable_only_by_who_may_use_it(fleet: Any, secured: str) -> None:
    fleet.hold("worker-0", "sql-gen")
    status, card, _ = await call(secured, "/v1/models/sql-gen", KEYS["alice"])
    assert (status, card["id"], card["parent"]) == (200, "sql-gen", "tiny-llama")
    hidden, body, _ = await call(secured, "/v1/models/sql-gen", KEYS["bob"])
    missing, expected, _ = await call(secured, "/v1/models/no-such-model", KEYS["bob"])
    assert (hidden, missing) == (404, 404)
    assert body == json.loads(json.dumps(expected).replace("no-such-model", "sql-gen"))
