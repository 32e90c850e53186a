"""The real config composed in-process (Hydra's compose API), then validated and dry-run.

These are the checks that need no data and no subprocess: every option of every group
composes to a complete config, and every bad value is reported, all at once, with the
setting, the value and what is allowed.
"""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from lrtrack.app.config import (
    available_options,
)
from tests.conftest import composed, errors_of


@pytest.mark.parametrize("group", ["data", "optimizer", "criterion", "finder", "schedule", "tracking", "model"])
def test_every_option_of_every_group_composes_to_a_complete_valid_config(group: str) -> None:
    options = available_options(group)
    assert options, group
    for option in options:
        # (a schedule-free optimizer trains with a constant LR: another schedule is refused, see below)
        alongside = ["schedule=constant"] if option.startswith("schedulefree") else []
        cfg = composed(model=option) if group == "model" else composed(f"{group}={option}", *alongside)
        missing = OmegaConf.missing_keys(cfg)
        assert not missing, f"{group}={option} leaves {sorted(missing)} unset"
        assert errors_of(cfg) == [], f"{group}={option}"


@pytest.mark.parametrize("optimizer", ["schedulefree_adamw", "schedulefree_sgd"])
def test_a_schedule_free_optimizer_with_a_schedule_is_refused_naming_the_one_it_needs(optimizer: str) -> None:
    target = {"schedulefree_adamw": "AdamWScheduleFree", "schedulefree_sgd": "SGDScheduleFree"}[optimizer]
    assert errors_of(composed(f"optimizer={optimizer}")) == [
        f"schedule='lrtrack.engine.schedules.onecycle' is invalid: optimizer schedulefree.{target} replaces the LR "
        "schedule (it averages the weights instead), so it trains with a constant LR; use schedule=constant "
        "(warm-up: optimizer.warmup_steps)"]
    assert errors_of(composed(f"optimizer={optimizer}", "stage=range_test")) == []  # the range test: no schedule


def test_the_defaults_are_the_seed_example() -> None:
    cfg = composed()
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.001 and cfg.optimizer.momentum == 0.5
    assert cfg.data.batch_size == 256 and cfg.criterion._target_ == "torch.nn.NLLLoss"
    assert (cfg.finder.end_lr, cfg.finder.num_iter, cfg.finder.step_mode) == (10.0, 100, "exp")
    assert (cfg.bounds.max_lr, cfg.bounds.max_lr_rule, cfg.bounds.base_divisor) == (None, None, 4.0)  # finder.suggestion's
    assert cfg.finder.suggestion == "confirmed"  # the rule the suggestion benchmark chose (docs/suggestions.md)


def test_linear_finder_is_exp_with_two_settings_changed() -> None:
    exp, linear = composed(), composed("finder=linear")
    assert linear.finder.step_mode == "linear" and linear.finder.end_lr == 1.0
    rest = {k: v for k, v in exp.finder.items() if k not in ("step_mode", "end_lr")}
    assert {k: linear.finder[k] for k in rest} == rest


def test_smoke_experiment_shrinks_the_run() -> None:
    cfg = composed("+experiment=smoke")
    assert "fake" in str(cfg.data.get("_target_") or cfg.data.get("name"))
    assert cfg.finder.num_iter == 12 and cfg.train.epochs == 1
    assert cfg.progress is False


def test_schedule_files_hold_only_the_scheduler_and_bounds_are_typed() -> None:
    cfg = composed("schedule=triangular2", "bounds.max_lr=0.3")
    assert cfg.schedule._target_ == "lrtrack.engine.schedules.triangular2" and "max_lr" not in cfg.schedule
    assert cfg.bounds.max_lr == 0.3
    with pytest.raises(ConfigCompositionException):
        composed("bounds.max_lr=fast")  # a float, by the schema
    with pytest.raises(ConfigCompositionException) as info:
        composed("bounds.max_lr_rul=valley")  # a typo in a key
    assert isinstance(info.value.__cause__, ConfigAttributeError)


def test_range_errors_are_collected_and_name_setting_value_and_what_is_allowed() -> None:
    cfg = composed("finder.num_iter=1", "finder.step_mode=cubic", "finder.smoothing=1.5", "finder.start_lr=20",
                   "optimizer.lr=-0.1", "bounds.base_divisor=0.5", "bounds.max_lr_rule=best", "train.epochs=0")
    assert sorted(errors_of(cfg)) == sorted([
        "optimizer.lr=-0.1 is invalid: must be 0 or in [1e-12, 1e+06] (the range test's start LR)",
        "finder.step_mode='cubic' is invalid: allowed: exp, linear",
        "finder.num_iter=1 is invalid: must be >= 2 (a curve needs two points)",
        "finder.start_lr=20.0 is invalid: must be smaller than finder.end_lr=10.0",
        "finder.smoothing=1.5 is invalid: must be in [0, 1) (EMA decay; 0 = no smoothing)",
        "train.epochs=0 is invalid: must be >= 1",
        "bounds.max_lr_rule='best' is invalid: allowed: null (finder.suggestion's rule), confirmed, steepest, valley, "
        "minimum, slide, min_loss_div10",
        "bounds.base_divisor=0.5 is invalid: must be a number in [1, 10000] (Smith: 3-4; beyond, the base LR is no "
        "LR at all)",
    ])


