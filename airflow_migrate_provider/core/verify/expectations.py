"""Great Expectations 1.x suites run against one table, reported as a verification check.

A suite is either inline (``[{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "email"}}]``,
GX's own expectation shape; ``expectation_type`` is accepted as an alias of ``type``) or a suite JSON file as
GX writes it (an object with ``"expectations": [...]``). Great Expectations is imported inside
``run_expectations`` only: its import takes seconds, and DAG files must parse fast (DESIGN rule 8).

Any failed expectation fails the check (``passed`` False): that is the point of running it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.verify.base import MAX_REPORTED, CheckResult, Difference
from airflow_migrate_provider.errors import ConnectionUnavailable, ExpectationSuiteError, MigrateError, db_error_line
from airflow_migrate_provider.masking import mask_text

FIELD = "expectations"  # how the plan names this check's settings, for error messages


def run_expectations(engine: Engine, table: str, suite: list[dict] | None = None, suite_path: str | None = None,
                     name: str = "suite") -> CheckResult:
    """Run a Great Expectations suite on ``table`` (``schema.table`` allowed) of ``engine``'s database.

    Exactly one of ``suite`` (inline list of expectations) and ``suite_path`` (a GX suite JSON file).
    Passed when every expectation succeeded; one ``Difference`` (kind ``expectation``) per failed one.
    Raises ``ExpectationSuiteError`` for bad input, ``ConnectionUnavailable`` when GX cannot connect.
    """
    started = time.monotonic()
    where, items = _load_suite(suite, suite_path)
    schema, _, table_name = table.rpartition(".")
    _require_table(engine, schema or None, table_name, table)
    gx = _import_gx()
    expectations = _build_expectations(where, items)

    ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    datasource = None
    try:
        datasource = _add_datasource(ctx, engine)
        asset = _add_table(datasource, schema or None, table_name)
        batch = asset.add_batch_definition_whole_table("whole").get_batch()
        gx_suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        outcome = batch.validate(gx_suite)
    except MigrateError:
        raise
    except Exception as exc:  # GX wraps driver errors in its own types; none of them must leak a URL
        message = mask_text(db_error_line(exc))
        raise ConnectionUnavailable(f"expectations on '{table}': Great Expectations could not read the table "
                                    f"({type(exc).__name__}): {message}") from exc
    finally:
        if datasource is not None:
            _close(datasource)

    index_of = {e.id: i for i, e in enumerate(gx_suite.expectations)}
    ordered = sorted(outcome.results, key=lambda r: index_of.get(r.expectation_config.id, len(index_of)))
    failures = [_difference(where, index_of.get(r.expectation_config.id), items, r) for r in ordered if not r.success]
    total, passed_count = len(ordered), len(ordered) - len(failures)
    return CheckResult(
        check="expectations",
        passed=not failures and total == len(items),
        target=f"{passed_count}/{total} passed",
        detail=f"{passed_count} of {total} expectations passed (suite '{name}' on {table})",
        seconds=round(time.monotonic() - started, 3),
        differences=failures[:MAX_REPORTED],
        total_differences=len(failures),
    )


def _load_suite(suite: list[dict] | None, suite_path: str | None) -> tuple[str, list[Any]]:
    """The expectations to run and the field they came from (for messages)."""
    if (suite is None) == (suite_path is None):
        raise ExpectationSuiteError([f"{FIELD}: give exactly one of 'suite' (inline expectations) and "
                                     f"'path' (suite_path: a suite JSON file); got "
                                     f"{'both' if suite is not None else 'neither'}"])
    if suite is not None:
        if not isinstance(suite, list):
            raise ExpectationSuiteError([f"{FIELD}.suite: expected a list of expectations, "
                                         f"got {type(suite).__name__}"])
        where, items = f"{FIELD}.suite", suite
    else:
        where = f"{FIELD}.path ({suite_path})"  # the plan calls the file `path`
        try:
            data = json.loads(Path(suite_path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ExpectationSuiteError([f"{where}: cannot read the file: {exc.strerror or exc}"]) from exc
        except ValueError as exc:
            raise ExpectationSuiteError([f"{where}: not valid JSON: {exc}"]) from exc
        if isinstance(data, dict) and isinstance(data.get("expectations"), list):
            items = data["expectations"]
        else:
            raise ExpectationSuiteError([f"{where}: expected a suite object with an 'expectations' list"])
        where = f"{where}: expectations"
    if not items:
        raise ExpectationSuiteError([f"{where}: no expectations (an empty suite would pass without checking)"])
    return where, items


def _type_of(item: Any) -> Any:
    return item.get("type", item.get("expectation_type")) if isinstance(item, dict) else None


def _build_expectations(where: str, items: list[Any]) -> list[Any]:
    """GX expectation objects, one per item; every problem of every item reported at once."""
    from great_expectations.expectations.registry import get_expectation_impl

    problems: list[str] = []
    built: list[Any] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{at}: expected an object with 'type' and 'kwargs', got {type(item).__name__}")
            continue
        kind, kwargs = _type_of(item), item.get("kwargs", {})
        if not isinstance(kind, str) or not kind:
            problems.append(f"{at}.type: missing (the expectation's snake_case name, "
                            f"e.g. 'expect_column_values_to_not_be_null')")
            continue
        if not isinstance(kwargs, dict):
            problems.append(f"{at}.kwargs: expected an object, got {type(kwargs).__name__}")
            continue
        try:
            impl = get_expectation_impl(kind)
        except Exception:
            problems.append(f"{at}.type: unknown expectation '{kind}'")
            continue
        extras = {k: item[k] for k in ("meta", "notes", "description") if item.get(k) is not None}
        try:
            built.append(impl(**{k: v for k, v in kwargs.items() if k != "batch_id"}, **extras))
        except Exception as exc:
            problems.extend(f"{at}.{msg}" for msg in _kwargs_problems(kind, exc))
    if problems:
        raise ExpectationSuiteError(problems)
    return built


def _kwargs_problems(kind: str, exc: Exception) -> list[str]:
    """``kwargs.column: field required`` lines from GX's (pydantic) validation error."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            lines = []
            for err in errors():
                loc = ".".join(str(p) for p in err.get("loc", ()))
                lines.append(f"kwargs{'.' + loc if loc else ''}: {err.get('msg', 'invalid')} ({kind})")
            if lines:
                return lines
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return [f"kwargs: {first} ({kind})"]


