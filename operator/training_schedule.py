"""When a scheduled TrainingJob runs again: pure functions of `spec.schedule` and a time.

`spec.schedule` is a 5-field cron expression (minute hour day-of-month month
day-of-week, evaluated in UTC) or one of `@hourly`, `@daily`, `@weekly`,
`@monthly`. Evaluation is cronsim's (the cron dialect of Healthchecks.io).
"""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}


def next_run_time(schedule: str, after: datetime) -> datetime:
    """The first time strictly after `after` (whole minutes, UTC) that `schedule` names.

    Raises ValueError when the expression is not one cron understands.
    """
    expression = ALIASES.get(schedule.strip(), schedule.strip())
    start = after.astimezone(UTC).replace(second=0, microsecond=0)
    try:
        return next(CronSim(expression, start)).astimezone(UTC)
    except (CronSimError, StopIteration) as error:
        raise ValueError(f"spec.schedule {schedule!r}: {error or 'names no future time'}") from error


def schedule_problem(schedule: str) -> str | None:
    """Why cron cannot read `schedule` (a backwards range, the 30th of February); None when it can.

    Admission refuses what is not cron at all (the CRD's pattern); this catches the rest at once,
    before the job's first run rather than after it.
    """
    try:
        next_run_time(schedule, datetime(2000, 1, 1, tzinfo=UTC))
    except ValueError as error:
        return str(error)
    return None


def parse_time(value: object) -> datetime | None:
    """A status timestamp (`2026-01-01T00:00:00Z`) as an aware datetime; None when absent or unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
