"""Validation derived from the schema, config files, MLflow's state and limits, runs reused across setups.

The checks that need no process run on the real config composed in-process (Hydra's compose
API); the command-line behaviour (one line, exit 2, nothing started) is shown by a few real
``python -m lrtrack`` processes here and by the whole battery, ``scripts/bad_inputs.py``.
"""

from __future__ import annotations

import time
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from lrtrack.app.config import _TYPED_NODES, SEED_MAX, LRTrackConfig, Rule, _scalar_type
from tests.conftest import composed, errors_of, run_cli, run_cli_here


def _numeric_settings() -> list[tuple[str, type, Rule | None]]:
    out = []
    for node, schema in (("", LRTrackConfig), *_TYPED_NODES.items()):
        hints = typing.get_type_hints(schema)
        for f in fields(schema):
            kind = _scalar_type(hints[f.name])
            if kind is not None:
                out.append((f"{node}.{f.name}" if node else f.name, kind, f.metadata.get("rule")))
    return out


NUMERIC = _numeric_settings()
FLOATS = [setting for setting, kind, _ in NUMERIC if kind is float]


def test_every_numeric_setting_of_the_schema_has_a_rule_its_default_obeys() -> None:
    cfg = composed()
    assert len(NUMERIC) >= 19 and "finder.diverge_th" in FLOATS and "tracking.delivery_timeout_s" in FLOATS
    for setting, _, rule in NUMERIC:
        assert rule is not None and rule.allowed, f"{setting} has no Rule in the schema"
        default = eval(f"cfg.{setting}", {"cfg": cfg})  # noqa: S307 - a dotted path of our own config
        assert default is None or rule.admits(default), (setting, default)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_setting_refuses_nan_and_infinity(value: str) -> None:
    """NaN passes ``x > 1`` and ``x >= 0``: each float of the schema is checked for finiteness."""
    for setting in FLOATS:
        lines = errors_of(composed(f"{setting}={value}"))
        assert lines and lines[0].startswith(f"{setting}={value} is invalid: must be finite"), (setting, lines)
        assert len(lines) == 1, lines


def test_a_nan_safety_stop_and_a_nan_timeout_are_refused_with_what_is_allowed() -> None:
    assert errors_of(composed("finder.diverge_th=nan")) == [
        "finder.diverge_th=nan is invalid: must be finite and > 1 (stop when the loss exceeds this x the best; a "
        "huge one such as 1e9 turns the stop off, NaN never does); NaN and infinity are never valid here: set a "
        "number"]
    assert errors_of(composed("finder.diverge_th=1e9")) == []  # a deliberate "no stop" (the library's tests use it)
    (line,) = errors_of(composed("finder.end_lr=1e300"))
    assert line == "finder.end_lr=1e+300 is invalid: must be an LR in [1e-12, 1e+06]"
    # LRs too small to move a float32 weight (1e-300 is 0 there) are refused, not swept as flat noise.
    (line,) = errors_of(composed("finder.start_lr=1e-300", "finder.end_lr=1e5"))
    assert line == ("finder.start_lr=1e-300 is invalid: must be 0 (linear grids) or an LR in [1e-12, 1e+06] (or null: "
                    "the optimizer's LR)")
    assert errors_of(composed("finder.start_lr=1e-12", "finder.end_lr=1e6")) == []  # the widest grid
    (line,) = errors_of(composed("optimizer=adam", "optimizer.eps=1e-45"))
    assert line.startswith("optimizer.eps=1e-45 is invalid: must be in [1.18e-38, 1]")
    (line,) = errors_of(composed("tracking.delivery_timeout_s=nan"))
    assert line.startswith("tracking.delivery_timeout_s=nan is invalid: must be finite and seconds in [0, 604800]")


def test_numbers_outside_the_schema_are_finite_and_fit_in_int64() -> None:
    (line,) = errors_of(composed("optimizer=adam", "optimizer.betas=[0.9,nan]"))
    assert line.startswith("optimizer.betas[1]=nan is invalid: must be finite")
    (line,) = errors_of(composed("schedule=cosine_restarts", "schedule.T_0=100000000000000000000"))
    assert line.startswith("schedule.T_0=100000000000000000000 is invalid: must fit in a 64-bit integer")
    (line,) = errors_of(composed("model.dropout=inf"))
    assert line.startswith("model.dropout=inf is invalid: must be finite")