def _require_table(engine: Engine, schema: str | None, table_name: str, table: str) -> None:
    try:
        exists = inspect(engine).has_table(table_name, schema=schema)
    except Exception as exc:
        raise ConnectionUnavailable(f"expectations on '{table}': cannot inspect the database: "
                                    f"{mask_text(db_error_line(exc))}") from exc
    if not exists:
        raise ExpectationSuiteError([f"{FIELD}.table: table '{table}' does not exist in the "
                                     f"{engine.dialect.name} database"])


def _import_gx() -> Any:
    """Great Expectations, imported quietly: no analytics, no INFO flood, no progress bars."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        import great_expectations as gx
    except ImportError as exc:
        raise ExpectationSuiteError([f"{FIELD}: Great Expectations is not installed "
                                     f"(pip install 'airflow-migrate-provider[gx]'): {exc}"]) from exc
    return gx


def _add_datasource(ctx: Any, engine: Engine) -> Any:
    url = engine.url.render_as_string(hide_password=False)  # secret: handed to GX only, never logged
    from airflow_migrate_provider.core.dialects import dialect_of
    from airflow_migrate_provider.errors import UnsupportedDatabase

    try:
        kind = dialect_of(engine).gx_datasource
    except UnsupportedDatabase:
        kind = "sql"
    return getattr(ctx.data_sources, f"add_{kind}")(name="db", connection_string=url)


def _add_table(datasource: Any, schema: str | None, table_name: str) -> Any:
    if schema is None:
        return datasource.add_table_asset(name="table", table_name=table_name)
    with warnings.catch_warnings():  # GX 1.14+ deprecates schema_name, but it is the one way to name a schema
        warnings.simplefilter("ignore", DeprecationWarning)
        return datasource.add_table_asset(name="table", table_name=table_name, schema_name=schema)


def _close(datasource: Any) -> None:
    """GX opens its own engine from the URL: release its connections now, not at garbage collection."""
    with contextlib.suppress(Exception):
        datasource.get_execution_engine().close()
    with contextlib.suppress(Exception):
        datasource.get_engine().dispose()


def _difference(where: str, index: int | None, items: list[Any], result: Any) -> Difference:
    config = result.expectation_config
    item = items[index] if index is not None else {}
    kwargs = item.get("kwargs") or {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    details = result.result or {}
    parts = [f"{where}[{index}] {config.type}({_kwargs_text(kwargs)}) failed"]
    if "observed_value" in details:
        parts.append(f"observed_value {details['observed_value']!r}")
    if "unexpected_count" in details:
        total = details.get("element_count")
        parts.append(f"unexpected_count {_whole(details['unexpected_count'])}"
                     + (f" of {_whole(total)}" if total is not None else ""))
    if details.get("partial_unexpected_list"):
        parts.append(f"e.g. {details['partial_unexpected_list'][:5]!r}")
    error = _exception_message(result.exception_info)
    if error:
        parts.append(f"error: {mask_text(error)}")
    return Difference(kind="expectation", key=config.type, column=kwargs.get("column"), detail="; ".join(parts))


def _whole(count: Any) -> Any:
    """A count as a whole number: MySQL/MariaDB sum GX's counts into DECIMALs (2.0 rows reads 2 rows)."""
    try:
        return int(count) if float(count).is_integer() else count
    except (TypeError, ValueError):
        return count


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _exception_message(info: Any) -> str | None:
    """GX reports an expectation that raised either flat or keyed by metric: find the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "raised an exception")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "raised an exception")
    return None
