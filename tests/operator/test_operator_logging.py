"""The operator's log keeps news and drops the success lines of handlers that run on every event."""

from __future__ import annotations

import logging

from loraplex.operator.main import QuietRoutine


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)


def test_routine_successes_are_dropped_and_the_rest_kept() -> None:
    quiet = QuietRoutine()
    assert not quiet.filter(record("Handler 'check' succeeded."))
    assert not quiet.filter(record("Timer 'fleet-status' succeeded."))
    assert quiet.filter(record("Handler 'fleet' succeeded."))  # a fleet change is news
    assert quiet.filter(record("Handler 'check' failed with an exception. Will retry."))
