"""The command line before Hydra: flags in any place, groups set to null, search paths, output
folders, tracking URIs that cannot be read, a sweep's store; each refusal one line, exit 2, no run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrtrack.app.commandline import arranged
from tests.conftest import run_cli_here, runs_once_ended
from tests.test_examples import no_runs

SMOKE = ["+model=mnist_cnn", "+experiment=smoke"]


@pytest.mark.parametrize(("argv", "want"), [
    (["+model=x", "-m", "a=1,2"], ["-m", "+model=x", "a=1,2"]),
    (["+model=x", "--config-dir", "conf", "a=1"], ["--config-dir", "conf", "+model=x", "a=1"]),
    (["a=1", "--cfg", "job", "b=2", "--info=config"], ["--cfg", "job", "--info=config", "a=1", "b=2"]),
    (["-m", "+model=x", "a=1,2"], ["-m", "+model=x", "a=1,2"]),  # already in Hydra's order: unchanged
    (["+model=x", "--bogus"], ["+model=x", "--bogus"]),  # not Hydra's: left for Hydra to refuse
])
def test_hydra_flags_are_moved_before_the_overrides_in_their_order(argv: list[str], want: list[str]) -> None:
    assert arranged(argv) == want


def _one_line(proc) -> str:  # noqa: ANN001 - a CliRun
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lrtrack: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_flag_after_the_overrides_runs_the_command_it_names(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("_target_: lrtrack.engine.models.MnistCNN\n")
    proc = run_cli_here(["+model=mine", "+experiment=smoke", "stage=range_test", "--config-dir", "conf"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = runs_once_ended(tmp_path)
    assert run.info.run_name.startswith("range_test mine sgd exp")  # the user's config folder was read


@pytest.mark.parametrize(("override", "line"), [
    ("finder=null", "lrtrack: error: finder=null is invalid: a config group takes one of its options (exp, "
                    "linear), not null; choose one, e.g. finder=exp"),
    ("hydra.searchpath=[file:///nonexistent-lrtrack]", "lrtrack: error: hydra.searchpath: no folder "
                                                       "/nonexistent-lrtrack"),
    ("hydra.run.dir=/proc/lrtrack-out", "lrtrack: error: cannot create the job's output folder /proc/lrtrack-out "
                                        "(No such file or directory): choose a folder you can write"),
    ("tracking.tracking_uri=http://127.0.0.1:99999", "lrtrack: error: tracking URI 'http://127.0.0.1:99999' is not "
                                                     "a valid URL (Port out of range 0-65535)"),
    ("tracking.tracking_uri=postgresql://bob:s3cret@127.0.0.1/db",
     "lrtrack: error: tracking database postgresql://***@127.0.0.1/db: its Python driver 'psycopg' is not "
     "installed"),
])
def test_what_composition_or_mlflow_would_fail_on_is_one_line_before_any_run(tmp_path: Path, override: str,
                                                                              line: str) -> None:
    proc = run_cli_here([*SMOKE, override], tmp_path)
    assert _one_line(proc).startswith(line)
    assert "s3cret" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_sweep_checks_its_store_before_its_run_exists(tmp_path: Path) -> None:
    proc = run_cli_here(["-m", *SMOKE, "stage=range_test", "seed=0,1", "tracking.tracking_uri=http://127.0.0.1:9"],
                        tmp_path)
    assert _one_line(proc).startswith("lrtrack: error: nothing answers at tracking server http://127.0.0.1:9 "
                                      "(connection refused)")


# ------------------------------------------------------------------ the fresh battery's classes (helper-14)
# Each refused in one line before any run: run_cli_here in a premade store, then the store is checked empty.

REFUSED = {
    "a top-level typo": (["+epochs=5"], "epochs=5 is invalid: lrtrack has no top-level setting of that name and no "
                                        "${...} reads it; did you mean train.epochs?"),
    "a group typo": (["+models=mlp"], "models='mlp' is invalid: lrtrack has no top-level setting of that name and no "
                                      "${...} reads it; did you mean model?"),
    "a schema node deleted": (["~train"], "train is missing: lrtrack needs it (~train deleted it: drop that override; "
                                          "to change a setting, write <setting>=<value>)"),
    "a schema node's values deleted": (["~finder"], "finder.start_lr, finder.end_lr, finder.step_mode, "
                                                    "finder.smoothing (and 7 more) are missing: lrtrack needs them "
                                                    "(~finder deleted them: drop that override; to change a setting, "
                                                    "write <setting>=<value>)"),
    "a setting the stage never reads": (["stage=range_test", "bounds.max_lr=0.1"],
                                        "bounds.max_lr='0.1' is invalid: is read only by the training run, and "
                                        "stage=range_test runs the range test alone; drop bounds.max_lr, or run "
                                        "stage=all (range test, then training)"),
    "registering with tracking off": (["tracking.enabled=false", "tracking.register_model=cnn"],
                                      "tracking.register_model='cnn' is invalid: registers the logged model in MLflow, "
                                      "so it needs tracking.enabled=true; drop tracking.register_model, or enable "
                                      "tracking"),
    "a CPU index": (["device=cpu:1"], "device='cpu:1' is invalid: the CPU has no index (torch runs on all its cores "
                                      "as one device); use device=cpu"),
    "a float count": (["model.num_classes=1e1"], "model.num_classes=10.0 is invalid: must be a whole number "
                                                 "(num_classes of lrtrack.engine.models.MnistCNN); write 10"),
    "an LR interpolated to null": (["optimizer.lr=${bounds.max_lr}"],
                                   "optimizer.lr=${bounds.max_lr} is invalid: must be a number (lr of torch.optim.SGD), "
                                   "not null (what it refers to is null); e.g. optimizer.lr=0.001"),
    "a decay past the run": (["schedule=step", "schedule.step_size=1000"],
                             "schedule (lrtrack.engine.schedules.step): step step_size=1000 epochs is longer than the "
                             "run (1 epochs), so the LR never decays; give a step_size of at most 1, or use "
                             "schedule=constant.; check the schedule.* settings"),
    "a range-test setting with stage=train": (["stage=train", "bounds.max_lr=0.1", "finder.num_iter=50"],
                                              "finder.num_iter='50' is invalid: is read only by a range test, and "
                                              "stage=train runs none (it takes the LR from the bounds); drop "
                                              "finder.num_iter, or run stage=all (range test, then training)"),
    "a rule next to an explicit max_lr": (["bounds.max_lr=0.1", "bounds.max_lr_rule=valley"],
                                          "bounds.max_lr_rule='valley' is invalid: picks the suggestion that gives "
                                          "max_lr, and bounds.max_lr=0.1 sets max_lr itself; drop "
                                          "bounds.max_lr_rule"),
    "an allowance with nothing to allow": (["train.allow_partial=true"],
                                           "train.allow_partial='true' is invalid: allows a kind of train.lr_from "
                                           "run, and no train.lr_from is given; drop train.allow_partial"),
    "an override that cannot be resolved": (["finder.end_lr=${finder.nope}"],
                                            "finder.end_lr='${finder.nope}' cannot be resolved: Interpolation key "
                                            "'finder.nope' not found; set what it refers to (an environment variable: "
                                            "export it) or write the value"),
    "a max_lr outside its rule, said once": (["stage=train", "bounds.max_lr=-1"],
                                             "bounds.max_lr=-1.0 is invalid: must be an LR in [1e-12, 1e+06] or null "
                                             "(from the range test)"),
    "one sweep folder for every job": (["-m", "stage=range_test", "seed=0,1", "hydra.sweep.subdir=same"],
                                       "hydra.sweep.subdir=same is invalid: every job of the sweep would write into "
                                       "that one folder; keep a per-job part in it, e.g. "
                                       "hydra.sweep.subdir=${hydra.job.num}"),
    "a schedule config without _partial_": (["~schedule._partial_"],
                                            "schedule (lrtrack.engine.schedules.onecycle): TypeError: onecycle() "
                                            "missing 1 required positional argument: 'optimizer'; add _partial_: true "
                                            "to the schedule's config (lrtrack passes the optimizer and the bounds "
                                            "when it builds it)"),
    "one seed in a summary over seeds": (["experiment=seeds", "seed=5"],  # (after +experiment=smoke: switch it)
                                         "seed=5 is invalid: +experiment=seeds summarises the range test over several "
                                         "seeds, and seed=5 fixes one; give them as hydra.sweeper.params.seed="
                                         "'0,1,2,3' (or drop +experiment=seeds)"),
    "a look-alike letter": (["stage=r\u0430nge_test"], "'stage=r\u0430nge_test' holds U+0430 (CYRILLIC SMALL LETTER A): "
                                                      "outside quotes a value is plain ASCII; retype it, or quote it "
                                                      "(stage='r\u0430nge_test')"),
    "an invisible character": (["finder.num_iter=12\u200b"], "'finder.num_iter=12\\u200b' holds U+200B (ZERO WIDTH "
                                                            "SPACE); retype it in plain ASCII"),
    "a group option as its file": (["optimizer=sgd.yaml"], "optimizer=sgd.yaml is invalid: a config group takes an "
                                                           "option's name, not its file; write optimizer=sgd"),
    "an empty output folder": (["hydra.run.dir="], "hydra.run.dir='' is invalid: an empty folder would put the job's "
                                                   "outputs in the launch folder; give a folder, e.g. "
                                                   "hydra.run.dir=outputs/mine"),
    "a bad --cfg": (["--cfg", "badvalue"], "argument --cfg/-c: invalid choice: 'badvalue' (choose from 'job', 'hydra', "
                                           "'all'); see python -m lrtrack --help"),
    "a sweep range with step 0": (["-m", "stage=range_test", "seed=range(0,3,0)"],
                                  "seed=range(0,3,0) cannot be swept: range() arg 3 must not be zero; the basic sweeper "
                                  "takes lists (a,b,c), range(start, stop[, step]) with a non-zero step, and glob(); "
                                  "interval() and tag() need a sweeper that samples (e.g. hydra/sweeper=optuna)"),
    "an empty sweep": (["-m", "stage=range_test", "seed=range(3,1)"],
                       "the sweep has no jobs: seed=range(3,1) expands to no value; check the range or list"),
    "validation asked of data without it": (["finder.val_batches=3", "data._target_=parts.no_val",
                                             "~data.val_batch_size", "~data.fake_size", "~data.in_memory"],
                                            "finder.val_batches=3 is invalid: the data (data=fake) has no validation "
                                            "loader; give validation data or set finder.val_batches=0 (the range test "
                                            "then records the training loss)"),
}

PARTS = '''
import torch
from torch.utils.data import DataLoader, TensorDataset


def no_val(batch_size=64, seed=0, num_workers=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size), None
'''


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_class_of_the_fresh_battery_is_one_line_before_any_run(case: str, tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    (tmp_path / "parts.py").write_text(PARTS)
    args, line = REFUSED[case]
    proc = run_cli_here([*SMOKE, *args], tmp_path)
    assert _one_line(proc) == f"lrtrack: error: {line}"
    assert no_runs(tmp_path)


def test_a_top_level_node_that_a_setting_interpolates_is_a_users_own_and_kept(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here([*SMOKE, "stage=range_test", "+width=10", "model.num_classes=${width}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_schedule_setting_wrong_for_the_suggested_lr_stops_before_the_training_run(tmp_path: Path,
                                                                                      premade_store) -> None:
    """eta_min is checked against the range test's max_lr once known: the explore run is kept, no final run."""
    premade_store(tmp_path)
    proc = run_cli_here([*SMOKE, "schedule=cosine", "schedule.eta_min=0.08"], tmp_path)
    line = _one_line(proc)
    assert line.startswith("lrtrack: error: schedule (lrtrack.engine.schedules.cosine): eta_min must be in [0, max_lr=")
    assert line.endswith("the training run was not started)")
    runs = runs_once_ended(tmp_path)
    assert sorted(r.data.tags.get("lrtrack.stage", "pipeline") for r in runs) == ["explore", "pipeline"]
    assert [r.info.status for r in runs if r.data.tags.get("lrtrack.stage") == "explore"] == ["FINISHED"]
