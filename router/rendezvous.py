"""Rendezvous (highest random weight) hashing of adapters onto workers, O(1) per lookup.

Every adapter falls into one of `buckets` virtual buckets (a keyed blake2b of
its name); every bucket ranks all workers by a seeded 64-bit weight of
(bucket, worker) and keeps its `depth` best. An adapter's ranking is its
bucket's. This keeps what rendezvous hashing is used for:

- the same adapter and the same workers give the same ranking, in any process
  and after any restart (nothing depends on Python's per-process hash seed);
- removing a worker changes only the rankings it was in (the others keep
  their order), and adding one only puts it into the rankings it wins;

while a lookup costs one hash and a dictionary read instead of a weight per
worker. A bucket's ranking is computed on first use (O(workers)), or for all
buckets at once by `warm()`; adding a worker updates the cached rankings in
O(buckets), removing one drops the rankings it was in.

Pure: no I/O, no clock, no unseeded randomness.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections.abc import Iterable

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit permutation."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


class Rendezvous:
    """Per-adapter ranking of workers, best first, at most `depth` long."""

    def __init__(self, seed: int = 0, buckets: int = 4096, depth: int = 8) -> None:
        if buckets < 1 or depth < 1:
            raise ValueError("buckets and depth must be >= 1")
        self.buckets = buckets
        self.depth = depth
        self._key = seed.to_bytes(8, "big", signed=True)
        self._workers: dict[str, int] = {}  # worker -> its 64-bit key
        # bucket -> ([(-weight, worker)] ascending, i.e. best first; the ranking as a tuple)
        self._ranked: dict[int, tuple[list[tuple[int, str]], tuple[str, ...]]] = {}

    def __contains__(self, worker: object) -> bool:
        return worker in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    def _hash(self, text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=self._key).digest(), "big")

    def bucket(self, adapter: str) -> int:
        return self._hash(adapter) % self.buckets

    def _weight(self, bucket: int, worker_key: int) -> int:
        return _mix(_mix(bucket + 0x9E3779B97F4A7C15 & _MASK) ^ worker_key)

    def set_workers(self, workers: Iterable[str]) -> None:
        """Make the worker set exactly `workers` (adds and removes the difference)."""
        wanted = set(workers)
        for worker in [w for w in self._workers if w not in wanted]:
            self.remove(worker)
        for worker in sorted(wanted - self._workers.keys()):
            self.add(worker)

    def add(self, worker: str) -> None:
        if worker in self._workers:
            return
        key = self._workers[worker] = self._hash(worker)
        for bucket, (entries, _) in list(self._ranked.items()):
            entry = (-self._weight(bucket, key), worker)
            if len(entries) < self.depth or entry < entries[-1]:
                bisect.insort(entries, entry)
                del entries[self.depth :]
                self._ranked[bucket] = (entries, tuple(w for _, w in entries))

    def remove(self, worker: str) -> None:
        if self._workers.pop(worker, None) is None:
            return
        for bucket in [b for b, (_, ranking) in self._ranked.items() if worker in ranking]:
            del self._ranked[bucket]  # the next worker down is unknown: recompute on next use

    def ranking(self, adapter: str) -> tuple[str, ...]:
        """The adapter's best workers, best first (all workers when there are fewer than `depth`)."""
        bucket = self.bucket(adapter)
        cached = self._ranked.get(bucket)
        if cached is None:
            cached = self._rank(bucket)
        return cached[1]

    def _rank(self, bucket: int) -> tuple[list[tuple[int, str]], tuple[str, ...]]:
        weight = self._weight
        entries = heapq.nsmallest(
            self.depth, ((-weight(bucket, key), worker) for worker, key in self._workers.items())
        )
        ranked = self._ranked[bucket] = (entries, tuple(w for _, w in entries))
        return ranked

    def warm(self) -> None:
        """Compute every bucket's ranking now (O(buckets x workers)) so that no lookup pays for it."""
        for bucket in range(self.buckets):
            if bucket not in self._ranked:
                self._rank(bucket)
