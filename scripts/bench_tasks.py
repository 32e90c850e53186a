"""The tasks of ``scripts/bench_suggestions.py``: models, data, range tests and training runs (CPU).

Every task has a family and a half. The split, fixed before any tuning (docs/suggestions.md,
"The held-out protocol"): the families of the issue-10 benchmark are the **calibration** half
(their constants were chosen on them already); the families new in issue 19 are the
**held-out** half. Every data set is offline: scikit-learn's bundled and generated sets, MNIST
from ``../shared/data``, and Python source text already on the machine.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrtrack.data import InMemoryLoader, digits_tensors, mnist_tensors  # noqa: E402
from lrtrack.engine import schedules  # noqa: E402
from lrtrack.engine.finder import RangeTestResult  # noqa: E402
from lrtrack.engine.models import MLP, MnistCNN  # noqa: E402
from lrtrack.engine.repeats import run_repeated_range_test  # noqa: E402
from lrtrack.engine.steps import seed_everything  # noqa: E402
from lrtrack.engine.train import NonFiniteLossError, train  # noqa: E402

LR_FREE = ("prodigy", "schedulefree")
CALIBRATION, HELD_OUT = "calibration", "held-out"
#: Families of the issue-10 benchmark: the calibration half. Every other family is held out.
CALIBRATION_FAMILIES = ("least squares", "plain CNN", "MLP (MNIST)", "residual net", "RNN")


@dataclass
class Task:
    """One benchmark task.

    Attributes:
        name: short id.
        family: the model family (decides the half).
        what: one line for the table.
        kind: ``accuracy`` (points), ``nats`` (the metric is minus the validation loss),
            ``r2`` (R^2 in %), ``ls`` (least squares: decades of loss reduction).
        range_test: ``(seed, repeats) -> RangeTestResult``.
        train: ``(max_lr, seed, variant) -> metric`` (variant ``default``, ``prodigy`` or
            ``schedulefree``); higher is better.
        grid: max_lr values of the oracle grid.
        steps_per_run: optimizer steps of one training run.
        adaptive: Adam-like optimizer (the default runs three range tests).
        num_iter: the range test's sweep length.
        known_best / known_edge: least squares only: 2/(lmax+lmin) and 2/lmax.
    """

    name: str
    family: str
    what: str
    kind: str
    range_test: Callable[..., RangeTestResult]
    train: Callable[[float, int, str], float]
    grid: list[float]
    steps_per_run: int
    adaptive: bool = False
    num_iter: int = 100
    known_best: float | None = None
    known_edge: float | None = None
    lr_free: tuple[str, ...] = LR_FREE
    cache: dict[tuple[float, int, str], float] = field(default_factory=dict)

    @property
    def half(self) -> str:
        return CALIBRATION if self.family in CALIBRATION_FAMILIES else HELD_OUT

    @property
    def metric(self) -> str:
        return {"accuracy": "val accuracy %", "nats": "-val loss (nats)", "r2": "val R^2 %",
                "ls": "decades of loss reduction"}[self.kind]

    def run(self, lr: float, seed: int, variant: str = "default") -> float:
        key = (float(f"{lr:.4g}"), seed, variant)
        if key not in self.cache:
            self.cache[key] = self.train(lr, seed, variant)
        return self.cache[key]


# --------------------------------------------------------------------------- shared helpers


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> InMemoryLoader:
    return InMemoryLoader(x, y, batch, shuffle=True, seed=seed)


def _lr_free_optimizer(variant: str, params: Any, *, adam: bool, steps: int) -> torch.optim.Optimizer:
    """Prodigy (lr=1) or the schedule-free twin of the task's optimizer at its default LR.

    ``params`` may be parameter groups with a ``scale`` (fine-tuning: the backbone at 0.1x):
    each group's LR is then the optimizer's default LR times its scale.
    """
    params = list(params)
    if variant == "prodigy":
        from prodigyopt import Prodigy

        # Prodigy refuses different LRs per group: every parameter at its one estimated step size
        flat = [q for g in params for q in g["params"]] if _grouped(params) else params
        return Prodigy(flat, lr=1.0)
    import schedulefree

    warmup = max(1, steps // 20)
    if adam:
        return schedulefree.AdamWScheduleFree(_scaled(params, 0.0025), lr=0.0025, warmup_steps=warmup)
    return schedulefree.SGDScheduleFree(_scaled(params, 1.0), lr=1.0, momentum=0.9, warmup_steps=warmup)


def _grouped(params: Any) -> bool:
    return isinstance(params, list) and bool(params) and isinstance(params[0], dict)


def _scaled(params: Any, lr: float) -> Any:
    params = list(params)
    if params and isinstance(params[0], dict):
        return [{"params": g["params"], "lr": lr * g.get("scale", 1.0)} for g in params]
    return params


def _set_mode(opt: torch.optim.Optimizer, training: bool) -> None:
    switch = getattr(opt, "train" if training else "eval", None)
    if callable(switch):
        switch()


Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _fit(model_fn: Callable[[], nn.Module], make_opt: Callable[[Any, float], torch.optim.Optimizer],
         data: Data, *, batch: int, epochs: int, criterion: Callable[..., torch.Tensor], adam: bool,
         metric: Callable[[nn.Module], float], worst: float,
         groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None) -> Callable[[float, int, str], float]:
    """A ``train(max_lr, seed, variant)``: 1cycle from max_lr/4 (as the CLI) or an LR-free optimizer."""
    tx, ty, _, _ = data

    def run(max_lr: float, seed: int, variant: str) -> float:
        seed_everything(seed)
        model = model_fn()
        loader = _loader(tx, ty, batch, seed)
        steps = len(loader) * epochs
        if variant == "default":
            opt = make_opt(model, max_lr)
            sched = schedules.onecycle(opt, max_lr=max_lr, base_lr=max_lr / 4, steps_per_epoch=len(loader),
                                       epochs=epochs)
        else:
            params = groups(model) if groups is not None else model.parameters()
            opt = _lr_free_optimizer(variant, params, adam=adam, steps=steps)
            factory = schedules.cosine if variant == "prodigy" else schedules.constant
            base = opt.param_groups[0]["lr"]
            sched = factory(opt, max_lr=base, base_lr=base, steps_per_epoch=len(loader), epochs=epochs)
        try:
            train(model, opt, loader, epochs=epochs, schedule=sched, criterion=criterion, device="cpu",
                  progress=False)
        except NonFiniteLossError:
            return worst
        _set_mode(opt, False)
        value = metric(model)
        return value if math.isfinite(value) else worst

    return run


def _range_test(model_fn: Callable[[], nn.Module], make_opt: Callable[[nn.Module], torch.optim.Optimizer],
                x: torch.Tensor, y: torch.Tensor, *, batch: int, criterion: Callable[..., torch.Tensor],
                end_lr: float = 10.0, num_iter: int = 100) -> Callable[..., RangeTestResult]:
    """``(seed, repeats, **settings) -> result``: lrtrack's defaults (exp sweep, 100 steps, probes)."""
    def run(seed: int, repeats: int | None = None, **settings: Any) -> RangeTestResult:
        seed_everything(seed)
        model = model_fn()
        return run_repeated_range_test(model, make_opt(model), _loader(x, y, batch, seed), repeats=repeats,
                                       criterion=criterion, end_lr=end_lr, num_iter=num_iter, device="cpu",
                                       progress=False, **settings)

    return run