def test_a_huge_seed_is_one_line_with_numpys_range() -> None:
    for seed in ("100000000000000000000", str(SEED_MAX + 1), "-1"):
        assert errors_of(composed(f"seed={seed}")) == [
            f"seed={seed} is invalid: must be a whole number in [0, {SEED_MAX}] (numpy's seed range)"]
    assert errors_of(composed(f"seed={SEED_MAX}")) == []


def test_a_count_is_bounded_by_the_time_it_would_take_and_the_limit_can_be_raised() -> None:
    assert errors_of(composed("finder.num_iter=1000000000", "limits.max_memory_gb=1000000")) == [
        "finder.num_iter=1000000000 is invalid: the range test would take at least 6.94 days (6e+09 batches at "
        ">= 0.1 ms each), more than limits.max_hours=24; lower it, or raise limits.max_hours if you really mean it"]
    assert errors_of(composed("finder.num_iter=1000000000", "limits.max_hours=1000",
                              "limits.max_memory_gb=1000000", "stage=range_test")) == []
    (line,) = errors_of(composed("finder.num_iter=100000000", "limits.max_memory_gb=10"))
    assert line == ("finder.num_iter=100000000 is invalid: the range test would keep at least 154 GB of history "
                    "(6e+08 steps), more than 10 GB (limits.max_memory_gb=10); lower it")  # repeats null: up to 3
    (line,) = errors_of(composed("train.epochs=1000000000"))
    assert line.startswith("train.epochs=1000000000 is invalid: the training run would take at least")
    (line,) = errors_of(composed("train.accumulation_steps=1000000"))  # mnist: 235 batches an epoch, 3 epochs
    assert line.startswith("train.accumulation_steps=1000000 is invalid: must be at most the 705 batches of the "
                           "whole training run")


def test_memory_bounds_of_batch_sizes_workers_and_image_sizes() -> None:
    (line,) = errors_of(composed("data.batch_size=100000000", "limits.max_memory_gb=1"))
    assert line == ("data.batch_size=100000000 is invalid: a batch would need at least 314 GB of memory, more than "
                    "1 GB (limits.max_memory_gb=1); lower it")
    (line,) = errors_of(composed("data=digits", "data.num_workers=1000", "limits.max_memory_gb=64"))
    assert line.startswith("data.num_workers=1000 is invalid: the worker processes would need at least 268 GB")
    (line,) = errors_of(composed("data=imagefolder", "data.size=100000", "limits.max_memory_gb=64"))
    assert line.startswith("data.size=100000 is invalid: a batch of images resized to it would need at least")
    assert errors_of(composed("data=imagefolder", "data.std=[0.5,0,0.5]")) == [
        "data.std[1]=0 is invalid: must be > 0 (the inputs are divided by it); or null: measured on the data"]


def test_errors_are_collected_together() -> None:
    lines = errors_of(composed("finder.diverge_th=nan", "seed=-1", "train.smoothing=inf", "finder.num_iter=1"))
    assert sorted(line.split(" ", 1)[0] for line in lines) == [
        "finder.diverge_th=nan", "finder.num_iter=1", "seed=-1", "train.smoothing=inf"]


def test_unresolvable_interpolations_and_nodes_without_target_are_one_line(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRTRACK_TEST_UNSET", raising=False)
    assert errors_of(composed("finder.num_iter=${oc.env:LRTRACK_TEST_UNSET}")) == [
        "finder.num_iter='${oc.env:LRTRACK_TEST_UNSET}' cannot be resolved: KeyError raised while resolving "
        "interpolation: \"Environment variable 'LRTRACK_TEST_UNSET' not found\"; set what it refers to (an "
        "environment variable: export it) or write the value"]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "listed.yaml").write_text("- a\n- b\n")
    assert errors_of(composed(model="listed", conf=tmp_path)) == [
        "model=['a', 'b'] is invalid: must be a node with _target_ (the class or factory to build; see conf/model/); "
        "write _target_: <module.Name> in your conf/model/<name>.yaml"]
    (tmp_path / "model" / "oddkey.yaml").write_text("_target_: lrtrack.engine.models.MnistCNN\n'a!b': 1\n")
    (line,) = errors_of(composed(model="oddkey", conf=tmp_path))
    assert line.startswith("setting 'model.a!b' is invalid: MLflow logs each setting as a param named by its path")


# ---------------------------------------------------------------------- config files


