"""Health gate: rollback triggers sampled over a window after a change goes live.

Metrics come from SQL (first column of the first row, on one of the engines) or from an HTTP endpoint that
returns JSON (``json_path`` is a dot path into the body: ``errors.rate``, ``latency.0.p95``). Thresholds
are absolute (``max``) or relative to a baseline captured before the migration (``max_ratio_to_baseline``).
The defaults follow the plan seed: error rate above 1 %, p95 latency above twice the baseline.

The gate fails safe: a metric that cannot be read raises ``HealthCheckError`` (never a silent pass), with
``transient`` True where reading it again may succeed (endpoint unreachable, timeout, connection lost).
"""

from __future__ import annotations

import json
import math
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import is_transient
from airflow_migrate_provider.core.verify.base import CheckResult, Difference
from airflow_migrate_provider.errors import HealthCheckError, db_error_line
from airflow_migrate_provider.masking import mask_text, mask_uri

MAX_BODY_BYTES = 1 << 20  # a metrics document, not a download


@dataclass
class Metric:
    """One number to watch: ``sql`` run on the gate's database, or the JSON at ``url`` (``json_path`` into it)."""

    name: str
    sql: str | None = None
    url: str | None = None
    json_path: str | None = None  # "errors.rate": dot path into the JSON body; None = the body is the number


@dataclass
class Threshold:
    """A rollback trigger on one metric: above ``max``, or above ``max_ratio_to_baseline`` times its baseline."""

    metric: str
    max: float | None = None
    max_ratio_to_baseline: float | None = None


def default_thresholds() -> list[Threshold]:
    """The plan seed's triggers: error rate above 1 %, p95 latency above twice the pre-migration baseline."""
    return [Threshold("error_rate", max=0.01), Threshold("latency_p95", max_ratio_to_baseline=2.0)]