def _accuracy(vx: torch.Tensor, vy: torch.Tensor) -> Callable[[nn.Module], float]:
    def acc(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            out = model(vx)
        if not torch.isfinite(out).all():
            return chance(vy)
        return 100.0 * float((out.argmax(1) == vy).float().mean())

    return acc


def chance(vy: torch.Tensor) -> float:
    """Accuracy of always predicting the majority class (what a diverged classifier scores)."""
    return 100.0 * float((vy == vy.mode().values).float().mean())


def _r2(vx: torch.Tensor, vy: torch.Tensor) -> Callable[[nn.Module], float]:
    """R^2 in percent on the validation set (0: predicting the mean; 100: perfect)."""
    def r2(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            pred = model(vx)
        if not torch.isfinite(pred).all():
            return 0.0
        return max(0.0, 100.0 * float(1 - F.mse_loss(pred, vy) / vy.var()))

    return r2


def _sgd(momentum: float, wd: float = 0.0, nesterov: bool = False) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    return lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)


def _adamw(wd: float = 0.01) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    return lambda m, lr: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)


def _doubling(lo: float, n: int) -> list[float]:
    return [float(f"{lo * 2 ** i:.3g}") for i in range(n)]


# --------------------------------------------------------------------------- least squares


def ls_task(kappa: float, problem: int, *, steps: int = 50, d: int = 40, n: int = 200) -> Task:
    """Full-batch GD on ``0.5 * mean((Xw - y)^2)`` whose Hessian ``X^T X / n`` has a known spectrum.

    The eigenvalues are log-spaced from ``lmax / kappa`` to ``lmax`` (``lmax`` drawn per problem);
    the range-test seed draws the start ``w0``. The metric is the decades of loss reduction after
    ``steps`` fixed-LR GD steps; the known answer is the best fixed LR ``2 / (lmax + lmin)``.
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

    def range_test(seed: int, repeats: int | None = None, **settings: Any) -> RangeTestResult:
        m = model(seed)
        return run_repeated_range_test(m, torch.optim.SGD(m.parameters(), lr=1e-4), [(x, y)], repeats=repeats,
                                       criterion=crit, end_lr=100.0, num_iter=100, device="cpu", progress=False,
                                       **settings)

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
    return Task(f"ls_k{int(kappa)}_p{problem}", "least squares",
                f"least squares, kappa={kappa:g}, lmax={lmax:.3g}, full-batch GD {steps} steps", "ls",
                range_test, run, grid, steps, known_best=best, known_edge=edge)


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


class BNCNN(nn.Module):
    """Two conv blocks with BatchNorm and max-pooling, then a linear classifier."""

    def __init__(self, size: int, num_classes: int = 10, c1: int = 16, c2: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(c2 * (size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class GRURegressor(nn.Module):
    """A GRU over (value, marker) pairs; the last hidden state predicts one number."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def tabular_mlp(features: int, classes: int, width: int = 128, dropout: float = 0.2) -> nn.Module:
    """An MLP with BatchNorm and dropout, for tabular data."""
    return nn.Sequential(nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, classes))


