"""Shared fixtures: the real MNIST split (skipped where ../shared is absent) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_SPLIT = ROOT.parent / "shared" / "data" / "mnist-t10k-split"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run 10-100x faster on one thread than on two competing ones here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mnist_root() -> Path:
    if not (MNIST_SPLIT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST split not found at {MNIST_SPLIT} (../shared/data is absent here)")
    return MNIST_SPLIT


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lrtrack ARGS`` in ``cwd`` with the store at ``cwd/mlflow.db``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "lrtrack", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
