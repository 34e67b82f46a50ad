"""The agent over the real vLLM CPU engine: loads, unloads, refusals, restarts, the disk budget."""

from __future__ import annotations

import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loraplex.e2e.tiny_model import AdapterFiles, lora_adapter
from loraplex.e2e.waiting import wait_until
from loraplex.e2e.worker_processes import AgentProcess, VllmProcess
from loraplex.worker.digest import tree_digest
from tests.engine.conftest import AgentFactory, wanted_entry, write_wanted
from tests.engine.file_opens import FileOpens

pytestmark = pytest.mark.engine


def wait_held(agent: AgentProcess, expected: dict[str, str], timeout: float = 60) -> None:
    wait_until(lambda: agent.held() == expected, timeout, f"agent holding {expected}")


def test_adapters_the_agent_loads_change_outputs_per_adapter(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory
) -> None:
    agent = start_agent([wanted_entry(adapters["a0"], "GPU"), wanted_entry(adapters["a1"], "CPU")])
    wait_held(agent, {"a0": "GPU", "a1": "CPU"})

    assert vllm.adapters() == {"a0", "a1"}
    outputs = {model: vllm.text(model) for model in ("base", "a0", "a1")}
    assert len(set(outputs.values())) == 3, outputs
    metrics = agent.metrics()
    assert metrics['loraplex_agent_adapter_loads_total{tier="GPU"}'] == 1
    assert metrics['loraplex_agent_adapter_loads_total{tier="CPU"}'] == 1
    assert metrics['loraplex_agent_adapter_load_seconds_count{tier="GPU"}'] == 1
    report = agent.residency()
    assert {a["name"]: a["sha256"] for a in report["adapters"]} == {
        "a0": adapters["a0"].sha256,
        "a1": adapters["a1"].sha256,
    }
    assert all(a["bytes"] > 0 and a["loadSeconds"] > 0 for a in report["adapters"])


