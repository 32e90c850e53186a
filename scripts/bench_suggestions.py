"""Benchmark: how good is each suggestion rule's LR, measured against a tuned grid (CPU).

For every task the script runs

* an **oracle grid**: the task's training run at log-spaced max_lr values, each with several
  seeds; the grid's best mean metric is the oracle (least squares also has the known answer,
  the best fixed LR ``2 / (lambda_max + lambda_min)`` and the stability edge ``2 / lambda_max``);
* **range tests** with several seeds (``lrtrack.engine.finder.run_range_test`` with lrtrack's defaults:
  exp sweep, 100 steps, smoothing 0.95) and every rule's suggestion on each
  (``result.suggestions``), the median over the seeds and the seed spread (max / min);
* the **training run at each rule's median suggestion** (same epochs, same seeds as the grid):
  the regret is the oracle grid's best metric minus this one;
* the **LR-free rows**: Prodigy (lr=1, cosine) and schedule-free AdamW / SGD (their default LR,
  constant schedule with warm-up) at the same epochs, no range test at all;
* the **compute**: range-test steps (all seeds) against the grid's optimizer steps.

Tasks: least squares with known spectra (condition numbers 10, 100, 1000; full-batch GD), the
seed MNIST CNN on the shared 8k/2k split (SGD, 1cycle), an MLP on the same split (AdamW,
1cycle), scikit-learn's digits with the same CNN (SGD, 1cycle), a small residual BatchNorm conv
net on the raw 8x8 digits (SGD, 1cycle) and a GRU on the adding problem (Adam, 1cycle).

    .venv/bin/python scripts/bench_suggestions.py --out /tmp/bench-suggestions   # full (~4 min, 1 thread)
    .venv/bin/python scripts/bench_suggestions.py --quick --check --out /tmp/bq  # CI (~1.3 min)

Writes ``<out>/suggestions.md`` (the tables), ``<out>/suggestions.png`` (one panel per task:
the grid's metric against max_lr, each rule's suggestion and the LR-free optimizers) and
``<out>/suggestions.json`` (every number). Prints the tables and whether the default rule meets
the issue's targets on every task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrtrack.engine import schedules  # noqa: E402
from lrtrack.data import InMemoryLoader, digits_tensors, mnist_tensors  # noqa: E402
from lrtrack.engine.finder import RangeTestResult  # noqa: E402
from lrtrack.engine.models import MLP, MnistCNN  # noqa: E402
from lrtrack.engine.probes import Probe  # noqa: E402
from lrtrack.engine.repeats import run_repeated_range_test  # noqa: E402
from lrtrack.engine.steps import seed_everything  # noqa: E402
from lrtrack.engine.suggest import DEFAULT_RULE, RULES, find_edge, suggest_all  # noqa: E402
from lrtrack.engine.train import NonFiniteLossError, train  # noqa: E402

DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k-split"
RT_SEEDS = (100, 101, 102)  # range-test seeds (init and data order); grid seeds are 0, 1, ...
LR_FREE = ("prodigy", "schedulefree")

#: The issue's targets for the default rule.
LS_RATIO = (0.3, 1.0)
MAX_REGRET_POINTS = 1.0
MAX_SPREAD = 1.5


# --------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """One benchmark task.

    Attributes:
        name: short id.
        what: one line for the table.
        range_test: ``(seed, repeats) -> RangeTestResult``.
        train: ``(max_lr, seed, variant) -> metric`` where variant is ``default`` (the task's
            optimizer and schedule), ``prodigy`` or ``schedulefree``; higher is better.
        grid: max_lr values of the oracle grid.
        metric: the metric's name (its unit is the regret's unit).
        steps_per_run: optimizer steps of one training run.
        known_best: least squares only: the best fixed LR 2/(lmax+lmin).
        known_edge: least squares only: the stability edge 2/lmax.
    """

    name: str
    what: str
    range_test: Callable[[int, int], RangeTestResult]
    train: Callable[[float, int, str], float]
    grid: list[float]
    metric: str
    steps_per_run: int
    known_best: float | None = None
    known_edge: float | None = None
    lr_free: tuple[str, ...] = LR_FREE
    cache: dict[tuple[float, int, str], float] = field(default_factory=dict)

    def run(self, lr: float, seed: int, variant: str = "default") -> float:
        key = (float(f"{lr:.4g}"), seed, variant)
        if key not in self.cache:
            self.cache[key] = self.train(lr, seed, variant)
        return self.cache[key]


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> InMemoryLoader:
    return InMemoryLoader(x, y, batch, shuffle=True, seed=seed)


def _lr_free_optimizer(variant: str, params: Any, *, adam: bool, steps: int) -> torch.optim.Optimizer:
    """Prodigy (lr=1) or the schedule-free twin of the task's optimizer at its default LR."""
    if variant == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=1.0)
    import schedulefree

    warmup = max(1, steps // 20)
    if adam:
        return schedulefree.AdamWScheduleFree(params, lr=0.0025, warmup_steps=warmup)
    return schedulefree.SGDScheduleFree(params, lr=1.0, momentum=0.9, warmup_steps=warmup)


def _fit(model_fn: Callable[[], nn.Module], make_opt: Callable[[Any, float], torch.optim.Optimizer],
         data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], *, batch: int, epochs: int,
         criterion: Callable[..., torch.Tensor], adam: bool, metric: Callable[[nn.Module], float],
         ) -> Callable[[float, int, str], float]:
    """A ``train(max_lr, seed, variant)`` for a classifier-style task trained with lrtrack.engine.train."""
    tx, ty, vx, vy = data

    def run(max_lr: float, seed: int, variant: str) -> float:
        seed_everything(seed)
        model = model_fn()
        loader = _loader(tx, ty, batch, seed)
        steps = len(loader) * epochs
        if variant == "default":
            opt = make_opt(model.parameters(), max_lr)
            sched = schedules.onecycle(opt, max_lr=max_lr, base_lr=max_lr / 4, steps_per_epoch=len(loader),
                                       epochs=epochs)
        else:
            opt = _lr_free_optimizer(variant, model.parameters(), adam=adam, steps=steps)
            factory = schedules.cosine if variant == "prodigy" else schedules.constant
            base = opt.param_groups[0]["lr"]
            sched = factory(opt, max_lr=base, base_lr=base, steps_per_epoch=len(loader), epochs=epochs)
        try:
            train(model, opt, loader, epochs=epochs, schedule=sched, criterion=criterion, device="cpu",
                  progress=False)
        except NonFiniteLossError:
            return metric_of_diverged(model, metric)
        return metric(model)

    return run