class HealthGate:
    """Samples metrics and holds them against thresholds; ``watch`` does so for a window and stops at the
    first breach."""

    def __init__(self, metrics: list[Metric], thresholds: list[Threshold], engines: dict[str, Engine] | None = None,
                 timeout_s: float = 5.0, database: str = "target"):
        self.metrics, self.thresholds = metrics, thresholds
        self.engines, self.timeout_s, self.database = engines or {}, timeout_s, database
        _validate(metrics, thresholds, self.engines, database, timeout_s)

    # reading
    def sample(self) -> dict[str, float]:
        """Every metric read once, in declaration order. Metrics that share a URL are read from one
        response (one request per URL per sample: a consistent snapshot)."""
        documents: dict[str, Any] = {}
        return {m.name: self._read(m, documents) for m in self.metrics}

    def capture_baseline(self, samples: int = 3, interval_s: float = 1.0, sleep: Callable[[float], Any] = time.sleep
                         ) -> dict[str, float]:
        """The median of ``samples`` readings per metric, ``interval_s`` apart (taken before the change)."""
        if samples < 1:
            raise HealthCheckError(f"health.baseline.samples: must be at least 1, got {samples}")
        readings: list[dict[str, float]] = []
        for i in range(samples):
            if i:
                sleep(interval_s)
            readings.append(self.sample())
        return {m.name: statistics.median(r[m.name] for r in readings) for m in self.metrics}

    # judging
    def evaluate(self, values: dict[str, float], baseline: dict[str, float] | None) -> CheckResult:
        """Hold one sample against every threshold. A ratio threshold without a baseline value raises: the
        gate cannot judge it and must not pass by default."""
        breaches: list[Difference] = []
        readings: list[str] = []
        for t in self.thresholds:
            if t.metric not in values:
                raise HealthCheckError(f"health gate: no value for metric '{t.metric}' in the sample", t.metric)
            value = values[t.metric]
            limits = []
            if t.max is not None:
                limits.append((t.max, f"max {t.max:g}"))
            if t.max_ratio_to_baseline is not None:
                base = (baseline or {}).get(t.metric)
                if base is None:
                    raise HealthCheckError(
                        f"health gate: threshold on '{t.metric}' is relative to a baseline, but no baseline value "
                        f"was captured for it (capture_baseline before the change)", t.metric)
                limits.append((t.max_ratio_to_baseline * base,
                               f"{t.max_ratio_to_baseline:g}x baseline {base:g} = {t.max_ratio_to_baseline * base:g}"))
            for limit, text in limits:
                if value > limit:
                    breaches.append(Difference(kind="health", key=t.metric, target=value,
                                               detail=f"{t.metric} = {value:g} > {text}"))
            readings.append(f"{t.metric} = {value:g} (limit {'; '.join(text for _, text in limits)})")
        summary = ("; ".join(d.detail for d in breaches) if breaches else "all thresholds held")
        return CheckResult(check="health_gate", passed=not breaches, target=_values_text(values),
                           detail=f"{summary}\n" + "\n".join(readings),
                           differences=breaches, total_differences=len(breaches))

    def watch(self, window_s: float, interval_s: float, baseline: dict[str, float] | None,
              sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic) -> CheckResult:
        """Sample every ``interval_s`` for ``window_s`` seconds (first sample at once); return at the first
        breach, naming the metric, its value, the threshold and when; passed only if every sample held."""
        if interval_s <= 0 or window_s < 0:
            raise HealthCheckError(f"health gate: window_s must be ≥ 0 and interval_s > 0 "
                                   f"(got window_s={window_s}, interval_s={interval_s})")
        start, count = clock(), 0
        while True:
            values = self.sample()
            count += 1
            elapsed = clock() - start
            result = self.evaluate(values, baseline)
            if not result.passed:
                when = (f"at +{elapsed:.1f} s of the {window_s:g} s window (sample {count}, "
                        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')})")
                result.detail = f"breach {when}: {result.detail}"
                for d in result.differences:
                    d.detail = f"{d.detail} {when}"
                result.seconds = round(elapsed, 3)
                return result
            if elapsed + interval_s > window_s:
                break
            sleep(interval_s)
        result.detail = (f"{count} samples over {elapsed:.1f} s, every {interval_s:g} s: all thresholds held; "
                         f"last sample:\n" + result.detail.split("\n", 1)[-1])
        result.seconds = round(elapsed, 3)
        return result

    def _read(self, metric: Metric, documents: dict[str, Any]) -> float:
        if metric.sql is not None:
            return _number(metric, self._read_sql(metric), "the query's first column")
        url = metric.url or ""
        if url not in documents:
            documents[url] = self._read_url(metric)
        raw = documents[url]
        return _number(metric, _at_path(metric, raw), f"json_path '{metric.json_path}'" if metric.json_path
                       else "the JSON body")

    def _read_sql(self, metric: Metric) -> Any:
        engine = self.engines[self.database]
        try:
            with engine.connect() as conn:
                # plan SQL as written: no parameter parsing, so a literal % or ? stays literal
                row = conn.exec_driver_sql(metric.sql, execution_options={"no_parameters": True}).first()
        except Exception as exc:
            raise HealthCheckError(f"metric '{metric.name}': query on the {self.database} database failed: "
                                   f"{mask_text(db_error_line(exc))}", metric.name, is_transient(engine, exc)) from exc
        if row is None:
            raise HealthCheckError(f"metric '{metric.name}': query returned no row", metric.name)
        return row[0]

    def _read_url(self, metric: Metric) -> Any:
        shown = mask_uri(metric.url or "")
        request = urllib.request.Request(metric.url or "", headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # http(s) only (_validate)
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise HealthCheckError(f"metric '{metric.name}': {shown} answered HTTP {exc.code} {exc.reason}",
                                   metric.name, transient=exc.code >= 500 or exc.code == 429) from exc
        except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout, reset
            reason = getattr(exc, "reason", None) or exc
            raise HealthCheckError(f"metric '{metric.name}': cannot reach {shown} "
                                   f"(timeout {self.timeout_s:g} s): {mask_text(str(reason))}",
                                   metric.name, transient=True) from exc
        if len(body) > MAX_BODY_BYTES:
            raise HealthCheckError(f"metric '{metric.name}': {shown} returned more than {MAX_BODY_BYTES} bytes",
                                   metric.name)
        try:
            return json.loads(body)
        except ValueError as exc:
            snippet = body[:80].decode("utf-8", "replace")
            raise HealthCheckError(f"metric '{metric.name}': {shown} did not return JSON ({exc}); "
                                   f"body starts {snippet!r}", metric.name) from exc


def _validate(metrics: list[Metric], thresholds: list[Threshold], engines: dict[str, Engine], database: str,
              timeout_s: float) -> None:
    problems = []
    names = [m.name for m in metrics]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"health.metrics: metric '{name}' is defined more than once")
    for i, m in enumerate(metrics):
        at = f"health.metrics[{i}] ('{m.name}')"
        if (m.sql is None) == (m.url is None):
            problems.append(f"{at}: give exactly one of 'sql' and 'url'")
        if m.sql is not None and database not in engines:
            problems.append(f"{at}.sql: no engine for database '{database}' (have: {', '.join(engines) or 'none'})")
        if m.url is not None and not m.url.lower().startswith(("http://", "https://")):
            problems.append(f"{at}.url: must be an http:// or https:// URL, got {mask_uri(m.url)!r}")
    for i, t in enumerate(thresholds):
        at = f"health.thresholds[{i}] ('{t.metric}')"
        if t.metric not in names:
            problems.append(f"{at}.metric: no metric named '{t.metric}' (metrics: {', '.join(names) or 'none'})")
        if t.max is None and t.max_ratio_to_baseline is None:
            problems.append(f"{at}: give 'max', 'max_ratio_to_baseline' or both")
        if t.max_ratio_to_baseline is not None and t.max_ratio_to_baseline <= 0:
            problems.append(f"{at}.max_ratio_to_baseline: must be positive, got {t.max_ratio_to_baseline}")
    if not thresholds:
        problems.append("health.thresholds: none given (a gate without thresholds would always pass)")
    if timeout_s <= 0:
        problems.append(f"health.timeout_s: must be positive, got {timeout_s}")
    if problems:
        raise HealthCheckError("health gate is not set up correctly:\n" + "\n".join(f"  - {p}" for p in problems))


def _at_path(metric: Metric, document: Any) -> Any:
    """The value at ``metric.json_path`` (dot-separated keys; a number indexes a list)."""
    if not metric.json_path:
        return document
    node, walked = document, []
    for part in metric.json_path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            where = ".".join(walked) or "the top level"
            have = f"keys: {', '.join(map(str, list(node)[:20]))}" if isinstance(node, dict) else type(node).__name__
            raise HealthCheckError(f"metric '{metric.name}': json_path '{metric.json_path}': no '{part}' under "
                                   f"{where} ({have})", metric.name)
        walked.append(part)
    return node


def _number(metric: Metric, value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        number = None
    elif isinstance(value, (int, float)) or type(value).__name__ == "Decimal":
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    else:
        number = None
    if number is None or math.isnan(number):
        raise HealthCheckError(f"metric '{metric.name}': {what} is not a number: {value!r}"[:300], metric.name)
    return number


def _values_text(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in values.items())

