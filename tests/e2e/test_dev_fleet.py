"""`loraplex dev up --simulated`: apply examples/simulated and the adapters answer completions.

The local fleet runs a real vLLM (CPU backend) and agent behind each
simulated worker pod and a real router behind the router pod, each bound to
its pod's loopback IP; the example adapters come from the fleet's HTTPS store.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
from kubernetes import client

from loraplex.api import GROUP, VERSION
from loraplex.cli import main
from loraplex.e2e.binaries import cached_binaries
from loraplex.e2e.cluster import LocalCluster, process_alive
from loraplex.e2e.local_operator import LocalOperator
from loraplex.e2e.local_workers import LocalWorkers
from loraplex.e2e.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.engine]

NAME = "loraplex-devfleet"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ADAPTERS = ("sql-gen", "support-bot", "summarizer-de", "code-review")
ORIGINAL_SUPPORT_BOT = (
    "b8b5b83f817a988bb9605a6385ccbd4a51ec5f0f1ae7eb65acb18c0f3b93542a"  # examples/simulated/10
)


def test_dev_up_serves_the_examples_through_real_workers_and_dev_down_stops_everything() -> None:
    cluster = LocalCluster(NAME)
    children: list[int] = []
    try:
        assert main(["dev", "up", "--simulated", "--name", NAME, "--nodes", "3"]) == 0
        operator_pid = LocalOperator(cluster).pid()
        workers_pid = LocalWorkers(cluster).pid()
        assert operator_pid is not None
        assert workers_pid is not None
        binaries = cached_binaries()
        assert binaries is not None
        kubectl = [str(binaries.kubectl), "--kubeconfig", str(cluster.kubeconfig)]
        applied = subprocess.run(
            [*kubectl, "apply", "-f", str(ROOT / "examples" / "simulated")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert applied.returncode == 0, applied.stderr
        with contextlib.closing(cluster.api_client()) as api:
            status = wait_until(
                lambda: _ready(api, "basemodels", "tiny-llama"), 60, "BaseModel tiny-llama Ready"
            )
            assert status["workers"] == "2/2"
            for name in EXAMPLE_ADAPTERS:
                wait_until(lambda name=name: _ready(api, "loraadapters", name), 300, f"adapter {name} Ready")
            assert _ready(api, "loraadapters", "sql-gen")["copies"] == "2/2"
            router_ip = _router_ip(api)

        caller = openai.OpenAI(base_url=f"http://{router_ip}:8000/v1", api_key="unused", max_retries=0)
        texts = {
            model: caller.completions.create(model=model, prompt="select", max_tokens=8, temperature=0)
            .choices[0]
            .text
            for model in ("tiny-llama", "sql-gen", "support-bot", "user-2")
        }
        assert len(set(texts.values())) == 4, (
            texts
        )  # each adapter (and the catalog's user-2) answers its own way
        with pytest.raises(openai.NotFoundError):
            caller.completions.create(model="no-such-adapter", prompt="select", max_tokens=1)

        # A LoRAAdapter with replicas 0 is on no worker's placement: the router knows it from its watch,
        # and the worker it picks reads the source from the LoRAAdapter and loads it on first use.
        with contextlib.closing(cluster.api_client()) as api:
            custom = client.CustomObjectsApi(api)
            spec = custom.get_namespaced_custom_object(
                GROUP, VERSION, "default", "loraadapters", "code-review"
            )
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", "loraadapters", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "LoRAAdapter", "metadata": {"name": "code-lazy"},
                "spec": {**spec["spec"], "replicas": 0},
            })  # fmt: skip
        lazy = wait_until(lambda: _answer(caller, "code-lazy"), 60, "code-lazy answered on first use")
        assert lazy == _answer(caller, "code-review")  # the same files, loaded under the new name
        assert "code-lazy" in {m.id for m in caller.models.list().data}

        with contextlib.closing(cluster.api_client()) as api:  # the training example closes the loop
            job = wait_until(
                lambda: _phase(api, "support-bot-retrain", "Succeeded"), 300, "the TrainingJob done"
            )
            adapter = client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, "default", "loraadapters", "support-bot"
            )
            assert adapter["spec"]["source"]["sha256"] == job["adapterRevision"] != ORIGINAL_SUPPORT_BOT
            revision = job["adapterRevision"]
            wait_until(lambda: (_ready(api, "loraadapters", "support-bot") or {}).get("revision") == revision,
                       120, "the workers serving the trained revision")  # fmt: skip
        trained = caller.completions.create(
            model="support-bot", prompt="ticket:", max_tokens=8, temperature=0
        )
        assert trained.choices[0].text

        children = LocalWorkers(cluster).child_pids()
        assert len(children) >= 5  # two vLLMs, two agents, one router (and the finished trainer)
        pids = cluster.status().pids
        assert (
            main(["dev", "up", "--simulated", "--name", NAME, "--nodes", "3"]) == 0
        )  # idempotent: same processes
        assert LocalOperator(cluster).pid() == operator_pid
        assert LocalWorkers(cluster).pid() == workers_pid
    finally:
        assert main(["dev", "down", "--name", NAME]) == 0
    assert not process_alive(operator_pid)
    assert not process_alive(workers_pid)
    assert not any(process_alive(pid) for pid in [*pids.values(), *children])


def _answer(caller: openai.OpenAI, model: str) -> str | None:
    """The completion's text, or None while the router does not know the model yet (404)."""
    try:
        answer = caller.completions.create(model=model, prompt="select", max_tokens=8, temperature=0)
    except openai.NotFoundError:
        return None
    return answer.choices[0].text


def _ready(api: Any, plural: str, name: str) -> dict[str, Any] | None:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, "default", plural, name)
    status: dict[str, Any] = body.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return status if ready.get("status") == "True" else None


def _phase(api: Any, name: str, phase: str) -> dict[str, Any] | None:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, "default", "trainingjobs", name
    )
    status: dict[str, Any] = body.get("status", {})
    assert status.get("phase") != "Failed", status
    return status if status.get("phase") == phase else None


def _router_ip(api: Any) -> str:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        "default", label_selector="app.kubernetes.io/component=router"
    )
    ip = pods.items[0].status.pod_ip if pods.items else None
    assert ip, "the router pod has no IP"
    return str(ip)
