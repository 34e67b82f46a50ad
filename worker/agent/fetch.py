"""Fetching adapter revisions into the disk cache: verified, atomic, bounded, retried.

Every fetch goes through a staging directory: the files are copied, downloaded
or unpacked there, their digest is checked against the wanted sha256, and only
then is the directory renamed into the cache (`DiskCache.commit`). Archives are
unpacked with tarfile's `data` filter, which refuses absolute names, `..`,
links that leave the directory and device files; S3 object names that would
land outside the directory are refused too. Transient trouble (connection
errors, timeouts, 5xx, throttling) is retried with exponential backoff; a
semaphore bounds concurrent fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import ssl
import tarfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp

from loraplex.worker.agent.disk_cache import DigestMismatch, DiskCache
from loraplex.worker.agent.sources import InvalidSource, Source, parse_source
from loraplex.worker.s3 import download_prefix, inside, s3_client_from_env

T = TypeVar("T")
SHA256_HEX = frozenset("0123456789abcdef")


MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class FetchError(Exception):
    """A fetch that failed; `reason` is one CamelCase word (shown in statuses and metrics)."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    first_delay: float = 0.2
    max_delay: float = 5.0


class Fetcher:
    def __init__(
        self,
        cache: DiskCache,
        *,
        pvc_root: Path = Path("/mnt/pvc"),
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        s3_client_factory: Callable[[], Any] | None = None,
        http_timeout: float = 300.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cache = cache
        self.pvc_root = pvc_root
        self.retry = retry or RetryPolicy()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._s3_client_factory = s3_client_factory or s3_client_from_env
        self._s3: Any = None
        self._http_timeout = aiohttp.ClientTimeout(total=http_timeout)
        # None: the system's trust store (SSL_CERT_FILE / SSL_CERT_DIR are honoured).
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def fetch(self, uri: str, sha256: str) -> Path:
        """Bring revision `sha256` from `uri` into the disk cache and return its path."""
        if self.cache.has(sha256):
            return self.cache.path(sha256)
        try:
            source = parse_source(uri, self.pvc_root)
        except InvalidSource as error:
            raise FetchError("InvalidSource", str(error)) from error
        async with self._semaphore:
            if self.cache.has(sha256):
                return self.cache.path(sha256)
            return await self._with_retries(lambda: self._fetch_once(source, sha256))

    async def read_digest(self, uri: str) -> str:
        """The digest published beside a catalog adapter (`<uri>.sha256`)."""
        try:
            source = parse_source(uri, self.pvc_root).sibling(".sha256")
        except InvalidSource as error:
            raise FetchError("InvalidSource", str(error)) from error

        async def read() -> str:
            staging = self.cache.new_staging()
            try:
                target = staging / "digest"
                await self._download(source, target, missing_reason="DigestMissing")
                return target.read_text().split()[0].strip().lower() if target.stat().st_size else ""
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        text = await self._with_retries(read)
        if len(text) != 64 or not set(text) <= SHA256_HEX:
            raise FetchError("DigestMissing", f"{uri}.sha256 does not hold a hex sha256 digest")
        return text

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry.first_delay
        for number in range(1, self.retry.attempts + 1):
            try:
                return await attempt()
            except FetchError as error:
                if not error.transient or number == self.retry.attempts:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")

    async def fetch_tree(self, uri: str, dest: Path) -> Path:
        """Copy the files at `uri` into `dest` as they are (no digest: for base models)."""
        try:
            source = parse_source(uri, self.pvc_root)
        except InvalidSource as error:
            raise FetchError("InvalidSource", str(error)) from error

        async def attempt() -> Path:
            shutil.rmtree(dest, ignore_errors=True)
            staging = self.cache.new_staging()
            try:
                await self._files_into(source, staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return dest

        return await self._with_retries(attempt)

    async def _files_into(self, source: Source, staging: Path, files: Path) -> None:
        if source.scheme == "local" and not source.is_archive:
            await asyncio.to_thread(_copy_directory, Path(source.location), files)
        elif source.scheme == "s3" and not source.is_archive:
            await asyncio.to_thread(self._download_s3_prefix, source, files)
        else:
            archive = staging / "archive"
            await self._download(source, archive, missing_reason="SourceNotFound")
            await asyncio.to_thread(_unpack, archive, files)

    async def _fetch_once(self, source: Source, sha256: str) -> Path:
        staging = self.cache.new_staging()
        try:
            files = staging / "files"
            await self._files_into(source, staging, files)
            try:
                return await asyncio.to_thread(self.cache.commit, files, sha256)
            except DigestMismatch as error:
                # A local path is read from the agent's own file system, which the adapter's owner
                # cannot read: its files' digest would tell them something about it.
                what = error.without_actual() if source.scheme == "local" else str(error)
                raise FetchError("DigestMismatch", f"refused {source.location}: {what}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _download(self, source: Source, target: Path, *, missing_reason: str) -> None:
        if source.scheme == "local":
            await asyncio.to_thread(_copy_file, Path(source.location), target, missing_reason)
        elif source.scheme == "https":
            await self._download_https(source.location, target, missing_reason)
        else:
            await asyncio.to_thread(self._download_s3_object, source, target, missing_reason)

    async def _download_https(self, url: str, target: Path, missing_reason: str) -> None:
        try:
            async with aiohttp.ClientSession(timeout=self._http_timeout) as session:
                at = url
                for _ in range(MAX_REDIRECTS + 1):
                    async with session.get(at, ssl=self._ssl, allow_redirects=False) as response:
                        if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                            at = _redirect_target(url, at, response.headers["Location"])
                            continue
                        await _save(url, response, target, missing_reason)
                        return
                raise FetchError("SourceUnreachable", f"{url}: more than {MAX_REDIRECTS} redirects")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise FetchError("SourceUnreachable", f"{url}: {error}", transient=True) from error

    def _s3_client(self) -> Any:
        if self._s3 is None:
            self._s3 = self._s3_client_factory()
        return self._s3

    def _download_s3_object(self, source: Source, target: Path, missing_reason: str) -> None:
        bucket, key = source.location.split("/", 1)
        with s3_errors(source.location, missing_reason):
            self._s3_client().fget_object(bucket, key, str(target))

    def _download_s3_prefix(self, source: Source, dest: Path) -> None:
        bucket, prefix = source.location.split("/", 1)
        with s3_errors(source.location, "SourceNotFound"):
            if not download_prefix(self._s3_client(), bucket, prefix, dest, _inside):
                raise FetchError("SourceNotFound", f"no objects under s3://{bucket}/{prefix.rstrip('/')}/")


@contextlib.contextmanager
def s3_errors(location: str, missing_reason: str) -> Iterator[None]:
    """Map the S3 client's errors onto FetchError reasons."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    try:
        yield
    except S3Error as error:
        if error.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            raise FetchError(missing_reason, f"s3://{location} not found") from error
        if error.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise FetchError("SourceForbidden", f"s3://{location}: {error.code}") from error
        transient = error.code in ("SlowDown", "InternalError", "ServiceUnavailable")
        raise FetchError(
            "SourceUnreachable", f"s3://{location}: {error.code}", transient=transient
        ) from error
    except (HTTPError, OSError) as error:
        if isinstance(error, FetchError):
            raise
        raise FetchError("SourceUnreachable", f"s3://{location}: {error}", transient=True) from error


def _inside(root: Path, relative: str) -> Path:
    try:
        return inside(root, relative)
    except ValueError as error:
        raise FetchError(
            "UnsafeArchive", f"refused {relative!r}: it would land outside the adapter directory"
        ) from error


def _copy_file(path: Path, target: Path, missing_reason: str) -> None:
    if not path.is_file():
        raise FetchError(missing_reason, f"{path} does not exist or is not a file")
    shutil.copyfile(path, target)


def _copy_directory(source: Path, dest: Path) -> None:
    if not source.exists():
        raise FetchError("SourceNotFound", f"{source} does not exist")
    if not source.is_dir():
        raise FetchError("InvalidSource", f"{source} is neither a directory nor a .tar/.tar.gz archive")
    dest.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        target = _inside(dest, path.relative_to(source).as_posix())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _unpack(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise FetchError(
                        "UnsafeArchive", f"refused the archive: member {member.name!r} escapes it"
                    )
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as error:
        raise FetchError("UnsafeArchive", f"refused the archive: {error}") from error
    except tarfile.TarError as error:
        raise FetchError("InvalidArchive", f"not a readable tar archive: {error}") from error


def _redirect_target(url: str, at: str, location: str) -> str:
    """Where a redirect from `at` leads; only https:// is followed (no downgrade to plain HTTP)."""
    target = urljoin(at, location)
    scheme = urlsplit(target).scheme
    if scheme != "https":
        raise FetchError("SourceForbidden", f"{url} redirected to a {scheme} URL; only https:// is followed")
    return target


async def _save(url: str, response: aiohttp.ClientResponse, target: Path, missing_reason: str) -> None:
    """Write a store's answer to `target`, or raise the FetchError its status calls for."""
    if response.status in (404, 410):
        raise FetchError(missing_reason, f"{url} answered {response.status}")
    if response.status in (401, 403):
        raise FetchError("SourceForbidden", f"{url} answered {response.status}")
    if response.status >= 300:
        transient = response.status >= 500 or response.status == 429
        raise FetchError("SourceUnreachable", f"{url} answered {response.status}", transient=transient)
    with target.open("wb") as out:
        async for chunk in response.content.iter_chunked(1 << 20):
            out.write(chunk)
