"""Authorization: whether a principal may use the base model or one adapter (a pure function).

The rules: an access list (`subjects`, `groups`) admits an authenticated
principal whose subject is listed or who is in a listed group, and never the
anonymous one. An absent list admits every principal the router let in. The
base model follows `RouterAccess.base_model`; an adapter with a rule of its own
(a LoRAAdapter's `spec.access`, or the static file's `adapters`) follows it; any
other named adapter is open to every principal let in; a catalog adapter
follows `RouterAccess.catalog`: its owner template binds a name to one subject
(`user-{subject}`: `user-alice` is alice's), and its lists admit callers to
every catalog adapter. The proxy answers a refusal exactly as an unknown model.
"""

from __future__ import annotations

from loraplex.api.access import SUBJECT_PLACEHOLDER, AccessList, CatalogAccess, RouterAccess
from loraplex.router.principal import Principal


def listed(rule: AccessList | None, principal: Principal) -> bool:
    """Whether an access list admits the principal (None: every principal the router let in)."""
    if rule is None:
        return True
    if not principal.authenticated:
        return False
    return principal.subject in rule.subjects or not principal.groups.isdisjoint(rule.groups)


def owner(template: str, adapter: str) -> str | None:
    """The subject a catalog adapter's name binds under an owner template (None: it binds none)."""
    prefix, _, suffix = template.partition(SUBJECT_PLACEHOLDER)
    if len(adapter) <= len(prefix) + len(suffix):
        return None
    if not (adapter.startswith(prefix) and adapter.endswith(suffix)):
        return None
    return adapter[len(prefix) : len(adapter) - len(suffix)]


def catalog_allows(catalog: CatalogAccess | None, adapter: str, principal: Principal) -> bool:
    if catalog is None:
        return True
    if not principal.authenticated:
        return False
    if catalog.owner is not None and owner(catalog.owner, adapter) == principal.subject:
        return True
    return principal.subject in catalog.subjects or not principal.groups.isdisjoint(catalog.groups)


def may_use(
    access: RouterAccess,
    principal: Principal,
    adapter: str | None,
    *,
    named: bool = False,
    rule: AccessList | None = None,
) -> bool:
    """Whether the principal may use `adapter` (None: the base model). `named`: it is a LoRAAdapter (or
    a worker holds it as a named one); `rule`: its LoRAAdapter's access list, if it has one (else the
    one `access.adapters` gives it, if any)."""
    if adapter is None:
        return listed(access.base_model, principal)
    if rule is None:
        rule = access.adapters.get(adapter)
    if rule is not None:
        return listed(rule, principal)
    if named:
        return True
    return catalog_allows(access.catalog, adapter, principal)
