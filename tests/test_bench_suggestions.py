"""The suggestion benchmark's CI mode: ``scripts/bench_suggestions.py --quick --check``.

It runs both halves (calibration and held-out) on a few small tasks and must print both tables
and the confidence calibration, and exit non-zero exactly when it reports a missed held-out target.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_check_prints_both_halves_and_exits_by_the_held_out_targets(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_suggestions.py"), "--quick", "--check",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    out = proc.stdout
    assert "### calibration half" in out and "### held-out half" in out, proc.stderr[-2000:]
    assert "### Confidence calibration" in out
    assert "**Held-out targets**:" in out
    missed = "MISSED" in out.split("**Held-out targets**:")[1].splitlines()[0]
    assert proc.returncode == (1 if missed else 0), out[-3000:]
    assert proc.returncode == 0, f"a held-out target failed: {out.split('**Held-out targets**:')[1][:500]}"
    assert (tmp_path / "suggestions.md").exists() and (tmp_path / "grid_cache.json").exists()
    assert wall < 150, f"--quick --check took {wall:.0f}s (CI budget: 2 minutes)"
