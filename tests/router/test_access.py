"""Authorization (loraplex.router.access): who may use the base model, a named adapter, a catalog adapter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraplex.api.access import AccessList, CatalogAccess, RouterAccess
from loraplex.router.access import may_use, owner
from loraplex.router.principal import ANONYMOUS, Principal

ALICE = Principal("alice", frozenset({"team-a"}))
BOB = Principal("bob", frozenset({"team-b"}))
ADMIN = Principal("root", frozenset({"admins"}))
OPEN = RouterAccess()
PERSONAL = RouterAccess(catalog=CatalogAccess(owner="user-{subject}", groups=["admins"]))

subjects = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


def test_without_rules_every_caller_let_in_uses_everything() -> None:
    for principal in (ALICE, ANONYMOUS):
        assert may_use(OPEN, principal, None)
        assert may_use(OPEN, principal, "sql", named=True)
        assert may_use(OPEN, principal, "user-bob")


def test_an_adapters_own_list_admits_its_subjects_and_groups_only() -> None:
    rule = AccessList(subjects=["alice"], groups=["team-c"])
    assert may_use(OPEN, ALICE, "sql", named=True, rule=rule)
    assert not may_use(OPEN, BOB, "sql", named=True, rule=rule)
    assert may_use(OPEN, Principal("carol", frozenset({"team-c"})), "sql", named=True, rule=rule)
    assert not may_use(OPEN, ANONYMOUS, "sql", named=True, rule=rule)


def test_the_static_files_adapters_stand_in_for_loraadapters() -> None:
    access = RouterAccess(adapters={"sql": AccessList(groups=["team-a"])})
    assert may_use(access, ALICE, "sql")
    assert not may_use(access, BOB, "sql")


def test_a_loraadapters_rule_wins_over_the_catalog() -> None:
    assert not may_use(PERSONAL, ALICE, "user-alice", named=True, rule=AccessList(subjects=["bob"]))


def test_a_catalog_adapter_is_its_owners_and_the_listed_groups() -> None:
    assert may_use(PERSONAL, ALICE, "user-alice")
    assert not may_use(PERSONAL, BOB, "user-alice")
    assert may_use(PERSONAL, ADMIN, "user-alice")
    assert not may_use(PERSONAL, ALICE, "other-alice")
    assert not may_use(PERSONAL, ANONYMOUS, "user-anonymous")
    # A named adapter without a rule of its own stays shared, even under a personal catalog.
    assert may_use(PERSONAL, BOB, "user-alice", named=True)


def test_the_base_model_follows_its_own_list() -> None:
    access = RouterAccess(base_model=AccessList(groups=["team-a"]))
    assert may_use(access, ALICE, None)
    assert not may_use(access, BOB, None)
    assert not may_use(access, ANONYMOUS, None)


@pytest.mark.parametrize(
    ("template", "adapter", "bound"),
    [
        ("user-{subject}", "user-alice", "alice"),
        ("user-{subject}", "user-", None),
        ("user-{subject}", "usr-alice", None),
        ("{subject}-lora", "alice-lora", "alice"),
        ("{subject}", "alice", "alice"),
        ("a-{subject}-b", "a-b", None),
    ],
)
def test_owner_templates_bind_names_to_subjects(template: str, adapter: str, bound: str | None) -> None:
    assert owner(template, adapter) == bound


@given(subjects, subjects)
def test_nobody_may_use_another_subjects_personal_adapter(mine: str, theirs: str) -> None:
    me = Principal(mine)
    assert may_use(PERSONAL, me, f"user-{mine}")
    assert may_use(PERSONAL, me, f"user-{theirs}") == (mine == theirs)


@given(
    st.lists(subjects, max_size=4), st.lists(subjects, max_size=4), subjects, st.sets(subjects, max_size=3)
)
def test_an_explicit_list_admits_exactly_its_members(
    listed: list[str], groups: list[str], subject: str, member_of: set[str]
) -> None:
    if not listed and not groups:
        return
    rule = AccessList(subjects=listed, groups=groups)
    allowed = subject in listed or bool(member_of & set(groups))
    assert may_use(OPEN, Principal(subject, frozenset(member_of)), "x", rule=rule) == allowed
    assert not may_use(OPEN, ANONYMOUS, "x", rule=rule)


def test_the_anonymous_caller_is_in_no_list_even_one_naming_its_subject() -> None:
    rule = AccessList(subjects=["anonymous"])
    assert not may_use(OPEN, ANONYMOUS, "sql", rule=rule)
    assert not may_use(RouterAccess(catalog=CatalogAccess(subjects=["anonymous"])), ANONYMOUS, "user-x")
    assert may_use(OPEN, Principal("anonymous"), "sql", rule=rule)  # a key whose subject is that name
