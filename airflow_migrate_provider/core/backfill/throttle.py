"""Throttle rules: before every batch, pause with backoff while a metric (replica lag, load) is too high."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import dialect_of
from airflow_migrate_provider.errors import BackfillFailed, ThrottleDeferral, TransientBackfillFailed, db_error_line
from airflow_migrate_provider.plan.model import ThrottleRule

log = logging.getLogger(__name__)


def read_metric(engine: Engine, rule: ThrottleRule, where: str) -> float:
    """Run a throttle query; its first column of its first row, as a number."""
    try:
        with engine.connect() as conn:
            value: Any = conn.exec_driver_sql(dialect_of(engine).fragment(rule.query), {}).scalar()
            conn.rollback()
    except sa_exc.SQLAlchemyError as exc:
        raise BackfillFailed(f"{where}: throttle '{rule.name}' query failed on the {rule.database}: "
                             f"{db_error_line(exc)}") from exc
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BackfillFailed(f"{where}: throttle '{rule.name}' query returned {value!r}, not a number") from None


class Throttle:
    """Evaluates a step's throttle rules; :meth:`wait` returns once every metric is at or under its max."""

    def __init__(self, rules: list[ThrottleRule], engines: dict[str, Engine], where: str,
                 sleep: Callable[[float], None] = time.sleep, can_defer: bool = False):
        self.rules, self.engines, self.where = rules, engines, where
        self.sleep, self.can_defer = sleep, can_defer
        self.paused_s = 0.0  # total over the task, for the summary
        self.pauses = 0

    def over_limit(self) -> tuple[ThrottleRule, float] | None:
        for rule in self.rules:
            value = read_metric(self.engines[rule.database], rule, self.where)
            if value > rule.max:
                return rule, value
        return None

    def wait(self) -> None:
        started = time.monotonic()
        delays: dict[str, float] = {}
        while (over := self.over_limit()) is not None:
            rule, value = over
            waited = time.monotonic() - started
            if waited >= rule.give_up_after_seconds:
                raise TransientBackfillFailed(
                    f"{self.where}: throttle '{rule.name}' stayed over its max ({value:g} > {rule.max:g}) for "
                    f"{waited:.0f} s (give_up_after_seconds {rule.give_up_after_seconds:g}); the copy stopped "
                    f"at its last checkpoint. Clear the task once the load is lower to resume.")
            if self.can_defer and rule.defer_after_seconds is not None and waited >= rule.defer_after_seconds:
                # control flow (errors.ControlFlow), not a MigrateError: `except MigrateError` lets it through
                raise ThrottleDeferral(rule, value, waited)
            delay = delays.get(rule.name, rule.pause_seconds)
            delays[rule.name] = min(delay * 2, rule.max_pause_seconds)
            log.warning("throttle '%s': %g > max %g; pausing %.2g s (paused %.1f s so far for this batch)",
                        rule.name, value, rule.max, delay, waited)
            self.sleep(delay)
            self.pauses += 1
        if delays:
            waited = time.monotonic() - started
            self.paused_s += waited
            log.info("throttle: back under every max after %.1f s; resuming", waited)
