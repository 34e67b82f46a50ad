"""The vLLM gauges of a worker's request load, read by the router (to route) and the agent (to report
the load the operator scales the fleet on): their names, and the sum of the two, in one place.
"""

from __future__ import annotations

import re

REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
_LOAD_SERIES = re.compile(
    r"^(?:" + re.escape(REQUESTS_RUNNING) + "|" + re.escape(REQUESTS_WAITING) + r")(?:\{[^}]*\})?\s+(\S+)",
    re.MULTILINE,
)


def requests_in_engine(metrics_text: str) -> float:
    """Requests running or waiting in a vLLM, from its Prometheus text (summed over label sets, e.g.
    engines). A regular expression rather than a parser: the text also holds tens of thousands of
    `vllm:lora_requests_info` series on a busy worker."""
    return sum(float(value) for value in _LOAD_SERIES.findall(metrics_text))
