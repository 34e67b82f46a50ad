"""The access fields (BaseModel and LoRAAdapter `spec.access`): admitted when sound, else refused naming
the field: an issuer that is not https, no audience, a Secret name that is not one, an empty access
list, an owner template without its placeholder."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.test_admission_refuses_bad_manifests import VALID, assert_refused, create, merged

pytestmark = pytest.mark.cluster

GOOD_ACCESS = {
    "authentication": {
        "apiKeys": {"secretNames": ["team-keys", "ops.keys"]},
        "oidc": {
            "issuer": "https://login.example.com/realms/ai",
            "audiences": ["loraplex"],
            "jwksUri": "https://login.example.com/realms/ai/certs",
            "groupsClaim": "realm_access.roles",
        },
    },
    "baseModel": {"groups": ["staff"]},
    "catalog": {"owner": "user-{subject}", "groups": ["admins"]},
}


AUTH = "spec.access.authentication"


def access(**fields: Any) -> dict[str, Any]:
    return {"spec": {"access": fields}}


def oidc(**fields: Any) -> dict[str, Any]:
    return access(authentication={"oidc": {"audiences": ["x"], **fields}})


def keys(*names: str) -> dict[str, Any]:
    return access(authentication={"apiKeys": {"secretNames": list(names)}})


HTTPS = "https://a.example"

# (plural, patch over the valid object, the field the refusal must name, a word of the reason)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("basemodels", oidc(issuer="http://login.example.com"), f"{AUTH}.oidc.issuer", "match"),
    ("basemodels", oidc(issuer="https://u:p@login.example.com"), f"{AUTH}.oidc.issuer", "match"),
    ("basemodels", oidc(audiences=[]), f"{AUTH}.oidc.issuer", "Required"),
    ("basemodels", oidc(issuer=HTTPS, audiences=[]), f"{AUTH}.oidc.audiences", "at least 1"),
    ("basemodels", oidc(issuer=HTTPS, jwksUri="file:///etc/keys"), f"{AUTH}.oidc.jwksUri", "match"),
    ("basemodels", keys("Team_Keys"), f"{AUTH}.apiKeys.secretNames[0]", "match"),
    ("basemodels", keys(), f"{AUTH}.apiKeys.secretNames", "at least 1"),
    ("basemodels", access(authentication={}), AUTH, "apiKeys, oidc"),
    ("basemodels", access(baseModel={}), "spec.access.baseModel", "subjects or groups"),
    ("basemodels", access(catalog={"owner": "user-{adapter}"}), "spec.access.catalog.owner", "match"),
    ("basemodels", access(catalog={"owner": "User_{subject}"}), "spec.access.catalog.owner", "match"),
    ("basemodels", access(catalog={}), "spec.access.catalog", "owner, subjects or groups"),
    ("loraadapters", {"spec": {"access": {}}}, "spec.access", "subjects or groups"),
    ("loraadapters", {"spec": {"access": {"subjects": ["a b"]}}}, "spec.access.subjects[0]", "match"),
    ("loraadapters", {"spec": {"access": {"groups": ["ops", "ops"]}}}, "spec.access.groups[1]", "Duplicate"),
]


def test_sound_access_fields_are_admitted(kube: Any, namespace: str) -> None:
    create(kube, namespace, "basemodels", merged(VALID["basemodels"], {"spec": {"access": GOOD_ACCESS}}))
    adapter = merged(VALID["loraadapters"], {"spec": {"access": {"subjects": ["alice"], "groups": ["ops"]}}})
    create(kube, namespace, "loraadapters", adapter)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}:{c[2]}:{c[3]}".replace(" ", "_") for c in CASES])
def test_bad_access_is_refused_naming_the_field(
    kube: Any, namespace: str, case: tuple[str, dict[str, Any], str, str]
) -> None:
    plural, patch, field, reason = case
    assert_refused(kube, namespace, plural, merged(VALID[plural], patch), field, reason)
