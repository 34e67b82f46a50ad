"""Which adapters were used recently on this worker: the input to the operator's warmth.

vLLM's `vllm:lora_requests_info` gauge keeps one series per distinct set of
running and waiting adapters it has scheduled, each set to the wall-clock time
of the last engine step that saw that set; the series stay. So an adapter's
last use is the newest value among the series that name it. That is activity,
not residency (an idle adapter can stay registered), and the agent reads it
only to tell the operator which of the adapters it holds were used within a
window (`status.adapters[].active`). The operator ranks a used adapter above
an idle one of the same priority for the faster tiers (docs/residency.md).

A router's `ensure` call counts too (a request for the adapter is on its
way). Loading alone does not: an adapter placed and never asked for stays idle.
vLLM takes the sets after each engine step, so a request done within the step
that scheduled it (one token: the agent's own warm-up requests) leaves no trace.
vLLM names copies by their engine name (`<name>@<revision>` for a revision
swapped in beside another): `by_adapter` turns those back into adapter names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from loraplex.api.workerplacement import adapter_of_engine_name

DEFAULT_ACTIVE_WINDOW = 300.0  # seconds since its last use that an adapter counts as active
DEFAULT_ACTIVITY_INTERVAL = 10.0  # seconds between reads of vLLM's /metrics
LORA_INFO = "vllm:lora_requests_info"
_SERIES = re.compile(r"^" + re.escape(LORA_INFO) + r"\{([^}]*)\}\s+(\S+)", re.MULTILINE)
_ADAPTER_LABEL = re.compile(r'(?:running|waiting)_lora_adapters="([^"]*)"')


def last_use(metrics_text: str) -> dict[str, float]:
    """adapter -> the newest time (seconds since the epoch) vLLM scheduled a request for it.

    A regular expression, not a full exposition parser: vLLM never drops a set once seen, so a busy
    worker's exposition grows to tens of thousands of these series, and the agent reads it every few
    seconds (off its event loop). Adapter names cannot hold quotes, commas or backslashes (they are
    Kubernetes names), so label values need no unescaping.
    """
    seen: dict[str, float] = {}
    for labels, value in _SERIES.findall(metrics_text):
        when = float(value)
        for names in _ADAPTER_LABEL.findall(labels):
            for name in filter(None, names.split(",")):
                if when > seen.get(name, float("-inf")):
                    seen[name] = when
    return seen


def by_adapter(seen: Mapping[str, float]) -> dict[str, float]:
    """`last_use` by adapter: each adapter's newest use under any of its engine names."""
    uses: dict[str, float] = {}
    for engine_name, when in seen.items():
        name = adapter_of_engine_name(engine_name)
        uses[name] = max(when, uses.get(name, when))
    return uses


class Activity:
    """Each held adapter's last use (wall-clock seconds), and which were used within `window`."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._last: dict[str, float] = {}

    def used(self, name: str, when: float) -> None:
        if when > self._last.get(name, float("-inf")):
            self._last[name] = when

    def merge(self, seen: Mapping[str, float], held: Iterable[str]) -> None:
        """Take in what vLLM reports, for the adapters held now; forget the rest.

        vLLM's series outlive the adapters they name, so an adapter unloaded long ago must not come
        back through them, and the record stays as small as what the worker holds.
        """
        held = set(held)
        self._last = {name: when for name, when in self._last.items() if name in held}
        for name, when in seen.items():
            if name in held:
                self.used(name, when)

    def active(self, now: float) -> set[str]:
        return {name for name, when in self._last.items() if now - when < self.window}
