"""A battery of bad inputs: does each end in one clear line, with nothing started?

Each case runs ``python -m lrtrack +model=mnist_cnn +experiment=smoke <bad override>`` in a fresh
folder (some cases prepare a broken file first). A case passes when the process exits 2, prints
no traceback, its stderr holds ``lrtrack: error:`` lines only (one per problem; one problem per
case here), the line names the setting or file, and no MLflow run exists afterwards.

    .venv/bin/python scripts/bad_inputs.py            # ~5 min on 2 cores; prints a table, exits 1 on a miss
    .venv/bin/python scripts/bad_inputs.py --jobs 2   # two cases at a time
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = ["+model=mnist_cnn", "+experiment=smoke"]

# (overrides, a word the error line must contain, what to prepare in the folder)
CASES: list[tuple[list[str], str, str | None]] = [
    ([], "+model", "no-model"),
    (["+model=nope"], "model", "no-base"),
    (["optimizer=nope"], "optimizer", None),
    (["schedule=nope"], "schedule", None),
    (["finder=nope"], "finder", None),
    (["data=nope"], "data", None),
    (["criterion=nope"], "criterion", None),
    (["metric=nope"], "metric", None),
    (["finder.num_iter=abc"], "finder.num_iter", None),
    (["finder.num_iter=1"], "finder.num_iter", None),
    (["finder.num_iter=-5"], "finder.num_iter", None),
    (["finder.end_lr=0"], "finder.end_lr", None),
    (["finder.end_lr=-1"], "finder.end_lr", None),
    (["finder.end_lr=abc"], "finder.end_lr", None),
    (["finder.start_lr=20"], "finder.start_lr", None),
    (["finder.start_lr=-1"], "finder.start_lr", None),
    (["finder.step_mode=cubic"], "finder.step_mode", None),
    (["finder.smoothing=1.5"], "finder.smoothing", None),
    (["finder.smoothing=-0.1"], "finder.smoothing", None),
    (["finder.diverge_th=1"], "finder.diverge_th", None),
    (["finder.diverge_th=0.5"], "finder.diverge_th", None),
    (["finder.accumulation_steps=0"], "finder.accumulation_steps", None),
    (["finder.val_batches=-1"], "finder.val_batches", None),
    (["finder.suggestion=best"], "finder.suggestion", None),
    (["finder.repeats=0"], "finder.repeats", None),
    (["finder.bogus=1"], "finder.bogus", None),
    (["+finder.num_iters=5"], "finder.num_iters", None),
    (["optimizer.lr=-0.1"], "optimizer.lr", None),
    (["optimizer.lr=0"], "optimizer.lr", None),
    (["optimizer.momentum=-1"], "optimizer", None),
    (["optimizer.weight_decay=-1"], "optimizer", None),
    (["+optimizer.momentom=0.9"], "optimizer", None),
    (["schedule.pct_start=1.5"], "schedule", None),
    (["schedule.anneal_strategy=cubic"], "schedule", None),
    (["+schedule.pct_strt=0.4"], "schedule", None),
    (["schedule=triangular", "optimizer.momentum=0"], "schedule", None),
    (["bounds.max_lr=-1"], "bounds.max_lr", None),
    (["bounds.max_lr=abc"], "bounds.max_lr", None),
    (["bounds.max_lr_rule=best"], "bounds.max_lr_rule", None),
    (["bounds.base_divisor=0.5"], "bounds.base_divisor", None),
    (["bounds.bogus=1"], "bounds.bogus", None),
    (["train.epochs=0"], "train.epochs", None),
    (["train.epochs=abc"], "train.epochs", None),
    (["train.accumulation_steps=0"], "train.accumulation_steps", None),
    (["train.grad_clip_norm=-1"], "train.grad_clip_norm", None),
    (["train.smoothing=1"], "train.smoothing", None),
    (["stage=bogus"], "stage", None),
    (["stage=train"], "stage=train", None),
    (["stage=train", "train.lr_from=0123456789abcdef"], "train.lr_from", None),
    (["train.resume=0123456789abcdef"], "train.resume", None),
    (["stage=range_test", "train.resume=0123456789abcdef"], "train.resume", None),
    (["device=cuda"], "device", "no-cuda"),
    (["device=tpu9"], "device", None),
    (["data.batch_size=0"], "data.batch_size", None),
    (["data.val_batch_size=0"], "data.val_batch_size", None),
    (["data.batch_size=abc"], "data.batch_size", None),
    (["data=mnist", "data.root=missing", "data.fallback=null"], "data.root", None),
    (["data=mnist", "data.fallback=imagenet"], "data.fallback", None),
    (["data=mnist", "data.root=broken-mnist"], "train-images", "broken-mnist"),
    (["data=imagefolder", "data.root=missing"], "data.root", None),
    (["data=tensors", "data.path=missing.pt"], "data.path", None),
    (["data=tensors", "data.path=corrupt.pt"], "corrupt.pt", "corrupt-tensors"),
    (["tracking.tracking_uri=garbage://x"], "garbage://x", None),
    (["tracking.tracking_uri=http://127.0.0.1:9"], "127.0.0.1:9", None),
    (["tracking.tracking_uri=sqlite:////nonexistent-folder/x.db"], "nonexistent-folder", None),
    (["tracking.flush_every=0"], "tracking.flush_every", None),  # a setting that no longer exists
    (["tracking.spool_dir=/etc/hostname"], "tracking.spool_dir", None),  # a file, not a folder
    (["tracking.delivery_timeout_s=-1"], "tracking.delivery_timeout_s", None),
    (["criterion=mse"], "criterion", None),
    (["criterion=cross_entropy", "model._target_=lrtrack.engine.models.MLP", "+model.in_features=10"], "model", None),
    (["model._target_=nonexistent_module.Net"], "nonexistent_module", None),
    (["model.num_classes=abc"], "model", None),
    (["seed=abc"], "seed", None),
    (["progress=maybe"], "progress", None),
]


def _prepare(folder: Path, what: str | None) -> None:
    if what == "broken-mnist":  # real file names, a header that is not MNIST's
        raw = folder / "broken-mnist" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            (raw / name).write_bytes(b"\x00\x00\x08\x03" + b"\x01" * 64)
    elif what == "corrupt-tensors":
        (folder / "corrupt.pt").write_bytes(b"this is not a torch file")


def _runs_created(folder: Path) -> int:
    db = folder / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def run_case(case: tuple[list[str], str, str | None]) -> dict[str, object]:
    overrides, word, prep = case
    args = list(overrides) if prep in ("no-model", "no-base") else [*BASE, *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _prepare(folder, prep)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        if prep == "no-cuda":
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run([sys.executable, "-m", "lrtrack", *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        runs = _runs_created(folder)
    clear = (proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1
             and lines[0].startswith("lrtrack: error: ") and word in lines[0] and runs == 0)
    return {"case": " ".join(overrides) or "(no model)", "ok": clear, "code": proc.returncode, "runs": runs,
            "line": lines[-1] if lines else "", "lines": len(lines)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_case, CASES))
    for r in results:
        mark = "ok  " if r["ok"] else "MISS"
        print(f"{mark} exit {r['code']} runs {r['runs']} lines {r['lines']}  {r['case']}\n       {str(r['line'])[:220]}")
    good = sum(1 for r in results if r["ok"])
    print(f"\n{good} of {len(results)} bad inputs end in one clear line with nothing started")
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
