"""The operator reads every variable docs/operator.md documents, and refuses malformed ones at start."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from loraplex import cli
from loraplex.operator.settings import MetricsScraper, OperatorSettings, SettingsError

DOCS = Path(__file__).parents[2] / "docs" / "operator.md"

# Each documented variable, a value other than its default, and the setting it must change.
VARIABLES: dict[str, tuple[str, str, Any]] = {
    "LORAPLEX_NAMESPACES": ("a,b", "namespaces", ("a", "b")),
    "LORAPLEX_METRICS_PORT": ("9100", "metrics_port", 9100),
    "LORAPLEX_HEALTH_PORT": ("8082", "health_port", 8082),
    "LORAPLEX_PEERING_PRIORITY": ("7", "peering_priority", 7),
    "LORAPLEX_PEERING_LIFETIME": ("45", "peering_lifetime_seconds", 45),
    "LORAPLEX_IMAGE": ("example/loraplex:2", "image", "example/loraplex:2"),
    "LORAPLEX_ROUTER_REPLICAS": ("3", "router_replicas", 3),
    "LORAPLEX_STATUS_INTERVAL": ("5", "status_interval_seconds", 5.0),
    "LORAPLEX_PEERING_NAME": ("other", "peering_name", "other"),
    "LORAPLEX_PLACEMENT_INTERVAL": ("0.25", "placement_interval_seconds", 0.25),
    "LORAPLEX_MAX_REBALANCE_MOVES": ("16", "max_rebalance_moves", 16),
    "LORAPLEX_DISK_SLOTS": ("4096", "disk_slots", 4096),
    "LORAPLEX_STATUS_WRITERS": ("2", "status_writers", 2),
    "LORAPLEX_SCALE_DOWN_DELAY": ("60", "scale_down_delay_seconds", 60.0),
    "LORAPLEX_TRAINER_IMAGE": ("example/trainer:2", "trainer_image", "example/trainer:2"),
    "LORAPLEX_METRICS_SCRAPER": ("false", "metrics_scraper", None),
    "LORAPLEX_METRICS_SCRAPER_NAMESPACE_SELECTOR": (
        '{"matchLabels": {"team": "ops"}}',
        "metrics_scraper",
        MetricsScraper(namespace_selector={"matchLabels": {"team": "ops"}}),
    ),
    "LORAPLEX_METRICS_SCRAPER_POD_SELECTOR": (
        '{"matchLabels": {"app": "vmagent"}}',
        "metrics_scraper",
        MetricsScraper(pod_selector={"matchLabels": {"app": "vmagent"}}),
    ),
}
# The cpu and memory of the containers beside the model: variable -> (setting, its field).
RESOURCES = {
    f"LORAPLEX_{container}_{quantity}": (f"{container.lower()}_resources", field)
    for container in ("AGENT", "ROUTER", "FETCH_MODEL")
    for quantity, field in (
        ("CPU_REQUEST", "cpu_request"),
        ("MEMORY_REQUEST", "memory_request"),
        ("MEMORY_LIMIT", "memory_limit"),
    )
}
OTHER_QUANTITY = {"cpu_request": "50m", "memory_request": "128Mi", "memory_limit": "8Gi"}
VARIABLES |= {
    variable: (
        OTHER_QUANTITY[field],
        attribute,
        dataclasses.replace(getattr(OperatorSettings, attribute), **{field: OTHER_QUANTITY[field]}),
    )
    for variable, (attribute, field) in RESOURCES.items()
}


def documented_variables() -> dict[str, str]:
    """The operator variables table of docs/operator.md: variable -> documented default."""
    rows = re.findall(r"^\|[^|]*\| `(LORAPLEX_[A-Z_]+)`[^|]*\| ([^|]+) \|", DOCS.read_text(), re.MULTILINE)
    return dict(rows)


def test_every_documented_variable_is_covered_here() -> None:
    assert set(documented_variables()) == set(VARIABLES)


@pytest.mark.parametrize("variable", sorted(VARIABLES))
def test_each_documented_variable_changes_its_setting(variable: str) -> None:
    value, attribute, expected = VARIABLES[variable]
    default = getattr(OperatorSettings.from_env({"POD_NAME": "a"}), attribute)
    assert expected != default
    assert getattr(OperatorSettings.from_env({"POD_NAME": "a", variable: value}), attribute) == expected


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("LORAPLEX_PLACEMENT_INTERVAL", "placement_interval_seconds"),
        ("LORAPLEX_MAX_REBALANCE_MOVES", "max_rebalance_moves"),
        ("LORAPLEX_DISK_SLOTS", "disk_slots"),
        ("LORAPLEX_STATUS_WRITERS", "status_writers"),
    ],
)
def test_placement_variables_default_to_what_the_docs_say(variable: str, attribute: str) -> None:
    documented = float(documented_variables()[variable])
    assert getattr(OperatorSettings.from_env({"POD_NAME": "a"}), attribute) == documented


@pytest.mark.parametrize("variable", sorted(RESOURCES))
def test_container_resources_default_to_what_the_docs_say(variable: str) -> None:
    attribute, field = RESOURCES[variable]
    settings = OperatorSettings.from_env({"POD_NAME": "a"})
    assert documented_variables()[variable].strip("`") == getattr(getattr(settings, attribute), field)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LORAPLEX_PLACEMENT_INTERVAL", "soon"),
        ("LORAPLEX_PLACEMENT_INTERVAL", "0"),
        ("LORAPLEX_PLACEMENT_INTERVAL", "nan"),
        ("LORAPLEX_MAX_REBALANCE_MOVES", "1.5"),
        ("LORAPLEX_MAX_REBALANCE_MOVES", "-1"),
        ("LORAPLEX_DISK_SLOTS", "lots"),
        ("LORAPLEX_DISK_SLOTS", "-4"),
        ("LORAPLEX_STATUS_WRITERS", "0"),
        ("LORAPLEX_PEERING_LIFETIME", "5"),
        ("LORAPLEX_METRICS_PORT", "http"),
        ("LORAPLEX_AGENT_CPU_REQUEST", "lots"),
        ("LORAPLEX_FETCH_MODEL_MEMORY_LIMIT", "2 Gi"),
        ("LORAPLEX_ROUTER_MEMORY_REQUEST", "4Gi"),  # above the router's 1Gi memory limit
    ],
)
def test_a_malformed_variable_is_refused_by_name(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}="):
        OperatorSettings.from_env({"POD_NAME": "a", variable: value})


def test_the_operator_command_exits_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORAPLEX_STATUS_WRITERS", "none")
    assert cli.main(["operator"]) == 2
    assert "LORAPLEX_STATUS_WRITERS='none' is not a whole number" in capsys.readouterr().err


def test_kopf_is_given_the_peering_lifetime() -> None:
    from loraplex.operator.main import kopf_settings

    settings = OperatorSettings.from_env({"POD_NAME": "a", "LORAPLEX_PEERING_LIFETIME": "30"})
    configured = kopf_settings(settings)
    assert configured.peering.lifetime == 30