class RegressionMLP(nn.Module):
    def __init__(self, features: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class CharTransformer(nn.Module):
    """A small causal Transformer language model over characters (pre-norm, learned positions)."""

    def __init__(self, vocab: int, context: int, d: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def lm_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


def _lm_metric(vx: torch.Tensor, vy: torch.Tensor, worst: float) -> Callable[[nn.Module], float]:
    def neg_loss(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            loss = float(lm_loss(model(vx), vy))
        return -loss if math.isfinite(loss) else worst

    return neg_loss


# --------------------------------------------------------------------------- data


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


def raw_digits() -> Data:
    """scikit-learn's 8x8 digits, standardized, with the same 80/20 split as lrtrack.data."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    images = (images - images.mean()) / images.std()
    targets = torch.tensor(bunch.target, dtype=torch.long)
    split = int(round(len(images) * 0.8))
    return images[:split], targets[:split], images[split:], targets[split:]


def _standardize(x: np.ndarray, n_train: int) -> torch.Tensor:
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-8
    return torch.tensor((x - mu) / sd, dtype=torch.float32)


def tabular(seed: int, classes: int, n_train: int = 4000, n_val: int = 2000) -> Data:
    """A generated tabular classification set (scikit-learn's make_classification), standardized."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_train + n_val, n_features=20, n_informative=10, n_redundant=4,
                               n_classes=classes, n_clusters_per_class=2, class_sep=1.0, flip_y=0.03,
                               random_state=seed)
    xt = _standardize(x, n_train)
    yt = torch.tensor(y, dtype=torch.long)
    return xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:]


def friedman(which: int, noise: float, seed: int, n_train: int = 3000, n_val: int = 1500) -> Data:
    """Friedman's generated regression sets (1 or 3), inputs and target standardized on the train part."""
    from sklearn.datasets import make_friedman1, make_friedman3

    n = n_train + n_val
    if which == 1:
        x, y = make_friedman1(n_samples=n, n_features=10, noise=noise, random_state=seed)
    else:
        x, y = make_friedman3(n_samples=n, noise=noise, random_state=seed)
    xt = _standardize(x, n_train)
    yt = _standardize(y[:, None], n_train)[:, 0]
    return xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:]


def python_text(folder: Path, limit: int) -> str:
    """Up to ``limit`` characters of the ``.py`` files of ``folder`` (sorted, not recursive)."""
    parts, total = [], 0
    for path in sorted(folder.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= limit:
            break
    return "".join(parts)[:limit]


def char_windows(text: str, context: int, n_train: int, n_val: int, seed: int) -> tuple[Data, int]:
    """Random windows of the text's first 85% (train) and last 15% (val); ids over printable ASCII."""
    ids = torch.tensor([min(max(ord(c) - 31, 0), 96) if c != "\n" else 0 for c in text], dtype=torch.long)
    vocab = 97
    cut = int(len(ids) * 0.85)
    g = torch.Generator().manual_seed(seed)

    def windows(part: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(part) - context - 1, (n,), generator=g)
        idx = starts[:, None] + torch.arange(context + 1)[None]
        w = part[idx]
        return w[:, :-1], w[:, 1:]

    tx, ty = windows(ids[:cut], n_train)
    vx, vy = windows(ids[cut:], n_val)
    return (tx, ty, vx, vy), vocab


def pretrained_backbone(data: Data, seed: int = 0, epochs: int = 2) -> dict[str, torch.Tensor]:
    """A BNCNN trained on MNIST digits 0-4 (Adam, fixed seed): the fine-tuning tasks' starting point."""
    tx, ty, _, _ = data
    keep = ty < 5
    seed_everything(seed)
    model = BNCNN(28, num_classes=5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = _loader(tx[keep], ty[keep], 128, seed)
    train(model, opt, loader, epochs=epochs, criterion=F.cross_entropy, device="cpu", progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the task list


def calibration_tasks(mnist: Data | None, *, quick: bool) -> list[Task]:
    """The families of the issue-10 benchmark (the calibration half)."""
    nll, ce = nn.NLLLoss(), nn.CrossEntropyLoss()
    tasks = [ls_task(10, 0), ls_task(1000, 0)] if quick else [ls_task(k, 0) for k in (10, 100, 1000)]
    sgd_grid = _doubling(0.01, 8) if not quick else _doubling(0.02, 5)
    adam_grid = _doubling(2.5e-4, 10) if not quick else _doubling(1e-3, 5)
    digits = digits_tensors()
    tasks.append(Task(
        "digits_cnn", "plain CNN", "MnistCNN (no BatchNorm) on upsampled sklearn digits, SGD m0.9 1cycle 4 ep",
        "accuracy",
        _range_test(MnistCNN, lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.5), *digits[:2],
                    batch=64, criterion=nll),
        _fit(MnistCNN, _sgd(0.9), digits, batch=64, epochs=4, criterion=nll, adam=False,
             metric=_accuracy(*digits[2:]), worst=chance(digits[3])),
        sgd_grid, math.ceil(len(digits[0]) / 64) * 4))
    if quick:
        return tasks
    if mnist is not None:
        steps = math.ceil(len(mnist[0]) / 256) * 2
        tasks.append(Task(
            "mnist_cnn", "plain CNN", "seed MnistCNN, MNIST 8k/2k, SGD m0.9 1cycle 2 ep; range test m0.5",
            "accuracy",
            _range_test(MnistCNN, lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.5), *mnist[:2],
                        batch=256, criterion=nll),
            _fit(MnistCNN, _sgd(0.9), mnist, batch=256, epochs=2, criterion=nll, adam=False,
                 metric=_accuracy(*mnist[2:]), worst=chance(mnist[3])),
            sgd_grid, steps))
        tasks.append(Task(
            "mnist_mlp", "MLP (MNIST)", "MLP 784-128-10, MNIST 8k/2k, AdamW 1cycle 2 ep", "accuracy",
            _range_test(MLP, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.01), *mnist[:2],
                        batch=256, criterion=nll),
            _fit(MLP, _adamw(), mnist, batch=256, epochs=2, criterion=nll, adam=True,
                 metric=_accuracy(*mnist[2:]), worst=chance(mnist[3])),
            adam_grid, steps, adaptive=True))
    small = raw_digits()
    tasks.append(Task(
        "digits_resnet", "residual net", "residual BatchNorm conv net, raw 8x8 digits, SGD m0.9 wd5e-4 1cycle 6 ep",
        "accuracy",
        _range_test(ResNetBN, lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4),
                    *small[:2], batch=64, criterion=ce),
        _fit(ResNetBN, _sgd(0.9, 5e-4), small, batch=64, epochs=6, criterion=ce, adam=False,
             metric=_accuracy(*small[2:]), worst=chance(small[3])),
        _doubling(0.0125, 9), math.ceil(len(small[0]) / 64) * 6))
    ax, ay = adding_problem(4000, 15, seed=7)
    vx, vy = adding_problem(1000, 15, seed=8)
    tasks.append(Task(
        "adding_gru", "RNN", "GRU(32) on the adding problem (length 15), Adam 1cycle 4 ep", "r2",
        _range_test(GRURegressor, lambda m: torch.optim.Adam(m.parameters(), lr=1e-5), ax, ay, batch=64,
                    criterion=F.mse_loss),
        _fit(GRURegressor, lambda m, lr: torch.optim.Adam(m.parameters(), lr=lr), (ax, ay, vx, vy), batch=64,
             epochs=4, criterion=F.mse_loss, adam=True, metric=_r2(vx, vy), worst=0.0),
        _doubling(2e-3, 9), math.ceil(4000 / 64) * 4, adaptive=True))
    return tasks


