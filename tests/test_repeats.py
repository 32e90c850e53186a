"""finder.repeats: several range tests in one job, their median curve, band and suggestion; and the
schedule-free optimizers' train()/eval() calls in the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtrack.data import InMemoryLoader
from lrtrack.engine.confidence import repeat_reasons
from lrtrack.engine.finder import RangeTestResult, run_range_test
from lrtrack.engine.observers import RecordingObserver
from lrtrack.engine.repeats import ADAPTIVE_REPEATS, auto_repeats, combine, run_repeated_range_test
from lrtrack.engine.suggest import RULES, Edge, Suggestion
from lrtrack.engine.train import set_optimizer_mode, train


def _task(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), x, y


def _result(smoothed: list[float], lrs: dict[str, float | None], edge: float | None) -> RangeTestResult:
    """A hand-made result on the grid 1e-3, 1e-2, ... (one point per decade)."""
    grid = [10.0 ** (k - 3) for k in range(len(smoothed))]
    return RangeTestResult(
        lrs=grid, group_lrs=[[v] for v in grid], losses=list(smoothed), smoothed_losses=list(smoothed),
        train_losses=list(smoothed), stop_reason="completed", stop_detail="", num_iter=len(grid),
        suggestions={r: Suggestion(r, lrs.get(r), None, f"{r} reason") for r in RULES},
        step_mode="exp", start_lr=grid[0], end_lr=grid[-1],
        edge=Edge(edge, None if edge is None else 0, "edge reason"))


def test_combine_takes_the_median_curve_suggestion_and_edge() -> None:
    a = _result([3.0, 2.0, 1.0, 2.0], {"confirmed": 0.01, "valley": 0.001}, edge=0.1)
    b = _result([5.0, 4.0, 3.0, 9.0], {"confirmed": 0.04, "valley": None}, edge=1.0)
    c = _result([4.0, 1.0, 2.0], {"confirmed": 0.02, "valley": 0.004}, edge=0.1)  # stopped a step early
    m = combine([a, b, c])
    assert m.smoothed_losses == [4.0, 2.0, 2.0, 5.5]  # the last step: the median of the two that reached it
    assert m.lrs == a.lrs and m.steps == 4 and len(m.repeats) == 3
    assert m.suggestions["confirmed"].lr == pytest.approx(0.02)  # the median of 0.01, 0.04, 0.02
    assert m.suggestions["valley"].lr == pytest.approx(0.002)  # geometric middle of the two it has
    assert "median of 2 of 3 repeats" in m.suggestions["valley"].reason
    assert m.suggestions["minimum"].lr is None and "no repeat has a suggestion" in m.suggestions["minimum"].reason
    assert m.edge.lr == pytest.approx(0.1) and m.edge.index == 2
    band = m.band()
    assert band["min"] == [3.0, 1.0, 1.0, 2.0] and band["max"] == [5.0, 4.0, 3.0, 9.0]
    assert band["q25"][0] == 3.5 and band["q75"][0] == 4.5
    row = m.history_rows()[3]
    assert row["loss_smoothed_min"] == 2.0 and row["loss_smoothed_max"] == 9.0


def test_combined_curve_suggestions_stay_below_the_median_edge_but_confirmed_follows_its_probes() -> None:
    a = _result([3.0, 2.0, 1.0, 2.0], {"confirmed": 0.5, "valley": 0.5}, edge=0.1)
    b = _result([3.0, 2.0, 1.0, 2.0], {"confirmed": 0.5, "valley": 0.5}, edge=0.1)
    m = combine([a, b])
    assert m.suggestions["valley"].lr == pytest.approx(0.1)
    assert "capped at the median divergence edge" in m.suggestions["valley"].reason
    # confirmed's probes climb above the edge while they train well: they are the evidence
    assert m.suggestions["confirmed"].lr == pytest.approx(0.5)


def test_repeats_see_different_data_orders_from_the_same_start() -> None:
    model, x, y = _task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)  # shuffles with torch's RNG
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    rng = torch.get_rng_state()
    result = run_repeated_range_test(model, opt, loader, repeats=3, criterion=nn.CrossEntropyLoss(),
                                     num_iter=20, device="cpu", progress=False, extra_repeats=0)
    assert len(result.repeats) == 3
    first_losses = [r.losses[0] for r in result.repeats]
    assert len(set(first_losses)) == 3  # the same weights, three different first batches
    assert result.losses[0] == sorted(first_losses)[1]  # the per-step median
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng) and opt.param_groups[0]["lr"] == 1e-3
    assert result.probe_steps == sum(r.probe_steps for r in result.repeats) > 0
    # The same seed gives the same repeats.
    torch.set_rng_state(rng)
    again = run_repeated_range_test(model, opt, loader, repeats=3, criterion=nn.CrossEntropyLoss(),
                                    num_iter=20, device="cpu", progress=False, extra_repeats=0)
    assert again.smoothed_losses == result.smoothed_losses


def test_repeats_report_each_repeat_and_the_median_to_the_observer() -> None:
    model, x, y = _task()
    recorder = RecordingObserver()
    result = run_repeated_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3),
                                     InMemoryLoader(x, y, 32, seed=0), repeats=2, observer=recorder,
                                     criterion=nn.CrossEntropyLoss(), num_iter=10, progress=False)
    assert [v for _, v in recorder.series("repeat_1/loss")] == result.repeats[1].losses
    assert [v for _, v in recorder.series("loss_smoothed")] == result.smoothed_losses
    assert [s for s, _ in recorder.series("loss_smoothed_q25")] == list(range(result.steps))


def test_one_repeat_is_a_plain_range_test_and_bad_values_are_refused() -> None:
    model, x, y = _task()
    args = dict(criterion=nn.CrossEntropyLoss(), num_iter=10, progress=False)
    one = run_repeated_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3),
                                  InMemoryLoader(x, y, 32, seed=0), repeats=1, extra_repeats=0, **args)
    plain = run_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3), InMemoryLoader(x, y, 32, seed=0),
                           **args)
    assert one.losses == plain.losses and one.repeats == () and one.band() == {}
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"repeats must be an integer >= 1 or None \(auto\) \(finder.repeats\)"):
            run_repeated_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3), [], repeats=bad, **args)
    with pytest.raises(ValueError, match="repeats > 1 needs restore=True"):
        run_repeated_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3), [], repeats=2,
                                restore=False, **args)


def test_the_figure_draws_the_band_of_the_repeats() -> None:
    from lrtrack.engine.plots import range_test_figure

    model, x, y = _task()
    result = run_repeated_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3),
                                     InMemoryLoader(x, y, 32, seed=0), repeats=3, extra_repeats=0,
                                     criterion=nn.CrossEntropyLoss(), num_iter=30, progress=False)
    fig = range_test_figure(result)
    ax = fig.axes[0]
    assert {c.get_label() for c in ax.collections} >= {"min-max of 3 repeats", "inter-quartile"}
    assert "median of 3 repeats" in ax.get_title()
    assert "smoothed loss (median)" in [line.get_label() for line in ax.get_lines()]


# --------------------------------------------------------------------------- schedule-free optimizers


class _Modes(torch.optim.SGD):
    """An SGD with schedule-free's train()/eval(), recording each call with the model's mode."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__(model.parameters(), lr=lr)
        self.model = model
        self.calls: list[tuple[str, bool]] = []

    def train(self) -> None:
        self.calls.append(("train", self.model.training))

    def eval(self) -> None:
        self.calls.append(("eval", self.model.training))


