"""OIDC bearer tokens: a JWT verified against its issuer's published keys, turned into a principal.

The issuer's keys (its JWKS) come from the configured `jwks_uri`, else from the
`jwks_uri` of `<issuer>/.well-known/openid-configuration`; PyJWT's
`PyJWKClient` fetches and caches them, and fetches again (at most every 30 s)
when a token names a key it does not know, so the issuer's key rotation needs
no restart. A token passes when its signature verifies with one of those keys
under an asymmetric algorithm (never `none` or a shared secret), its `iss` is
the issuer, its `aud` names one of the audiences, and `exp` / `nbf` hold (30 s
of leeway for clock skew). Its subject and groups come from the configured
claims (dots reach into objects, e.g. `realm_access.roles`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from loraplex.router.principal import Principal

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_SECONDS = 30
FETCH_TIMEOUT_SECONDS = 10


class InvalidToken(Exception):
    """The token does not authenticate anyone (its signature, issuer, audience, times or claims)."""


class IssuerUnreachable(Exception):
    """The issuer's keys could not be fetched: the token could not be checked either way."""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = None
    subject_claim: str = "sub"
    groups_claim: str = "groups"


class OidcVerifier:
    def __init__(self, settings: OidcSettings) -> None:
        if not settings.audiences:
            raise ValueError("OIDC needs at least one audience")
        self.settings = settings
        self._client: jwt.PyJWKClient | None = None
        self._lock = asyncio.Lock()

    async def authenticate(self, token: str) -> Principal:
        """The principal a token authenticates; InvalidToken or IssuerUnreachable otherwise."""
        client = await self._jwks_client()
        try:
            return await asyncio.to_thread(self._verify, client, token)
        except jwt.PyJWKClientConnectionError as error:
            raise IssuerUnreachable(str(error)) from error
        except (jwt.PyJWTError, ValueError) as error:
            raise InvalidToken(str(error) or type(error).__name__) from error

    def _verify(self, client: jwt.PyJWKClient, token: str) -> Principal:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key,
            algorithms=list(ALGORITHMS),
            audience=list(self.settings.audiences),
            issuer=self.settings.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud"]},
        )
        return principal_from_claims(claims, self.settings.subject_claim, self.settings.groups_claim)

    async def _jwks_client(self) -> jwt.PyJWKClient:
        async with self._lock:
            if self._client is None:
                uri = self.settings.jwks_uri
                if uri is None:
                    uri = await asyncio.to_thread(discover_jwks_uri, self.settings.issuer)
                self._client = jwt.PyJWKClient(uri, lifespan=300, timeout=FETCH_TIMEOUT_SECONDS)
            return self._client


def discover_jwks_uri(issuer: str) -> str:
    """The `jwks_uri` of the issuer's OpenID configuration."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as response:
            document: Any = json.loads(response.read())
    except (OSError, ValueError) as error:
        raise IssuerUnreachable(f"{url}: {error}") from error
    uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(uri, str) or not uri:
        raise IssuerUnreachable(f"{url} names no jwks_uri")
    return uri


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into objects when no claim has the whole name."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def principal_from_claims(claims: Mapping[str, Any], subject_claim: str, groups_claim: str) -> Principal:
    subject = claim(claims, subject_claim)
    if not isinstance(subject, str) or not subject:
        raise InvalidToken(f"the token has no string claim {subject_claim!r}")
    groups: Any = claim(claims, groups_claim)
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, Sequence):
        groups = []
    return Principal(subject, frozenset(g for g in groups if isinstance(g, str)))