def test_exp_grid_from_lr_zero_is_refused_with_the_fix() -> None:
    assert errors_of(composed("optimizer.lr=0")) == [
        "optimizer.lr=0 is invalid: must be > 0 for finder.step_mode=exp (a log-spaced grid cannot start at 0); "
        "set finder.start_lr=1e-7, or use finder=linear"]
    # A linear grid could start at 0, but the suggestions read the curve on a log-LR axis (it crashed there).
    assert errors_of(composed("optimizer.lr=0", "finder=linear", "stage=range_test")) == [
        "optimizer.lr=0 is invalid: must be > 0 (the suggestions and the divergence edge read the curve on a log-LR "
        "axis, where LR 0 has no place); set finder.start_lr=0.01"]


def test_dry_run_builds_the_optimizer_and_schedule_before_anything_starts() -> None:
    assert errors_of(composed("optimizer.momentum=-1")) == [  # the optimizers' common hyperparameters, by name
        "optimizer.momentum=-1 is invalid: must be in [0, 1] (above 1 every step grows)"]
    assert errors_of(composed("optimizer.nesterov=true", "optimizer.momentum=0")) == [  # what only torch knows
        "optimizer (torch.optim.SGD): Nesterov momentum requires a momentum and zero dampening; check the "
        "optimizer.* settings"]
    assert errors_of(composed("schedule.pct_start=1.5")) == [
        "schedule (lrtrack.engine.schedules.onecycle): onecycle pct_start must be in (0, 1), got 1.5; e.g. 0.3.; "
        "check the schedule.* settings"]
    # Cycling momentum needs an optimizer that has momentum.
    (line,) = errors_of(composed("optimizer.momentum=0", "schedule=triangular"))
    assert line.startswith("schedule (lrtrack.engine.schedules.triangular): ") and "cycle_momentum" in line
    # Only the range test: the schedule is not built, so a config's schedule settings do not matter (the same
    # override typed on a command line is refused: test_settings_a_stage_never_reads_are_refused).
    assert errors_of(composed("stage=range_test", "schedule.pct_start=1.5")) == []


def test_train_stage_needs_an_lr_source() -> None:
    assert errors_of(composed("stage=train")) == [
        "stage=train needs an LR: set bounds.max_lr=<lr> or train.lr_from=<range-test run id>"]
    assert errors_of(composed("stage=train", "bounds.max_lr=0.1")) == []


def test_a_typo_added_with_plus_is_rejected_with_a_suggestion() -> None:
    assert errors_of(composed("+finder.num_iters=5")) == [
        "finder.num_iters=5 is invalid: finder has no setting 'num_iters'; did you mean finder.num_iter?"]
    # untyped groups: their target's signature refuses it, with the closest setting it takes
    assert errors_of(composed("+schedule.pct_strt=0.4")) == [
        "schedule.pct_strt=0.4 is invalid: lrtrack.engine.schedules.onecycle takes no setting 'pct_strt'; did you "
        "mean schedule.pct_start?"]
    (line,) = errors_of(composed("+model.db_password=hunter22"))  # a secret's value is never shown
    assert line == ("model.db_password='***' is invalid: lrtrack.engine.models.MnistCNN takes no setting "
                    "'db_password'; its settings: num_classes, dropout")


def test_an_unavailable_device_is_refused_before_anything_starts() -> None:
    import torch

    assert errors_of(composed("device=tpu9")) == [
        "device='tpu9' is invalid: not a torch device; use auto, cpu, cuda or cuda:<index>"]
    if not torch.cuda.is_available():
        assert errors_of(composed("device=cuda")) == [
            "device='cuda' is invalid: CUDA is not available on this machine; use device=auto or cpu"]
    assert errors_of(composed("device=cpu")) == []


def test_builtin_data_settings_are_read_without_torch_and_match_the_builders() -> None:
    """Checking a config reads the data builders' settings from lrtrack.data's source (importing it
    costs torch's import); they are exactly the real functions' parameters, seed aside."""
    import inspect
    import subprocess
    import sys

    from lrtrack.app.config import builtin_data_settings
    from lrtrack.data import BUILTINS

    for target, builder in BUILTINS.items():
        assert builtin_data_settings(target) == [p for p in inspect.signature(builder).parameters if p != "seed"]
    assert builtin_data_settings("lrtrack.data.nope") is None and builtin_data_settings("mymodule.load") is None
    code = ("import sys; from lrtrack.app.config import builtin_data_settings as s; "
            "assert s('lrtrack.data.mnist')[0] == 'root'; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
