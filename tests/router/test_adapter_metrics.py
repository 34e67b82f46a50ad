"""Per-adapter router metrics stay bounded on a fleet of tens of thousands of named adapters."""

from __future__ import annotations

from unittest import mock

from prometheus_client import generate_latest

from loraplex.router.metrics import IDLE_SECONDS, OTHER, RouterMetrics


def adapter_series(metrics: RouterMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(f"{name}{{")]


def test_ten_thousand_named_adapters_make_a_bounded_number_of_series() -> None:
    metrics = RouterMetrics("tiny", adapter_labels=20)
    for index in range(10_000):
        metrics.adapter_request(f"adapter-{index}", 0.1)
        metrics.over_bound_request(f"adapter-{index}")
    requests = adapter_series(metrics, "loraplex_router_adapter_requests_total")
    assert len(requests) == 21  # twenty named, the rest as one
    assert f'loraplex_router_adapter_requests_total{{adapter="{OTHER}"}} 9980.0' in requests
    assert len(adapter_series(metrics, "loraplex_router_over_bound_requests_total")) == 22  # and _catalog


def test_an_idle_adapter_gives_its_place_and_its_series_up() -> None:
    metrics = RouterMetrics("tiny", adapter_labels=1)
    with mock.patch("loraplex.router.metrics.time.monotonic", return_value=0.0):
        metrics.adapter_request("sql-gen", 0.1)
        metrics.adapter_request("chat-bot", 0.1)  # no room: counted as _other
    with mock.patch("loraplex.router.metrics.time.monotonic", return_value=IDLE_SECONDS + 1):
        metrics.prune(named=lambda _: True, workers=())
        metrics.adapter_request("chat-bot", 0.1)
    requests = adapter_series(metrics, "loraplex_router_adapter_requests_total")
    assert not [line for line in requests if 'adapter="sql-gen"' in line]
    assert 'loraplex_router_adapter_requests_total{adapter="chat-bot"} 1.0' in requests


def test_the_catalog_and_the_base_model_never_take_a_named_place() -> None:
    metrics = RouterMetrics("tiny", adapter_labels=1)
    metrics.adapter_request("_catalog", 0.1)
    metrics.adapter_request("_base", 0.1)
    metrics.adapter_request("sql-gen", 0.1)
    series = adapter_series(metrics, "loraplex_router_adapter_requests_total")
    labels = {line.split('"')[1] for line in series}
    assert labels == {"_catalog", "_base", "sql-gen"}
