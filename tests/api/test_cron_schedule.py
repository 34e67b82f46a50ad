"""What admission lets into spec.schedule, the operator's cron reads, or names at once."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.api.trainingjob import CRON_SCHEDULE
from loraplex.operator.training_schedule import next_run_time, schedule_problem


@settings(max_examples=300, deadline=None)
@given(st.from_regex(CRON_SCHEDULE, fullmatch=True))
def test_every_admitted_schedule_runs_or_is_named_invalid_before_any_run(schedule: str) -> None:
    problem = schedule_problem(schedule)
    if problem is None:
        assert next_run_time(schedule, datetime(2026, 1, 1, tzinfo=UTC)) > datetime(2026, 1, 1, tzinfo=UTC)
    else:
        assert "spec.schedule" in problem


@pytest.mark.parametrize(
    "schedule",
    ["@daily", "0 3 * * *", "*/15 9-17 * * MON-FRI", "0 0 1,15 */2 *", "30 2 * jan-mar sun", "0 0 * * 7"],
)
def test_common_schedules_are_admitted(schedule: str) -> None:
    assert re.fullmatch(CRON_SCHEDULE, schedule)
    assert schedule_problem(schedule) is None


@pytest.mark.parametrize(
    "schedule",
    ["every monday", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "* * * *"],
)
def test_values_out_of_range_are_refused_by_the_pattern(schedule: str) -> None:
    assert not re.fullmatch(CRON_SCHEDULE, schedule)
