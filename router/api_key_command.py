"""`loraplex api-key new`: a fresh random API key, shown once, and the Secret entry that stores its hash.

The key (`lpx_` and 43 URL-safe characters: 256 random bits) goes to stderr, or
to `--key-file` (mode 0600); stdout gets what to store, never the key: the data
entry (`<name>: <ApiKeyEntry JSON>`), or with `--secret` a whole Secret
manifest to `kubectl apply` (docs/router.md says how to add a key to an existing
Secret and how to revoke one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from loraplex.api.access import ApiKeyEntry, key_digest

PREFIX = "lpx_"


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="api_key_command", required=True, metavar="ACTION")
    new = actions.add_parser(
        "new",
        help="Make a new API key: print it once, and the Secret entry (its sha256, subject, groups).",
        description="Make a new API key for the router (docs/router.md, Authentication).",
    )
    new.add_argument("--subject", required=True, help="Who the key authenticates, e.g. alice.")
    new.add_argument("--group", action="append", default=[], help="A group the subject is in (repeatable).")
    new.add_argument("--secret", help="Print a whole Secret manifest of this name (else only the entry).")
    new.add_argument("--namespace", help="The Secret's namespace (with --secret).")
    new.add_argument("--key-file", type=Path, help="Write the key here (mode 0600) instead of stderr.")
    new.set_defaults(handler=run_new)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def entry_name(entry: ApiKeyEntry) -> str:
    """The Secret data key of an entry: its subject (as far as a data key allows) and a digest prefix."""
    subject = re.sub(r"[^-._a-zA-Z0-9]", "-", entry.subject)[:200]
    return f"{subject}-{entry.sha256[:12]}"


def entry_text(entry: ApiKeyEntry) -> str:
    return json.dumps(entry.model_dump(mode="json"), separators=(",", ":"))


def secret_manifest(name: str, namespace: str | None, entry: ApiKeyEntry) -> dict[str, object]:
    metadata: dict[str, str] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {entry_name(entry): entry_text(entry)},
    }


def run_new(args: argparse.Namespace) -> int:
    key = new_key()
    try:
        entry = ApiKeyEntry(sha256=key_digest(key), subject=args.subject, groups=sorted(set(args.group)))
    except ValidationError:
        print("loraplex api-key new: a subject and groups are 1-256 characters, no spaces", file=sys.stderr)
        return 2
    if args.secret:
        sys.stdout.write(yaml.safe_dump(secret_manifest(args.secret, args.namespace, entry), sort_keys=False))
    else:
        sys.stdout.write(yaml.safe_dump({entry_name(entry): entry_text(entry)}, sort_keys=False))
    if args.key_file is not None:
        fd = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        print(f"Wrote the API key for {entry.subject} to {args.key_file}", file=sys.stderr)
    else:
        print(f"API key for {entry.subject} (shown only now; store it safely): {key}", file=sys.stderr)
    return 0
