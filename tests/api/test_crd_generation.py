"""The CRDs in crds/ are exactly what the API models generate, and are structural and bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex.api import crd, reference
from loraplex.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_the_models(kind: crd.Kind) -> None:
    committed = (ROOT / "crds" / crd.file_name(kind)).read_text()
    assert committed == crd.render(kind), "crds/ is stale: run `loraplex crds generate`"


def test_committed_api_reference_matches_the_models() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == reference.render(), "run `loraplex crds generate`"


def test_api_reference_lists_cross_field_rules() -> None:
    text = reference.render()
    assert "engine.maxCpuLoras must be at least engine.maxLoras" in text
    assert "set exactly one of training.steps and training.epochs" in text
    assert "| `spec.source.sha256` | string | required |" in text


@pytest.mark.parametrize("victim", [crd.file_name(crd.KINDS[1]), "api.md"])
def test_generate_check_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], victim: str
) -> None:
    args = ["crds", "generate", "--dir", str(tmp_path), "--docs", str(tmp_path / "api.md")]
    args += ["--chart-dir", str(tmp_path / "chart")]
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    stale = tmp_path / victim
    stale.write_text(stale.read_text().replace("maxItems", "maxItemz").replace("required", "optional"))
    assert main([*args, "--check"]) == 1
    assert victim in capsys.readouterr().err


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _spec_nodes() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for kind in crd.KINDS:
        schema = crd.openapi_schema(kind)["properties"]["spec"]
        for path, node in _nodes(schema, "spec"):
            yield kind.kind, path, node


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_schemas_are_structural(kind: crd.Kind) -> None:
    for path, node in _nodes(crd.openapi_schema(kind)):
        assert "type" in node, f"{kind.kind} {path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"):
            assert forbidden not in node, f"{kind.kind} {path} uses {forbidden}"
        assert node.get("additionalProperties", True) is not False, f"{kind.kind} {path}"
        if node.get("type") == "object" and "properties" in node:
            assert set(node.get("required", [])) <= set(node["properties"]), f"{kind.kind} {path}"


def test_every_spec_string_and_list_is_bounded() -> None:
    unbounded = [
        f"{kind} {path}"
        for kind, path, node in _spec_nodes()
        if (node["type"] == "string" and "maxLength" not in node and "enum" not in node)
        or (node["type"] == "array" and "maxItems" not in node)
        or (node["type"] == "object" and "additionalProperties" in node and "maxProperties" not in node)
    ]
    assert unbounded == []


def test_every_spec_number_has_a_range() -> None:
    open_ended = [
        f"{kind} {path}"
        for kind, path, node in _spec_nodes()
        if node["type"] in ("integer", "number")
        and "enum" not in node
        and not ("minimum" in node and "maximum" in node)
    ]
    assert open_ended == []


def test_every_user_written_source_uri_refuses_path_traversal() -> None:
    # WorkerPlacement is written by the operator from LoRAAdapters that passed this rule.
    uris = [
        (kind, path, node)
        for kind, path, node in _spec_nodes()
        if path.endswith((".uri", ".uriTemplate")) and kind != "WorkerPlacement"
    ]
    assert len(uris) == 4  # BaseModel model + catalog, LoRAAdapter source, TrainingJob dataset
    for kind, path, node in uris:
        rules = [v["rule"] for v in node.get("x-kubernetes-validations", [])]
        assert any("'..'" in rule for rule in rules), f"{kind} {path}"


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_crd_names_and_columns(kind: crd.Kind) -> None:
    manifest = crd.crd(kind)
    names = manifest["spec"]["names"]
    assert names["categories"] == ["loraplex"]
    assert names["shortNames"]
    version = manifest["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    if kind.kind == "BaseModel":  # `kubectl scale bm/x` and HPAs set the fleet's floor
        assert version["subresources"]["scale"] == {
            "specReplicasPath": ".spec.replicas.min",
            "statusReplicasPath": ".status.readyWorkers",
            "labelSelectorPath": ".status.workerSelector",
        }
    else:
        assert "scale" not in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"
    assert "Reason" in columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"observedGeneration", "conditions"} <= set(status)
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {"type", "status", "reason", "lastTransitionTime"}


def test_lora_adapter_columns_answer_the_first_question() -> None:
    kind = next(k for k in crd.KINDS if k.kind == "LoRAAdapter")
    shown = [c["name"] for c in kind.columns if not c.get("priority")]
    assert shown[:3] == ["Base", "Phase", "Copies"]


def test_committed_yaml_is_loadable_by_kubectl_style_parsers() -> None:
    for kind in crd.KINDS:
        loaded = yaml.safe_load((ROOT / "crds" / crd.file_name(kind)).read_text())
        assert loaded["metadata"]["name"] == kind.crd_name
