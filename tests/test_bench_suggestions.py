"""The suggestion benchmark's CI mode: ``scripts/bench_suggestions.py --quick --check``.

It runs both halves (calibration and held-out) on a few small tasks, must print both tables and
the confidence calibration, and exits non-zero exactly when it reports a missed held-out target.
The verdict itself (which targets fail) is checked on made-up results, so these tests say
whether the script judges honestly, not whether the default meets the targets today.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_suggestions", ROOT / "scripts" / "bench_suggestions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench()


@pytest.fixture(scope="module")
def quick_check(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], float, Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_suggestions.py"), "--quick", "--check",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0, out


def _verdict_line(stdout: str) -> str:
    return stdout.split("**Held-out targets**:")[1].splitlines()[0]


@pytest.mark.slow
def test_quick_check_prints_both_halves_and_the_confidence_table(quick_check) -> None:  # type: ignore[no-untyped-def]
    proc, wall, out = quick_check
    stdout = proc.stdout
    assert "### calibration half" in stdout and "### held-out half" in stdout, proc.stderr[-2000:]
    assert "### Confidence calibration" in stdout
    assert "**Held-out targets**:" in stdout
    assert (out / "suggestions.md").read_text().count("| task |") == 2
    assert (out / "grid_cache.json").exists()
    assert wall < 120, f"--quick --check took {wall:.0f}s (CI budget: 2 minutes)"


@pytest.mark.slow
def test_quick_check_exit_status_is_its_printed_verdict(quick_check) -> None:  # type: ignore[no-untyped-def]
    proc, _, _ = quick_check
    line = _verdict_line(proc.stdout)
    assert line.strip() == "all met" or line.strip().startswith("MISSED: "), line
    missed = line.strip().startswith("MISSED")
    assert proc.returncode == (1 if missed else 0), proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"held-out targets: {'MISSED on' if missed else 'all met'}" in proc.stdout


def _task(bench: ModuleType, name: str, half: str, *, regret: float, ratio: float = 1.0, spread: float = 1.2,
          cost: float = 1.5, adaptive: bool = False, lr_free: float = 1.0) -> dict[str, Any]:
    tests = [{"cost": cost, "confidence": "high", "lr": 0.1, "regret_interp": regret, "reasons": []}] * 2
    return {"task": name, "family": "f", "half": half, "kind": "accuracy", "oracle": 90.0, "oracle_lr": 0.1,
            "known_best": None, "adaptive": adaptive, "tests": tests,
            "default": {"median": 0.1 * ratio, "ratio": ratio, "spread": spread, "metric": 90.0 - regret,
                        "regret": regret},
            "lr_free": {"prodigy": lr_free, "schedulefree": lr_free}, "rules": {"steepest": {"regret": None}}}


def test_failures_is_empty_when_every_held_out_target_is_met(bench: ModuleType) -> None:
    held = [_task(bench, f"t{i}", bench.HELD_OUT, regret=0.2) for i in range(10)]
    calibration = [_task(bench, "c", bench.CALIBRATION, regret=5.0, ratio=9.0, cost=9.0)]  # never judged
    assert bench.failures(held + calibration) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"regret": 2.5}, "regret worse than 2x the tolerance"),
    ({"ratio": 2.0}, "LR ratio outside 0.25-1.5x"),
    ({"ratio": 0.2}, "LR ratio outside 0.25-1.5x"),
    ({"spread": 1.6}, "seed spread over 1.5x"),
    ({"cost": 30.0}, "mean cost"),
    ({"cost": 50.0, "adaptive": True}, "for Adam-like"),
])
def test_failures_names_each_missed_held_out_target(bench: ModuleType, change: dict[str, Any], expected: str) -> None:
    held = [_task(bench, f"t{i}", bench.HELD_OUT, regret=0.2) for i in range(9)]
    held.append(_task(bench, "bad", bench.HELD_OUT, **{"regret": 0.2, **change}))
    assert any(expected in line for line in bench.failures(held)), bench.failures(held)


def test_failures_counts_the_share_within_tolerance_and_the_lr_free_medians(bench: ModuleType) -> None:
    held = [_task(bench, f"t{i}", bench.HELD_OUT, regret=1.5 if i < 2 else 0.2) for i in range(10)]
    assert any("within tolerance on 80%" in line for line in bench.failures(held))
    beaten = [_task(bench, f"t{i}", bench.HELD_OUT, regret=0.5, lr_free=0.1) for i in range(10)]
    assert any("does not beat prodigy" in line for line in bench.failures(beaten))


def test_main_exits_non_zero_with_check_exactly_when_a_target_fails(bench: ModuleType, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    regret = {"now": 0.2}

    def fake_evaluate(task: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _task(bench, task.name, task.half, regret=regret["now"])

    class FakeTask:
        def __init__(self, name: str, half: str) -> None:
            self.name, self.half, self.what, self.cache = name, half, "fake", {}

    monkeypatch.setattr(bench, "all_tasks", lambda *a, **k: [FakeTask(f"t{i}", bench.HELD_OUT) for i in range(3)])
    monkeypatch.setattr(bench, "evaluate_task", fake_evaluate)
    monkeypatch.setattr(bench, "figure", lambda results: (_ for _ in ()).throw(RuntimeError("no figure")))
    for regret["now"], code in ((0.2, 0), (3.0, 1)):
        args = ["--out", str(tmp_path), "--check"]
        assert bench.main(args) == code
        assert bench.main(args[:-1]) == 0  # without --check the verdict is printed, never the exit status
