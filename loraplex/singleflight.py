"""Single flight: concurrent callers for the same key await one call, not one each.

The call runs on its own task, so a caller that is cancelled (a client that
went away) does not cancel it for the others; it is forgotten once it ends, so
the next caller after that makes a new one. A `SingleFlight` is a read-only
mapping of the calls in flight, by key.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Mapping[K, "asyncio.Future[T]"], Generic[K, T]):
    """Calls in flight by key; `run` joins the one under way or starts it."""

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[T]] = {}

    async def run(
        self,
        key: K,
        call: Callable[[], Awaitable[T]],
        *,
        alone_after: tuple[type[BaseException], ...] = (),
    ) -> T:
        """The result of the call in flight for `key`, started with `call` when there is none.

        Every caller gets the one call's result or exception, except that a caller that joined a
        call which failed with one of `alone_after` makes its own `call`, so each gets the answer
        (and the retry) its own call gives.
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(call())
            self._flights[key] = flight
            flight.add_done_callback(functools.partial(self._landed, key))
            return await asyncio.shield(flight)
        try:
            return await asyncio.shield(flight)
        except alone_after:
            return await call()

    def _landed(self, key: K, flight: asyncio.Future[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: the callers awaiting it (or none, all gone) have seen it

    def __getitem__(self, key: K) -> asyncio.Future[T]:
        return self._flights[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._flights)

    def __len__(self) -> int:
        return len(self._flights)
