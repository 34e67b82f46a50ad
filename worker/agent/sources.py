"""Where an adapter's files come from: parsing source URIs and catalog templates.

Schemes: `file:///abs/path`, `pvc://<claim>/<path>` (the claim is mounted
under the agent's PVC root), `https://host/path` (a tar archive) and
`s3://<bucket>/<key>` (a tar archive, or a prefix whose objects are the
adapter's files). Catalog adapters (no LoRAAdapter object) are found by
putting their name into the BaseModel's catalog template; their digest is the
text of a sibling object `<uri>.sha256`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

ADAPTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class InvalidSource(ValueError):
    """A URI the agent will not fetch (unknown scheme, traversal, bad name)."""


@dataclass(frozen=True)
class Source:
    scheme: str  # "local", "https" or "s3"
    location: str  # local path, URL, or "bucket/key"

    @property
    def is_archive(self) -> bool:
        return self.location.endswith(ARCHIVE_SUFFIXES)

    def sibling(self, suffix: str) -> Source:
        return Source(self.scheme, self.location.rstrip("/") + suffix)


def _no_traversal(path: str) -> None:
    if any(part in ("..", ".") for part in PurePosixPath(path).parts) or "\x00" in path:
        raise InvalidSource(f"path {path!r} may not contain '.', '..' or NUL segments")


def parse_source(uri: str, pvc_root: Path) -> Source:
    parts = urlsplit(uri)
    path = unquote(parts.path)
    _no_traversal(path)
    if parts.scheme == "file":
        if parts.netloc:
            raise InvalidSource(f"file URI {uri!r} must be file:///absolute/path")
        return Source("local", path)
    if parts.scheme == "pvc":
        if not parts.netloc:
            raise InvalidSource(f"pvc URI {uri!r} must name a claim: pvc://<claim>/<path>")
        return Source("local", str(pvc_root / parts.netloc / path.lstrip("/")))
    if parts.scheme == "https":
        return Source("https", uri)
    if parts.scheme == "s3":
        if not parts.netloc or not path.strip("/"):
            raise InvalidSource(f"s3 URI {uri!r} must be s3://<bucket>/<key>")
        return Source("s3", f"{parts.netloc}/{path.lstrip('/')}")
    raise InvalidSource(f"unsupported scheme in {uri!r}: use file://, pvc://, https:// or s3://")


def catalog_uri(template: str, name: str) -> str:
    """The catalog URI of adapter `name`; the name must be a DNS-style adapter name."""
    if not ADAPTER_NAME.fullmatch(name) or len(name) > 253:
        raise InvalidSource(f"adapter name {name!r} is not a valid adapter name")
    return template.replace("{adapter}", name)
