"""Who is calling the router: the principal that authentication yields and authorization and quotas read.

Authentication (`loraplex.router.auth`) stores one `Principal` on every request under
`PRINCIPAL`; when authentication is off every request is `ANONYMOUS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Principal:
    """A caller: its subject (an API key's subject or a token's `sub`) and the groups it belongs to."""

    subject: str
    groups: frozenset[str] = field(default_factory=frozenset)
    authenticated: bool = True


ANONYMOUS = Principal("anonymous", frozenset(), authenticated=False)

# The aiohttp request key the principal is stored under (a typed key: aiohttp warns about str keys).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("loraplex.principal", Principal)
