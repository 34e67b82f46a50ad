"""The agent's convergence plan: what to unload, fetch and load for what the operator wants."""

from __future__ import annotations

import pytest

from loraplex.worker.agent.residency import (
    Fetch,
    Load,
    LoadFailure,
    RegisteredAdapter,
    Slots,
    WantedAdapter,
    plan_convergence,
    plan_report,
    protected_revisions,
    stale_failures,
)

SLOTS = Slots(gpu=2, cpu=4)


def want(name: str, tier: str = "CPU", sha: str | None = None) -> WantedAdapter:
    return WantedAdapter(name, f"file:///a/{name}", sha or name * 4, tier)  # type: ignore[arg-type]


def reg(name: str, sha: str | None = None, **kw: object) -> RegisteredAdapter:
    return RegisteredAdapter(name, sha or name * 4, **kw)  # type: ignore[arg-type]


def test_missing_adapters_are_fetched_then_loaded_gpu_ones_warmed() -> None:
    plan = plan_convergence([want("b", "CPU"), want("a", "GPU")], {}, set(), {}, SLOTS, now=0)
    assert plan.unload == []
    assert plan.fetch == [Fetch("a", "file:///a/a", "aaaa"), Fetch("b", "file:///a/b", "bbbb")]
    assert plan.load == [
        Load("a", "aaaa", inplace=False, warm=True),
        Load("b", "bbbb", inplace=False, warm=False),
    ]


def test_nothing_to_do_when_everything_wanted_is_held() -> None:
    registered = {"a": reg("a", warm=True), "b": reg("b")}
    plan = plan_convergence([want("a", "GPU"), want("b")], registered, {"aaaa", "bbbb"}, {}, SLOTS, now=0)
    assert plan.empty


def test_unwanted_named_adapters_are_unloaded_and_disk_tier_is_only_fetched() -> None:
    registered = {"old": reg("old"), "d": reg("d")}
    plan = plan_convergence([want("d", "Disk")], registered, set(), {}, SLOTS, now=0)
    assert plan.unload == ["d", "old"]
    assert plan.fetch == [Fetch("d", "file:///a/d", "dddd")]
    assert plan.load == []


def test_a_new_revision_is_loaded_in_place_and_a_cpu_to_gpu_move_only_warms() -> None:
    registered = {"a": reg("a", sha="old1"), "b": reg("b")}
    plan = plan_convergence(
        [want("a", "CPU", sha="new1"), want("b", "GPU")], registered, {"new1"}, {}, SLOTS, 0
    )
    assert plan.fetch == []
    assert plan.load == [Load("a", "new1", inplace=True, warm=False)]
    assert plan.warm == ["b"]


def test_a_failed_revision_waits_for_its_backoff() -> None:
    failures = {"a": LoadFailure("a", "aaaa", "DigestMismatch", "bad", retry_at=10.0)}
    assert plan_convergence([want("a")], {}, set(), failures, SLOTS, now=5.0).empty
    assert plan_convergence([want("a")], {}, set(), failures, SLOTS, now=10.0).load
    # another revision of the same adapter is tried at once
    assert plan_convergence([want("a", sha="fresh")], {}, set(), failures, SLOTS, now=5.0).load


def test_never_more_registered_than_cpu_slots_gpu_first() -> None:
    wanted = [want(n, "CPU") for n in "cdef"] + [want("a", "GPU"), want("b", "GPU")]
    plan = plan_convergence(wanted, {}, set(), {}, SLOTS, now=0)
    assert [load.name for load in plan.load] == ["a", "b", "c", "d"]


def test_on_demand_adapters_use_free_slots_least_recently_used_out_newest_always_stays() -> None:
    registered = {
        "x": reg("x", on_demand=True, catalog=True, last_used=1.0),
        "y": reg("y", on_demand=True, catalog=True, last_used=3.0),
        "z": reg("z", on_demand=True, catalog=True, last_used=2.0),
    }
    plan = plan_convergence([want("a"), want("b")], registered, {"aaaa", "bbbb"}, {}, SLOTS, now=0)
    assert plan.unload == ["x"]
    full = [want(n) for n in "abcd"]
    plan = plan_convergence(full, registered, {n * 4 for n in "abcd"}, {}, SLOTS, now=0)
    assert plan.unload == ["x", "z"]


def test_a_copy_loaded_on_demand_of_an_adapter_being_deleted_goes_however_recently_used() -> None:
    registered = {
        "x": reg("x", on_demand=True, last_used=9.0),  # spilled here by the router; its LoRAAdapter goes
        "y": reg("y", on_demand=True, catalog=True, last_used=1.0),
    }
    plan = plan_convergence([want("a")], registered, {"aaaa"}, {}, SLOTS, now=0, unload={"x"})
    assert plan.unload == ["x"]
    plan = plan_convergence([want("a")], registered, {"aaaa"}, {}, SLOTS, now=0)
    assert plan.unload == []  # room for both: nothing is told to go


def test_report_lists_tiers_and_protects_what_is_wanted_or_loaded() -> None:
    wanted = [want("a", "GPU"), want("b", "CPU"), want("d", "Disk"), want("e", "Disk")]
    registered = {"a": reg("a", warm=True), "b": reg("b"), "c": reg("c", on_demand=True, catalog=True)}
    report = plan_report(wanted, registered, {"dddd"}, SLOTS)
    assert [(r.name, r.on_demand) for r in report if r.tier != "Disk"] == [
        ("a", False),
        ("b", False),
        ("c", True),
    ]
    assert [(r.name, r.tier, r.catalog) for r in report] == [
        ("a", "GPU", False),
        ("b", "CPU", False),
        ("c", "CPU", True),
        ("d", "Disk", False),
    ]
    assert protected_revisions(wanted, registered) == {"aaaa", "bbbb", "cccc", "dddd", "eeee"}


@pytest.mark.parametrize(
    ("failure", "wanted", "ensuring", "stale"),
    [
        (LoadFailure("a", "aaaa", "DigestMismatch", "", retry_at=5), [want("a")], set(), False),
        (LoadFailure("a", "aaaa", "DigestMismatch", "", retry_at=5), [], set(), True),  # moved away
        (LoadFailure("a", "aaaa", "LoadFailed", "", retry_at=5), [want("a", sha="a2a2")], set(), True),
        (LoadFailure("a", "aaaa", "SourceNotFound", "", retry_at=0), [], {"a"}, False),  # ensuring now
        (LoadFailure("a", "aaaa", "SourceNotFound", "", retry_at=5, on_demand=True), [], set(), False),
        (LoadFailure("a", "aaaa", "SourceNotFound", "", retry_at=0, on_demand=True), [], set(), True),
    ],
    ids=[
        "wanted-at-that-revision",
        "no-longer-wanted",
        "wanted-at-another-revision",
        "being-ensured",
        "on-demand-backing-off",
        "on-demand-backoff-over",
    ],
)
def test_failures_of_adapters_no_longer_wanted_here_are_stale(
    failure: LoadFailure, wanted: list[WantedAdapter], ensuring: set[str], stale: bool
) -> None:
    assert stale_failures({"a": failure}, wanted, ensuring, now=1) == (["a"] if stale else [])
