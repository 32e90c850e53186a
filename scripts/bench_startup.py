"""Benchmark: the whole tracked range test, as a user times it, against the seed script.

Each repetition runs, in alternating order, two fresh processes on the same MNIST files:

  seed      scripts/seed_lr_finder.py: torchvision MNIST + DataLoader, torch-lr-finder 0.2.2's
            range_test (100 steps, exp to 10), the plot saved, reset(). No tracking.
  lrtrack   python -m lrtrack +model=mnist_cnn stage=range_test data.root=<root> progress=false,
            in a fresh folder each time (so the sqlite store is created too: the worst case),
            with tracking, figure, history and suggestions logged to MLflow. Two variants:
            "default" (the sweep, then the confirmation probes of the default rule, up to
            num_iter more steps) and "sweep only" (finder.probe_steps=0: the seed's work, one
            sweep and the curve rules).

A third process, "bare loop", is the floor any tool pays on this data: it imports torch,
reads the same MNIST files into tensors, builds the same CNN and takes 100 SGD steps at the
sweep's LRs on batches of 256, then exits: no Hydra, no tracking, no figure, no probes.

It prints the median wall time of each, the ratio lrtrack/seed, lrtrack's time from process
start to the end of its first range-test step (the timestamp MLflow stored with step 0's
metrics) and to the last step, and so where the time goes: before the first step (imports,
data, store), the steps, and after the last step (figures, artifacts, exit).

It also prints the ratio that the transport's target is stated in: the whole tracked range test,
sweep only, against the bare loop (target <= 1.10x), and the first step's time (target <= 2.5 s).

    .venv/bin/python scripts/bench_startup.py --repeats 5            # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k-split"


def run_seed(mnist: Path, out: Path) -> float:
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "seed_lr_finder.py"), "--root", str(mnist),
                    "--out", str(out / "seed.png")], check=True, capture_output=True, cwd=out)
    return time.time() - start


BARE_LOOP = """
import math, time, torch
from torch import nn
from lrtrack.data import mnist_tensors
from lrtrack.engine.models import MnistCNN
x, y = mnist_tensors({root!r}, train=True, download=False)
torch.manual_seed(0)
model = MnistCNN()
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.5)
loss_fn = nn.NLLLoss()
for i in range(100):
    idx = torch.randint(0, len(x), (256,))
    for g in opt.param_groups:
        g["lr"] = 1e-3 * (10 / 1e-3) ** (i / 99)
    opt.zero_grad()
    loss = loss_fn(model(x[idx]), y[idx])
    loss.backward()
    opt.step()
    if i == 0:
        print(time.time(), flush=True)  # the first step done
    if not math.isfinite(loss.item()):
        break
"""


def run_bare(mnist: Path, out: Path) -> tuple[float, float]:
    """The bare loop's wall time and its time from start to the first step done."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", BARE_LOOP.format(root=str(mnist))], check=True,
                          capture_output=True, cwd=out, text=True)
    return time.time() - start, float(proc.stdout.split()[0]) - start


VARIANTS = {"default": [], "sweep only": ["finder.probe_steps=0", "finder.suggestion=valley", "bounds.max_lr_rule=valley"]}


def run_lrtrack(mnist: Path, out: Path, extra: list[str]) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(dir=out))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "lrtrack", "+model=mnist_cnn", "stage=range_test",
                           f"data.root={mnist}", "progress=false", *extra], capture_output=True, text=True,
                          cwd=folder, env=env)
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lrtrack-mnist_cnn").experiment_id])
    steps = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    logged = {**run.data.params, **run.data.metrics}
    probe_steps = next((float(v) for k, v in logged.items() if k.rsplit("/", 1)[-1] == "probe_steps"), 0.0)
    return {"total": end - start, "first_step": steps[0].timestamp / 1000 - start,
            "last_step": steps[-1].timestamp / 1000 - start, "steps": float(len(steps)), "probe_steps": probe_steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=DEFAULT_MNIST, help="folder holding MNIST/raw")
    args = parser.parse_args(argv)
    if not (args.root / "MNIST" / "raw").is_dir():
        print(f"no MNIST under {args.root}; pass --root", file=sys.stderr)
        return 2
    seed: list[float] = []
    bare: list[float] = []
    bare_first: list[float] = []
    ours: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_seed(args.root, out)  # warm the file cache and the Python bytecode of both
        run_lrtrack(args.root, out, [])
        for i in range(args.repeats):
            order = ["seed", *VARIANTS, "bare"] if i % 2 == 0 else ["bare", *VARIANTS, "seed"]  # alternate
            for who in order:
                if who == "seed":
                    seed.append(run_seed(args.root, out))
                elif who == "bare":
                    total, first = run_bare(args.root, out)
                    bare.append(total)
                    bare_first.append(first)
                else:
                    ours[who].append(run_lrtrack(args.root, out, VARIANTS[who]))
            print(f"  rep {i + 1}: seed {seed[-1]:.2f} s, bare loop {bare[-1]:.2f} s, " + ", ".join(
                f"lrtrack {who} {runs[-1]['total']:.2f} s (first step at {runs[-1]['first_step']:.2f} s)"
                for who, runs in ours.items()), flush=True)
    seed_med = statistics.median(seed)
    print(f"\nmedians of {args.repeats} alternated runs (fresh processes):")
    print(f"  seed script (torch-lr-finder, 100-step sweep, no tracking): {seed_med:6.2f} s")
    print(f"  bare loop (import torch, read MNIST, 100 SGD steps, exit):   {statistics.median(bare):6.2f} s "
          f"({statistics.median(bare) / seed_med:.2f}x the seed: the floor); its first step done at "
          f"{statistics.median(bare_first):.2f} s")
    bare_med = statistics.median(bare)
    failed = False
    for who, runs in ours.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        ratios = [r["total"] / b for r, b in zip(runs, bare)]  # each repetition's pair, side by side
        print(f"\n  python -m lrtrack, {who} ({int(med['steps'])} sweep steps + {int(med['probe_steps'])} probe "
              f"steps), tracked in MLflow: {med['total']:6.2f} s")
        print(f"    ratio lrtrack / seed:        {med['total'] / seed_med:6.2f}x")
        print(f"    ratio lrtrack / bare loop:   {med['total'] / bare_med:6.2f}x  (median of the per-repetition "
              f"ratios {statistics.median(ratios):.2f}x)")
        if who == "sweep only":
            ok_ratio, ok_first = statistics.median(ratios) <= 1.10, med["first_step"] <= 2.5
            failed = not (ok_ratio and ok_first)
            print(f"    targets: sweep only <= 1.10x the bare loop: {'met' if ok_ratio else 'NOT met'}; "
                  f"first step <= 2.5 s: {'met' if ok_first else 'NOT met'}")
        print(f"    start -> first step done:    {med['first_step']:6.2f} s  (imports, config, data, model, run)")
        print(f"    first -> last sweep step:    {med['last_step'] - med['first_step']:6.2f} s")
        print(f"    last sweep step -> exit:     {med['total'] - med['last_step']:6.2f} s  "
              "(probes, suggestions, figure, artifacts, delivery)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