def metric_of_diverged(model: nn.Module, metric: Callable[[nn.Module], float]) -> float:
    """A run whose loss became NaN: the metric of what is left (chance level for a classifier)."""
    try:
        value = metric(model)
    except (RuntimeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _accuracy(vx: torch.Tensor, vy: torch.Tensor) -> Callable[[nn.Module], float]:
    def acc(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            out = model(vx)
        if not torch.isfinite(out).all():
            return 100.0 * float((vy == vy.mode().values).float().mean())  # chance: the majority class
        return 100.0 * float((out.argmax(1) == vy).float().mean())

    return acc


def _range_test(model_fn: Callable[[], nn.Module], make_opt: Callable[[Any], torch.optim.Optimizer],
                x: torch.Tensor, y: torch.Tensor, *, batch: int, criterion: Callable[..., torch.Tensor],
                end_lr: float = 10.0, num_iter: int = 100) -> Callable[[int, int], RangeTestResult]:
    """``(seed, repeats) -> result``: lrtrack's defaults (exp sweep to ``end_lr``, 100 steps, probes)."""
    def run(seed: int, repeats: int | None = None) -> RangeTestResult:
        seed_everything(seed)
        model = model_fn()
        return run_repeated_range_test(model, make_opt(model.parameters()), _loader(x, y, batch, seed),
                                       repeats=repeats, criterion=criterion, end_lr=end_lr, num_iter=num_iter,
                                       device="cpu", progress=False)

    return run


def _r2(vx: torch.Tensor, vy: torch.Tensor) -> Callable[[nn.Module], float]:
    """R^2 in percent on the validation set (0: predicting the mean; 100: perfect)."""
    def r2(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            pred = model(vx)
        if not torch.isfinite(pred).all():
            return 0.0
        return max(-100.0, 100.0 * float(1 - F.mse_loss(pred, vy) / vy.var()))

    return r2


# --------------------------------------------------------------------------- least squares


def ls_task(kappa: float, problem: int, *, steps: int = 50, d: int = 40, n: int = 200) -> Task:
    """Full-batch GD on ``0.5 * mean((Xw - y)^2)`` whose Hessian ``X^T X / n`` has a known spectrum.

    The eigenvalues are log-spaced from ``lmax / kappa`` to ``lmax`` (``lmax`` drawn per problem,
    so the answer is not always the same number); the range-test seed draws the start ``w0``.
    The metric is the decades of loss reduction after ``steps`` fixed-LR GD steps.
    """
    g = torch.Generator().manual_seed(1000 * problem + int(kappa))
    lmax = float(10 ** (torch.rand((), generator=g, dtype=torch.float64) * 1.5 - 1.0))
    lams = lmax * torch.logspace(-math.log10(kappa), 0.0, d, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = math.sqrt(n) * q @ torch.diag(lams.sqrt()) @ v.T
    wstar = torch.randn(d, generator=g, dtype=torch.float64)
    y = x @ wstar
    best, edge = 2.0 / float(lams.max() + lams.min()), 2.0 / float(lams.max())

    def w0(seed: int) -> torch.Tensor:
        return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def model(seed: int) -> nn.Module:
        m = nn.Linear(d, 1, bias=False).double()
        with torch.no_grad():
            m.weight.copy_(w0(seed)[None])
        return m

    def crit(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.mse_loss(out.squeeze(-1), target)

    def range_test(seed: int, repeats: int | None = None) -> RangeTestResult:
        m = model(seed)
        return run_repeated_range_test(m, torch.optim.SGD(m.parameters(), lr=1e-4), [(x, y)], repeats=repeats,
                                       criterion=crit, end_lr=100.0, num_iter=100, device="cpu", progress=False)

    def loss_of(m: nn.Module) -> float:
        with torch.no_grad():
            return float(crit(m(x), y))

    def run(lr: float, seed: int, variant: str) -> float:
        start = loss_of(model(seed))
        if variant == "default":  # closed form in the eigenbasis: e_T = (1 - lr * lam)^T e_0
            e0 = v.T @ (w0(seed) - wstar)
            end = float(0.5 * torch.sum(lams * ((1 - lr * lams) ** steps * e0) ** 2))
        else:
            m = model(seed)
            opt = _lr_free_optimizer(variant, m.parameters(), adam=False, steps=steps)
            base = opt.param_groups[0]["lr"]
            factory = schedules.cosine if variant == "prodigy" else schedules.constant
            sched = factory(opt, max_lr=base, base_lr=base, steps_per_epoch=steps, epochs=1)
            _set_mode(opt, True)
            for _ in range(steps):
                opt.zero_grad()
                crit(m(x), y).backward()
                opt.step()
                sched.step()
            _set_mode(opt, False)
            end = loss_of(m)
        if not math.isfinite(end) or end <= 0:
            return -99.0 if not math.isfinite(end) else 99.0
        return max(-99.0, math.log10(start / end))

    grid = [float(best * f) for f in np.logspace(-1.5, 0.5, 21)]
    return Task(f"ls_k{int(kappa)}_p{problem}",
                f"least squares, kappa={kappa:g}, lmax={lmax:.3g}, full-batch GD {steps} steps",
                range_test, run, grid, "decades of loss reduction", steps,
                known_best=best, known_edge=edge)


def _set_mode(opt: torch.optim.Optimizer, training: bool) -> None:
    switch = getattr(opt, "train" if training else "eval", None)
    if callable(switch):
        switch()


# --------------------------------------------------------------------------- networks


class ResNetBN(nn.Module):
    """A small residual BatchNorm conv net for 8x8 images: stem, two residual blocks, pooling."""

    def __init__(self, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.ModuleList(self._block(channels) for _ in range(2))
        self.fc = nn.Linear(channels, num_classes)

    @staticmethod
    def _block(c: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(x.mean((2, 3)))


class GRURegressor(nn.Module):
    """A GRU over (value, marker) pairs; the last hidden state predicts one number."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def adding_problem(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hochreiter's adding problem: the sum of the two marked values of a random sequence."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=g)
    first = torch.randint(0, length // 2, (n,), generator=g)
    second = torch.randint(length // 2, length, (n,), generator=g)
    markers = torch.zeros(n, length)
    markers[torch.arange(n), first] = 1.0
    markers[torch.arange(n), second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(1)


def raw_digits() -> tuple[torch.Tensor, ...]:
    """scikit-learn's 8x8 digits, standardized, with the same 80/20 split as lrtrack.data."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    images = (images - images.mean()) / images.std()
    targets = torch.tensor(bunch.target, dtype=torch.long)
    split = int(round(len(images) * 0.8))
    return images[:split], targets[:split], images[split:], targets[split:]


def _sgd(momentum: float, wd: float = 0.0) -> Callable[[Any, float], torch.optim.Optimizer]:
    return lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=wd)


def nn_tasks(mnist_root: Path, *, quick: bool) -> list[Task]:
    """The network tasks (MNIST ones only where the shared split is present)."""
    tasks: list[Task] = []
    nll, ce = nn.NLLLoss(), nn.CrossEntropyLoss()
    sgd_grid = [0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6] if not quick else [0.02, 0.08, 0.15, 0.3]
    adam_grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1] if not quick else [1e-3, 1e-2, 1e-1]
    if (mnist_root / "MNIST" / "raw").is_dir():
        data = (*mnist_tensors(mnist_root, train=True, download=False),
                *mnist_tensors(mnist_root, train=False, download=False))
        epochs = 2  # the MNIST target is for 1cycle over 2 epochs (at 1 epoch larger LRs win)
        steps = math.ceil(len(data[0]) / 256) * epochs
        tasks.append(Task(
            "mnist_cnn", f"seed MnistCNN, MNIST 8k/2k, SGD 1cycle {epochs} ep; range test SGD lr 1e-3 m0.5",
            _range_test(MnistCNN, lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.5), *data[:2], batch=256,
                        criterion=nll),
            _fit(MnistCNN, _sgd(0.9), data, batch=256, epochs=epochs, criterion=nll, adam=False,
                 metric=_accuracy(*data[2:])),
            sgd_grid, "val accuracy %", steps))
        if not quick:
            tasks.append(Task(
                "mnist_mlp", f"MLP 784-128-10, MNIST 8k/2k, AdamW 1cycle {epochs} ep; range test AdamW lr 1e-5",
                _range_test(MLP, lambda p: torch.optim.AdamW(p, lr=1e-5, weight_decay=0.01), *data[:2],
                            batch=256, criterion=nll),
                _fit(MLP, lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), data, batch=256,
                     epochs=epochs, criterion=nll, adam=True, metric=_accuracy(*data[2:])),
                adam_grid, "val accuracy %", steps))
    else:
        print(f"!! {mnist_root} has no MNIST/raw: the MNIST tasks are skipped", file=sys.stderr)
    digits = digits_tensors()
    tasks.append(Task(
        "digits_cnn", "MnistCNN on sklearn digits (upsampled, lrtrack.data), SGD 1cycle 4 ep; range test m0.5",
        _range_test(MnistCNN, lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.5), *digits[:2], batch=64,
                    criterion=nll),
        _fit(MnistCNN, _sgd(0.9), digits, batch=64, epochs=4, criterion=nll, adam=False,
             metric=_accuracy(*digits[2:])),
        sgd_grid, "val accuracy %", math.ceil(len(digits[0]) / 64) * 4))
    if quick:
        return tasks
    small = raw_digits()
    tasks.append(Task(
        "digits_resnet", "residual BatchNorm conv net on raw 8x8 digits, SGD m0.9 wd5e-4 1cycle 6 ep; "
        "range test m0.9",
        _range_test(ResNetBN, lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, weight_decay=5e-4),
                    *small[:2], batch=64, criterion=ce),
        _fit(ResNetBN, _sgd(0.9, 5e-4), small, batch=64, epochs=6, criterion=ce, adam=False,
             metric=_accuracy(*small[2:])),
        [0.01, 0.03, 0.1, 0.3, 1.0, 3.0], "val accuracy %", math.ceil(len(small[0]) / 64) * 6))
    ax, ay = adding_problem(4000, 15, seed=7)
    vx, vy = adding_problem(1000, 15, seed=8)
    tasks.append(Task(
        "adding_gru", "GRU(32) on the adding problem (length 15), Adam 1cycle 4 ep; range test Adam lr 1e-5",
        _range_test(GRURegressor, lambda p: torch.optim.Adam(p, lr=1e-5), ax, ay, batch=64, criterion=F.mse_loss),
        _fit(GRURegressor, lambda p, lr: torch.optim.Adam(p, lr=lr), (ax, ay, vx, vy), batch=64, epochs=4,
             criterion=F.mse_loss, adam=True, metric=_r2(vx, vy)),
        [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0], "val R^2 %", math.ceil(4000 / 64) * 4))
    return tasks


# --------------------------------------------------------------------------- measuring


@dataclass
class Curve:
    """What the rules read from one range test (kept in ``--cache`` between runs)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stop_reason: str
    probes: list[dict[str, Any]]
    default_lr: float | None = None  # the default rule's LR as the engine computed it
    repeats: int = 1
    rule_lrs: dict[str, float | None] | None = None  # every rule's LR as the engine computed it (repeats: medians)

    @classmethod
    def of(cls, r: RangeTestResult) -> Curve:
        probes = [{"lr": p.lr, "losses": list(p.losses), "planned": p.planned} for p in r.probes]
        return cls(list(r.lrs), list(r.losses), list(r.smoothed_losses), r.stop_reason, probes,
                   r.suggestions[DEFAULT_RULE].lr, max(1, len(r.repeats)),
                   {rule: s.lr for rule, s in r.suggestions.items()})

    def rule_lr(self, rule: str) -> float | None:
        """The rule's LR on this test: the engine's (for repeats, the median of the repeats' answers)."""
        if self.rule_lrs is not None:
            return self.rule_lrs.get(rule)
        return self.suggestions()[rule].lr

    def suggestions(self) -> dict[str, Any]:
        """Every rule's suggestion, computed as ``run_range_test`` computes them."""
        probes = [Probe(p["lr"], tuple(p["losses"]), p["planned"]) for p in self.probes]
        return suggest_all(self.lrs, self.smoothed, raw_losses=self.losses, probes=probes)

    @property
    def steps(self) -> int:
        """Optimizer steps of the sweeps and the probes."""
        return len(self.lrs) * self.repeats + sum(len(p["losses"]) for p in self.probes)


def geo_median(values: Sequence[float]) -> float:
    """The median in log space (the geometric mean of the middle two for an even count)."""
    return float(10 ** statistics.median(math.log10(v) for v in values))


@dataclass
class RuleRow:
    """One rule (or the default rule with repeats) on one task."""

    rule: str
    lrs: list[float | None]  # per range-test seed
    median: float | None = None
    ratio: float | None = None  # median / oracle LR (least squares: / the best fixed LR)
    metric: float | None = None  # mean over the grid seeds of the training run at the median
    regret: float | None = None  # oracle metric - metric
    spread: float | None = None  # max / min over the range-test seeds

    def measure(self, task: Task, reference: float, oracle: float, grid_seeds: Sequence[int]) -> RuleRow:
        ok = [lr for lr in self.lrs if lr is not None and lr > 0]
        if ok:
            self.median = geo_median(ok)
            self.ratio = self.median / reference
            self.spread = max(ok) / min(ok)
            self.metric = statistics.mean(task.run(self.median, s) for s in grid_seeds)
            self.regret = oracle - self.metric
        return self


def _curve(task: Task, seed: int, repeats: int | None, cache: dict[str, Any]) -> Curve:
    """One range test with lrtrack's defaults (``repeats=None``: as many as the default runs)."""
    curves = cache.setdefault("curves", {}).setdefault(task.name, {})
    key = f"{seed}xauto" if repeats is None else str(seed) if repeats == 1 else f"{seed}x{repeats}"
    if key not in curves:
        curves[key] = vars(Curve.of(task.range_test(seed, repeats)))
    return Curve(**curves[key])


def evaluate_task(task: Task, rt_seeds: Sequence[int], grid_seeds: Sequence[int], repeats: int,
                  cache: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Grid, range tests, every rule's suggestion and its training run, the LR-free rows."""
    t0 = time.perf_counter()
    grid = {lr: statistics.mean(task.run(lr, s) for s in grid_seeds) for lr in task.grid}
    oracle_lr = max(grid, key=grid.__getitem__)
    oracle = grid[oracle_lr]
    reference = task.known_best or oracle_lr
    curves = [_curve(task, seed, None, cache) for seed in rt_seeds]  # the default: 3 tests for Adam-like optimizers
    edges = [find_edge(c.lrs, c.smoothed, raw_losses=c.losses).lr for c in curves]
    rows = [RuleRow(rule, [c.rule_lr(rule) for c in curves]).measure(task, reference, oracle, grid_seeds)
            for rule in RULES]
    if repeats > 1:
        again = [_curve(task, seed, repeats, cache) for seed in rt_seeds]
        rows.append(RuleRow(f"{DEFAULT_RULE} x{repeats}", [c.default_lr for c in again]).measure(
            task, reference, oracle, grid_seeds))
    lr_free = {v: statistics.mean(task.run(0.0, s, v) for s in grid_seeds) for v in task.lr_free}
    log(f"{task.name}: oracle {oracle:.3g} at max_lr {oracle_lr:.3g}; {DEFAULT_RULE} {rows[0].median or 0:.3g} "
        f"(regret {rows[0].regret if rows[0].regret is not None else float('nan'):.2f}); "
        f"{time.perf_counter() - t0:.0f}s")
    return {"task": task.name, "what": task.what, "metric": task.metric, "grid": grid,
            "oracle_lr": oracle_lr, "oracle": oracle, "known_best": task.known_best,
            "known_edge": task.known_edge, "edges": edges, "rules": [vars(r) for r in rows],
            "lr_free": {v: {"metric": m, "regret": oracle - m} for v, m in lr_free.items()},
            "rt_steps": sum(c.steps for c in curves), "rt_tests": len(curves),
            "grid_steps": len(task.grid) * len(grid_seeds) * task.steps_per_run,
            "per_seed_grid": {f"{lr:.4g}": [task.run(lr, s) for s in grid_seeds] for lr in task.grid}}


# --------------------------------------------------------------------------- the report


def _x(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or not math.isfinite(v) else fmt.format(v)


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's three figures for the default rule on one task (None where not applicable)."""
    row = next(x for x in r["rules"] if x["rule"] == DEFAULT_RULE)
    ratio_ok = None if r["known_best"] is None else (
        row["ratio"] is not None and LS_RATIO[0] <= row["ratio"] <= LS_RATIO[1])
    regret_ok = None if r["task"] != "mnist_cnn" else (row["regret"] is not None and row["regret"] <= MAX_REGRET_POINTS)
    spread_ok = row["spread"] is not None and row["spread"] <= MAX_SPREAD
    return {"ratio": ratio_ok, "regret": regret_ok, "spread": spread_ok,
            "ok": all(v is not False for v in (ratio_ok, regret_ok, spread_ok))}


def _rule_table(results: list[dict[str, Any]], key: str, fmt: str, title: str) -> list[str]:
    names = [x["rule"] for x in results[0]["rules"]]
    lines = [f"**{title}**", "", "| task | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in results:
        cells = [_x(x[key], fmt) for x in r["rules"]]
        lines.append(f"| {r['task']} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(results: list[dict[str, Any]], out: Path, *, wall: float, argv: Sequence[str]) -> str:
    """``suggestions.md`` (returned) and ``suggestions.png`` in ``out``."""
    cmd = " ".join(["python scripts/bench_suggestions.py", *argv])
    lines = [f"# Suggestion benchmark: `{cmd}`", "",
             f"{len(results)} tasks, {wall / 60:.1f} min on {torch.get_num_threads()} thread(s). "
             f"Default rule: `{DEFAULT_RULE}`. Ratio: the rule's median LR over the grid's best max_lr "
             "(least squares: over the best fixed LR 2/(lmax+lmin)). Regret: the grid's best metric minus "
             "the metric of training at the rule's median LR, same epochs, same seeds (accuracy/R^2 points; "
             "least squares: decades of loss reduction). Spread: max/min of the rule's LR over the "
             "range-test seeds.", "",
             "| task | what | metric | oracle max_lr | oracle | range-test steps (all seeds, sweep + probes) "
             "| grid steps | edge / oracle |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        edges = [e for e in r["edges"] if e]
        edge = f"{geo_median(edges) / (r['known_best'] or r['oracle_lr']):.2f}" if edges else "-"
        oracle_lr = f"{r['oracle_lr']:.3g}" + (f" (best fixed {r['known_best']:.3g})" if r["known_best"] else "")
        lines.append(f"| {r['task']} | {r['what']} | {r['metric']} | {oracle_lr} | {r['oracle']:.2f} | "
                     f"{r['rt_steps']} ({r['rt_tests']} tests) | {r['grid_steps']} | {edge} |")
    lines.append("")
    lines += _rule_table(results, "ratio", "{:.2f}x", "LR / oracle LR (median over range-test seeds)")
    lines += _rule_table(results, "regret", "{:+.2f}", "Regret (oracle metric - metric at the rule's LR)")
    lines += _rule_table(results, "spread", "{:.2f}x", "Seed spread (max / min)")
    free = list(results[0]["lr_free"])
    lines += ["**LR-free optimizers at the same epochs: regret against the tuned grid** (prodigy: lr=1, cosine; "
              "schedulefree: AdamW lr 0.0025 / SGD lr 1.0 momentum 0.9, constant, 5% warm-up)", "",
              f"| task | {DEFAULT_RULE} | " + " | ".join(free) + " | best |", "|---" * (len(free) + 3) + "|"]
    for r in results:
        row = next(x for x in r["rules"] if x["rule"] == DEFAULT_RULE)
        scores = {DEFAULT_RULE: row["regret"], **{v: r["lr_free"][v]["regret"] for v in free}}
        best = min((k for k, v in scores.items() if v is not None), key=lambda k: scores[k])
        lines.append(f"| {r['task']} | " + " | ".join(_x(scores[k], "{:+.2f}") for k in scores) + f" | {best} |")
    lines += ["", f"**Targets for `{DEFAULT_RULE}`** (least squares ratio in [{LS_RATIO[0]}, {LS_RATIO[1]}]; "
              f"mnist_cnn regret <= {MAX_REGRET_POINTS} point; spread <= {MAX_SPREAD}x on every task)", "",
              "| task | ratio | regret | spread | met |", "|---|---|---|---|---|"]
    for r in results:
        t = targets(r)
        row = next(x for x in r["rules"] if x["rule"] == DEFAULT_RULE)
        mark = {True: " ok", False: " MISSED", None: ""}
        lines.append(f"| {r['task']} | {_x(row['ratio'])}{mark[t['ratio']]} | {_x(row['regret'], '{:+.2f}')}"
                     f"{mark[t['regret']]} | {_x(row['spread'])}{mark[t['spread']]} | {'yes' if t['ok'] else 'NO'} |")
    text = "\n".join(lines) + "\n"
    (out / "suggestions.md").write_text(text)
    figure(results).savefig(out / "suggestions.png")
    return text


def figure(results: list[dict[str, Any]]) -> Any:
    """One panel per task: the grid's metric against max_lr, the rules' LRs, the LR-free rows."""
    from matplotlib.figure import Figure

    from lrtrack.engine.plots import RULE_COLORS

    cols = 3
    rows = math.ceil(len(results) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), dpi=90, layout="constrained")
    for k, r in enumerate(results):
        ax = fig.add_subplot(rows, cols, k + 1)
        lrs = [float(x) for x in r["per_seed_grid"]]
        means = [statistics.mean(v) for v in r["per_seed_grid"].values()]
        ax.plot(lrs, means, "o-", color="0.3", label="grid (mean of seeds)")
        for lr, values in zip(lrs, r["per_seed_grid"].values()):
            ax.plot([lr] * len(values), values, ".", color="0.6")
        for row in r["rules"]:
            if row["median"]:
                color = RULE_COLORS.get(row["rule"].split()[0], "black")
                ax.axvline(row["median"], color=color, lw=2.2 if row["rule"] == DEFAULT_RULE else 1,
                           ls="-" if row["rule"] == DEFAULT_RULE else "--", label=row["rule"])
        for v, style in zip(r["lr_free"], (":", "-.")):
            ax.axhline(r["lr_free"][v]["metric"], color="tab:cyan", ls=style, label=v)
        if r["known_best"]:
            ax.axvline(r["known_best"], color="black", ls=":", label="best fixed LR")
        bottom = max(min(means), r["oracle"] - max(5.0, 0.5 * abs(r["oracle"])))
        ax.set_ylim(bottom, r["oracle"] + 0.08 * (r["oracle"] - bottom) + 1e-9)
        ax.set_xscale("log")
        ax.set_title(r["task"], fontsize=10)
        ax.set_xlabel("max_lr")
        ax.set_ylabel(r["metric"], fontsize=8)
        ax.grid(True, which="both", alpha=0.25)
        if k == 0:
            ax.legend(fontsize=6, loc="lower left")
    return fig


# --------------------------------------------------------------------------- main


def all_tasks(args: argparse.Namespace) -> list[Task]:
    if args.quick:
        tasks = [ls_task(10, 0), ls_task(1000, 0)]
    else:
        tasks = [ls_task(k, p) for k in (10, 100, 1000) for p in (0, 1)]
    tasks += nn_tasks(Path(args.mnist_root), quick=args.quick)
    if args.tasks:
        tasks = [t for t in tasks if any(t.name.startswith(p) for p in args.tasks)]
    return tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "lrtrack-bench-suggestions"),
                   help="folder for suggestions.md/.png/.json (default: <tmp>/lrtrack-bench-suggestions)")
    p.add_argument("--quick", action="store_true", help="CI: fewer tasks, seeds and grid points (< 2 min)")
    p.add_argument("--mnist-root", default=str(DEFAULT_MNIST), help="torchvision MNIST root (has MNIST/raw)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--tasks", nargs="*", help="only tasks whose name starts with one of these")
    p.add_argument("--repeats", type=int, default=None,
                   help="also measure the default rule with finder.repeats=N (default: 3, --quick: off)")
    p.add_argument("--check", action="store_true", help="exit 1 when the default rule misses a target")
    p.add_argument("--cache", help="a JSON file that keeps curves and training results between runs "
                   "(for working on the rules; a clean measurement runs without it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).exists() else {}
    rt_seeds = RT_SEEDS[:2] if args.quick else RT_SEEDS
    grid_seeds = (0, 1)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    results = []
    for task in all_tasks(args):
        stored = cache.setdefault("train", {}).setdefault(task.name, {})
        task.cache = {(float(k.split("|")[0]), int(k.split("|")[1]), k.split("|")[2]): v for k, v in stored.items()}
        results.append(evaluate_task(task, rt_seeds, grid_seeds, repeats, cache, log=lambda m: print(m, flush=True)))
        cache["train"][task.name] = {f"{lr}|{s}|{v}": m for (lr, s, v), m in task.cache.items()}
        if args.cache:
            Path(args.cache).write_text(json.dumps(cache))
    wall = time.perf_counter() - t0
    (out / "suggestions.json").write_text(json.dumps({"results": results, "wall_s": wall}, indent=1))
    report = write_report(results, out, wall=wall, argv=sys.argv[1:] if argv is None else argv)
    print(report)
    missed = [r["task"] for r in results if not targets(r)["ok"]]
    print(f"{DEFAULT_RULE}: targets met on {len(results) - len(missed)} of {len(results)} tasks"
          + (f"; missed on {', '.join(missed)}" if missed else "") + f"; wrote {out}/suggestions.md and .png")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