def test_an_interpolation_chain_that_doubles_is_refused_before_anything_resolves_it(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ibomb.yaml").write_text("_target_: lrtrack.engine.models.MnistCNN\ns0: xxxxxxxxxx\n" + "".join(
        f"s{i}: ${{model.s{i - 1}}}${{model.s{i - 1}}}\n" for i in range(1, 31)))  # 10 x 2**30 characters
    started = time.monotonic()
    assert errors_of(composed(model="ibomb", conf=tmp_path)) == [
        "model.s17='${model.s16}${model.s16}' expands to 1.31e+06 characters through its ${...} references, more "
        "than the 1000000 a setting may hold: write the value out"]
    assert time.monotonic() - started < 5
    assert errors_of(composed("tracking.experiment_name=${model._target_}-${oc.env:HOME}")) == []  # references: fine

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_config_files_yaml_errors_name_the_file_and_line_and_bombs_are_refused_at_once(tmp_path: Path) -> None:
    from lrtrack.app.conffiles import config_file_problems

    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "fine.yaml").write_text("_target_: lrtrack.engine.models.MLP\nhidden: 64\n")
    assert config_file_problems(["--config-dir", str(conf)]) == []
    (conf / "model" / "broken.yaml").write_text("_target_: x\nin_features: 784\n  hidden: [128\n")
    (conf / "model" / "bomb.yaml").write_text(BOMB)
    (conf / "model" / "loop.yaml").write_text("layers: &a [1, *a]\n")
    started = time.monotonic()
    problems = config_file_problems([f"--config-dir={conf}", "+model=bomb"])
    assert time.monotonic() - started < 2
    assert problems == [
        f"config file {conf}/model/bomb.yaml: its YAML anchors and aliases expand to 1.23e+09 values, more than the "
        "100000 a config may hold (a 'billion laughs' file): write the values out instead of nesting aliases",
        f"config file {conf}/model/broken.yaml, line 3, column 9: invalid YAML (mapping values are not allowed here): "
        "fix that line (indentation, a missing ':' or quote)",
        f"config file {conf}/model/loop.yaml: its YAML anchors and aliases expand to infinitely many (an alias "
        "refers to itself) values, more than the 100000 a config may hold (a 'billion laughs' file): write the "
        "values out instead of nesting aliases"]
    assert len(config_file_problems([f"hydra.searchpath=[file://{conf}]"])) == 3


