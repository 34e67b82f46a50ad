"""Authentication: the aiohttp middleware that turns a request's bearer credential into its principal.

With neither API keys nor OIDC configured every request is `ANONYMOUS`.
Otherwise `Authorization: Bearer <credential>` must name an API key in the key
store or, when OIDC is configured, a token its issuer signed; the principal is
stored on the request under `PRINCIPAL`. A request without a good credential
gets 401 in OpenAI's shape (code `invalid_api_key`) with `WWW-Authenticate:
Bearer`; a token that cannot be checked because the issuer's keys are out of
reach gets 503. `/healthz` and `/metrics` stay open (probes and Prometheus).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from loraplex.router.api_keys import ApiKeyStore
from loraplex.router.errors import error_response, unauthenticated
from loraplex.router.oidc import InvalidToken, IssuerUnreachable, OidcVerifier
from loraplex.router.principal import ANONYMOUS, PRINCIPAL, Principal

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Authenticator:
    """API keys and / or OIDC tokens; with neither, everyone is anonymous."""

    def __init__(self, keys: ApiKeyStore | None = None, oidc: OidcVerifier | None = None) -> None:
        self.keys = keys
        self.oidc = oidc

    @property
    def enabled(self) -> bool:
        return self.keys is not None or self.oidc is not None

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal an `Authorization` header authenticates, None when it authenticates no one.
        Raises IssuerUnreachable when a token could not be checked."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return None
        if self.keys is not None and (principal := self.keys.authenticate(credential)) is not None:
            return principal
        if self.oidc is not None and credential.count(".") == 2:
            try:
                return await self.oidc.authenticate(credential)
            except InvalidToken as error:
                log.info("Refused a bearer token: %s", error)
        return None


def middleware(authenticator: Authenticator) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        try:
            principal = await authenticator.authenticate(request.headers.get("Authorization"))
        except IssuerUnreachable as error:
            log.warning("Could not check a bearer token: the issuer's keys are out of reach (%s)", error)
            message = "The token could not be checked; try again shortly."
            return error_response(503, message, "issuer_unreachable")
        if principal is None:
            return unauthenticated(request.headers.get("Authorization") is not None)
        request[PRINCIPAL] = principal
        return await handler(request)

    return authenticate


def principal_of(request: web.Request) -> Principal:
    """The principal the middleware stored (ANONYMOUS where no middleware ran)."""
    principal: Principal = request.get(PRINCIPAL, ANONYMOUS)
    return principal
