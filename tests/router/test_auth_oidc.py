"""OIDC bearer tokens (loraplex.router.oidc) checked against a real issuer's JWKS served over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest

from loraplex.router.oidc import InvalidToken, IssuerUnreachable, OidcSettings, OidcVerifier
from tests.router.auth_issuer import KID, LocalIssuer


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


def verifier(issuer: LocalIssuer, **options: object) -> OidcVerifier:
    settings = {"issuer": issuer.issuer, "audiences": ("loraplex", "other")} | options
    return OidcVerifier(OidcSettings(**settings))  # type: ignore[arg-type]


async def test_a_token_the_issuer_signed_authenticates_its_subject_and_groups(issuer: LocalIssuer) -> None:
    principal = await verifier(issuer).authenticate(issuer.token("alice", groups=["team-a", "ops"]))
    assert (principal.subject, principal.groups, principal.authenticated) == (
        "alice",
        {"team-a", "ops"},
        True,
    )


async def test_the_jwks_is_found_through_the_openid_configuration_or_given(issuer: LocalIssuer) -> None:
    given = verifier(issuer, jwks_uri=f"{issuer.issuer}/jwks")
    assert (await given.authenticate(issuer.token("bob"))).subject == "bob"


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("wrong signature", lambda i: i.forged("alice")),
        ("wrong audience", lambda i: i.token("alice", audience="someone-else")),
        ("expired", lambda i: i.token("alice", exp=int(time.time()) - 3600)),
        ("not yet valid", lambda i: i.token("alice", nbf=int(time.time()) + 3600)),
        ("wrong issuer", lambda i: i.token("alice", iss="https://evil.example")),
        (
            "no exp",
            lambda i: jwt.encode(
                {"iss": i.issuer, "sub": "a", "aud": "loraplex"}, i.key, "RS256", headers={"kid": KID}
            ),
        ),
        ("shared secret", lambda i: jwt.encode(i.claims("alice"), "s" * 32, "HS256", headers={"kid": KID})),
        ("unsigned", lambda i: jwt.encode(i.claims("alice"), None, "none", headers={"kid": KID})),
        ("unknown key", lambda i: jwt.encode(i.claims("alice"), i.key, "RS256", headers={"kid": "other"})),
        ("no subject", lambda i: i.token("")),
        ("not a token", lambda i: "a.b.c"),
    ],
)
async def test_a_bad_token_is_refused(issuer: LocalIssuer, why: str, make: object) -> None:
    token = make(issuer)  # type: ignore[operator]
    with pytest.raises(InvalidToken):
        await verifier(issuer).authenticate(token)


async def test_subject_and_groups_come_from_the_configured_claims(issuer: LocalIssuer) -> None:
    token = issuer.token("ignored", email="carol@example.com", realm_access={"roles": ["admins"]})
    check = verifier(issuer, subject_claim="email", groups_claim="realm_access.roles")
    principal = await check.authenticate(token)
    assert (principal.subject, principal.groups) == ("carol@example.com", {"admins"})


async def test_an_issuer_out_of_reach_is_not_an_invalid_token() -> None:
    check = OidcVerifier(OidcSettings("http://127.0.0.1:9", ("loraplex",)))
    with pytest.raises(IssuerUnreachable):
        await check.authenticate("a.b.c")
