"""Single flight: concurrent callers for one key share one call; a cancelled caller does not cancel it."""

from __future__ import annotations

import asyncio

import pytest

from loraplex.singleflight import SingleFlight


class Refused(Exception):
    pass


class Loader:
    """A call that counts itself and waits for its gate."""

    def __init__(self, outcome: Exception | None = None) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.outcome = outcome

    async def __call__(self) -> int:
        self.calls += 1
        number = self.calls
        self.entered.set()
        await self.gate.wait()
        if self.outcome is not None:
            raise self.outcome
        return number


async def test_concurrent_callers_for_one_key_share_one_call_and_the_next_makes_a_new_one() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    load = Loader()
    callers = [asyncio.create_task(flights.run("a", load)) for _ in range(5)]
    other = asyncio.create_task(flights.run("b", load))
    await load.entered.wait()
    await asyncio.sleep(0)  # every caller has joined or started its call
    assert set(flights) == {"a", "b"}
    load.gate.set()
    assert sorted(await asyncio.gather(*callers, other)) == [1, 1, 1, 1, 1, 2]
    assert flights == {}  # forgotten once ended
    assert await flights.run("a", load) == 3


async def test_every_caller_gets_the_calls_exception_unless_it_may_call_alone() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    load = Loader(Refused("no"))
    shared = [asyncio.create_task(flights.run("a", load)) for _ in range(3)]
    await load.entered.wait()
    load.gate.set()
    answers = await asyncio.gather(*shared, return_exceptions=True)
    assert load.calls == 1
    assert all(isinstance(answer, Refused) for answer in answers)

    load = Loader(Refused("no"))
    first = asyncio.create_task(flights.run("a", load, alone_after=(Refused,)))
    await load.entered.wait()
    joined = asyncio.create_task(flights.run("a", load, alone_after=(Refused,)))
    await asyncio.sleep(0)
    load.gate.set()
    with pytest.raises(Refused):
        await first
    with pytest.raises(Refused):
        await joined
    assert load.calls == 2  # the caller that joined made its own call after the shared one failed


async def test_a_caller_that_is_cancelled_does_not_cancel_the_call_for_the_others() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    load = Loader()
    first = asyncio.create_task(flights.run("a", load))
    await load.entered.wait()
    second = asyncio.create_task(flights.run("a", load))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    load.gate.set()
    assert await second == 1
    assert first.cancelled()
    assert load.calls == 1
