"""Keeps replaying a dual_write step's captured changes, in the triggerer, until the lag is under its threshold.

The replay itself is the engine's synchronous code; each round runs in a worker thread (``asyncio.to_thread``,
as Airflow's own ``sync_to_async`` hooks do), so the triggerer's event loop never blocks. Each round renews the
run's lock (re-entering it), replays for at most ``poll_seconds`` and logs the lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_migrate_provider.masking import mask_text


class CatchUpTrigger(BaseTrigger):
    def __init__(self, plan: dict[str, Any], step_id: str, target_conn_id: str, who: list[Any],
                 timeout_seconds: float):
        super().__init__()
        self.plan, self.step_id, self.target_conn_id = plan, step_id, target_conn_id
        self.who, self.timeout_seconds = who, timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"plan": self.plan, "step_id": self.step_id, "target_conn_id": self.target_conn_id,
                 "who": self.who, "timeout_seconds": self.timeout_seconds})

    def _open(self) -> Any:
        from airflow_migrate_provider.core.context import RunContext
        from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
        from airflow_migrate_provider.hooks.migration import MigrationHook
        from airflow_migrate_provider.plan.loader import validated_plan

        plan = validated_plan(self.plan)
        engine, dialect = MigrationHook(self.target_conn_id).get_engine_and_dialect()
        source_id = plan.connections.separate_source
        source = MigrationHook(source_id).get_engine() if source_id else None
        dag_id, run_id, try_number = self.who
        who = RunIdentity(dag_id, run_id, int(try_number))
        return RunContext(engine, dialect, Ledger(engine, plan.id), who, plan=plan, source=source)

    def _round(self, ctx: Any) -> dict[str, Any]:
        from airflow_migrate_provider.core.kinds import kind_of

        step = ctx.plan.step(self.step_id)
        ctx.ledger.acquire_lock(ctx.who, ctx.plan.lock_ttl_seconds)  # re-enters and renews this run's lock
        totals = kind_of(step).replay(ctx, step, deadline=time.monotonic() + step.catch_up.poll_seconds)
        return {"replayed": totals.changes, "lag_changes": totals.lag_changes,
                "lag_seconds": round(totals.lag_seconds, 1), "poll": step.catch_up.poll_seconds,
                "caught_up": totals.lag_changes <= step.catch_up.max_lag_changes
                and totals.lag_seconds <= step.catch_up.max_lag_seconds}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        started, replayed = time.monotonic(), 0
        try:
            ctx = await asyncio.to_thread(self._open)
        except Exception as exc:
            yield TriggerEvent({"status": "error", "message": f"catch-up could not start: {mask_text(str(exc))}"})
            return
        try:
            while True:
                try:
                    found = await asyncio.to_thread(self._round, ctx)
                except Exception as exc:  # reported to the task, which fails (and the run rolls back)
                    yield TriggerEvent({"status": "error",
                                        "message": f"catch-up of '{self.step_id}' failed: {mask_text(str(exc))}"})
                    return
                replayed += found["replayed"]
                self.log.info("catch-up '%s': replayed %s change(s) this round; lag %s change(s), oldest %.1f s",
                              self.step_id, f"{found['replayed']:,}", f"{found['lag_changes']:,}", found["lag_seconds"])
                if found["caught_up"]:
                    yield TriggerEvent({"status": "caught_up", "replayed": replayed,
                                        "lag_changes": found["lag_changes"], "lag_seconds": found["lag_seconds"],
                                        "waited_s": round(time.monotonic() - started, 1)})
                    return
                if time.monotonic() - started > self.timeout_seconds:
                    yield TriggerEvent({"status": "timeout", "message": (
                        f"dual_write '{self.step_id}': still {found['lag_changes']:,} change(s) behind (oldest "
                        f"{found['lag_seconds']:.1f} s) after {self.timeout_seconds / 60:.0f} min of catching up: "
                        f"writes arrive faster than the replay; raise replay.batch_changes or the threshold")})
                    return
                if found["replayed"] == 0:
                    await asyncio.sleep(found["poll"])
        finally:
            await asyncio.to_thread(_dispose, ctx)


def _dispose(ctx: Any) -> None:
    ctx.engine.dispose()
    if ctx.source is not None:
        ctx.source.dispose()
