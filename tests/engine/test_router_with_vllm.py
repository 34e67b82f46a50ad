"""The router in front of two real CPU vLLM workers (each with its agent), called with the openai client.

Worker w0 is asked to hold `sql`, worker w1 `chat`; both agents can load any
adapter of a local catalog on demand. A retrained `sql` is swapped in on w0
under load. The last test kills w1's vLLM mid-test: requests for `chat` then
land on w0, which loads it from the catalog.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from loraplex.e2e.http_probe import http_json
from loraplex.e2e.tiny_model import AdapterFiles, lora_adapter
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, RouterProcess, VllmProcess
from loraplex.worker.agent.activity import last_use
from tests.engine.conftest import wanted_entry, write_wanted

pytestmark = pytest.mark.engine


class Fleet:
    def __init__(
        self,
        vllms: dict[str, VllmProcess],
        agents: dict[str, AgentProcess],
        router: RouterProcess,
        wanted: dict[str, Path],
    ):
        self.vllms = vllms
        self.agents = agents
        self.router = router
        self.wanted = wanted  # each agent's wanted file
        self.client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def fleet(
    vllm: VllmProcess,
    base_model: Path,
    adapters: dict[str, AdapterFiles],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("router-fleet")
    catalog = work / "catalog"
    catalog.mkdir()
    for name, files in (("sql", adapters["a0"]), ("chat", adapters["a1"]), ("user-7", adapters["a2"])):
        (catalog / name).symlink_to(files.path, target_is_directory=True)
        (catalog / f"{name}.sha256").write_text(files.sha256)
    second = VllmProcess(base_model, work / "vllm-w1.log", max_loras=2, max_cpu_loras=4).start()
    vllms = {"w0": vllm, "w1": second}
    agents = {}
    wanted_files = {}
    for name, held in (("w0", ("sql", adapters["a0"])), ("w1", ("chat", adapters["a1"]))):
        wanted = wanted_files[name] = work / f"{name}-wanted.yaml"
        write_wanted(wanted, [wanted_entry(held[1], "GPU", name=held[0])])
        agents[name] = AgentProcess(
            vllms[name], work / f"{name}-cache", work / f"{name}-agent.log", worker=name, wanted_file=wanted,
            catalog_template=f"file://{catalog}/{{adapter}}", extra_args=["--retire-after", "3"],
        ).start()  # fmt: skip
        wait_until(
            lambda agent=agents[name], held=held: agent.held() == {held[0]: "GPU"}, 60, f"{name} ready"
        )
    router = RouterProcess(work / "router.log", api_key=vllm.api_key, workers=agents).start()
    try:
        fleet = Fleet(vllms, agents, router, wanted_files)
        wait_until(lambda: {"sql", "chat"} <= {m.id for m in fleet.client.models.list()}, 30,
                   "the router reading both agents' residency")  # fmt: skip
        yield fleet
    finally:
        router.stop()
        for agent in agents.values():
            agent.stop()
        second.stop()


def adapters_run(vllm: VllmProcess, since: float) -> set[str]:
    """The adapters this vLLM scheduled a request for at `since` (epoch seconds) or later (its
    `vllm:lora_requests_info`; w0's vLLM serves other test modules too)."""
    with urllib.request.urlopen(f"{vllm.url}/metrics", timeout=10) as response:
        return {name for name, when in last_use(response.read().decode()).items() if when >= since}


def test_completions_reach_the_worker_that_holds_the_adapter(fleet: Fleet) -> None:
    since = time.time()
    for adapter, worker in (("sql", "w0"), ("chat", "w1")):
        answer = fleet.client.completions.create(
            model=adapter, prompt="the quick", max_tokens=8, temperature=0
        )
        assert answer.choices[0].text == fleet.vllms[worker].text(adapter)
    # Both workers would give the same text: what each vLLM ran says where the requests went.
    assert "sql" not in adapters_run(fleet.vllms["w1"], since)
    assert "chat" not in adapters_run(fleet.vllms["w0"], since)
    assert "sql" in adapters_run(fleet.vllms["w0"], since)
    metrics = fleet.router.metrics()
    assert metrics['loraplex_router_requests_total{tier="gpu"}'] >= 2
    models = {m.id for m in fleet.client.models.list()}
    assert {"base", "sql", "chat"} <= models


def test_chat_streams_chunk_by_chunk_and_matches_the_whole_answer(fleet: Fleet) -> None:
    messages = [{"role": "user", "content": "hello world"}]
    whole = fleet.client.chat.completions.create(
        model="chat", messages=messages, max_tokens=12, temperature=0
    )
    stream = fleet.client.chat.completions.create(
        model="chat", messages=messages, max_tokens=12, temperature=0, stream=True
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == whole.choices[0].message.content


def test_errors_come_in_openais_shape(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        fleet.client.completions.create(model="no-such-adapter", prompt="x", max_tokens=1)
    assert "no-such-adapter" in str(missing.value)
    request = urllib.request.Request(
        f"{fleet.router.url}/v1/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as malformed:
        urllib.request.urlopen(request, timeout=10)
    assert malformed.value.code == 400
    assert "error" in json.loads(malformed.value.read())
    status, body = http_json(f"{fleet.router.url}/v1/completions", {"prompt": "x"})
    assert status == 400, body


def test_the_official_clients_other_calls_work_through_the_router(fleet: Fleet) -> None:
    """Async and streamed calls, one model, the Responses API, request ids, unknown paths: as from OpenAI."""

    async def asynchronous() -> tuple[str, list[str]]:
        async with openai.AsyncOpenAI(base_url=f"{fleet.router.url}/v1", api_key="unused") as api:
            whole = await api.completions.create(model="sql", prompt="the quick", max_tokens=8, temperature=0)
            stream = await api.completions.create(
                model="sql", prompt="the quick", max_tokens=8, temperature=0, stream=True
            )
            return whole.choices[0].text, [chunk.choices[0].text async for chunk in stream if chunk.choices]

    whole, chunks = asyncio.run(asynchronous())
    assert whole == fleet.vllms["w0"].text("sql")
    assert "".join(chunks) == whole
    card = fleet.client.models.retrieve("chat")
    assert (card.id, card.parent) == ("chat", "base")  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        fleet.client.models.retrieve("no-such-adapter")
    answer = fleet.client.responses.create(model="chat", input="hello world", max_output_tokens=8)
    assert answer.output_text
    assert answer.usage is not None
    raw = fleet.client.completions.with_raw_response.create(
        model="chat", prompt="x", max_tokens=1, extra_headers={"X-Request-Id": "trace-7"}
    )
    assert raw.headers["x-request-id"] == "trace-7"
    with pytest.raises(openai.NotFoundError) as unknown:
        fleet.client.files.list()
    assert unknown.value.code == "unknown_url"


def test_embeddings_are_refused_in_openais_shape_by_a_generative_engine(fleet: Fleet) -> None:
    # vLLM serves /v1/embeddings only for pooling models: for the tiny Llama it has no such route.
    with pytest.raises(openai.NotFoundError) as refused:
        fleet.client.embeddings.create(model="chat", input="hello")
    assert refused.value.code == "unsupported_endpoint"
    assert fleet.router.metrics().get('loraplex_router_retries_total{reason="not_loaded"}', 0) == 0


def test_a_catalog_adapter_is_loaded_on_first_request(fleet: Fleet) -> None:
    answer = fleet.client.completions.create(model="user-7", prompt="the quick", max_tokens=8, temperature=0)
    holders = [name for name, agent in fleet.agents.items() if "user-7" in agent.held()]
    assert len(holders) == 1
    assert answer.choices[0].text == fleet.vllms[holders[0]].text("user-7")
    assert fleet.router.metrics()['loraplex_router_requests_total{tier="miss"}'] >= 1


def test_requests_keep_succeeding_and_name_the_adapter_while_a_new_revision_is_swapped_in(
    fleet: Fleet, base_model: Path
) -> None:
    retrained = lora_adapter("sql-retrained", seed=303, base=base_model)
    w0 = fleet.vllms["w0"]
    old_text = w0.text("sql")
    answers: list[tuple[set[str], str]] = []  # (the models the answer named, its text), whole and streamed
    failures: list[Exception] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                whole = fleet.client.completions.create(
                    model="sql", prompt="the quick", max_tokens=8, temperature=0
                )
                answers.append(({whole.model}, whole.choices[0].text))
                stream = fleet.client.completions.create(
                    model="sql", prompt="the quick", max_tokens=8, temperature=0, stream=True
                )
                chunks = list(stream)
                answers.append(
                    ({c.model for c in chunks}, "".join(c.choices[0].text for c in chunks if c.choices))
                )
            except Exception as error:  # any failed request fails the test
                failures.append(error)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_until(lambda: len(answers) >= 2, 60, "requests before the swap")
        write_wanted(fleet.wanted["w0"], [wanted_entry(retrained, "GPU", name="sql")])
        engine_name = f"sql@{retrained.sha256[:12]}"
        wait_until(lambda: w0.adapters() >= {engine_name} and "sql" not in w0.adapters(), 60,
                   "the retrained revision in, the old one unloaded after its drain")  # fmt: skip
        swapped = len(answers)
        wait_until(lambda: len(answers) >= swapped + 4, 60, "requests after the swap")
    finally:
        stop.set()
        sender.join(60)
    assert failures == []
    assert {model for models, _ in answers for model in models} == {"sql"}  # never the engine name
    new_text = w0.text(engine_name)
    assert new_text != old_text
    texts = [text for _, text in answers]
    assert texts[0] == old_text
    assert set(texts) == {old_text, new_text}
    assert set(texts[swapped:]) == {new_text}  # none served stale once the old copy went
    assert fleet.router.metrics().get('loraplex_router_retries_total{reason="not_loaded"}', 0) == 0


def test_a_killed_worker_is_routed_around(fleet: Fleet) -> None:
    expected = fleet.vllms["w1"].text("chat")
    fleet.vllms["w1"].stop(signal.SIGKILL)
    answers = [
        fleet.client.completions.create(model="chat", prompt="the quick", max_tokens=8, temperature=0)
        for _ in range(3)
    ]
    assert {a.choices[0].text for a in answers} == {expected}
    assert "chat" in fleet.agents["w0"].held()
