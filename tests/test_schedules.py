"""LR paths of every follow-up schedule at exact indices, and the traps they handle."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lrtrack.engine import schedules as S
from lrtrack.engine.suggest import Suggestion

SPE, EPOCHS, MAX, BASE = 10, 4, 1.0, 0.25
CONF = Path(__file__).resolve().parents[1] / "conf" / "schedule"


def sgd(momentum: float = 0.9, lrs: tuple[float, ...] = (0.1,)) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=momentum)


def adam() -> torch.optim.Adam:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1, betas=(0.9, 0.999))


def run(schedule: S.BatchSchedule, n: int) -> tuple[list[list[float]], list[float | None]]:
    """LRs (all groups) and group-0 momentum used by each of ``n`` optimizer steps."""
    opt = schedule.optimizer
    lrs, moms = [], []
    for _ in range(n):
        lrs.append(schedule.get_last_lr())
        moms.append(S.current_momentum(opt.param_groups[0]))
        opt.step()  # no grads: a no-op that keeps torch's step-order check quiet
        schedule.step()
    return lrs, moms


def path(name: str, n: int = SPE * EPOCHS, opt: torch.optim.Optimizer | None = None, **kw):
    schedule = S.make_schedule(
        name,
        opt if opt is not None else sgd(),
        max_lr=MAX,
        base_lr=BASE,
        steps_per_epoch=SPE,
        epochs=EPOCHS,
        **kw,
    )
    lrs, _ = run(schedule, n)
    return [lr[0] for lr in lrs]


# ---------------------------------------------------------------------------- LR paths


def test_triangular_path() -> None:
    lrs = path("triangular", n=41, step_size_epochs=2)
    up = 2 * SPE
    assert lrs[0] == pytest.approx(BASE)
    assert lrs[up // 2] == pytest.approx((BASE + MAX) / 2)
    assert lrs[up] == pytest.approx(MAX)
    assert lrs[2 * up] == pytest.approx(BASE)


def test_triangular2_second_peak_is_halved() -> None:
    lrs = path("triangular2", n=80, step_size_epochs=1)
    up = SPE
    assert lrs[up] == pytest.approx(MAX)
    assert lrs[2 * up] == pytest.approx(BASE)
    assert lrs[3 * up] == pytest.approx(BASE + (MAX - BASE) / 2)
    assert lrs[5 * up] == pytest.approx(BASE + (MAX - BASE) / 4)


def test_exp_range_peak_decays_by_gamma_per_iteration() -> None:
    gamma = 0.99
    lrs = path("exp_range", n=40, step_size_epochs=1, gamma=gamma)
    assert lrs[0] == pytest.approx(BASE)
    assert lrs[SPE] == pytest.approx(BASE + (MAX - BASE) * gamma**SPE)
    assert lrs[3 * SPE] == pytest.approx(BASE + (MAX - BASE) * gamma ** (3 * SPE))


def test_fractional_step_size_is_at_least_one_iteration() -> None:
    lrs = path("triangular", n=3, step_size_epochs=0.01)
    assert lrs == pytest.approx([BASE, MAX, BASE])


def test_onecycle_path() -> None:
    total = SPE * EPOCHS
    lrs = path("onecycle", n=total)
    assert lrs[0] == pytest.approx(BASE)  # div_factor derived = max_lr / base_lr
    peak = round(0.3 * total) - 1
    assert lrs[peak] == pytest.approx(MAX)
    assert max(lrs) == pytest.approx(MAX)
    assert lrs[-1] == pytest.approx(BASE / 1e4)


def test_onecycle_explicit_div_factor() -> None:
    lrs = path("onecycle", n=1, div_factor=25.0)
    assert lrs[0] == pytest.approx(MAX / 25)


def test_cosine_path() -> None:
    total = SPE * EPOCHS
    lrs = path("cosine", n=total, eta_min=0.1)
    assert lrs[0] == pytest.approx(MAX)
    assert lrs[total // 2] == pytest.approx((MAX + 0.1) / 2)
    assert lrs[-1] == pytest.approx(
        0.1 + (MAX - 0.1) * (1 + math.cos(math.pi * (total - 1) / total)) / 2
    )
    assert lrs[-1] < 0.11


def test_cosine_restarts_at_epoch_boundaries() -> None:
    n = 8 * SPE
    schedule = S.cosine_restarts(
        sgd(), max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=8, T_0=1, T_mult=2
    )
    lrs = [lr[0] for lr in run(schedule, n)[0]]
    for restart in (0, 1, 3, 7):
        assert lrs[restart * SPE] == pytest.approx(MAX)
        if restart:
            assert lrs[restart * SPE - 1] < 0.1  # just before: near eta_min
    # half way through the second cycle (epochs 1..3): cos(pi/2)
    assert lrs[2 * SPE] == pytest.approx(MAX / 2)


def test_cosine_restarts_exact_where_torch_fractional_epochs_round_wrong() -> None:
    # torch's step(epoch) finds the cycle with float log: log(243, 3) = 4.999..., so the
    # restart at epoch 121 (T_0=1, T_mult=3) comes out as eta_min. Integer steps are exact.
    spe = 1
    schedule = S.cosine_restarts(
        sgd(), max_lr=MAX, base_lr=BASE, steps_per_epoch=spe, epochs=130, T_0=1, T_mult=3
    )
    lrs = [lr[0] for lr in run(schedule, 122)[0]]
    assert lrs[121] == pytest.approx(MAX)
    assert lrs[40] == pytest.approx(MAX)


def test_step_drops_at_epoch_boundary() -> None:
    lrs = path("step", n=SPE * EPOCHS, step_size=2, gamma=0.5)
    assert lrs[2 * SPE - 1] == pytest.approx(MAX)
    assert lrs[2 * SPE] == pytest.approx(MAX * 0.5)
    assert lrs[-1] == pytest.approx(MAX * 0.5)


def test_constant_is_flat() -> None:
    lrs = path("constant", n=25)
    assert lrs == pytest.approx([MAX] * 25)


# ---------------------------------------------------------------------------- momentum


@pytest.mark.parametrize("name", ["triangular", "onecycle"])
def test_sgd_momentum_cycles_inversely(name: str) -> None:
    schedule = S.make_schedule(
        name,
        sgd(momentum=0.9),
        max_lr=MAX,
        base_lr=BASE,
        steps_per_epoch=SPE,
        epochs=EPOCHS,
    )
    lrs, moms = run(schedule, 2 * SPE + 1)
    peak = max(range(len(lrs)), key=lambda i: lrs[i][0])
    assert moms[0] == pytest.approx(0.95)
    assert moms[peak] == pytest.approx(0.85)


@pytest.mark.parametrize("name", ["triangular2", "onecycle"])
def test_adam_beta1_cycles(name: str) -> None:
    opt = adam()
    schedule = S.make_schedule(
        name, opt, max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS
    )
    lrs, moms = run(schedule, 2 * SPE + 1)
    peak = max(range(len(lrs)), key=lambda i: lrs[i][0])
    assert moms[0] == pytest.approx(0.95)
    assert moms[peak] == pytest.approx(0.85)
    assert opt.param_groups[0]["betas"][1] == pytest.approx(0.999)  # beta2 untouched


@pytest.mark.parametrize("name", ["exp_range", "onecycle"])
def test_pinned_momentum_stays(name: str) -> None:
    schedule = S.make_schedule(
        name,
        sgd(momentum=0.9),
        max_lr=MAX,
        base_lr=BASE,
        steps_per_epoch=SPE,
        epochs=EPOCHS,
        cycle_momentum=False,
    )
    _, moms = run(schedule, 25)
    assert set(moms) == {0.9}


def test_cycle_momentum_refuses_sgd_without_momentum() -> None:
    opt = sgd(momentum=0.0)
    with pytest.raises(ValueError, match="momentum=0.0 in parameter group 0") as info:
        S.onecycle(opt, max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS)
    assert "cycle_momentum=false" in str(info.value)
    assert opt.param_groups[0]["momentum"] == 0.0  # not switched on behind the user's back
    S.onecycle(
        opt, max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS, cycle_momentum=False
    )


def test_cycle_momentum_refuses_optimizer_without_any() -> None:
    opt = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        ValueError, match="Adagrad has neither momentum nor betas.*cycle_momentum=false"
    ):
        S.triangular(opt, max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS)


# ---------------------------------------------------------------------------- traps, errors


@pytest.mark.parametrize(("key", "value"), [("T_0", 1.5), ("T_mult", 1.5), ("T_0", 0)])
def test_sgdr_needs_integer_t0_tmult(key: str, value: float) -> None:
    with pytest.raises(
        ValueError, match=rf"cosine_restarts {key} must be an integer >= 1.*got {value}"
    ):
        S.cosine_restarts(
            sgd(), max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS, **{key: value}
        )


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_overstepping_holds_last_lr_and_warns_once(name: str, caplog) -> None:
    total = SPE * EPOCHS
    with caplog.at_level(logging.WARNING, logger="lrtrack.engine.schedules"):
        lrs = path(name, n=total + 15)
    final = lrs[total - 1] if name == "onecycle" else 0.0
    assert lrs[total:] == pytest.approx([final] * 15)
    warnings = [r for r in caplog.records if "past its planned total_steps=40" in r.getMessage()]
    assert len(warnings) == 1
    assert "holding the final LR" in warnings[0].getMessage()


def test_exact_run_length_does_not_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lrtrack.engine.schedules"):
        path("onecycle", n=SPE * EPOCHS)
    assert not caplog.records


def test_stale_initial_lr_is_overwritten() -> None:
    opt = sgd()
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)  # leaves initial_lr=0.1 behind
    lrs = path("cosine", n=1, opt=opt)
    assert lrs[0] == pytest.approx(MAX)
    sched = S.step(opt, max_lr=0.5, base_lr=0.1, steps_per_epoch=1, epochs=2)
    assert sched.scheduler.base_lrs == pytest.approx([0.5])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_lr": -1.0}, "max_lr must be a positive finite number, got -1.0"),
        ({"base_lr": 2.0}, "base_lr must not exceed max_lr"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be an integer >= 1, got 0"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ],
)
def test_factory_argument_errors(kw: dict, message: str) -> None:
    args = {"max_lr": MAX, "base_lr": BASE, "steps_per_epoch": SPE, "epochs": EPOCHS, **kw}
    with pytest.raises(ValueError, match=message):
        S.triangular(sgd(), **args)


def test_unknown_schedule_name() -> None:
    with pytest.raises(ValueError, match="schedule must be one of triangular, .*got 'linear'"):
        S.make_schedule("linear", sgd())


# ---------------------------------------------------------------------------- param groups


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_two_groups_keep_their_ratio(name: str) -> None:
    opt = sgd(lrs=(0.1, 0.01))
    schedule = S.make_schedule(
        name, opt, max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS
    )
    lrs, _ = run(schedule, SPE * EPOCHS)
    for g0, g1 in lrs:
        assert g1 == pytest.approx(g0 * 0.1, rel=1e-9, abs=1e-15)
    assert max(g0 for g0, _ in lrs) == pytest.approx(MAX, rel=1e-2)  # exp_range decays a bit


# ---------------------------------------------------------------------------- state


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_state_dict_loads_with_weights_only_and_resumes(name: str, tmp_path: Path) -> None:
    def build(opt):
        return S.make_schedule(
            name, opt, max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS
        )

    opt = sgd()
    schedule = build(opt)
    first, _ = run(schedule, 13)
    torch.save({"s": schedule.state_dict(), "o": opt.state_dict()}, tmp_path / "s.pt")
    rest, rest_moms = run(schedule, 10)

    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = sgd()
    resumed = build(opt2)
    opt2.load_state_dict(loaded["o"])
    resumed.load_state_dict(loaded["s"])
    assert resumed.steps_done == 13
    again, again_moms = run(resumed, 10)
    assert again == rest  # exactly the same continuation
    assert again_moms == rest_moms
    full, _ = run(build(sgd()), 23)
    assert first + rest == full  # saving does not disturb the path: 13 + 10 steps == 23 uninterrupted


def test_load_state_dict_of_other_schedule() -> None:
    a = S.constant(sgd(), max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS)
    b = S.cosine(sgd(), max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS)
    with pytest.raises(ValueError, match="cannot load a 'constant' schedule state into a 'cosine'"):
        b.load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------- bounds


def suggestions(**lrs: float | None) -> dict[str, Suggestion]:
    return {
        rule: Suggestion(
            rule, lr, index=None if lr is None else 3, reason="" if lr else "curve too flat"
        )
        for rule, lr in lrs.items()
    }


def test_bounds_from_suggestions() -> None:
    # The default rule is confirmed; another rule is picked by name.
    both = suggestions(confirmed=0.04, valley=0.01)
    bounds = S.bounds_from_suggestions(both)
    assert bounds == S.Bounds(0.04, 0.01, "max_lr = confirmed suggestion; base_lr = max_lr / 4")
    bounds = S.bounds_from_suggestions(both, max_lr_rule="valley", base_divisor=2)
    assert bounds == S.Bounds(0.01, 0.005, "max_lr = valley suggestion; base_lr = max_lr / 2")
    bounds = S.bounds_from_suggestions(
        suggestions(), max_lr_rule="min_loss_div10", min_loss_lr=2.0, base_divisor=3
    )
    assert bounds.max_lr == pytest.approx(0.2)
    assert bounds.base_lr == pytest.approx(0.2 / 3)
    assert bounds.rule == "max_lr = LR at minimum loss / 10; base_lr = max_lr / 3"


def test_bounds_missing_suggestion_quotes_reason() -> None:
    # The default rule (confirmed) without an answer, e.g. probes that never lowered the loss.
    with pytest.raises(ValueError) as info:
        S.bounds_from_suggestions(suggestions(confirmed=None, steepest=0.01, valley=0.02))
    text = str(info.value)
    assert text == (
        "bounds.max_lr_rule='confirmed' has no suggestion: curve too flat. Set bounds.max_lr_rule to a "
        "rule that has one (steepest, valley), or set bounds.max_lr to an explicit LR."
    )
    with pytest.raises(ValueError) as info:
        S.bounds_from_suggestions(suggestions(valley=None, steepest=None), max_lr_rule="valley")
    text = str(info.value)
    assert text.startswith("bounds.max_lr_rule='valley' has no suggestion: curve too flat. ")
    assert text.endswith("No other rule has a suggestion either: set bounds.max_lr to an explicit LR.")
    with pytest.raises(ValueError, match="'slide' has no suggestion: the range test returned no suggestion"):
        S.bounds_from_suggestions(suggestions(valley=0.1), max_lr_rule="slide")


def test_bounds_errors() -> None:
    with pytest.raises(
        ValueError,
        match="^bounds.max_lr_rule must be one of confirmed, steepest, valley, minimum, slide, "
        "min_loss_div10, got 'lowest'",
    ):
        S.bounds_from_suggestions(suggestions(valley=0.1), max_lr_rule="lowest")
    with pytest.raises(ValueError, match="^bounds.max_lr_rule=min_loss_div10 needs the LR at the minimum loss"):
        S.bounds_from_suggestions(suggestions(valley=0.1), max_lr_rule="min_loss_div10")
    with pytest.raises(ValueError, match="^bounds.base_divisor must be a finite number >= 1, got 0.5"):
        S.bounds_from_suggestions(suggestions(valley=0.1), max_lr_rule="valley", base_divisor=0.5)
    with pytest.raises(TypeError, match="^bounds.base_divisor must be a number >= 1, got '4'"):
        S.bounds_from_config(0.4, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^bounds.max_lr must be a positive finite number, got 0"):
        S.bounds_from_config(0)
    assert S.bounds_from_config(0.4) == S.Bounds(
        0.4, 0.1, "max_lr from config; base_lr = max_lr / 4"
    )


def test_optimizer_steps_per_epoch() -> None:
    assert S.optimizer_steps_per_epoch(10, 1) == 10
    assert S.optimizer_steps_per_epoch(10, 4) == 3
    assert S.optimizer_steps_per_epoch(8, 4) == 2


# ---------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_yaml_builds_the_schedule(name: str) -> None:
    file = CONF / f"{name}.yaml"
    first = file.read_text().splitlines()[0]
    assert first == f"# python -m lrtrack +model=mnist_cnn schedule={name}"
    cfg = OmegaConf.load(file)
    # Only the scheduler's own settings: the LR range is the config's bounds node.
    assert not {"max_lr", "max_lr_rule", "base_divisor"} & set(cfg)
    assert cfg._target_ == f"lrtrack.engine.schedules.{name}" and cfg._partial_ is True
    schedule = instantiate(cfg)(
        sgd(), max_lr=MAX, base_lr=BASE, steps_per_epoch=SPE, epochs=EPOCHS
    )
    assert isinstance(schedule, S.BatchSchedule) and schedule.name == name
