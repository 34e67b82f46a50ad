"""BaseModel `spec.quotas` on the real API server: good quotas admitted, bad ones refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.test_admission_refuses_bad_manifests import VALID, assert_refused, create, merged

pytestmark = pytest.mark.cluster

GOOD = {
    "perPrincipal": {"requestsPerMinute": 60, "tokensPerMinute": 100000},
    "perAdapter": {"requestsPerMinute": 600},
    "principals": [{"subject": "batch-job@example.com", "tokensPerMinute": 1000000}],
    "adapters": [
        {"name": "meta-llama/Llama-3-8B", "requestsPerMinute": 1200},
        {"name": "sql-gen", "tokensPerMinute": 1},
    ],
}

# (spec.quotas, the field the refusal must name, a word of the reason)
BAD: list[tuple[dict[str, Any], str, str]] = [
    (
        {"perPrincipal": {"requestsPerMinute": 0}},
        "spec.quotas.perPrincipal.requestsPerMinute",
        "greater than or equal",
    ),
    (
        {"perAdapter": {"tokensPerMinute": -5}},
        "spec.quotas.perAdapter.tokensPerMinute",
        "greater than or equal",
    ),
    (
        {"perPrincipal": {"requestsPerMinute": 10**10}},
        "spec.quotas.perPrincipal.requestsPerMinute",
        "less than",
    ),
    (
        {"perPrincipal": {"requestsPerSecond": 5}},
        "spec.quotas.perPrincipal.requestsPerSecond",
        "unknown field",
    ),
    (
        {"principals": [{"subject": "alice"}]},
        "spec.quotas.principals[0]",
        "requestsPerMinute or tokensPerMinute",
    ),
    ({"principals": [{"requestsPerMinute": 5}]}, "spec.quotas.principals[0].subject", "Required"),
    (
        {"principals": [{"subject": "", "requestsPerMinute": 5}]},
        "spec.quotas.principals[0].subject",
        "at least",
    ),
    (
        {
            "principals": [
                {"subject": "alice", "requestsPerMinute": 5},
                {"subject": "alice", "tokensPerMinute": 5},
            ]
        },
        "spec.quotas.principals[1]",
        "Duplicate",
    ),
    (
        {"adapters": [{"name": "../etc", "requestsPerMinute": 5}]},
        "spec.quotas.adapters[0].name",
        "should match",
    ),
    (
        {"adapters": [{"name": "sql", "requestsPerMinute": 5}, {"name": "sql", "requestsPerMinute": 6}]},
        "spec.quotas.adapters[1]",
        "Duplicate",
    ),
]


def test_good_quotas_are_admitted(kube: Any, namespace: str) -> None:
    body = merged(VALID["basemodels"], {"metadata": {"name": "with-quotas"}, "spec": {"quotas": GOOD}})
    create(kube, namespace, "basemodels", body)


@pytest.mark.parametrize(("quotas", "field", "reason"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_quotas_are_refused_naming_the_field(
    kube: Any, namespace: str, quotas: dict[str, Any], field: str, reason: str
) -> None:
    body = merged(VALID["basemodels"], {"spec": {"quotas": quotas}})
    assert_refused(kube, namespace, "basemodels", body, field, reason)