def test_a_yaml_bomb_in_the_config_dir_is_one_line_from_the_command(tmp_path: Path) -> None:
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "bomb.yaml").write_text("_target_: lrtrack.engine.models.MnistCNN\n" + BOMB)
    started = time.monotonic()
    proc = run_cli(["--config-dir", "conf", "+model=bomb", "+experiment=smoke"], tmp_path, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lrtrack: error: config file conf/model/bomb.yaml: its YAML anchors and aliases expand")
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------- MLflow: state and limits


def test_lrtracks_copies_of_mlflows_limits_match_mlflow() -> None:
    from mlflow.utils import validation

    from lrtrack.app.config import _PARAM_KEY, MAX_PARAM_KEY
    from lrtrack.tracking import layout, store

    assert store.MAX_EXPERIMENT_NAME == validation.MAX_EXPERIMENT_NAME_LENGTH
    assert layout.MAX_PARAM_VALUE == validation.MAX_PARAM_VAL_LENGTH
    assert layout.MAX_TAG_VALUE == validation.MAX_TAG_VAL_LENGTH
    assert MAX_PARAM_KEY == validation.MAX_ENTITY_KEY_LENGTH
    for name in ("model.hidden", "a b", "x/y:z-1_2", "model.a!b", "finder.é", "q?"):
        assert bool(_PARAM_KEY.match(name)) == bool(validation.validate_param_and_metric_name(name)), name


def test_experiment_names_past_mlflows_limit_are_refused_before_any_run() -> None:
    (line,) = errors_of(composed("tracking.experiment_name=" + "e" * 501))
    assert line.endswith("is invalid: MLflow allows at most 500 characters in an experiment name, this has 501; "
                         "choose another name (tracking.experiment_name=<name>, or null: lrtrack-<model>)")
    assert errors_of(composed("tracking.experiment_name=" + "e" * 500)) == []


def test_a_deleted_experiment_is_refused_naming_both_ways_out_and_never_restored(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from lrtrack.tracking.store import DeletedExperiment, check_experiment, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    with pytest.raises(DeletedExperiment) as info:
        check_experiment(uri, "gone")
    assert str(info.value) == (
        f"tracking.experiment_name='gone': the experiment (id {gone}) was deleted in {uri}; restore it (mlflow "
        f"experiments restore --experiment-id {gone}, with MLFLOW_TRACKING_URI={uri}) or choose another name with "
        "tracking.experiment_name=<name>")
    with pytest.raises(DeletedExperiment):
        ensure_experiment(client, "gone")
    assert client.get_experiment(gone).lifecycle_stage == "deleted"
    check_experiment(uri, "another")  # absent: created later, no error
    check_experiment(f"sqlite:///{tmp_path / 'none.db'}", "gone")  # no store yet: nothing to refuse


def test_a_deleted_experiment_stops_the_command_before_any_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("lrtrack-mnist_cnn"))
    proc = run_cli(["+model=mnist_cnn", "+experiment=smoke"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "was deleted" in line and "mlflow experiments restore --experiment-id" in line
    assert client.search_runs([e.experiment_id for e in client.search_experiments(view_type=3)]) == []


# ---------------------------------------------------------------------- lr_from across setups


def test_setup_differences_compare_model_and_optimizer_but_not_the_start_lr() -> None:
    from lrtrack.tracking.records import setup_differences

    logged = {"model._target_": "lrtrack.engine.models.MnistCNN", "model.num_classes": "10", "model.dropout": "0.5",
              "optimizer._target_": "torch.optim.SGD", "optimizer._partial_": "True", "optimizer.lr": "0.001",
              "optimizer.momentum": "0.5", "optimizer.weight_decay": "0.0", "optimizer.nesterov": "False"}
    here = {"model": {"_target_": "lrtrack.engine.models.MnistCNN", "num_classes": 10, "dropout": 0.5},
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.5,
                          "weight_decay": 0.0, "nesterov": False}, "seed": 3}
    assert setup_differences(logged, here) == []
    here["optimizer"]["momentum"] = 0.9
    assert setup_differences(logged, here) == ["optimizer.momentum: 0.5 there, 0.9 here"]
    assert setup_differences({}, here) == []  # nothing logged (an old run): nothing to compare


def test_lr_from_a_range_test_of_another_model_is_refused_unless_allowed(tmp_path: Path) -> None:
    import re

    first = run_cli_here(["+model=mlp", "+experiment=smoke", "stage=range_test"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_id = re.search(r"range-test run: (\w+)", first.stdout + first.stderr).group(1)  # type: ignore[union-attr]
    refused = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train", f"train.lr_from={run_id}"], tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"lrtrack: error: train.lr_from='{run_id}' is a range test of another setup "
                           "(model._target_: lrtrack.engine.models.MLP there, lrtrack.engine.models.MnistCNN here")
    assert line.endswith("run a range test for this setup, or set train.allow_other_setup=true to use it anyway")
    allowed = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train", f"train.lr_from={run_id}",
                       "train.allow_other_setup=true", "tracking.log_model=false"], tmp_path)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "is a range test of another setup" in allowed.stdout + allowed.stderr  # the warning


def test_the_battery_is_generated_from_the_schema_and_lists_at_least_150_cases() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts" / "bad_inputs.py"), "--list"], capture_output=True,
                         text=True, check=True).stdout
    assert int(out.strip().splitlines()[-1].split()[0]) >= 150
    for setting in FLOATS:
        assert f"{setting}=nan |" in out, setting
    assert "finder.diverge_th=nan" in out and "seed=100000000000000000000" in out
    assert "finder.probe_steps=0 |" not in out and "finder.val_batches=0 |" not in out  # valid: not listed as bad


