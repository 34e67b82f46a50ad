"""Per-principal metrics stay bounded: a few subjects named, the rest `_other`, idle ones give way."""

from __future__ import annotations

from prometheus_client import generate_latest

from loraplex.router.metrics import OTHER, BoundedLabels, RouterMetrics


def test_only_the_first_subjects_while_there_is_room_are_named() -> None:
    labels = BoundedLabels(2)
    assert [labels.label(s, 0) for s in ("alice", "bob", "carol", "alice")] == [
        "alice",
        "bob",
        OTHER,
        "alice",
    ]


def test_an_idle_subject_gives_its_place_up() -> None:
    labels = BoundedLabels(2)
    labels.label("alice", 0)
    labels.label("bob", 500)
    assert labels.idle(1000) == ["alice"]  # idle 1000 s; bob 500 s
    assert labels.label("carol", 1000) == "carol"
    assert labels.label("dave", 1000) == OTHER


def test_a_thousand_principals_make_a_bounded_number_of_series() -> None:
    metrics = RouterMetrics("tiny", principal_labels=5)
    for index in range(1000):
        subject = f"user-{index}"
        metrics.principal_request(subject)
        metrics.tokens_used(subject, "_catalog", 10)
        metrics.quota_refusal(subject, "_catalog", "principal", "requests")
    text = generate_latest(metrics.registry).decode()
    samples = [
        line for line in text.splitlines() if line.startswith("loraplex_router_principal_requests_total{")
    ]
    assert len(samples) == 6  # five named, and _other
    assert f'loraplex_router_principal_requests_total{{principal="{OTHER}"}} 995.0' in text
    assert 'loraplex_router_principal_tokens_total{principal="user-0"} 10.0' in text
    assert 'loraplex_router_adapter_tokens_total{adapter="_catalog"} 10000.0' in text
    refusals = "loraplex_router_principal_quota_refusals_total"
    assert f'{refusals}{{budget="requests",principal="user-4",scope="principal"}} 1.0' in text


def test_pruning_drops_the_series_of_idle_principals() -> None:
    metrics = RouterMetrics("tiny", principal_labels=5)
    metrics.principal_request("alice")
    metrics.quota_refusal("alice", "_base", "principal", "tokens")
    metrics.prune_principals(now=float("inf"))
    assert 'principal="alice"' not in generate_latest(metrics.registry).decode()
