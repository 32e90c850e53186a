"""The run layout's read side (:mod:`lrtrack.tracking.records`) and the sweep's own runs
(:mod:`lrtrack.tracking.layout`, the summary table of :mod:`lrtrack.app.summary`, the seed groups of
:mod:`lrtrack.app.sweep`) against a real sqlite MLflow store.

The runs are made by hand through ``MlflowClient`` in the layout lrtrack writes (a sweep run,
pipeline runs under it, explore/final runs under those), so these tests pin the layout the
report and the sweep summary read, without running a pipeline. What the layout writes goes through a
real :class:`~lrtrack.tracking.runs.Tracker` (its journal and relay), as in a sweep.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lrtrack.app.summary import SUMMARY_COLUMNS, job_row, rows_to_csv, summary_columns
from lrtrack.app.sweep import SweepContext, job_seed, seed_group, seed_inputs
from lrtrack.tracking import layout, records

RANGE_CSV = "step,lr,loss,loss_smoothed\n0,0.001,2.3,2.3\n1,0.01,1.9,2.0\n2,0.1,1.2,\n3,1.0,9.0,4.0\n"


@dataclass
class Store:
    client: Any
    uri: str
    experiment_id: str
    sweep_id: str
    job_ids: dict[str, str]  # "job0"/"job1" -> pipeline run id; "explore1", "final1", "loose"...


@contextmanager
def _tracker(store: Store, folder: Path) -> Iterator[Any]:
    """A real tracker on the test store; leaving the block delivers what was written."""
    from lrtrack.tracking.runs import Tracker

    with Tracker(store.uri, "lrtrack-test", spool_dir=folder, delivery_timeout_s=30) as tracker:
        yield tracker


def _run(client: Any, experiment_id: str, name: str, tags: dict[str, str], *, parent: str | None = None,
         params: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
         artifacts: dict[str, str] | None = None, status: str = "FINISHED") -> str:
    if parent:
        tags = {**tags, layout.PARENT_TAG: parent}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    for path, text in (artifacts or {}).items():
        client.log_text(run_id, text, path)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("runlog")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("lrtrack-test", artifact_location=(folder / "artifacts").as_uri())
    stage = layout.STAGE_TAG
    sweep = _run(client, exp, "sweep optimizer=sgd seed=0,1", {stage: layout.STAGE_SWEEP})
    ids = {"sweep": sweep}
    # Job 1 starts first but is Hydra's job 1: sweep_jobs orders by job number.
    for num, seed, parts in ((1, "1", ("explore", "final")), (0, "0", ("explore",))):
        overrides = f"+model=mlp optimizer=sgd seed={seed}"
        job = _run(client, exp, f"optimizer=sgd seed={seed}", {
            stage: layout.STAGE_PIPELINE, layout.JOB_NUM_TAG: str(num), layout.OVERRIDES_TAG: overrides,
            layout.SWEEP_OVERRIDES_TAG: f"optimizer=sgd seed={seed}"}, parent=sweep, params={"seed": seed})
        ids[f"job{num}"] = job
        # As log_range_test leaves it under the default rule: a metric per rule that found an LR,
        # a tag per rule with the LR or why there is none.
        lrs = {"confirmed": 0.01 * (1 + num), "steepest": 0.003, "valley": 0.004 * (1 + num)}
        ids[f"explore{num}"] = _run(
            client, exp, f"explore {seed}", {
                stage: layout.STAGE_EXPLORE, layout.SUGGESTION_RULE_TAG: "confirmed",
                **{f"{layout.SUGGESTION_TAG_PREFIX}{r}": f"{lrs[r]:.6g}" if r in lrs else "curve too flat"
                   for r in ("confirmed", "steepest", "valley", "minimum", "slide")}},
            parent=job, params={"seed": seed},
            metrics={f"suggested_lr/{r}": lr for r, lr in lrs.items()} | {"suggested_lr": lrs["confirmed"]},
            artifacts={layout.RANGE_TEST_HISTORY: RANGE_CSV})
        if "final" in parts:
            final = _run(client, exp, f"final {seed}", {stage: layout.STAGE_FINAL}, parent=job,
                         params={layout.MAX_LR_PARAM: "0.01", layout.BASE_LR_PARAM: "0.001"},
                         metrics={layout.FINAL_VAL_LOSS: 0.5, layout.FINAL_VAL_ACCURACY: 0.8},
                         artifacts={layout.TRAIN_HISTORY: "step,lr,loss,loss_smoothed\n0,0.001,2,2\n1,0.01,1,1.5\n"})
            for step, value in ((5, 0.7), (2, 0.9)):
                client.log_metric(final, "val_loss", value, step=step)
            ids[f"final{num}"] = final
    ids["loose"] = _run(client, exp, "range test on its own", {stage: layout.STAGE_EXPLORE})
    _run(client, exp, "not lrtrack's", {})
    return Store(client, uri, exp, sweep, ids)


def test_sweep_jobs_pairs_each_pipeline_run_with_its_children_in_job_order(store: Store) -> None:
    jobs = records.sweep_jobs(store.client, store.sweep_id)
    assert [j.name for j in jobs] == ["optimizer=sgd seed=0", "optimizer=sgd seed=1"]
    first, second = jobs
    assert first.job_run.info.run_id == store.job_ids["job0"]
    assert first.explore.info.run_id == store.job_ids["explore0"] and first.final is None
    assert second.final.info.run_id == store.job_ids["final1"]
    assert [r.info.run_id for r in records.child_runs(store.client, second.job_run)] == [
        store.job_ids["explore1"], store.job_ids["final1"]]
    assert records.job_record(store.client, second.job_run).explore.info.run_id == store.job_ids["explore1"]


def test_job_rows_and_their_csv(store: Store) -> None:
    jobs = records.sweep_jobs(store.client, store.sweep_id)
    rows = [job_row(j) for j in jobs]
    assert list(rows[1]) == list(SUMMARY_COLUMNS)
    assert rows[1] == {
        "job": "optimizer=sgd seed=1", "overrides": "optimizer=sgd seed=1", "status": "FINISHED",
        "suggestion_rule": "confirmed", "suggested_lr/confirmed": 0.02, "suggested_lr/steepest": 0.003,
        "suggested_lr/valley": 0.008, "suggested_lr/minimum": None, "suggested_lr/slide": None,
        "max_lr": 0.01, "base_lr": 0.001,
        "final_val_accuracy": 0.8, "final_val_loss": 0.5, "error": "", "job_run_id": store.job_ids["job1"],
        "explore_run_id": store.job_ids["explore1"], "final_run_id": store.job_ids["final1"]}
    assert rows[0]["max_lr"] is None and rows[0]["final_run_id"] == ""
    assert [j.chosen_lr() for j in jobs] == [0.01, 0.02]  # the chosen rule's (confirmed), not valley's
    table = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert [r["job"] for r in table] == ["optimizer=sgd seed=0", "optimizer=sgd seed=1"]
    assert table[0]["max_lr"] == "" and table[1]["suggested_lr/confirmed"] == "0.02"
    assert table[1]["suggested_lr/valley"] == "0.008" and table[1]["suggested_lr/minimum"] == ""


def test_experiment_jobs_keeps_loose_range_tests_and_skips_other_runs(store: Store) -> None:
    jobs = records.experiment_jobs(store.client, store.experiment_id)
    assert [j.name for j in jobs] == ["optimizer=sgd seed=1", "optimizer=sgd seed=0", "range test on its own"]
    assert jobs[0].final.info.run_id == store.job_ids["final1"]
    loose = jobs[2]
    assert loose.job_run is None and loose.explore.info.run_id == store.job_ids["loose"]
    assert job_row(loose)["status"] == "FINISHED" and loose.chosen_lr() is None
    assert records.suggestion_rule(loose.explore) == "confirmed"  # no rule tag: the default rule


def test_read_csv_artifact_and_metric_history(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    curve = records.read_csv_artifact(store.client, store.job_ids["explore1"], layout.RANGE_TEST_HISTORY)
    assert curve.get("lr") == [0.001, 0.01, 0.1, 1.0]
    smoothed = curve.get("loss_smoothed")
    assert smoothed[:2] == [2.3, 2.0] and math.isnan(smoothed[2]) and smoothed[3] == 4.0
    assert curve.get("nope") == []
    missing = records.read_csv_artifact(store.client, store.job_ids["loose"], layout.RANGE_TEST_HISTORY)
    assert not missing and missing.get("lr") == []
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # set only while downloading
    assert records.metric_history(store.client, store.job_ids["final1"], "val_loss") == [(2, 0.9), (5, 0.7)]
    assert records.metric_history(store.client, store.job_ids["final1"], "nope") == []
    curves = records.range_test_curves(store.client, records.sweep_jobs(store.client, store.sweep_id))
    assert [(name, lrs[-1], lr) for name, lrs, _, lr in curves] == [
        ("optimizer=sgd seed=0", 1.0, 0.01), ("optimizer=sgd seed=1", 1.0, 0.02)]


def test_record_failure_tags_a_run_or_creates_a_failed_one(store: Store, tmp_path: Path) -> None:
    from lrtrack.tracking.runs import TrackedRun

    sweep_id = _run(store.client, store.experiment_id, "sweep x=0,1", {layout.STAGE_TAG: layout.STAGE_SWEEP},
                    status="RUNNING")
    ctx = SweepContext(sweep_id, store.uri, "lrtrack-test", ("x",))
    overrides = ["+model=mlp", "x=1"]
    with _tracker(store, tmp_path) as tracker:
        created = ctx.record_failure(tracker, overrides, ValueError("x=1 is invalid:\n  use 0"), None,
                                     tags={layout.COMMAND_TAG: "python -m lrtrack"})
    run = records.get_run(store.client, created)
    assert run.info.status == "FAILED" and run.info.run_name == f"x=1 (sweep {sweep_id[:6]})"
    assert run.data.tags[layout.ERROR_TAG] == "ValueError: x=1 is invalid: use 0"
    assert run.data.tags[layout.PARENT_TAG] == sweep_id and run.data.tags[layout.STAGE_TAG] == "pipeline"
    assert run.data.tags[layout.SWEEP_OVERRIDES_TAG] == "x=1"
    assert run.data.tags[layout.OVERRIDES_TAG] == "+model=mlp x=1"
    assert run.data.tags[layout.COMMAND_TAG] == "python -m lrtrack"

    existing = _run(store.client, store.experiment_id, "x=0", {layout.STAGE_TAG: layout.STAGE_PIPELINE},
                    parent=sweep_id, status="FAILED")
    with _tracker(store, tmp_path) as tracker:
        assert ctx.record_failure(tracker, ["x=0"], RuntimeError(""), existing) == existing
    assert store.client.get_run(existing).data.tags[layout.ERROR_TAG] == "RuntimeError: RuntimeError"

    with _tracker(store, tmp_path) as tracker:
        rows = _log_sweep_summary(store, TrackedRun(tracker.journal, sweep_id), wall_seconds=3.0)
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"]
    sweep = store.client.get_run(sweep_id)
    assert sweep.data.metrics == {"jobs": 2.0, "jobs_failed": 2.0, "wall_seconds": 3.0}
    assert layout.BEST_JOB_TAG not in sweep.data.tags


def _log_sweep_summary(store: Store, run: Any, wall_seconds: float | None = None) -> list[dict[str, Any]]:
    """What :func:`lrtrack.app.sweep.finish_sweep` logs on a sweep's run; returns the table's rows."""
    jobs = records.sweep_jobs(store.client, run.run_id)
    rows = [job_row(j) for j in jobs]
    layout.log_sweep_summary(run, rows, summary_columns(rows), records.range_test_curves(store.client, jobs),
                             wall_seconds=wall_seconds)
    return rows


def _metric_steps(client: Any, run: Any) -> dict[str, list[int]]:
    """Each metric of a run -> the steps it was logged at (a summary: once, at SUMMARY_STEP = 0,
    which MLflow's chart view draws as a bar per run instead of a one-dot line chart)."""
    return {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def test_sweep_summary_and_seed_aggregate_round_trip(store: Store, tmp_path: Path) -> None:
    from lrtrack.engine.seeds import aggregate_seeds
    from lrtrack.tracking.runs import TrackedRun

    jobs = records.sweep_jobs(store.client, store.sweep_id)
    with _tracker(store, tmp_path) as tracker:
        rows = _log_sweep_summary(store, TrackedRun(tracker.journal, store.sweep_id))
    assert len(rows) == 2
    sweep = store.client.get_run(store.sweep_id)
    assert sweep.data.metrics["jobs_failed"] == 0 and sweep.data.metrics["best_final_val_loss"] == 0.5
    assert sweep.data.tags[layout.BEST_JOB_TAG] == "optimizer=sgd seed=1"
    assert _metric_steps(store.client, sweep) == {key: [layout.SUMMARY_STEP] for key in sweep.data.metrics}
    paths = {a.path for a in store.client.list_artifacts(store.sweep_id, "sweep")}
    assert paths == {layout.SWEEP_SUMMARY_CSV, layout.SWEEP_SUMMARY_JSON, layout.SWEEP_RANGE_TESTS_PLOT}

    assert {seed_group(j) for j in jobs} == {"+model=mlp optimizer=sgd"}
    assert [job_seed(j) for j in jobs] == ["0", "1"]
    curves, suggestions = seed_inputs(store.client, jobs)
    assert set(curves) == {"0", "1"}
    assert suggestions["1"] == {"confirmed": 0.02, "steepest": 0.003, "valley": 0.008, "minimum": None,
                                "slide": None}
    agg = aggregate_seeds(curves, suggestions)
    group = "+model=mlp optimizer=sgd"
    with _tracker(store, tmp_path) as tracker:
        seeds_id = layout.log_seed_aggregate(
            tracker, store.sweep_id, agg, name="range_test_seeds x2",
            group=group, rule="confirmed", seed_run_ids=[j.explore.info.run_id for j in jobs])
    seeds_id = tracker.store_id(seeds_id)
    (found,) = records.seed_runs(store.client, store.experiment_id, store.sweep_id)
    assert found.info.run_id == seeds_id and found.info.status == "FINISHED"
    m = found.data.metrics
    assert m["seeds"] == 2
    assert _metric_steps(store.client, found) == {key: [layout.SUMMARY_STEP] for key in m}  # bars, not dots
    # confirmed comes from each seed's logged suggestion (it cannot be read off the median curve):
    # the median of 0.01 and 0.02 (geometric), their min and max.
    assert m["suggested_lr"] == m["suggested_lr/confirmed"] == pytest.approx(math.sqrt(0.01 * 0.02))
    assert (m["suggested_lr/confirmed/min"], m["suggested_lr/confirmed/max"]) == (0.01, 0.02)
    assert m["suggested_lr/confirmed/n"] == 2 and m["suggested_lr/valley/n"] == 2
    assert m["suggested_lr/valley"] == pytest.approx(math.sqrt(0.004 * 0.008))
    assert not any(k.startswith("suggested_lr/minimum") for k in m)
    tags = found.data.tags
    assert tags[layout.SUGGESTION_RULE_TAG] == "confirmed" and records.suggestion_rule(found) == "confirmed"
    assert tags["lrtrack.suggestion.confirmed"] == f"{math.sqrt(0.01 * 0.02):.6g}"
    assert tags["lrtrack.suggestion.minimum"].startswith("no seed's range test has a minimum suggestion")
    assert records.seed_runs(store.client, store.experiment_id, "another sweep") == []
    back = records.read_seed_aggregate(store.client, found)
    assert back is not None and back.seeds == ["0", "1"]
    assert back.median[:2] == pytest.approx(agg.median[:2]) and back.lrs == agg.lrs
    assert back.per_seed == {
        "0": {"confirmed": 0.01, "steepest": 0.003, "valley": 0.004, "minimum": None, "slide": None},
        "1": {"confirmed": 0.02, "steepest": 0.003, "valley": 0.008, "minimum": None, "slide": None}}
    assert back.rule_stats("confirmed") == agg.rule_stats("confirmed")
    assert records.read_seed_aggregate(store.client, store.client.get_run(store.job_ids["loose"])) is None

    # A chosen rule that no seed answered: no suggested_lr, and the run says why.
    with _tracker(store, tmp_path) as tracker:
        other = layout.log_seed_aggregate(
            tracker, store.job_ids["loose"], agg, name="range_test_seeds x2",
            group=group, rule="minimum", seed_run_ids=[j.explore.info.run_id for j in jobs])
    run = records.get_run(store.client, other)
    assert run.info.status == "FINISHED" and "suggested_lr" not in run.data.metrics
    assert run.data.metrics["suggested_lr/confirmed"] == m["suggested_lr/confirmed"]
    assert "no seed's range test has a minimum suggestion" in run.data.tags["lrtrack.suggestion.minimum"]
