"""Datasets in an S3 bucket or behind an HTTPS URL, copied to a local folder before they are read.

The operator admits such a dataset only under a root the admin declared
(`training.datasetRoots`, checked before any pod runs); here the trainer copies
exactly what the URI names, and nothing else:

- `s3://bucket/key`: the object `key`, or else every object directly under
  `key/` (a folder of files, read as one dataset; as with a local folder, not
  its subfolders), with the BaseModel's store credentials
  (`adapterStoreSecretRef`: AWS_ENDPOINT_URL, keys, region), the ones its pods
  fetch adapters with;
- `https://host/path`: that one file, without credentials, and without
  following redirects (a redirect could lead out of the admin's root).

A copy stops (PreparationCancelled) between two files or two 1 MiB chunks once
its `cancel` event is set: a warm tenant that left needs no copy.

Missing, forbidden or empty: `DatasetNotFound`. An endpoint that does not
answer, or answers 5xx / 429, is tried `ATTEMPTS` times, `BACKOFF_SECONDS` apart
and growing, then fails the adapter the same way naming the error. Local URIs
(`file://`) pass through unchanged.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from loraplex.api.trainingjob import Dataset
from loraplex.worker.s3 import inside
from loraplex.worker.trainer.failures import PreparationCancelled, TrainingFailure

ATTEMPTS = 3
BACKOFF_SECONDS = 1.0
HTTP_TIMEOUT_SECONDS = 60.0
CHUNK_BYTES = 1 << 20
REMOTE_SCHEMES = ("s3", "https")
T = TypeVar("T")


class _Transient(Exception):
    """An error worth another try (no answer, 5xx, 429)."""


def is_remote(dataset: Dataset) -> bool:
    """Whether the trainer copies `dataset` before reading it (s3:// or https://)."""
    return urlsplit(dataset.uri).scheme in REMOTE_SCHEMES


def fetch_dataset(
    dataset: Dataset,
    scratch: Path,
    s3_client: Callable[[], Any],
    sleep: Callable[[float], None] = time.sleep,
    cancel: threading.Event | None = None,
) -> Dataset:
    """`dataset` with a local `file://` URI: itself when already local, else a copy under `scratch`
    (emptied first). TrainingFailure("DatasetNotFound") when it cannot be copied."""
    scheme = urlsplit(dataset.uri).scheme
    if scheme not in REMOTE_SCHEMES:
        return dataset
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    cancel = cancel or threading.Event()
    copy = _retried(
        lambda: (
            _from_s3(dataset.uri, scratch, s3_client(), cancel)
            if scheme == "s3"
            else _from_https(dataset.uri, scratch, cancel)
        ),
        dataset.uri,
        sleep,
    )
    return dataset.model_copy(update={"uri": copy.resolve().as_uri()})


def _retried(fetch: Callable[[], T], uri: str, sleep: Callable[[float], None]) -> T:
    for attempt in range(ATTEMPTS):
        try:
            return fetch()
        except _Transient as error:
            if attempt == ATTEMPTS - 1:
                raise TrainingFailure(
                    "DatasetNotFound", f"{uri}: unreachable after {ATTEMPTS} tries: {error}"
                ) from error
            sleep(BACKOFF_SECONDS * 2**attempt)
    raise AssertionError("unreachable")


def _from_s3(uri: str, scratch: Path, client: Any, cancel: threading.Event) -> Path:
    """The object the URI names, else every object under it as a folder."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).strip("/")
    try:
        # One level under the key (the key itself, siblings sharing it, `key/` as one prefix), not
        # every object of a folder dataset, to tell an object from a folder.
        names = {item.object_name for item in client.list_objects(bucket, prefix=key, recursive=False)}
        if key in names:
            target = scratch / (Path(key).name or "dataset")
            client.fget_object(bucket, key, str(target))
            return target
        folder = scratch / "dataset"
        prefix = key.rstrip("/") + "/"
        files = [  # as a local folder is read: its files, not its subfolders
            item.object_name
            for item in client.list_objects(bucket, prefix=prefix, recursive=False)
            if not item.object_name.endswith("/")
        ]
        if not files:
            raise TrainingFailure("DatasetNotFound", f"no object {uri} and none under {prefix.rstrip('/')}/")
        for name in files:
            if cancel.is_set():
                raise PreparationCancelled(uri)
            client.fget_object(bucket, name, str(inside(folder, name[len(prefix) :])))
        return folder
    except S3Error as error:
        if error.code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            raise _Transient(f"{error.code}: {error.message}") from error
        raise TrainingFailure("DatasetNotFound", f"{uri}: {error.code}: {error.message}") from error
    except ValueError as error:  # a key that would land outside the copy's folder (`inside`)
        raise TrainingFailure("DatasetInvalid", f"{uri}: {error}") from error
    except (HTTPError, OSError) as error:
        raise _Transient(str(error) or type(error).__name__) from error


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer itself is raised as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


def _from_https(uri: str, scratch: Path, cancel: threading.Event) -> Path:
    target = scratch / (Path(unquote(urlsplit(uri).path)).name or "dataset")
    try:
        with _OPENER.open(uri, timeout=HTTP_TIMEOUT_SECONDS) as response, target.open("wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                if cancel.is_set():
                    raise PreparationCancelled(uri)
                out.write(chunk)
    except urllib.error.HTTPError as error:
        error.close()  # it holds the answer's connection
        if error.code >= 500 or error.code == 429:
            raise _Transient(f"answered {error.code}") from error
        raise TrainingFailure("DatasetNotFound", f"{uri} answered {error.code}") from error
    except (urllib.error.URLError, OSError) as error:
        raise _Transient(str(error) or type(error).__name__) from error
    return target
