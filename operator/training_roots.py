"""Dataset roots: the places an admin lets TrainingJobs read training data from, and the check.

A TrainingJob's `dataset.uri` is read by the trainer pod the operator starts,
with the pod's volumes, network position and store credentials. So a user
could otherwise train an adapter on anything that pod can read
(`file:///proc/self/environ`, another claim in the namespace, an internal
URL) and read it back from the adapter: a confused deputy. The admin declares
roots (`LORAPLEX_TRAINING_DATASET_ROOTS`, the chart's
`training.datasetRoots`): URI prefixes such as `pvc://loraplex-store/datasets`,
`file:///data`, `s3://bucket/prefix` or `https://host/path`, and a dataset
must lie under one of them, whatever its scheme.

Paths are judged normalized: percent-escapes decoded, empty and `.` segments
dropped, prefixes compared segment by segment (`/data2` is not under
`/data`). What cannot be normalized safely is refused: a `..` segment, a query
or fragment, user info, a NUL or backslash. Symlinks are not visible from
here: the trainer resolves the real path against the root it is given (see
`worker/trainer/data.py`), and a pvc:// root's folder is mounted with
`subPath`, so the pod sees nothing of the claim above it.

Pure: strings in, parsed roots and placements (or a problem) out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SCHEMES = ("file", "pvc", "s3", "https")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


class RootError(ValueError):
    """A URI that cannot be judged (or a root that cannot be declared); the message says why."""


@dataclass(frozen=True)
class Location:
    """A normalized URI: scheme, authority (claim, bucket, host[:port]; empty for file) and segments."""

    scheme: str
    authority: str
    segments: tuple[str, ...]

    @property
    def path(self) -> str:
        """The segments as a relative path ('' for none)."""
        return "/".join(self.segments)

    def uri(self) -> str:
        if self.scheme == "file":
            return "file:///" + self.path
        return f"{self.scheme}://{self.authority}" + (f"/{self.path}" if self.segments else "")

    def contains(self, other: Location) -> bool:
        """Whether `other` is this location or lies below it."""
        return (
            self.scheme == other.scheme
            and self.authority == other.authority
            and other.segments[: len(self.segments)] == self.segments
        )


@dataclass(frozen=True)
class DatasetPlacement:
    """Where a dataset lies: the root that admits it and the dataset's path below that root."""

    root: Location
    dataset: Location

    @property
    def relative(self) -> tuple[str, ...]:
        return self.dataset.segments[len(self.root.segments) :]


def normalize(uri: str) -> Location:
    """`uri` normalized; RootError when it cannot be normalized safely."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise RootError(
            f"{uri!r}: use file:///path, pvc://<claim>/<path>, s3://<bucket>/<key> or https://..."
        )
    if any(c in uri for c in "?#\\\0") or any(ord(c) < 32 for c in uri):
        raise RootError(f"{uri!r}: a query, fragment, backslash or control character cannot be judged")
    if scheme == "file":
        if not rest.startswith("/"):
            raise RootError(f"{uri!r}: a file URI is file:///<absolute path>")
        authority, path = "", rest
    else:
        authority, _, path = rest.partition("/")
        if not authority or "@" in authority:
            raise RootError(f"{uri!r}: needs a {_authority(scheme)} and no user info")
        authority = authority.lower() if scheme == "https" else authority
        path = "/" + path
    decoded = unquote(path)
    if any(c in decoded for c in "?#\\\0") or ("%" in decoded and unquote(decoded) != decoded):
        raise RootError(f"{uri!r}: escapes that decode to another escape or to ?, #, \\ cannot be judged")
    segments = tuple(s for s in decoded.split("/") if s not in ("", "."))
    if ".." in segments:
        raise RootError(f"{uri!r}: a '..' segment climbs out of its folder")
    return Location(scheme, authority, segments)


def unquote(text: str) -> str:
    """`text` with its %XX escapes decoded as UTF-8 (as the trainer reads file URIs); RootError if not."""
    raw = _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), text.encode())
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise RootError(f"{text!r}: its escapes are not UTF-8") from None


def _authority(scheme: str) -> str:
    return {"pvc": "claim", "s3": "bucket", "https": "host"}[scheme]


def parse_roots(roots: Iterable[str]) -> tuple[Location, ...]:
    """The declared roots, normalized; RootError naming the first that is not a usable root."""
    parsed = []
    for root in roots:
        location = normalize(root.strip())
        if location.scheme == "file" and not location.segments:
            raise RootError(f"{root!r}: the whole file system cannot be a dataset root")
        parsed.append(location)
    return tuple(parsed)


def place_dataset(uri: str, roots: Sequence[Location]) -> DatasetPlacement:
    """The root that admits `uri` (the deepest, if several do); RootError when none does."""
    dataset = normalize(uri)
    inside = [root for root in roots if root.contains(dataset)]
    if not inside:
        raise RootError(f"{dataset.uri()} is outside the dataset roots ({describe(roots)})")
    return DatasetPlacement(max(inside, key=lambda r: len(r.segments)), dataset)


def dataset_problem(uri: str, roots: Sequence[Location]) -> tuple[str, str] | None:
    """(reason, message) when the job may not read `uri`; None when a root admits it."""
    try:
        place_dataset(uri, roots)
    except RootError as error:
        return (
            "DatasetOutsideRoots",
            f"spec.dataset.uri: {error}; move the data under a root, or ask an admin to add one "
            "(training.datasetRoots)",
        )
    return None


def describe(roots: Sequence[Location]) -> str:
    return ", ".join(root.uri() for root in roots) if roots else "none declared"