def test_a_model_too_large_to_train_in_memory_is_refused_before_any_run(tmp_path: Path) -> None:
    proc = run_cli_here(["+model=mlp", "+experiment=smoke", "model.hidden=20000", "limits.max_memory_gb=0.1"],
                        tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line == ("lrtrack: error: model (lrtrack.engine.models.MLP): its parameters take 63.6 MB, and training "
                    "keeps at least 4 copies (254 MB: weights, gradients, optimizer state, the range test's saved "
                    "copy), more than 100 MB (limits.max_memory_gb=0.1); make it smaller (the model.* settings)")
    db = tmp_path / "mlflow.db"  # the tracker may have created the store (it starts first): no run in it
    if db.exists():
        import sqlite3

        with sqlite3.connect(db) as con:
            tables = {row[0] for row in con.execute("select name from sqlite_master where type='table'")}
            assert "runs" not in tables or con.execute("select count(*) from runs").fetchone()[0] == 0


def test_a_sweep_with_one_bad_job_is_refused_before_it_starts(tmp_path: Path) -> None:
    proc = run_cli_here(["-m", "+model=mnist_cnn", "+experiment=smoke", "finder.diverge_th=2,nan", "seed=0,1"],
                        tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "lrtrack: error: finder.diverge_th=nan is invalid: must be finite and > 1 (stop when the loss exceeds this "
        "x the best; a huge one such as 1e9 turns the stop off, NaN never does); NaN and infinity are never valid "
        "here: set a number (sweep job finder.diverge_th=nan seed=0, and 1 more)"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


def test_a_deleted_experiment_on_a_tracking_server_is_refused_too(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    from lrtrack.tracking.store import DeletedExperiment, check_experiment

    client = MlflowClient(mlflow_server.uri)
    gone = client.create_experiment("gone-on-server")
    client.delete_experiment(gone)
    with pytest.raises(DeletedExperiment, match=f"restore it \\(mlflow experiments restore --experiment-id {gone},"):
        check_experiment(mlflow_server.uri, "gone-on-server")
    check_experiment(mlflow_server.uri, "never-made")


def test_a_refused_config_leaves_no_output_folder_behind(tmp_path: Path) -> None:
    """Nothing started, nothing left: Hydra's output folder of a refused job (its .hydra record and
    empty log) is removed, while a user's own files in a hydra.run.dir are kept."""
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "train.epochs=0"], tmp_path)
    assert proc.returncode == 2 and "train.epochs=0 is invalid" in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "optimizer.momentum=2", f"hydra.run.dir={mine}"],
                        tmp_path)
    assert proc.returncode == 2 and "optimizer.momentum=2 is invalid" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("setting", ["train.resume", "train.lr_from", "tracking.tracking_uri", "tracking.spool_dir",
                                     "tracking.register_model"])
def test_an_empty_free_text_setting_is_refused_not_taken_for_null(setting: str) -> None:
    """``train.resume=$RUN_ID`` with the variable unset must not start a fresh run in silence."""
    (line,) = errors_of(composed(f"{setting}="))
    assert line == (f"{setting}='' is invalid: must not be empty (an unset shell variable?); give a value, "
                    f"or leave {setting} out (null: its default)")


@pytest.mark.parametrize("value", ["[0.9]", "0.9", "[0.9,0.99,0.5]"])
def test_betas_of_the_wrong_length_are_one_line(value: str) -> None:
    (line,) = errors_of(composed("optimizer=adamw", f"optimizer.betas={value}"))
    assert line.startswith("optimizer.betas=") and "must be 2 numbers; e.g. optimizer.betas=[0.9,0.999]" in line


@pytest.mark.parametrize(("overrides", "line"), [
    # A component's settings against its target's signature: Python reads True as 1 and "maybe" as true.
    (["optimizer.momentum=true"], "optimizer.momentum=true is invalid: must be a number (momentum of "
                                  "torch.optim.SGD), not a boolean; e.g. optimizer.momentum=0"),
    (["optimizer.nesterov=maybe"], "optimizer.nesterov='maybe' is invalid: must be true or false (a flag of "
                                   "torch.optim.SGD); set optimizer.nesterov=true or optimizer.nesterov=false"),
    (["optimizer=adamw", "+optimizer.amsgrad=5"], "optimizer.amsgrad=5 is invalid: must be true or false"),
    (["optimizer.lr=[0.1]"], "optimizer.lr=[0.1] is invalid: must be a number (lr of torch.optim.SGD), not a list"),
    (["schedule.three_phase=sometimes"], "schedule.three_phase='sometimes' is invalid: must be true or false"),
    # Settings by name whatever the class; values that are 0 in float32.
    (["optimizer=schedulefree_adamw", "schedule=constant", "optimizer.warmup_steps=2.5"],
     "optimizer.warmup_steps=2.5 is invalid: must be a whole number of steps >= 0"),
    (["optimizer=prodigy", "optimizer.d_coef=0"], "optimizer.d_coef=0 is invalid: must be > 0"),
    (["model.dropout=1.0"], "model.dropout=1.0 is invalid: must be in [0, 1) (1 drops every activation)"),
    (["schedule.pct_start=1e-320"], "schedule.pct_start=1e-320 is invalid: is 0 in float32"),
    (["schedule.div_factor=0.5"], "schedule (lrtrack.engine.schedules.onecycle): onecycle div_factor must be >= 1"),
    # A limit that is itself wrong is the one reported (not the counts it would bound).
    (["limits.max_hours=1e-320"], "limits.max_hours=1e-320 is invalid: is 0 in float32"),
    (["device=meta"], "device='meta' is invalid: lrtrack trains on cpu, cuda"),
])
def test_settings_a_component_cannot_mean_are_refused_in_one_line(overrides: list[str], line: str) -> None:
    (got,) = errors_of(composed(*overrides))
    assert got.startswith(line), got