def test_training_switches_a_schedule_free_optimizer_with_the_model() -> None:
    model, x, y = _task()
    opt = _Modes(model, lr=0.05)
    loader = InMemoryLoader(x, y, 64, seed=0)
    train(model, opt, loader, epochs=2, criterion=nn.CrossEntropyLoss(), val_loader=loader, progress=False)
    # Each epoch: train() with the model in train mode, then eval() before validation/saving.
    assert opt.calls == [("train", True), ("eval", True)] * 2


def test_set_optimizer_mode_leaves_other_optimizers_alone() -> None:
    model, _, _ = _task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    set_optimizer_mode(opt, training=True)
    set_optimizer_mode(opt, training=False)  # no such methods: nothing happens
    assert opt.param_groups[0]["lr"] == 0.1


def test_training_with_the_real_schedule_free_optimizer_evaluates_the_averaged_weights() -> None:
    import schedulefree

    model, x, y = _task()
    opt = schedulefree.SGDScheduleFree(model.parameters(), lr=0.5)
    loader = InMemoryLoader(x, y, 64, seed=0)
    result = train(model, opt, loader, epochs=3, criterion=nn.CrossEntropyLoss(), val_loader=loader, progress=False)
    assert opt.param_groups[0]["train_mode"] is False  # left in eval mode: the averaged weights
    assert result.final_val_accuracy is not None and result.final_val_accuracy > 0.8
    assert all(math.isfinite(v) for v in result.losses) and np.isfinite(result.final_val_loss)


