"""The plan model of a `kind: health_gate` step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import StrictModel, _identifier


class HealthMetricSpec(StrictModel):
    """One health metric, read from SQL or from an HTTP JSON endpoint."""

    name: str = Field(description="Metric name, e.g. `error_rate`, `latency_p95`.")
    sql: str | None = Field(default=None, description="A query returning one number.")
    url: str | None = Field(default=None, description="An http(s) URL returning JSON.")
    json_path: str | None = Field(default=None, description="Dot path to the number in the JSON (`errors.rate`).")

    @model_validator(mode="after")
    def _sql_or_url(self) -> HealthMetricSpec:
        if (self.sql is None) == (self.url is None):
            raise PydanticCustomError("metric_shape", "metric '{name}': give exactly one of `sql` or `url`",
                                      {"name": self.name})
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise PydanticCustomError("metric_url", "metric '{name}': `url` must be http(s)", {"name": self.name})
        return self


class HealthThresholdSpec(StrictModel):
    """When a metric means "roll back"."""

    metric: str = Field(description="The metric's name.")
    max: float | None = Field(default=None, description="Roll back when the metric is above this.")
    max_ratio_to_baseline: float | None = Field(
        default=None, gt=0, description="Roll back when the metric is above this multiple of its baseline "
        "(captured in preflight, before anything changes).")


class HealthGateStep(StrictModel):
    """Watch application health for a window; a breach fails the step, which rolls the run back."""

    kind: Literal["health_gate"] = Field(description="`health_gate`.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the gate protects, shown in the task's docs.")
    metrics: list[HealthMetricSpec] = Field(min_length=1, description="What to sample.")
    database: Literal["source", "target"] = Field(default="target", description="Where `sql` metrics run.")
    thresholds: list[HealthThresholdSpec] | None = Field(
        default=None, description="Rollback triggers. Default (the seed's): `error_rate` above 0.01, `latency_p95` "
        "above 2x its baseline, for whichever of the two metrics exist.")
    window_seconds: float = Field(default=300, gt=0, le=86_400, description="How long to watch.")
    interval_seconds: float = Field(default=15, gt=0, le=3600, description="Time between samples; the task "
                                    "defers in between, freeing its worker slot.")
    baseline_samples: int = Field(default=3, ge=1, le=100, description="Samples (medians) taken in preflight.")
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @model_validator(mode="after")
    def _thresholds_name_metrics(self) -> HealthGateStep:
        names = {m.name for m in self.metrics}
        unknown = [t.metric for t in self.thresholds or [] if t.metric not in names]
        if unknown:
            raise PydanticCustomError("unknown_metric", "thresholds name unknown metric(s) {unknown}; metrics: "
                                      "{names}", {"unknown": unknown, "names": sorted(names)})
        if not self.effective_thresholds():
            raise PydanticCustomError(
                "no_thresholds", "health gate '{step}' has no rollback trigger: name metrics `error_rate` / "
                "`latency_p95` (default thresholds) or give `thresholds`", {"step": self.id})
        return self

    def effective_thresholds(self) -> list[HealthThresholdSpec]:
        if self.thresholds is not None:
            return list(self.thresholds)
        names = {m.name for m in self.metrics}
        defaults = [HealthThresholdSpec(metric="error_rate", max=0.01),
                    HealthThresholdSpec(metric="latency_p95", max_ratio_to_baseline=2.0)]
        return [t for t in defaults if t.metric in names]