def test_an_adapter_no_longer_wanted_is_unloaded_and_counted(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent([wanted_entry(adapters["a0"], "GPU"), wanted_entry(adapters["a1"], "CPU")])
    wait_held(agent, {"a0": "GPU", "a1": "CPU"})

    write_wanted(tmp_path / "wanted.yaml", [wanted_entry(adapters["a1"], "GPU")])
    wait_held(agent, {"a1": "GPU"})

    assert vllm.adapters() == {"a1"}
    status, body = vllm.complete("a0")
    assert status == 404, body
    assert agent.metrics()['loraplex_agent_adapter_evictions_total{tier="GPU"}'] == 1


def test_a_digest_mismatch_is_refused_and_the_rest_keeps_serving(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory
) -> None:
    corrupted = {**wanted_entry(adapters["a2"], name="corrupted"), "sha256": adapters["a3"].sha256}
    agent = start_agent([wanted_entry(adapters["a0"], "CPU"), corrupted])

    failures = wait_until(lambda: agent.residency()["failures"], 60, "a reported failure")
    assert [(f["name"], f["reason"]) for f in failures] == [("corrupted", "DigestMismatch")]
    assert adapters["a3"].sha256 in failures[0]["message"]
    wait_held(agent, {"a0": "CPU"})
    assert vllm.adapters() == {"a0"}
    assert vllm.text("a0") != vllm.text("base")
    assert agent.metrics()['loraplex_agent_fetch_failures_total{reason="DigestMismatch"}'] == 1


def test_a_restarted_agent_adopts_what_vllm_holds_without_reloading(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory
) -> None:
    first = start_agent([wanted_entry(adapters["a0"], "GPU"), wanted_entry(adapters["a1"], "CPU")])
    wait_held(first, {"a0": "GPU", "a1": "CPU"})
    first.stop(signal.SIGKILL)

    second = start_agent()
    wait_held(second, {"a0": "GPU", "a1": "CPU"})
    assert vllm.adapters() == {"a0", "a1"}
    metrics = second.metrics()
    assert metrics['loraplex_agent_adapter_loads_total{tier="GPU"}'] == 0
    assert metrics['loraplex_agent_adapter_loads_total{tier="CPU"}'] == 0


def test_the_disk_tier_stays_within_its_byte_budget(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory, tmp_path: Path
) -> None:
    one_adapter = sum(p.stat().st_size for p in adapters["a0"].path.iterdir())
    budget = 2 * one_adapter + one_adapter // 2
    agent = start_agent([wanted_entry(adapters["a0"])], disk_budget_bytes=budget)
    wait_held(agent, {"a0": "CPU"})
    for name in ("a1", "a2", "a3"):
        write_wanted(tmp_path / "wanted.yaml", [wanted_entry(adapters[name])])
        wait_held(agent, {name: "CPU"})

    cached = [p for p in (tmp_path / "cache" / "adapters").iterdir()]
    assert sum(f.stat().st_size for d in cached for f in d.iterdir()) <= budget
    assert adapters["a3"].sha256 in {p.name for p in cached}
    assert agent.metrics()['loraplex_agent_adapter_evictions_total{tier="Disk"}'] >= 2
    assert agent.metrics()['loraplex_agent_cache_bytes{tier="Disk"}'] <= budget


def test_a_new_revision_is_swapped_in_under_its_own_name_and_requests_after_it_read_no_files(
    vllm: VllmProcess, base_model: Path, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """vLLM keeps `load_inplace` on an adapter loaded with it, so every later request reloads its files
    (vLLM issue 33791): the agent registers the new revision under a name of its own instead."""
    old = lora_adapter("revision", seed=101, base=base_model)
    new = lora_adapter("revision", seed=202, base=base_model)
    agent = start_agent([wanted_entry(old, "GPU")], extra_args=["--retire-after", "2"])
    wait_held(agent, {"revision": "GPU"})
    old_text = vllm.text("revision")

    write_wanted(tmp_path / "wanted.yaml", [wanted_entry(new, "GPU")])
    swapped = wait_until(
        lambda: [
            a for a in agent.residency()["adapters"] if a["sha256"] == new.sha256 and a["tier"] == "GPU"
        ],
        60,
        "the new revision reported",
    )[0]
    engine_name = swapped.get("engineName", swapped["name"])  # where routers send its requests now
    with FileOpens(tmp_path / "cache" / "adapters" / new.sha256) as opens:
        texts = set()
        loads = []  # the weights' opens so far, after each request
        for _ in range(20):
            texts.add(vllm.text(engine_name))
            loads.append(opens.count("adapter_model.safetensors"))
    assert loads[-1] <= 1, f"vLLM read the adapter's weights again for requests after the swap: {loads}"
    assert len(texts) == 1
    assert texts != {old_text}
    assert engine_name == f"revision@{new.sha256[:12]}"
    wait_until(lambda: vllm.adapters() == {engine_name}, 30, "the old revision unloaded after its drain")
    assert vllm.complete("revision")[0] == 404
    assert agent.metrics()["loraplex_agent_revision_swaps_total"] == 1


def test_catalog_adapters_load_on_demand_once_for_concurrent_callers(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "user-7").symlink_to(adapters["a4"].path, target_is_directory=True)
    (catalog / "user-7.sha256").write_text(tree_digest(adapters["a4"].path) + "\n")
    (catalog / "user-8").symlink_to(adapters["a3"].path, target_is_directory=True)
    (catalog / "user-8.sha256").write_text(adapters["a0"].sha256 + "\n")  # the wrong digest
    agent = start_agent([], catalog_template=f"file://{catalog}/{{adapter}}")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: agent.ensure("user-7"), range(4)))
    assert [status for status, _ in answers] == [200] * 4, answers
    assert agent.metrics()['loraplex_agent_adapter_loads_total{tier="CPU"}'] == 1
    assert vllm.text("user-7") != vllm.text("base")
    assert agent.held() == {"user-7": "CPU"}
    assert agent.residency()["adapters"][0]["catalog"] is True

    status, body = agent.ensure("nobody")
    assert status == 404, body
    assert body["error"]["code"] == "AdapterNotFound"
    status, body = agent.ensure("user-8")
    assert status == 422, body
    assert body["error"]["code"] == "DigestMismatch"
    status, body = agent.ensure("user-8")  # backing off: answered at once, nothing fetched again
    assert status == 503, body
    assert agent.metrics()['loraplex_agent_fetch_failures_total{reason="DigestMismatch"}'] == 1


