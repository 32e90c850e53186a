"""The summary table of a sweep (``sweep/summary.csv``) and of the report: one row per job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrtrack.engine.suggest import RULES
from lrtrack.tracking.layout import (
    BASE_LR_PARAM,
    ERROR_TAG,
    FINAL_VAL_ACCURACY,
    FINAL_VAL_LOSS,
    MAX_LR_PARAM,
    OVERRIDES_TAG,
    SUGGESTED_LR,
    SUGGESTION_RULE_TAG,
    SWEEP_OVERRIDES_TAG,
)
from lrtrack.tracking.records import JobRecord, as_float
from lrtrack.tracking.runs import csv_text

#: The columns of the table (:func:`job_row`).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "job", "overrides", "status", "suggestion_rule", *(f"{SUGGESTED_LR}/{r}" for r in RULES),
    "max_lr", "base_lr", FINAL_VAL_ACCURACY, FINAL_VAL_LOSS, "error",
    "job_run_id", "explore_run_id", "final_run_id",
)
#: A training run's validation summaries: final_val_loss, final_val_accuracy or final_val_<metric>.
FINAL_METRIC_PREFIX = "final_val_"
#: The configured bounds (params of every run), read when the *_used params are absent.
CONFIG_MAX_LR_PARAM, CONFIG_BASE_LR_PARAM = "bounds.max_lr", "bounds.base_lr"


def summary_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """:data:`SUMMARY_COLUMNS` plus the ``final_val_<metric>`` columns some row measured
    (a custom validation metric), placed before ``final_val_loss``."""
    columns = list(SUMMARY_COLUMNS)
    extra = sorted({k for r in rows for k in r if k.startswith(FINAL_METRIC_PREFIX) and k not in columns})
    at = columns.index(FINAL_VAL_LOSS)
    return columns[:at] + extra + columns[at:]


def job_row(job: JobRecord) -> dict[str, Any]:
    """A job's row of the table (see :data:`SUMMARY_COLUMNS`)."""
    first, ex, fi = job.first_run, job.explore, job.final
    tags = first.data.tags if first else {}
    row: dict[str, Any] = {
        "job": job.name,
        "overrides": tags.get(SWEEP_OVERRIDES_TAG) or tags.get(OVERRIDES_TAG, ""),
        "status": first.info.status if first else "?",
        "suggestion_rule": ex.data.tags.get(SUGGESTION_RULE_TAG, "") if ex else "",
    }
    for rule in RULES:
        row[f"{SUGGESTED_LR}/{rule}"] = ex.data.metrics.get(f"{SUGGESTED_LR}/{rule}") if ex else None
    params = fi.data.params if fi else {}
    row["max_lr"] = as_float(params.get(MAX_LR_PARAM, params.get(CONFIG_MAX_LR_PARAM)))
    row["base_lr"] = as_float(params.get(BASE_LR_PARAM, params.get(CONFIG_BASE_LR_PARAM)))
    row[FINAL_VAL_ACCURACY] = fi.data.metrics.get(FINAL_VAL_ACCURACY) if fi else None
    row[FINAL_VAL_LOSS] = fi.data.metrics.get(FINAL_VAL_LOSS) if fi else None
    row.update({k: v for k, v in (fi.data.metrics if fi else {}).items() if k.startswith(FINAL_METRIC_PREFIX)})
    errors = [r.data.tags.get(ERROR_TAG) for r in (job.job_run, ex, fi) if r is not None]
    row["error"] = next((e for e in errors if e), "")
    for column, run in (("job_run_id", job.job_run), ("explore_run_id", ex), ("final_run_id", fi)):
        row[column] = run.info.run_id if run else ""
    return row


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """Rows as CSV text with a header of ``columns`` (other keys left out, None written empty)."""
    return csv_text(rows, columns)
