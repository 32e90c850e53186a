"""Sweeps end to end: ``python -m lrtrack -m ...``, read back through MlflowClient.

Each command runs in the test's process (:func:`tests.conftest.run_cli_here`: exit code and
stderr as a process has them); the joblib sweep's jobs run in the worker processes its launcher
starts (tests/test_launchers.py: submitit; tests/test_server.py: a sweep against a server).

Each test runs one small sweep (MLP on fake data, 10-step range tests, one epoch) in a temporary
folder holding its own ``mlflow.db``, on the default suggestion rule (``confirmed``: fixed-LR
probes after the sweep). ``finder.end_lr=1``: the MLP trains at every LR up to 1, so the probes,
which start at the sweep's last LR when it finds no divergence edge, confirm one within the
10-step probe budget (from lr 10 they would spend it on LRs that diverge, and find none).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from tests.conftest import CliRun, run_cli_here

FAST = ["+model=mlp", "data=fake", "data.fake_size=256", "train.epochs=1", "finder.num_iter=10",
        "finder.end_lr=1", "progress=false", "train.checkpoint=false"]


def client_for(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def runs_by_stage(client, stage: str) -> list:
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(exp_ids, filter_string=f"tags.`lrtrack.stage` = '{stage}'", max_results=1000))


def children(client, run) -> list:
    return list(client.search_runs([run.info.experiment_id],
                                   filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"))


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory: pytest.TempPathFactory, premade_store) -> tuple[Path, CliRun]:
    """Four jobs: one good; one failing after its range test (3 steps are too few for the
    confirmation probes, so the default rule has no suggestion and no bounds to train in); two
    failing their first-batch check (3 classes for 10 labels: a setting only the data can refute;
    one that validation refutes stops the whole sweep before it starts, tests/test_validation.py).
    In a premade store (the joblib sweep creates its own)."""
    folder = premade_store(tmp_path_factory.mktemp("sweep"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    fast = [o for o in FAST if not o.startswith("finder.num_iter=")]
    proc = run_cli_here(["-m", *fast, f"tracking.tracking_uri={uri}", "model.num_classes=10,3", "finder.num_iter=10,3"],
                        folder)
    return folder, proc


@pytest.mark.slow
def test_sweep_structure_statuses_and_summary(failing_sweep) -> None:
    folder, proc = failing_sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 sweep job(s) failed" in proc.stderr
    client = client_for(folder)

    sweeps = runs_by_stage(client, "sweep")
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert sweep.info.status == "FAILED"
    assert sweep.data.tags["lrtrack.sweep_keys"] == "model.num_classes,finder.num_iter"
    assert sweep.data.metrics["jobs"] == 4 and sweep.data.metrics["jobs_failed"] == 3

    short = sweep.data.tags["lrtrack.run_id"][:6]  # lrtrack's id: the one the sweep prints
    assert sweep.info.run_name == f"sweep {short} model.num_classes=10,3 finder.num_iter=10,3"
    jobs = {r.info.run_name.removesuffix(f" (sweep {short})"): r for r in children(client, sweep)}
    assert set(jobs) == {f"model.num_classes={b} finder.num_iter={n}" for b in (10, 3) for n in (10, 3)}
    assert all(r.data.tags["lrtrack.stage"] == "pipeline" for r in jobs.values())
    good = jobs["model.num_classes=10 finder.num_iter=10"]
    assert good.info.status == "FINISHED"
    kids = {r.data.tags["lrtrack.stage"]: r for r in children(client, good)}
    assert set(kids) == {"explore", "final"}
    assert all(k.info.status == "FINISHED" for k in kids.values())
    assert math.isfinite(kids["final"].data.metrics["final_val_loss"])

    no_bounds = jobs["model.num_classes=10 finder.num_iter=3"]
    assert no_bounds.info.status == "FAILED"
    error = no_bounds.data.tags["lrtrack.error"]
    assert error.startswith("UserError: bounds.max_lr_rule='confirmed' has no suggestion: "), error
    assert "schedule." not in error and "bounds.max_lr to an explicit LR" in error
    kids = {r.data.tags["lrtrack.stage"]: r.info.status for r in children(client, no_bounds)}
    assert kids == {"explore": "FINISHED"}  # the range test ran; training never started
    for num_iter in (10, 3):
        invalid = jobs[f"model.num_classes=3 finder.num_iter={num_iter}"]
        assert invalid.info.status == "FAILED"
        assert "the model's number of classes" in invalid.data.tags["lrtrack.error"]
        assert children(client, invalid) == []

    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id, "sweep")}
    assert {"sweep/summary.csv", "sweep/summary.json", "sweep/range_tests.png"} <= artifacts
    text = (Path(client.download_artifacts(sweep.info.run_id, "sweep/summary.csv", str(folder))).read_text())
    rows = {r["job"]: r for r in csv.DictReader(io.StringIO(text))}
    assert len(rows) == 4
    row = rows[good.info.run_name]
    assert row["status"] == "FINISHED" and row["job_run_id"] == good.info.run_id
    assert float(row["max_lr"]) > float(row["base_lr"]) > 0
    assert row["suggestion_rule"] == "confirmed"  # the default rule gave the bounds
    assert float(row["max_lr"]) == pytest.approx(float(row["suggested_lr/confirmed"]))
    assert float(row["max_lr"]) == pytest.approx(4 * float(row["base_lr"]))
    assert float(row["suggested_lr/valley"]) > 0 and 0 <= float(row["final_val_accuracy"]) <= 1
    assert row["explore_run_id"] and row["final_run_id"]
    assert rows[f"model.num_classes=3 finder.num_iter=10 (sweep {short})"]["status"] == "FAILED"
    assert "no suggestion" in rows[no_bounds.info.run_name]["error"]


def test_swept_keys_and_job_names() -> None:
    from lrtrack.app.sweep import SweepContext, swept_keys

    assert swept_keys(["+model=mlp", "optimizer=sgd,adamw", "seed=range(3)", "x=1"]) == ["optimizer", "seed"]
    ctx = SweepContext("r", "sqlite://", "e", ("optimizer",))
    assert ctx.job_name(["+model=mlp", "optimizer=sgd"]) == "optimizer=sgd (sweep r)"
    long = SweepContext("3fa9c0d2e4b64f6a8c1d2e3f4a5b6c7d", "sqlite://", "e", ("seed",))
    assert long.job_name(["seed=1"]) == "seed=1 (sweep 3fa9c0)"


@pytest.mark.slow
def test_joblib_launcher_and_seed_aggregate(tmp_path: Path, premade_store) -> None:
    """Two parallel workers; +experiment=seeds turns on multirun and logs the aggregate run."""
    import hydra_plugins.hydra_joblib_launcher  # noqa: F401 - a hard dependency: fail, never skip

    premade_store(tmp_path)  # (a store created by a multi-process job: test_torchrun_two_ranks_on_cpu)
    from joblib.externals.loky import get_reusable_executor

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        proc = run_cli_here([*FAST, "+experiment=seeds", "hydra.sweeper.params.seed='0,1'", f"tracking.tracking_uri={uri}",
                             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)
    finally:
        get_reusable_executor().shutdown(wait=True)  # the launcher's 2 worker processes (a process would end them)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(tmp_path)
    (sweep,) = runs_by_stage(client, "sweep")
    assert sweep.info.status == "FINISHED"
    assert sweep.data.tags["lrtrack.launcher"] == "joblib"
    runs = children(client, sweep)
    jobs = sorted(r.info.run_name for r in runs if r.data.tags["lrtrack.stage"] == "pipeline")
    short = sweep.data.tags["lrtrack.run_id"][:6]  # lrtrack's id: the one the sweep prints
    assert jobs == [f"seed=0 (sweep {short})", f"seed=1 (sweep {short})"]
    pids = set()
    confirmed = []  # each seed's logged confirmed suggestion
    for job in (r for r in runs if r.data.tags["lrtrack.stage"] == "pipeline"):
        assert job.info.status == "FINISHED"
        (explore,) = children(client, job)
        assert explore.data.tags["lrtrack.stage"] == "explore"
        assert explore.info.run_name.endswith(f" on fake, {job.info.run_name}")  # which job of which sweep
        assert explore.data.metrics["probes"] > 0
        confirmed.append(explore.data.metrics["suggested_lr/confirmed"])
        pids.add(job.data.tags.get("lrtrack.job_num"))
    assert len(pids) == 2

    (agg,) = [r for r in runs if r.data.tags["lrtrack.stage"] == "range_test_seeds"]
    assert agg.info.status == "FINISHED"
    assert agg.data.metrics["seeds"] == 2
    m = agg.data.metrics
    rule = agg.data.tags["lrtrack.suggestion_rule"]
    assert rule == "confirmed"  # the default rule, aggregated from the seeds' probes, not the median curve
    assert m["suggested_lr"] == m[f"suggested_lr/{rule}"] == pytest.approx(math.sqrt(confirmed[0] * confirmed[1]))
    assert (m[f"suggested_lr/{rule}/min"], m[f"suggested_lr/{rule}/max"]) == (min(confirmed), max(confirmed))
    assert m[f"suggested_lr/{rule}/n"] == 2
    paths = {a.path for a in client.list_artifacts(agg.info.run_id, "range_test")}
    assert {"range_test/seeds.png", "range_test/history.csv", "range_test/seeds_history.csv"} <= paths

    from lrtrack.app.report import write_report

    page = write_report(client, sweep.info.run_id, tmp_path / "report").read_text()
    assert "<img src='seeds_0.png'" in page and "Range test over seeds: range_test_seeds x2" in page
    assert (tmp_path / "report" / "seeds_0.png").read_bytes()[:4] == b"\x89PNG"


def test_aggregate_seeds_uses_the_seeds_that_reached_each_step() -> None:
    from lrtrack.engine.seeds import aggregate_seeds

    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    agg = aggregate_seeds(
        {"0": (lrs, [2.0, 1.0, 0.5, 3.0]),
         "1": (lrs, [2.2, 1.2, 0.7, 5.0]),
         "2": (lrs[:2], [2.4, 1.4])},  # stopped early
        {"0": {"valley": 1e-2}, "1": {"valley": 1e-1}, "2": {"valley": 1e-3}})
    assert agg.lrs == lrs
    assert agg.median[:2] == pytest.approx([2.2, 1.2])
    assert agg.median[2:] == pytest.approx([0.6, 4.0])
    assert agg.lo[0] == pytest.approx(2.0) and agg.hi[0] == pytest.approx(2.4)
    s = agg.rule_stats("valley")
    assert s["median"] == pytest.approx(1e-2) and s["min"] == 1e-3 and s["max"] == 1e-1
    assert s["log10_iqr"] == pytest.approx(1.0)
    assert agg.rule_stats("steepest") == {}
    assert agg.seeds == ["0", "1", "2"] and math.isnan(agg.curves[2][3])
    rows = agg.history_rows()
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[2]["loss_smoothed"] == pytest.approx(0.6)


def test_aggregate_seeds_without_any_history_says_so() -> None:
    from lrtrack.engine.seeds import aggregate_seeds

    with pytest.raises(ValueError, match="no range-test history"):
        aggregate_seeds({"0": ([], [])}, {})