def test_adapters_come_back_after_vllm_restarts(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory
) -> None:
    agent = start_agent([wanted_entry(adapters["a0"], "GPU"), wanted_entry(adapters["a1"], "CPU")])
    wait_held(agent, {"a0": "GPU", "a1": "CPU"})
    before = vllm.text("a0")

    vllm.stop()
    vllm.start()  # same port, empty: vLLM forgets runtime-loaded adapters

    wait_until(lambda: vllm.adapters() == {"a0", "a1"}, 120, "the agent reloading what vLLM forgot")
    wait_held(agent, {"a0": "GPU", "a1": "CPU"})
    assert vllm.text("a0") == before
    assert agent.metrics()['loraplex_agent_adapter_loads_total{tier="GPU"}'] == 2


def foreign_adapter(source: AdapterFiles, folder: Path) -> AdapterFiles:
    """`source` as if trained for another architecture that names its attention the same
    (`q_proj`...) at other paths: its weights attach to `model.decoder.layers.N.self_attn.*`
    (OPT's layout), which the tiny Llama does not have; adapter_config.json is left as it is."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source.path, folder)
    weights = load_file(folder / "adapter_model.safetensors")
    renamed = {name.replace(".model.layers.", ".model.decoder.layers."): t for name, t in weights.items()}
    assert renamed.keys() != weights.keys()
    save_file(renamed, folder / "adapter_model.safetensors")
    return AdapterFiles("foreign", folder, tree_digest(folder), source.rank)


def test_an_adapter_for_modules_the_base_lacks_is_refused_not_served_as_the_base(
    vllm: VllmProcess,
    adapters: dict[str, AdapterFiles],
    start_agent: AgentFactory,
    base_model: Path,
    tmp_path: Path,
) -> None:
    foreign = foreign_adapter(adapters["a2"], tmp_path / "foreign")
    check = ["--base-model-dir", str(base_model)]
    agent = start_agent([wanted_entry(adapters["a0"], "CPU"), wanted_entry(foreign, "CPU")], extra_args=check)

    failures = wait_until(lambda: agent.residency()["failures"], 60, "a reported failure")
    assert [(f["name"], f["reason"]) for f in failures] == [("foreign", "TargetModulesNotInBase")]
    assert "model.decoder.layers.0.self_attn" in failures[0]["message"]
    wait_until(lambda: agent.held().get("a0") == "CPU", 60, "a0 loaded")
    assert vllm.adapters() == {"a0"}  # never registered, so never served as if it were the base
    assert agent.held().get("foreign") not in ("CPU", "GPU")
    assert vllm.text("a0") != vllm.text("base")
    assert agent.metrics()['loraplex_agent_fetch_failures_total{reason="TargetModulesNotInBase"}'] >= 1


def test_without_the_check_vllm_serves_such_an_adapter_as_the_base_model(
    vllm: VllmProcess, adapters: dict[str, AdapterFiles], start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Why the agent checks (vLLM issue 34186): vLLM registers it and answers with the base's output."""
    foreign = foreign_adapter(adapters["a2"], tmp_path / "foreign")
    agent = start_agent([wanted_entry(foreign, "CPU")])
    wait_held(agent, {"foreign": "CPU"})
    assert vllm.text("foreign") == vllm.text("base")
