"""The request load an agent reports: vLLM's running + waiting requests, a one-minute mean that
moves only when it moves by a request and a tenth (so a steady load writes no status)."""

from __future__ import annotations

from pathlib import Path

from loraplex.api.engine_metrics import requests_in_engine
from loraplex.worker.agent.engine_load import LoadMean, to_report
from tests.worker.clock import Clock
from tests.worker.test_agent_reports import FakeVllm, agent_on

EXPOSITION = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-llama"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny-llama"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-llama",reason="capacity"} 4.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql-gen",waiting_lora_adapters=""} 1.7e+09
"""


def engine(running: float, waiting: float = 0.0) -> str:
    return f"vllm:num_requests_running {running}\nvllm:num_requests_waiting {waiting}\n"


def test_the_load_is_running_plus_waiting_summed_over_engines_and_nothing_else() -> None:
    assert requests_in_engine(EXPOSITION) == 9.0  # not the waiting-by-reason series, not lora info
    assert requests_in_engine("") == 0.0


def test_the_mean_covers_the_last_minute() -> None:
    mean = LoadMean(window=60)
    assert mean.mean() is None
    mean.add(0, 30)
    mean.add(30, 10)
    assert mean.mean() == 20
    mean.add(60, 2)  # the sample of 0 s is a minute old
    assert mean.mean() == 6


def test_the_reported_load_moves_only_by_a_request_and_a_tenth() -> None:
    assert to_report(None, 0.04) == 0.0
    assert to_report(3.0, 3.9) == 3.0  # less than one request
    assert to_report(3.0, 4.0) == 4.0
    assert to_report(50.0, 54.9) == 50.0  # less than a tenth
    assert to_report(50.0, 44.96) == 45.0


async def test_the_agent_reports_its_workers_load_from_vllm_while_its_worker_placement_asks(
    tmp_path: Path,
) -> None:
    vllm, clock = FakeVllm(), Clock()
    agent = agent_on(tmp_path, vllm, clock)
    agent.set_wanted([], report_requests=True)
    assert "requests" not in agent.report()  # nothing read yet: the field is left out
    vllm.exposition = engine(6, 2)
    await agent.read_activity()
    assert agent.report()["requests"] == 8.0
    assert agent.residency().placement_status([]).requests == 8.0  # what the WorkerPlacement says
    for load in (3, 2):  # read every activity interval (10 s)
        clock.now += 10
        vllm.exposition = engine(load)
        await agent.read_activity()
    assert agent.report()["requests"] == 4.3  # (8 + 3 + 2) / 3
    clock.now += 60
    vllm.exposition = engine(0)
    await agent.read_activity()
    assert agent.report()["requests"] == 0.0  # the busy minute is over
    agent.set_wanted([], report_requests=False)  # the BaseModel no longer scales on load
    assert "requests" not in agent.report()