def test_auto_repeats_runs_three_tests_for_adam_like_optimizers_and_one_for_sgd() -> None:
    """repeats=None (finder.repeats=null, the default): Adam-like probes near the edge are chaotic."""
    model, x, y = _task()
    params = list(model.parameters())
    adaptive = [torch.optim.Adam(params), torch.optim.AdamW(params), torch.optim.NAdam(params),
                torch.optim.RAdam(params), torch.optim.Adamax(params), torch.optim.RMSprop(params),
                torch.optim.Adagrad(params), torch.optim.Adadelta(params)]
    assert [auto_repeats(opt) for opt in adaptive] == [ADAPTIVE_REPEATS] * len(adaptive) == [2] * 8
    assert auto_repeats(torch.optim.SGD(params, lr=0.1, momentum=0.9)) == 1
    args = dict(criterion=nn.CrossEntropyLoss(), num_iter=8, probe_steps=2, progress=False, extra_repeats=0)
    adam = run_repeated_range_test(model, torch.optim.Adam(model.parameters(), lr=1e-4),
                                   InMemoryLoader(x, y, 32, seed=0), end_lr=1.0, **args)
    sgd = run_repeated_range_test(model, torch.optim.SGD(model.parameters(), lr=1e-3),
                                  InMemoryLoader(x, y, 32, seed=0), **args)
    assert len(adam.repeats) == 2 and sgd.repeats == ()


# --------------------------------------------------------------------------- the confidence verdict (issue 19)


def test_repeats_that_disagree_are_noted_but_no_part_of_the_verdict() -> None:
    a = _result([3.0, 2.0, 1.0, 2.0], {"confirmed": 0.01}, edge=0.1)
    b = _result([3.0, 2.0, 1.0, 2.0], {"confirmed": 0.05}, edge=0.1)
    c = _result([3.0, 2.0, 1.0, 2.0], {"confirmed": 0.02}, edge=0.1)
    assert repeat_reasons([0.01, 0.05, 0.02])[0].startswith("repeats disagree: 3 tests' answers spread 5.00x")
    assert repeat_reasons([0.01, 0.012]) == []
    # calibration (issue 19, round 2): no regret behind it, so it is no part of the verdict
    m = combine([a, b, c])
    assert not any(r.startswith("repeats disagree") for r in m.confidence_reasons)


def _fake_tests(monkeypatch: pytest.MonkeyPatch, answers: list[float | None]) -> None:
    """run_range_test replaced by hand-made 50-step results with these answers, in turn."""
    import lrtrack.engine.repeats as repeats_mod

    left = iter(answers)
    curve = [3.0 - 0.02 * i for i in range(40)] + [2.2 + 0.5 * i for i in range(10)]

    def fake(*args: object, **kwargs: object) -> RangeTestResult:
        answer = next(left)
        r = _result(curve, {"confirmed": answer}, edge=None)
        reasons = [] if answer else ["no confirmed answer: no probe lowered the loss"]
        return RangeTestResult(**{**r.__dict__, "lrs": [10 ** (i / 10 - 3) for i in range(50)],
                                  "group_lrs": [[10 ** (i / 10 - 3)] for i in range(50)],
                                  "confidence": "low" if reasons else "high", "confidence_reasons": reasons})

    monkeypatch.setattr(repeats_mod, "run_range_test", fake)


def test_a_low_verdict_without_an_answer_runs_extra_tests_and_says_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Adam repeats without an answer spend EXTRA_REPEATS more tests; the answer is the median of all."""
    import lrtrack.engine.repeats as repeats_mod

    _fake_tests(monkeypatch, [None, None, 0.03, 0.03])
    model, x, y = _task()
    result = run_repeated_range_test(model, torch.optim.Adam(model.parameters()), InMemoryLoader(x, y, 32),
                                     criterion=nn.CrossEntropyLoss())
    assert len(result.repeats) == 2 + repeats_mod.EXTRA_REPEATS
    assert result.suggestions["confirmed"].lr == pytest.approx(0.03)
    assert result.extra_steps == 2 * 50
    assert result.total_steps == 4 * 50
    assert "no confirmed answer" in result.extra_actions[0] and "ran 2 more range tests" in result.extra_actions[0]


def test_repeats_that_disagree_spend_no_extra_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the calibration half more tests left such answers' regret where it was (confidence.FIXABLE)."""
    _fake_tests(monkeypatch, [0.01, 0.1, 0.03, 0.03])
    model, x, y = _task()
    result = run_repeated_range_test(model, torch.optim.Adam(model.parameters()), InMemoryLoader(x, y, 32),
                                     criterion=nn.CrossEntropyLoss())
    assert len(result.repeats) == 2 and result.extra_steps == 0 and result.extra_actions == []
    assert not any(r.startswith("repeats disagree") for r in result.confidence_reasons)