def held_out_tasks(mnist: Data | None, *, quick: bool) -> list[Task]:
    """The families new in issue 19 (the held-out half)."""
    ce = nn.CrossEntropyLoss()
    tasks = []
    tab = tabular(seed=4, classes=4)
    tasks.append(Task(
        "tab_bn_sgd", "tabular MLP", "BatchNorm+dropout MLP, generated 4-class tabular, SGD m0.9 Nesterov 1cycle 5 ep",
        "accuracy",
        _range_test(lambda: tabular_mlp(20, 4),
                    lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, nesterov=True),
                    *tab[:2], batch=64, criterion=ce),
        _fit(lambda: tabular_mlp(20, 4), _sgd(0.9, nesterov=True), tab, batch=64, epochs=5, criterion=ce,
             adam=False, metric=_accuracy(*tab[2:]), worst=chance(tab[3])),
        _doubling(0.02, 10) if not quick else _doubling(0.04, 6), math.ceil(4000 / 64) * 5))
    reg = friedman(1, 1.0, seed=5)
    tasks.append(Task(
        "reg_friedman1_sgd", "regression", "MLP 10-64-64-1 on Friedman #1 (noise 1), SGD m0.9 1cycle 6 ep", "r2",
        _range_test(lambda: RegressionMLP(10), lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9),
                    *reg[:2], batch=64, criterion=F.mse_loss),
        _fit(lambda: RegressionMLP(10), _sgd(0.9), reg, batch=64, epochs=6, criterion=F.mse_loss, adam=False,
             metric=_r2(*reg[2:]), worst=0.0),
        _doubling(0.004, 10) if not quick else _doubling(0.008, 6), math.ceil(3000 / 64) * 6))
    if quick:
        return tasks
    tasks += _held_out_more(mnist, ce)
    return tasks


