"""Waits, in the triggerer, for a throttle metric to come back under its max (async database access only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def async_url(conn_type: str, host: str | None, port: int | None, login: str | None, password: str | None,
              schema: str | None) -> Any:
    """An async SQLAlchemy URL for an Airflow connection's fields (psycopg async, aiosqlite): the dialect's."""
    from airflow_migrate_provider.core.dialects import dialect_for_conn_type

    return dialect_for_conn_type(conn_type).async_url(host, port, login, password, schema)


class ThrottleTrigger(BaseTrigger):
    """Polls a throttle query every ``poll_seconds``; fires once its value is at or under ``max_value``."""

    def __init__(self, conn_id: str, rule_name: str, query: str, max_value: float, poll_seconds: float):
        super().__init__()
        self.conn_id, self.rule_name, self.query = conn_id, rule_name, query
        self.max_value, self.poll_seconds = max_value, poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"conn_id": self.conn_id, "rule_name": self.rule_name, "query": self.query,
                 "max_value": self.max_value, "poll_seconds": self.poll_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk import BaseHook
        from sqlalchemy.ext.asyncio import create_async_engine

        from airflow_migrate_provider.core.dialects import dialect_for_conn_type

        conn = await BaseHook.aget_connection(self.conn_id)
        dialect = dialect_for_conn_type(conn.conn_type)
        engine = create_async_engine(dialect.async_url(conn.host, conn.port, conn.login, conn.password, conn.schema))
        query = dialect.async_fragment(self.query)
        started = time.monotonic()
        try:
            while True:
                async with engine.connect() as db:
                    raw = (await db.exec_driver_sql(query)).scalar()
                value = float(raw)
                if value <= self.max_value:
                    yield TriggerEvent({"rule": self.rule_name, "value": value,
                                        "waited_s": round(time.monotonic() - started, 1)})
                    return
                self.log.info("throttle '%s': %g > max %g; checking again in %g s", self.rule_name, value,
                              self.max_value, self.poll_seconds)
                await asyncio.sleep(self.poll_seconds)
        finally:
            await engine.dispose()
