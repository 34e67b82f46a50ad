"""Every class of invalid manifest is refused at admission, with a message naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from loraplex.api import GROUP, VERSION

pytestmark = pytest.mark.cluster

DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

VALID: dict[str, dict[str, Any]] = {
    "basemodels": {
        "kind": "BaseModel",
        "metadata": {"name": "llama-8b"},
        "spec": {"model": {"uri": "pvc://models/llama-3.1-8b"}, "engine": {"maxLoras": 4, "maxCpuLoras": 8}},
    },
    "loraadapters": {
        "kind": "LoRAAdapter",
        "metadata": {"name": "sql-gen"},
        "spec": {
            "baseModel": "llama-8b",
            "source": {"uri": "s3://adapters/sql-gen/v1/", "sha256": DIGEST},
            "rank": 16,
        },
    },
    "trainingjobs": {
        "kind": "TrainingJob",
        "metadata": {"name": "sql-gen-train"},
        "spec": {
            "baseModel": "llama-8b",
            "dataset": {"uri": "s3://datasets/sql.jsonl"},
            "output": {"adapterName": "sql-gen"},
            "training": {"steps": 100},
        },
    },
    "workerplacements": {
        "kind": "WorkerPlacement",
        "metadata": {"name": "llama-8b-worker-0"},
        "spec": {"baseModel": "llama-8b", "worker": "llama-8b-worker-0"},
    },
}

DROP = object()


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


# (plural, patch over the valid object, the field the refusal must name, a word of the reason)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # BaseModel
    ("basemodels", {"spec": {"model": DROP}}, "spec.model", "Required"),
    ("basemodels", {"spec": {"model": {"uri": DROP}}}, "spec.model.uri", "Required"),
    ("basemodels", {"spec": {"model": {"uri": "ftp://models/llama"}}}, "spec.model.uri", "should match"),
    ("basemodels", {"spec": {"model": {"uri": "models/llama"}}}, "spec.model.uri", "should match"),
    ("basemodels", {"spec": {"model": {"uri": "pvc://models/../../etc/passwd"}}}, "spec.model.uri", ".."),
    ("basemodels", {"spec": {"model": {"uri": "/models/%2e%2e/secret"}}}, "spec.model.uri", ".."),
    ("basemodels", {"spec": {"model": {"uri": "/" + "a" * 2100}}}, "spec.model.uri", "2048"),
    ("basemodels", {"spec": {"engine": {"maxLoras": 0}}}, "spec.engine.maxLoras", "greater than or equal"),
    (
        "basemodels",
        {"spec": {"engine": {"maxLoras": 1000, "maxCpuLoras": 2000}}},
        "spec.engine.maxLoras",
        "less than or equal",
    ),
    (
        "basemodels",
        {"spec": {"engine": {"maxLoras": 8, "maxCpuLoras": 4}}},
        "spec.engine.maxCpuLoras",
        "at least engine.maxLoras",
    ),
    ("basemodels", {"spec": {"engine": {"maxLoraRank": 7}}}, "spec.engine.maxLoraRank", "Unsupported value"),
    (
        "basemodels",
        {"spec": {"engine": {"tensorParallelSize": 2}, "resources": {"gpu": 3}}},
        "spec.resources.gpu",
        "multiple",
    ),
    (
        "basemodels",
        {"spec": {"replicas": {"min": 3, "max": 2}}},
        "spec.replicas.max",
        "at least replicas.min",
    ),
    ("basemodels", {"spec": {"replicas": {"min": -1}}}, "spec.replicas.min", "greater than or equal"),
    ("basemodels", {"spec": {"adapterVolumes": ["Team_Adapters"]}}, "spec.adapterVolumes[0]", "should match"),
    ("basemodels", {"spec": {"adapterVolumes": ["a", "a"]}}, "spec.adapterVolumes[1]", "Duplicate value"),
    ("basemodels", {"spec": {"resources": {"memory": "lots"}}}, "spec.resources.memory", "should match"),
    (
        "basemodels",
        {"spec": {"adapterCatalog": {"uriTemplate": "s3://adapters/users/"}}},
        "spec.adapterCatalog.uriTemplate",
        "{adapter}",
    ),
    (
        "basemodels",
        {"spec": {"adapterCatalog": {"uriTemplate": "s3://a/{adapter}/../x"}}},
        "spec.adapterCatalog.uriTemplate",
        "..",
    ),
    (
        "basemodels",
        {"spec": {"tolerations": [{"key": "k", "operator": "Sometimes"}]}},
        "spec.tolerations[0].operator",
        "Unsupported value",
    ),
    (
        "basemodels",
        {"spec": {"nodeSelector": {f"k{i}": "v" for i in range(40)}}},
        "spec.nodeSelector",
        "at most 32",
    ),
    ("basemodels", {"spec": {"engine": {"args": ["--x"] * 65}}}, "spec.engine.args", "at most 64"),
    # engine.args may not take over what the operator manages (its slot accounting, its API key)
    (
        "basemodels",
        {"spec": {"engine": {"args": ["--enforce-eager", "--max-loras=64"]}}},
        "spec.engine.args",
        "--max-loras=64",
    ),
    ("basemodels", {"spec": {"engine": {"args": ["--api_key", "mine"]}}}, "spec.engine.args", "--api_key"),
    ("basemodels", {"spec": {"engine": {"args": ["-tp", "8"]}}}, "spec.engine.args", "-tp"),
    (
        "basemodels",
        {"spec": {"engine": {"image": "Registry/VLLM:latest"}}},
        "spec.engine.image",
        "should match",
    ),
    (
        "basemodels",
        {"spec": {"adapterCatalog": {"uriTemplate": "https://user:secret@adapters.example/{adapter}/"}}},
        "spec.adapterCatalog.uriTemplate",
        "should match",
    ),
    (
        "basemodels",
        {"spec": {"nodeSelector": {"pool": "gpu pool"}}},
        "spec.nodeSelector.pool",
        "should match",
    ),
    (
        "basemodels",
        {"spec": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        "spec.tolerations[0].value",
        "empty when operator is Exists",
    ),
    (
        "basemodels",
        {"spec": {"tolerations": [{"operator": "Equal", "value": "v"}]}},
        "spec.tolerations[0].operator",
        "Exists when key is empty",
    ),
    (
        "basemodels",
        {"spec": {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}},
        "spec.tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    (
        "basemodels",
        {"spec": {"tolerations": [{"key": "bad key!", "operator": "Exists"}]}},
        "spec.tolerations[0].key",
        "should match",
    ),
    ("basemodels", {"spec": {"surprise": True}}, "spec.surprise", "unknown field"),
    ("basemodels", {"metadata": {"name": "a" * 41}}, "metadata.name", "at most 40"),
    ("basemodels", {"metadata": {"name": "9llama"}}, "metadata.name", "start with a letter"),
    # LoRAAdapter
    ("loraadapters", {"spec": {"baseModel": DROP}}, "spec.baseModel", "Required"),
    ("loraadapters", {"spec": {"baseModel": "Llama_8B"}}, "spec.baseModel", "should match"),
    ("loraadapters", {"spec": {"source": DROP}}, "spec.source", "Required"),
    ("loraadapters", {"spec": {"source": {"sha256": DROP}}}, "spec.source.sha256", "Required"),
    ("loraadapters", {"spec": {"source": {"sha256": DIGEST.upper()}}}, "spec.source.sha256", "should match"),
    ("loraadapters", {"spec": {"source": {"sha256": DIGEST[:40]}}}, "spec.source.sha256", "64"),
    (
        "loraadapters",
        {"spec": {"source": {"uri": "http://adapters/sql-gen"}}},
        "spec.source.uri",
        "should match",
    ),
    ("loraadapters", {"spec": {"source": {"uri": "file:///adapters/../root"}}}, "spec.source.uri", ".."),
    ("loraadapters", {"spec": {"source": {"uri": "s3://adapters/a b"}}}, "spec.source.uri", "should match"),
    ("loraadapters", {"spec": {"source": {"uri": "pvc://adapters//etc"}}}, "spec.source.uri", "should match"),
    ("loraadapters", {"spec": {"rank": 0}}, "spec.rank", "greater than or equal"),
    ("loraadapters", {"spec": {"rank": 1024}}, "spec.rank", "less than or equal"),
    ("loraadapters", {"spec": {"rank": DROP}}, "spec.rank", "Required"),
    ("loraadapters", {"spec": {"replicas": -1}}, "spec.replicas", "greater than or equal"),
    ("loraadapters", {"spec": {"policy": "Sometimes"}}, "spec.policy", "Unsupported value"),
    ("loraadapters", {"spec": {"policy": "Pinned", "replicas": 0}}, "spec.replicas", "Pinned"),
    ("loraadapters", {"spec": {"priority": 5000}}, "spec.priority", "less than or equal"),
    ("loraadapters", {"spec": {"rank": "sixteen"}}, "spec.rank", "integer"),
    # TrainingJob
    ("trainingjobs", {"spec": {"dataset": DROP}}, "spec.dataset", "Required"),
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "s3://datasets/../private.jsonl"}}},
        "spec.dataset.uri",
        "..",
    ),
    # A dataset in a system folder, or a path that is not normalized (issue 19: confused deputy).
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "file:///proc/self/environ"}}},
        "spec.dataset.uri",
        "system folder",
    ),
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "file:///var/run/secrets/kubernetes.io/serviceaccount/token"}}},
        "spec.dataset.uri",
        "system folder",
    ),
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "file:///etc/passwd"}}},
        "spec.dataset.uri",
        "system folder",
    ),
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "file:////proc/1/environ"}}},
        "spec.dataset.uri",
        "normalized",
    ),
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "file:///data/./x.jsonl"}}},
        "spec.dataset.uri",
        "normalized",
    ),
    (
        "trainingjobs",
        {"spec": {"dataset": {"uri": "file:///data/x?.jsonl"}}},
        "spec.dataset.uri",
        "normalized",
    ),
    ("trainingjobs", {"spec": {"dataset": {"uri": "file:///data%2F..%2Fetc"}}}, "spec.dataset.uri", ".."),
    ("trainingjobs", {"spec": {"dataset": {"uri": "file:///data\\x"}}}, "spec.dataset.uri", "normalized"),
    (
        "trainingjobs",
        {"spec": {"dataset": {"format": "parquet"}}},
        "spec.dataset.format",
        "Unsupported value",
    ),
    ("trainingjobs", {"spec": {"output": {"adapterName": DROP}}}, "spec.output.adapterName", "Required"),
    ("trainingjobs", {"spec": {"training": {"steps": 10, "epochs": 1}}}, "spec.training", "exactly one"),
    ("trainingjobs", {"spec": {"training": {"steps": DROP}}}, "spec.training", "exactly one"),
    (
        "trainingjobs",
        {"spec": {"training": {"learningRate": 0}}},
        "spec.training.learningRate",
        "greater than",
    ),
    (
        "trainingjobs",
        {"spec": {"training": {"learningRate": 3}}},
        "spec.training.learningRate",
        "less than or equal",
    ),
    ("trainingjobs", {"spec": {"training": {"batchSize": 0}}}, "spec.training.batchSize", "greater than"),
    ("trainingjobs", {"spec": {"lora": {"rank": 0}}}, "spec.lora.rank", "greater than or equal"),
    ("trainingjobs", {"spec": {"lora": {"dropout": 1.5}}}, "spec.lora.dropout", "less than or equal"),
    ("trainingjobs", {"spec": {"lora": {"alpha": 0}}}, "spec.lora.alpha", "greater than"),
    ("trainingjobs", {"spec": {"lora": {"targetModules": []}}}, "spec.lora.targetModules", "at least 1"),
    (
        "trainingjobs",
        {"spec": {"lora": {"targetModules": ["q_proj;rm -rf"]}}},
        "spec.lora.targetModules[0]",
        "should match",
    ),
    (
        "trainingjobs",
        {"spec": {"checkpoint": {"intervalSteps": 0}}},
        "spec.checkpoint.intervalSteps",
        "greater than or equal",
    ),
    (
        "trainingjobs",
        {"spec": {"lora": {"targetModules": ["q_proj", "q_proj"]}}},
        "spec.lora.targetModules[1]",
        "Duplicate value",
    ),
    ("trainingjobs", {"spec": {"schedule": "every monday"}}, "spec.schedule", "should match"),
    ("trainingjobs", {"spec": {"schedule": "61 * * * *"}}, "spec.schedule", "should match"),
    ("trainingjobs", {"spec": {"schedule": "0 0 * * 8"}}, "spec.schedule", "should match"),
    ("trainingjobs", {"spec": {"schedule": "*/5 * * DEC *-1"}}, "spec.schedule", "should match"),
    ("trainingjobs", {"spec": {"preemptible": "yes"}}, "spec.preemptible", "boolean"),
    ("trainingjobs", {"metadata": {"name": "t" * 53}}, "metadata.name", "at most 52"),
    # WorkerPlacement (written by the operator; admission keeps a hand-made one to the same rules)
    ("workerplacements", {"spec": {"worker": "../../x"}}, "spec.worker", "should match"),
    ("workerplacements", {"spec": {"unload": ["sql-gen", "sql-gen"]}}, "spec.unload[1]", "Duplicate value"),
]

# Valid in the grammars Kubernetes and registries use, so admitted.
VALID_IMAGES = [
    "vllm/vllm-openai:v0.11.0-RC1",
    "registry.example.com:5000/team/vllm-cpu:v0.32.0",
    f"localhost/loraplex/vllm@sha256:{DIGEST}",
    "ghcr.io/loraplex/vllm-cpu:v0.32.0_build.7",
]


def _id(case: tuple[str, dict[str, Any], str, str]) -> str:
    return f"{case[0]}:{case[2]}:{case[3]}".replace(" ", "_")


def test_the_valid_objects_are_accepted(kube: Any, namespace: str) -> None:
    for plural, body in VALID.items():
        create(kube, namespace, plural, body)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_refused_naming_the_field(
    kube: Any, namespace: str, case: tuple[str, dict[str, Any], str, str]
) -> None:
    plural, patch, field, reason = case
    assert_refused(kube, namespace, plural, merged(VALID[plural], patch), field, reason)


@pytest.mark.parametrize("image", VALID_IMAGES)
def test_an_engine_image_in_the_reference_grammar_is_admitted(kube: Any, namespace: str, image: str) -> None:
    name = f"image-{VALID_IMAGES.index(image)}"
    create(
        kube,
        namespace,
        "basemodels",
        merged(VALID["basemodels"], {"metadata": {"name": name}, "spec": {"engine": {"image": image}}}),
    )


def test_a_lora_adapter_keeps_its_base_model(kube: Any, namespace: str) -> None:
    """Moving an adapter to another base model is refused; its other fields still change."""
    api = client.CustomObjectsApi(kube)
    body = merged(VALID["loraadapters"], {"metadata": {"name": "moved"}})
    create(kube, namespace, "loraadapters", body)
    with pytest.raises(ApiException) as refused:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "loraadapters", "moved", {"spec": {"baseModel": "llama-70b"}}
        )
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert "spec.baseModel" in message, message
    assert "immutable" in message, message
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "loraadapters", "moved", {"spec": {"replicas": 3}}
    )
    kept = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "loraadapters", "moved")
    assert kept["spec"]["baseModel"] == "llama-8b"
    assert kept["spec"]["replicas"] == 3


def assert_refused(
    kube: Any, namespace: str, plural: str, body: dict[str, Any], field: str, reason: str
) -> None:
    """The apiserver refuses the object, and its answer names the field and says why."""
    with pytest.raises(ApiException) as refused:
        create(kube, namespace, plural, body)
    assert refused.value.status in (400, 422)
    message = json.loads(refused.value.body)["message"]
    assert field in message, message
    assert reason in message, message


def create(kube: Any, namespace: str, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        plural,
        {"apiVersion": f"{GROUP}/{VERSION}", **body},
        field_validation="Strict",
    )
