"""Who may call a BaseModel's router and use which of its adapters: the `access` fields, the API-key entry.

A BaseModel's `spec.access` says how the router authenticates callers (API keys
from Secrets, OIDC bearer tokens) and who may use the base model and the
catalog's adapters; a LoRAAdapter's `spec.access` says who may use it. The same
rules reach the router as `RouterAccess` (an environment variable the operator
sets, or a file in static mode). An API key is stored only as an `ApiKeyEntry`:
its sha256, the subject it authenticates and that subject's groups.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import Field, JsonValue

from loraplex.api.common import DNS_SUBDOMAIN, ApiModel, cel, validations

# The placeholder of a catalog owner template: the subject the adapter's name binds.
SUBJECT_PLACEHOLDER = "{subject}"

Subject = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^\S+$",
        description="A caller's subject: an API key's subject or a token's subject claim (no spaces).",
    ),
]
Group = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^\S+$",
        description="A group: one of an API key's groups or of a token's groups claim (no spaces).",
    ),
]
# Either list non-empty (absent lists are absent in the object the rules see: no default there).
_ANY_LISTED = "(has(self.subjects) && size(self.subjects) > 0) || (has(self.groups) && size(self.groups) > 0)"
_SET: dict[str, JsonValue] = {"x-kubernetes-list-type": "set"}


class AccessList(ApiModel):
    """Callers allowed: those whose subject is listed, and members of a listed group."""

    subjects: list[Subject] = Field(
        default_factory=list, max_length=256, json_schema_extra=_SET, description="Subjects allowed."
    )
    groups: list[Group] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=_SET,
        description="Groups whose members are allowed.",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                _ANY_LISTED,
                "list subjects or groups (omit the whole field to allow every authenticated caller)",
                reason="FieldValueRequired",
            )
        )
    }


class CatalogAccess(ApiModel):
    """Who may use the catalog's adapters (those without a LoRAAdapter object)."""

    owner: str | None = Field(
        default=None,
        min_length=len(SUBJECT_PLACEHOLDER),
        max_length=253,
        pattern=r"^[a-z0-9.-]*\{subject\}[a-z0-9.-]*$",
        description=(
            "How an adapter's name binds its owner: a template with '{subject}' once, e.g. "
            "'user-{subject}' makes 'user-alice' usable by the subject 'alice' (compared exactly)."
        ),
    )
    subjects: list[Subject] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=_SET,
        description="Subjects that may use every catalog adapter.",
    )
    groups: list[Group] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=_SET,
        description="Groups whose members may use every catalog adapter.",
    )

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.owner) || " + _ANY_LISTED,
                "set owner, subjects or groups (omit catalog to let every authenticated caller use it)",
                reason="FieldValueRequired",
            )
        )
    }


SecretName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of a Secret in the BaseModel's namespace.",
    ),
]


class ApiKeysAuthentication(ApiModel):
    """API keys, kept hashed in Secrets: each data entry of each Secret is one key's `ApiKeyEntry`."""

    secret_names: list[SecretName] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra=_SET,
        description=(
            "Secrets (same namespace) mounted read-only into the router; each data entry is one key "
            "(`loraplex api-key new` prints one). Edits take effect without a restart."
        ),
    )


HttpsUrl = Annotated[
    str,
    Field(
        min_length=9,
        max_length=2048,
        pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s?#]*)?$",
        description="An https:// URL without credentials, query or fragment.",
    ),
]


class OidcAuthentication(ApiModel):
    """OIDC / JWT bearer tokens, verified against the issuer's published keys (JWKS)."""

    issuer: HttpsUrl = Field(description="The issuer URL tokens must name in `iss` (https).")
    audiences: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra=_SET,
        description="Audiences a token's `aud` must include one of.",
    )
    jwks_uri: HttpsUrl | None = Field(
        default=None,
        description=(
            "Where the issuer's keys are (default: jwks_uri in <issuer>/.well-known/openid-configuration)."
        ),
    )
    subject_claim: str = Field(
        default="sub",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_:.-]+$",
        description="Claim holding the caller's subject (default: sub).",
    )
    groups_claim: str = Field(
        default="groups",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_:.-]+$",
        description="Claim holding the caller's groups, a list or one string; dots reach into objects.",
    )


class Authentication(ApiModel):
    """How the router authenticates callers: API keys, OIDC tokens, or both."""

    api_keys: ApiKeysAuthentication | None = Field(default=None, description="API keys from Secrets.")
    oidc: OidcAuthentication | None = Field(default=None, description="OIDC / JWT bearer tokens.")

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.apiKeys) || has(self.oidc)",
                "set apiKeys, oidc or both (omit authentication to accept every caller)",
                reason="FieldValueRequired",
            )
        )
    }


class BaseModelAccess(ApiModel):
    """Who may call this BaseModel's router and use the base model and the catalog's adapters."""

    authentication: Authentication | None = Field(
        default=None,
        description=(
            "How callers authenticate. Omitted: the router accepts every caller as anonymous, and "
            "only adapters without access lists are usable (fine for a local fleet only)."
        ),
    )
    base_model: AccessList | None = Field(
        default=None, description="Who may use the base model itself (default: every authenticated caller)."
    )
    catalog: CatalogAccess | None = Field(
        default=None,
        description="Who may use the catalog's adapters (default: every authenticated caller).",
    )


class RouterAccess(ApiModel):
    """The access rules as the router reads them: from the operator (LORAPLEX_ROUTER_ACCESS, JSON) or a
    file (static mode, `--access-file`, YAML), where `adapters` stands in for LoRAAdapters' access."""

    base_model: AccessList | None = None
    catalog: CatalogAccess | None = None
    adapters: dict[str, AccessList] = Field(default_factory=dict)


class ApiKeyEntry(ApiModel):
    """One API key as a Secret's data entry holds it (YAML or JSON): never the key, only its digest."""

    sha256: str = Field(pattern=r"^[a-f0-9]{64}$", description="Hex sha256 of the key.")
    subject: Subject
    groups: list[Group] = Field(default_factory=list, max_length=256)


def key_digest(key: str) -> str:
    """The hex sha256 an `ApiKeyEntry` stores for a key. Unsalted is enough: keys are 256 random bits,
    not passwords a dictionary could guess."""
    return hashlib.sha256(key.encode()).hexdigest()