def _held_out_more(mnist: Data | None, ce: nn.Module) -> list[Task]:
    tasks = []
    tab = tabular(seed=6, classes=3)
    tasks.append(Task(
        "tab_bn_adamw", "tabular MLP", "BatchNorm+dropout MLP, generated 3-class tabular, AdamW 1cycle 5 ep",
        "accuracy",
        _range_test(lambda: tabular_mlp(20, 3), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-6),
                    *tab[:2], batch=64, criterion=ce),
        _fit(lambda: tabular_mlp(20, 3), _adamw(), tab, batch=64, epochs=5, criterion=ce, adam=True,
             metric=_accuracy(*tab[2:]), worst=chance(tab[3])),
        _doubling(2.5e-4, 10), math.ceil(4000 / 64) * 5, adaptive=True))
    reg = friedman(3, 0.05, seed=9)
    tasks.append(Task(
        "reg_friedman3_adamw", "regression", "MLP 4-64-64-1 on Friedman #3 (noise 0.05), AdamW 1cycle 6 ep", "r2",
        _range_test(lambda: RegressionMLP(4), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-6),
                    *reg[:2], batch=64, criterion=F.mse_loss),
        _fit(lambda: RegressionMLP(4), _adamw(), reg, batch=64, epochs=6, criterion=F.mse_loss, adam=True,
             metric=_r2(*reg[2:]), worst=0.0),
        _doubling(2.5e-4, 10), math.ceil(3000 / 64) * 6, adaptive=True))
    small = raw_digits()
    tasks.append(Task(
        "digits_bncnn_adamw", "BatchNorm CNN", "BatchNorm CNN on raw 8x8 digits, AdamW 1cycle 6 ep", "accuracy",
        _range_test(lambda: BNCNN(8), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-6), *small[:2], batch=64,
                    criterion=ce),
        _fit(lambda: BNCNN(8), _adamw(), small, batch=64, epochs=6, criterion=ce, adam=True,
             metric=_accuracy(*small[2:]), worst=chance(small[3])),
        _doubling(5e-4, 10), math.ceil(len(small[0]) / 64) * 6, adaptive=True))
    tasks += lm_tasks()
    if mnist is not None:
        tasks += _mnist_held_out(mnist, ce)
    return tasks


