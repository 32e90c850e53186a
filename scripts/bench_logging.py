"""Benchmark: the cost of per-step metric logging (lrtrack.tracking.runs.TrackedRun.on_step) vs run length.

Every step logs lr, loss and loss_smoothed (3 metrics) through ``TrackedRun.on_step``, as the
range test and the training loop do: one line appended to the job's journal per step (one
``write``: on disk in the page cache before the next step), delivered by the tracker's relay
process; ``Tracker.close()`` then waits until everything is in the store. Backends: sqlite (a
temporary database) and a local ``mlflow server`` (started here on a free port with a temporary
sqlite backend, stopped at the end).

For each backend and run length (default 1,000 and 20,000 steps) it prints, as medians over
``--repeats`` runs:

  on_step     time the training loop spends in ``on_step`` per step (what a step pays)
  total       (loop + close) / steps: wall time per step until every metric is stored
  rss+        peak RSS growth of the job during the run (sampled every 5 ms), MiB
  py peak     tracemalloc peak during the run (a separate, untimed pass), MiB

Logging cost that does not grow with run length means: per-step figures at 20k about equal
to those at 1k, and memory figures that do not scale with the number of steps (nothing is held
in memory: it is in the journal).

``--step-ms`` simulates the training step between calls (a sleep, which releases the GIL as a
torch kernel does); the default 0 is the worst case (the loop produces as fast as it can).

    python scripts/bench_logging.py                         # full: 3 repeats, sqlite + http
    python scripts/bench_logging.py --repeats 1 --steps 1000 20000   # quick (< 2 min)
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_range_test import start_mlflow_server, stop_server  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssSampler:
    """Peak RSS while it runs, sampled by a daemon thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start_rss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per backend and length (default 3)")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 20000], help="run lengths (default 1000 20000)")
    p.add_argument("--backends", nargs="+", default=["sqlite", "http"], choices=["sqlite", "http"])
    p.add_argument("--step-ms", type=float, default=0.0, help="simulated training step between calls (sleep)")
    p.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    p.add_argument("--max-growth", type=float, default=1.5,
                   help="'flat/linear' means the 20k figure is at most this many times the 1k one")
    return p.parse_args(argv)


def one_run(uri: str, workdir: Path, steps: int, args: argparse.Namespace, trace: bool) -> dict[str, float]:
    from lrtrack.tracking.runs import Tracker
    from lrtrack.tracking.store import read_client

    tracker = Tracker(uri, "bench-logging", spool_dir=workdir / "journals", delivery_timeout_s=600)
    run = tracker.start_run(f"bench-logging {steps}")
    gc.collect()
    pause = args.step_ms / 1000.0
    lr, ratio = 1e-3, (10.0 / 1e-3) ** (1.0 / max(steps - 1, 1))
    smoothed = 0.0
    if trace:
        tracemalloc.start()
        tracemalloc.reset_peak()
    in_step = 0.0
    with RssSampler() as rss:
        t0 = time.perf_counter()
        for i in range(steps):
            loss = 2.3 * math.exp(-i / steps) + 0.01 * (i % 7)
            smoothed = 0.95 * smoothed + 0.05 * loss
            metrics = {"lr": lr, "loss": loss, "loss_smoothed": smoothed / (1 - 0.95 ** (i + 1))}
            s0 = time.perf_counter()
            run.on_step(i, metrics)
            in_step += time.perf_counter() - s0
            lr *= ratio
            if pause:
                time.sleep(pause)
        t_loop = time.perf_counter() - t0
        run.end()
        tracker.close()
        t_total = time.perf_counter() - t0
    py_peak = 0
    if trace:
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    stored = len(read_client(uri).get_metric_history(tracker.store_id(run.run_id), "loss"))
    if stored != steps:
        raise RuntimeError(f"{stored} loss values stored, expected {steps}")
    return {
        "on_step_us": 1e6 * in_step / steps,
        "loop_us": 1e6 * t_loop / steps,
        "total_us": 1e6 * t_total / steps,
        "rss_mib": rss.growth / MiB,
        "py_peak_mib": py_peak / MiB,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="lrtrack-bench-logging-"))
    server = None
    rows: dict[tuple[str, int], dict[str, float]] = {}
    try:
        uris = {}
        if "sqlite" in args.backends:
            uris["sqlite"] = f"sqlite:///{workdir / 'bench.db'}"
        if "http" in args.backends:
            print("starting a local mlflow server ...", flush=True)
            server, uris["http"] = start_mlflow_server(workdir)
            print(f"  {uris['http']}", flush=True)
        print(f"step_ms={args.step_ms}, repeats={args.repeats}; 3 metrics per step", flush=True)
        for backend, uri in uris.items():
            one_run(uri, workdir, 200, args, trace=False)  # warm-up: the store, caches, first insert
            for steps in args.steps:
                runs = []
                for _ in range(args.repeats):
                    runs.append(one_run(uri, workdir, steps, args, trace=False))
                row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                row["py_peak_mib"] = float("nan")
                if not args.no_memory:
                    row["py_peak_mib"] = one_run(uri, workdir, steps, args, trace=True)["py_peak_mib"]
                rows[(backend, steps)] = row
                print(f"  {backend:6s} {steps:6d} steps: on_step {row['on_step_us']:6.1f} us  "
                      f"total {row['total_us']:7.1f} us/step  "
                      f"rss+ {row['rss_mib']:6.1f} MiB  py peak {row['py_peak_mib']:6.2f} MiB", flush=True)

        print("\nper step (medians):")
        print(f"  {'backend':7s} {'steps':>6s} {'on_step us':>11s} {'total us':>9s} "
              f"{'rss+ MiB':>9s} {'py peak MiB':>12s}")
        for (backend, steps), r in rows.items():
            print(f"  {backend:7s} {steps:6d} {r['on_step_us']:11.1f} {r['total_us']:9.1f} "
                  f"{r['rss_mib']:9.1f} {r['py_peak_mib']:12.2f}")

        lo, hi = min(args.steps), max(args.steps)
        if lo != hi:
            print(f"\n{hi} vs {lo} steps (target: per-step cost and memory flat, "
                  f"i.e. ratio <= {args.max_growth:g}; memory of a linear buffer would be {hi / lo:.0f}x):")
            met = []
            for backend in uris:
                a, b = rows[(backend, lo)], rows[(backend, hi)]
                keys = [("total_us", "total per step"), ("py_peak_mib", "tracemalloc peak")]
                if args.step_ms > 0:  # at 0 the loop outruns the store and on_step waits (backpressure)
                    keys.insert(0, ("on_step_us", "on_step per step"))
                for key, label in keys:
                    if math.isnan(a[key]) or a[key] <= 0:
                        continue
                    ratio = b[key] / a[key]
                    ok = ratio <= args.max_growth
                    met.append(ok)
                    print(f"  [{'MET ' if ok else 'MISS'}] {backend:6s} {label:18s} {b[key]:9.2f} / {a[key]:9.2f} = {ratio:.2f}")
            print(f"\n{sum(met)}/{len(met)} checks met")
        return 0
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
