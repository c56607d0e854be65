"""Move one batch of rows from the source into the target, with its checkpoint in the same transaction.

Three paths, chosen by the pair of databases (the target's adapter says which: ``Dialect.streams_from``,
``Dialect.copy_fast_path``):

- a stream between two databases of one kind, no value parsed in Python (``Dialect.copy_between``):
  PostgreSQL → PostgreSQL (psycopg 3): ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` streamed into
  ``COPY ... FROM STDIN (FORMAT BINARY)`` (core/dialects/pg_copy.py; the SELECT casts every column to the target's
  exact type so the binary formats always agree); MariaDB → MariaDB: the source server formats each row as a line
  of ``LOAD DATA LOCAL INFILE`` text, fed to the target through a pipe (core/dialects/mysql_copy.py).
- anything → PostgreSQL or MariaDB: keyset SELECT, rows written with the target's bulk protocol
  (``Dialect.copy_rows_into``: text COPY, LOAD DATA LOCAL INFILE); the target parses each value.
- anything → SQLite: keyset SELECT, multi-row INSERT through the driver's executemany.

A phase-1 batch of an integer key first deletes its key range in the target, then inserts; other keys
upsert. Either way re-copying a batch (after a manual reset, say) never duplicates rows.
Phases 2 and 3 upsert (``ON CONFLICT DO UPDATE``, ``ON DUPLICATE KEY UPDATE``), so a row copied twice ends up
with its latest values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backfill.spec import BackfillSpec

Key = tuple[Any, ...]
Checkpoint = Callable[[Connection, Key, int], None]
_STREAM_ROWS = 5_000


class BatchCopier:
    """Copies key ranges (phase 1) and deltas (phases 2 and 3) for one resolved backfill step."""

    def __init__(self, spec: BackfillSpec, target: Engine):
        self.spec, self.target = spec, target
        self.src, self.tgt = spec.src, spec.tgt
        # a temp table lives as long as the pooled session: name it after everything its shape depends on
        shape = f"{spec.step_id}|{spec.target_table}|" + ",".join(f"{c.name}:{c.target_type}" for c in spec.columns)
        digest = hashlib.sha1(shape.encode()).hexdigest()[:16]
        self.stage = self.tgt.ident(f"am_stage_{digest}")

    # -- source SQL --------------------------------------------------------------------------------
    def _key_predicates(self, exprs: list[str], sql: Any, lower: Key | None, upper: Key | None,
                        params: dict[str, Any]) -> list[str]:
        preds = []
        if lower is not None:
            preds.append(sql.compare(exprs, ">", lower, params, "lo"))
        if upper is not None:
            preds.append(sql.compare(exprs, "<=", upper, params, "hi"))
        return preds

    def range_select(self, lower: Key | None, upper: Key | None, cast: bool) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {}
        preds = self._key_predicates(self.spec.key_exprs, self.src, lower, upper, params)
        return (f"SELECT {self.spec.select_list(cast)} FROM {self.spec.source_from}{self.spec.where(*preds)}",
                params)

    def delta_select(self, delta: DeltaBounds, after: Key | None, limit: int, cast: bool
                     ) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {}
        preds = [delta.predicate(self.spec, params)]
        if after is not None:
            preds.append(self.src.compare(self.spec.key_exprs, ">", after, params, "af"))
        order = ", ".join(self.spec.key_exprs)
        params["lim"] = limit
        return (f"SELECT {self.spec.select_list(cast)} FROM {self.spec.source_from}{self.spec.where(*preds)} "
                f"ORDER BY {order} LIMIT {self.src.param('lim')}", params)

    # -- target SQL --------------------------------------------------------------------------------
    def _insert_sql(self, upsert: bool) -> str:
        cols = ", ".join(self.spec.column_idents)
        values = ", ".join(self.tgt.param(f"c{i}") for i in range(len(self.spec.columns)))
        sql = f"INSERT INTO {self.spec.target_table} ({cols}) VALUES ({values})"
        return sql + self._conflict_clause() if upsert else sql

    def _conflict_clause(self, excluded: str = "excluded") -> str:
        keys = set(self.spec.key)
        others = [self.tgt.ident(c.name) for c in self.spec.columns if c.name not in keys]
        return self.tgt.upsert_clause(self.spec.key_idents, others, excluded)

    def _delete_range(self, tconn: Connection, lower: Key | None, upper: Key) -> None:
        params: dict[str, Any] = {}
        preds = self._key_predicates(self.spec.key_idents, self.tgt, lower, upper, params)
        tconn.exec_driver_sql(f"DELETE FROM {self.spec.target_table} WHERE {' AND '.join(preds)}", params)

    # -- batches -------------------------------------------------------------------------------------
    def copy_range(self, source: Connection | None, lower: Key | None, upper: Key,
                   checkpoint: Checkpoint) -> int:
        """Phase 1: copy the source rows with lower < key <= upper; commit them with ``checkpoint``."""
        # Integer keys order the same everywhere: clear the range, then plain inserts (fastest). Other keys may
        # collate differently in the target, where a range delete could hit rows of another batch: upsert.
        upsert = not self.spec.integer_key
        with self.target.begin() as tconn:
            if not upsert:
                self._delete_range(tconn, lower, upper)
            sconn = source if source is not None else tconn
            if self.spec.fast_path:
                sql, params = self.range_select(lower, upper, cast=True)
                if upsert:
                    self._ensure_stage(tconn)
                    rows = self._stream(sconn, sql, params, tconn, self.stage)
                    self._merge_stage(tconn)
                else:
                    rows = self._stream(sconn, sql, params, tconn, self.spec.target_table)
            else:
                sql, params = self.range_select(lower, upper, cast=False)
                rows, _ = self._write_rows(tconn, self._read(sconn, sql, params), upsert=upsert)
            checkpoint(tconn, upper, rows)
        return rows

    def copy_delta(self, source: Connection | None, delta: DeltaBounds, after: Key | None, limit: int,
                   checkpoint: Checkpoint | None, tconn: Connection | None = None) -> tuple[int, Key | None]:
        """Phases 2 and 3: upsert up to ``limit`` changed rows with key > ``after``, in key order.
        Returns (rows, last key copied); (0, None) when the delta is exhausted. With ``tconn`` the batch
        joins that open target transaction instead of committing its own."""
        if tconn is None:
            with self.target.begin() as own:
                return self.copy_delta(source, delta, after, limit, checkpoint, tconn=own)
        sconn = source if source is not None else tconn
        if self.spec.fast_path:
            sql, params = self.delta_select(delta, after, limit, cast=True)
            self._ensure_stage(tconn)
            rows = self._stream(sconn, sql, params, tconn, self.stage)
            last = self._stage_last_key(tconn) if rows else None
            if rows:
                self._merge_stage(tconn)
        else:
            sql, params = self.delta_select(delta, after, limit, cast=False)
            rows, last = self._write_rows(tconn, self._read(sconn, sql, params), upsert=True)
        if rows and checkpoint is not None and last is not None:
            checkpoint(tconn, last, rows)
        return rows, last

    # -- streaming fast path -------------------------------------------------------------------------
    def _stream(self, sconn: Connection, select_sql: str, params: dict[str, Any], tconn: Connection,
                   into: str) -> int:
        return self.tgt.copy_between(sconn, select_sql, params, tconn, into, ", ".join(self.spec.column_idents))

    def _ensure_stage(self, tconn: Connection) -> None:
        self.tgt.stage_like(tconn, self.stage, self.spec.target_table)

    def _merge_stage(self, tconn: Connection) -> None:
        """Upsert the staged rows into the target and empty the stage (same transaction)."""
        cols = ", ".join(self.spec.column_idents)
        tconn.exec_driver_sql(f"INSERT INTO {self.spec.target_table} ({cols}) SELECT {cols} FROM {self.stage}"
                              f"{self._conflict_clause('EXCLUDED')}", {})
        self.tgt.clear_stage(tconn, self.stage)

    def _stage_last_key(self, tconn: Connection) -> Key:
        order = ", ".join(f"{k} DESC" for k in self.spec.key_idents)
        row = tconn.exec_driver_sql(f"SELECT {', '.join(self.spec.key_idents)} FROM {self.stage} "
                                    f"ORDER BY {order} LIMIT 1", {}).first()
        assert row is not None
        return tuple(row)

    # -- generic path --------------------------------------------------------------------------------
    def _read(self, sconn: Connection, sql: str, params: dict[str, Any]) -> Iterator[list[tuple[Any, ...]]]:
        result = sconn.execution_options(stream_results=True).exec_driver_sql(sql, params)
        try:
            for part in result.partitions(_STREAM_ROWS):
                yield [tuple(r) for r in part]
        finally:
            result.close()

    def _write_rows(self, tconn: Connection, parts: Iterator[list[tuple[Any, ...]]], upsert: bool
                    ) -> tuple[int, Key | None]:
        key_positions = [i for i, c in enumerate(self.spec.columns) if c.name in self.spec.key]
        key_positions.sort(key=lambda i: self.spec.key.index(self.spec.columns[i].name))
        rows, last = 0, None
        if self.tgt.copy_fast_path:
            with self._bulk_rows(tconn, upsert) as write_row:
                for part in parts:
                    for row in part:
                        write_row(row)
                    rows += len(part)
                    last = tuple(part[-1][i] for i in key_positions) if part else last
            return rows, last
        adapt = self.tgt.write_value
        sql = self._insert_sql(upsert)
        for part in parts:
            if not part:
                continue
            tconn.exec_driver_sql(sql, [{f"c{i}": adapt(v) for i, v in enumerate(row)} for row in part])
            rows += len(part)
            last = tuple(part[-1][i] for i in key_positions)
        return rows, last

    @contextmanager
    def _bulk_rows(self, tconn: Connection, upsert: bool) -> Iterator[Callable[[tuple[Any, ...]], None]]:
        cols = ", ".join(self.spec.column_idents)
        into = self.spec.target_table
        if upsert:
            self._ensure_stage(tconn)
            into = self.stage
        with self.tgt.copy_rows_into(tconn, into, cols) as write_row:
            yield write_row
        if upsert:
            self._merge_stage(tconn)


class DeltaBounds:
    """Which source rows phases 2 and 3 copy: keys above a high-water mark, or a watermark at/after a cutoff."""

    def __init__(self, high_water: Key | None, cutoff: Any):
        self.high_water, self.cutoff = high_water, cutoff

    def predicate(self, spec: BackfillSpec, params: dict[str, Any]) -> str:
        parts = []
        if self.high_water is not None:
            parts.append(spec.src.compare(spec.key_exprs, ">", self.high_water, params, "hw"))
        else:
            parts.append("1 = 1")  # the source was empty when phase 1 began: every row is new
        if spec.watermark_expr is not None and self.cutoff is not None:
            params["cutoff"] = self.cutoff
            parts.append(f"{spec.watermark_expr} >= {spec.src.param('cutoff')}")
        return " OR ".join(f"({p})" for p in parts)

    def describe(self) -> str:
        hw = "-" if self.high_water is None else self.high_water[0] if len(self.high_water) == 1 else self.high_water
        return f"key > {hw}" + (f" or watermark >= {self.cutoff}" if self.cutoff is not None else "")