def lm_tasks() -> list[Task]:
    """Char-level Transformer LMs on Python source already on the machine (AdamW, 1cycle)."""
    tasks = []
    import json

    folder = Path(json.__file__).parents[1]  # the standard library's folder
    corpora = [("lm_stdlib", folder, 0), ("lm_email", folder / "email", 1)]
    for name, where, seed in corpora:
        text = python_text(where, 400_000)
        if len(text) < 100_000:
            print(f"!! {where}: too little Python text for {name}; skipped", file=sys.stderr)
            continue
        context, batch, steps = 64, 32, 400
        data, vocab = char_windows(text, context, n_train=batch * steps // 2, n_val=512, seed=seed)
        worst = -math.log(vocab)

        def model(vocab: int = vocab, context: int = context) -> nn.Module:
            return CharTransformer(vocab, context)

        tasks.append(Task(
            name, "Transformer LM", f"char Transformer 2x64 on {where.name or where} .py text ({len(text) // 1000}k "
            f"chars), AdamW wd0.1 1cycle {steps} steps", "nats",
            _range_test(model, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-6, weight_decay=0.1), *data[:2],
                        batch=batch, criterion=lm_loss, end_lr=1.0),
            _fit(model, _adamw(0.1), data, batch=batch, epochs=2, criterion=lm_loss, adam=True,
                 metric=_lm_metric(data[2], data[3], worst), worst=worst),
            _doubling(2.5e-4, 9), steps, adaptive=True))
    return tasks


def _mnist_held_out(mnist: Data, ce: nn.Module) -> list[Task]:
    tasks = [Task(
        "mnist_bncnn_sgd", "BatchNorm CNN", "BatchNorm CNN, MNIST 8k/2k, SGD m0.9 1cycle 2 ep", "accuracy",
        _range_test(lambda: BNCNN(28), lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9), *mnist[:2],
                    batch=128, criterion=ce),
        _fit(lambda: BNCNN(28), _sgd(0.9), mnist, batch=128, epochs=2, criterion=ce, adam=False,
             metric=_accuracy(*mnist[2:]), worst=chance(mnist[3])),
        _doubling(0.01, 10), math.ceil(len(mnist[0]) / 128) * 2)]
    tx, ty, vx, vy = mnist
    backbone = pretrained_backbone(mnist)
    keep, vkeep = ty >= 5, vy >= 5
    data = (tx[keep], ty[keep] - 5, vx[vkeep], vy[vkeep] - 5)

    def model() -> nn.Module:
        m = BNCNN(28, num_classes=5)
        m.load_state_dict({k: v for k, v in backbone.items() if not k.startswith("fc.")}, strict=False)
        return m

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        return [{"params": list(m.fc.parameters()), "scale": 1.0},
                {"params": list(m.features.parameters()), "scale": 0.1}]

    def opt_of(kind: str) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
        def make(m: nn.Module, lr: float) -> torch.optim.Optimizer:
            g = [{"params": x["params"], "lr": lr * x["scale"]} for x in groups(m)]
            if kind == "sgd":
                return torch.optim.SGD(g, lr=lr, momentum=0.9)
            return torch.optim.AdamW(g, lr=lr, weight_decay=0.01)
        return make

    steps = math.ceil(len(data[0]) / 64) * 2
    for kind, start, grid in (("sgd", 1e-4, _doubling(0.005, 10)), ("adamw", 1e-6, _doubling(1.25e-4, 10))):
        tasks.append(Task(
            f"finetune_{kind}", "fine-tuning", f"BNCNN pre-trained on MNIST 0-4, fine-tuned on 5-9 "
            f"(backbone at 0.1x the head's LR), {kind} 1cycle 2 ep", "accuracy",
            _range_test(model, lambda m, k=kind, s=start: opt_of(k)(m, s), *data[:2], batch=64, criterion=ce),
            _fit(model, opt_of(kind), data, batch=64, epochs=2, criterion=ce, adam=kind == "adamw",
                 metric=_accuracy(*data[2:]), worst=chance(data[3]), groups=groups),
            grid, steps, adaptive=kind == "adamw"))
    return tasks


def all_tasks(mnist_root: Path, *, quick: bool) -> list[Task]:
    """Every task, calibration half first."""
    mnist = None
    if (mnist_root / "MNIST" / "raw").is_dir():
        mnist = (*mnist_tensors(mnist_root, train=True, download=False),
                 *mnist_tensors(mnist_root, train=False, download=False))
    elif not quick:
        print(f"!! {mnist_root} has no MNIST/raw: the MNIST tasks are skipped", file=sys.stderr)
    return calibration_tasks(mnist, quick=quick) + held_out_tasks(mnist, quick=quick)