def test_schema_flags_on_the_command_line_take_true_or_false_only(tmp_path: Path) -> None:
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "train.amp=2"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "lrtrack: error: train.amp=2 is invalid: must be true or false; set train.amp=true or train.amp=false")
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was opened: no run


@pytest.mark.parametrize(("overrides", "line"), [
    (["train.lr_from=0123456789abcdef"], "train.lr_from='0123456789abcdef' is invalid: takes the bounds from an "
                                         "earlier range test, so it needs stage=train (stage=all runs its own range "
                                         "test); add stage=train, or drop train.lr_from"),
    (["tracking.register_model=my/model:v1"], "tracking.register_model='my/model:v1' is invalid: a registered "
                                              "model's name cannot hold '/', ':' or control characters"),
    (["tracking.register_model=cnn", "tracking.log_model=false"],
     "tracking.register_model='cnn' is invalid: registers the logged model, so it needs tracking.log_model=true"),
    (["tracking.experiment_name='line1\nline2'"],
     "tracking.experiment_name='line1\\nline2' is invalid: an experiment name cannot hold control characters"),
])
def test_settings_that_would_be_ignored_or_refused_at_the_end_are_refused_first(overrides: list[str],
                                                                                line: str) -> None:
    (got,) = errors_of(composed(*overrides))
    assert got.startswith(line), got


@pytest.mark.parametrize(("overrides", "line"), [
    (["bounds.base_divisor=1e30"], "bounds.base_divisor=1e+30 is invalid: must be a number in [1, 10000]"),
    (["stage=train", "bounds.max_lr=1e-12"], "bounds.max_lr=1e-12 is invalid: with bounds.base_divisor=4 the base LR "
                                             "is 2.5e-13, below 1e-12 (no LR at all); raise bounds.max_lr"),
    (["limits.max_hours=1e-9"], "limits.max_hours=1e-09 is invalid: must be a number of hours, at least 1/3600"),
    (["+optimizer.maximize=true"], "optimizer.maximize=True is invalid: a range test and its training lower the "
                                   "loss"),
    (["optimizer=adam", "+optimizer.capturable=true"], "optimizer (torch.optim.Adam): its first step fails: "
                                                       "AssertionError: If capturable=True"),
    (["schedule=cosine_restarts", "schedule.T_0=5", "train.epochs=1"],
     "schedule (lrtrack.engine.schedules.cosine_restarts): cosine_restarts T_0=5 epochs is longer than the run "
     "(1 epochs), so no restart happens"),
    (["schedule.three_phase=true", "schedule.pct_start=0.6"],
     "schedule (lrtrack.engine.schedules.onecycle): onecycle pct_start must be below 0.5 with three_phase=true"),
    (["finder=linear", "finder.start_lr=0", "stage=range_test"],
     "finder.start_lr=0.0 is invalid: must be > 0 (the suggestions and the divergence edge read the curve on a "
     "log-LR axis"),
])
def test_meaningless_bounds_limits_optimizers_and_schedules_are_one_line(overrides: list[str], line: str) -> None:
    """The third battery's classes (a base LR below the floor, a limit that is itself wrong, an optimizer that
    climbs the loss or fails at its first step, a schedule longer than the run), said by the config check."""
    (got,) = errors_of(composed(*overrides))
    assert got.startswith(line), got


@pytest.mark.parametrize("name", ["\u200b", "\u200b\u200b", "\u00a0", "\u2028"])
def test_an_experiment_name_of_invisible_characters_is_refused(name: str) -> None:
    from lrtrack.tracking.store import experiment_name_problem

    assert experiment_name_problem(name) == ("an experiment name cannot be empty (or only spaces and invisible "
                                             "characters)")
    assert experiment_name_problem(f"runs{name}2026") is None  # inside a name they are the user's business
