"""The agent's convergence plan: what to unload, fetch and load for what the operator wants."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraplex.api.wire import to_wire
from loraplex.api.workerplacement import ResidentAdapter, adapter_of_engine_name, revision_engine_name
from loraplex.worker.agent.residency import (
    Fetch,
    Load,
    LoadFailure,
    RegisteredAdapter,
    RetiringCopy,
    Slots,
    WantedAdapter,
    engine_name_for,
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
        Load("a", "aaaa", "a", warm=True),
        Load("b", "bbbb", "b", warm=False),
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


def test_a_new_revision_loads_beside_the_old_one_under_its_own_name_and_a_cpu_to_gpu_move_only_warms() -> (
    None
):
    registered = {"a": reg("a", sha="old1"), "b": reg("b")}
    plan = plan_convergence(
        [want("a", "CPU", sha="new1"), want("b", "GPU")], registered, {"new1"}, {}, SLOTS, 0
    )
    assert plan.fetch == []
    assert plan.load == [Load("a", "new1", "a@new1", warm=False)]
    assert (plan.unload, plan.retire) == ([], [])  # the old copy serves until the new one is reported
    assert plan.warm == ["b"]


def test_the_next_revision_takes_the_adapters_own_name_again_once_the_old_copy_is_gone() -> None:
    registered = {"a": reg("a", sha="new1", engine_name="a@new1")}
    plan = plan_convergence([want("a", "GPU", sha="next")], registered, {"next"}, {}, SLOTS, 0)
    assert plan.load == [Load("a", "next", "a", warm=True)]
    retiring = {"a": RetiringCopy(reg("a", sha="old1"))}  # the revision before is still draining
    plan = plan_convergence(
        [want("a", "GPU", sha="next")], registered, {"next"}, {}, SLOTS, 0, retiring=retiring
    )
    assert plan.load == [Load("a", "next", "a@next", warm=True)]


def test_a_replaced_copy_is_unloaded_only_once_its_drain_after_the_switch_was_reported_has_passed() -> None:
    registered = {"a": reg("a", sha="new1", engine_name="a@new1")}
    wanted = [want("a", sha="new1")]
    not_reported = {"a": RetiringCopy(reg("a", sha="old1"))}
    assert plan_convergence(wanted, registered, {"new1"}, {}, SLOTS, 100.0, retiring=not_reported).empty
    draining = {"a": RetiringCopy(reg("a", sha="old1"), unload_after=10.0)}
    assert plan_convergence(wanted, registered, {"new1"}, {}, SLOTS, 9.9, retiring=draining).empty
    plan = plan_convergence(wanted, registered, {"new1"}, {}, SLOTS, 10.0, retiring=draining)
    assert (plan.retire, plan.unload, plan.load) == (["a"], [], [])


def test_a_replaced_copy_of_an_adapter_being_deleted_goes_at_once() -> None:
    registered = {"x": reg("x", sha="new1", engine_name="x@new1", on_demand=True)}
    retiring = {"x": RetiringCopy(reg("x", sha="old1", on_demand=True))}
    plan = plan_convergence([], registered, set(), {}, SLOTS, 0, unload={"x"}, retiring=retiring)
    assert (plan.retire, plan.unload) == (["x"], ["x"])


def test_a_replaced_copy_at_the_revision_wanted_again_comes_back_without_a_load() -> None:
    registered = {"a": reg("a", sha="new1", engine_name="a@new1")}
    retiring = {"a": RetiringCopy(reg("a", sha="old1", warm=True), unload_after=50.0)}
    plan = plan_convergence(
        [want("a", "GPU", sha="old1")], registered, {"old1"}, {}, SLOTS, 0, retiring=retiring
    )
    assert plan.load == [Load("a", "old1", "a", warm=True, revive=True)]
    assert plan.fetch == []


def test_engine_names_map_back_to_their_adapter() -> None:
    digest = "0123456789abcdef" * 4
    assert revision_engine_name("sql-gen", digest) == "sql-gen@0123456789ab"
    assert adapter_of_engine_name(revision_engine_name("sql-gen", digest)) == "sql-gen"
    assert adapter_of_engine_name("sql-gen") == "sql-gen"
    assert engine_name_for("sql-gen", digest, set()) == "sql-gen"
    assert engine_name_for("sql-gen", digest, {"sql-gen"}) == "sql-gen@0123456789ab"
    assert engine_name_for("sql-gen", digest, {"sql-gen", "sql-gen@0123456789ab"}) is None
    entry = ResidentAdapter(name="sql-gen", sha256=digest, tier="CPU", engine_name="sql-gen@0123456789ab")
    assert ResidentAdapter.model_validate(to_wire(entry)).engine_name == "sql-gen@0123456789ab"
    with pytest.raises(ValidationError):  # the shape the CRD admits: an adapter name and a revision
        ResidentAdapter(name="sql-gen", tier="CPU", engine_name="sql-gen@not-hex")


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
