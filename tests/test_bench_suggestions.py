"""The suggestion benchmark's CI mode: ``scripts/bench_suggestions.py --quick --check``.

It runs both halves (calibration and held-out) on a few small tasks, must print both tables and
the confidence calibration, and exits non-zero exactly when it reports a missed held-out target.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_check(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], float, Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_suggestions.py"), "--quick", "--check",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0, out


def _missed(stdout: str) -> bool:
    return "MISSED" in stdout.split("**Held-out targets**:")[1].splitlines()[0]


@pytest.mark.slow
def test_quick_check_prints_both_halves_and_exits_by_the_held_out_targets(quick_check) -> None:  # type: ignore[no-untyped-def]
    proc, wall, out = quick_check
    stdout = proc.stdout
    assert "### calibration half" in stdout and "### held-out half" in stdout, proc.stderr[-2000:]
    assert "### Confidence calibration" in stdout
    assert "**Held-out targets**:" in stdout
    assert proc.returncode == (1 if _missed(stdout) else 0), stdout[-3000:]
    assert (out / "suggestions.md").exists() and (out / "grid_cache.json").exists()
    assert wall < 120, f"--quick --check took {wall:.0f}s (CI budget: 2 minutes)"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 19: the held-out targets are not met yet (mean SGD cost with the "
                   "extra tests over 2x num_iter; schedule-free SGD beats the default on the quick held-out median)")
def test_quick_check_meets_the_held_out_targets(quick_check) -> None:  # type: ignore[no-untyped-def]
    proc, _, _ = quick_check
    assert proc.returncode == 0, proc.stdout.split("**Held-out targets**:")[1][:500]
