"""Benchmark: lrtrack's range test vs torch-lr-finder vs a bare training loop (CPU).

The seed example: MnistCNN, SGD(lr=1e-3, momentum=0.5), NLLLoss, batch 256, 100 steps,
exponential sweep to end_lr=10, on real MNIST. In each repetition every variant runs once, in
a rotated order (so drift and cache effects spread over all of them); the script prints the
median wall time of each variant, the ratios and whether each target of the issue is met.

Variants (all start from the same initial weights and read the same MNIST files):

  lrfinder      torch-lr-finder 0.2.2 ``range_test`` + ``reset()`` over torchvision's MNIST
                Dataset (ToTensor + Normalize) and a DataLoader: what its users write. No tracking.
  bare          a hand-written loop over ``lrtrack.data.InMemoryLoader``: set LR, zero_grad,
                forward, backward, step, ``loss.item()``. No smoothing, no restore, no tracking.
  lrtrack       ``lrtrack.engine.finder.run_range_test`` on the same InMemoryLoader, tracking off.
  lrtrack_sql   the same with a ``TrackedRun`` (sqlite) as observer, as ``lrtrack.app.cli`` does:
                ``start_run`` .. ``run_range_test(observer=run)`` .. ``run.end()`` all timed.
  lrtrack_http  the same against a local ``mlflow server`` (started here, stopped at the end).

The data sets are built inside the timed region of each variant (the MNIST files are decoded
into tensors for lrtrack; torchvision's Dataset object for torch-lr-finder). The divergence stop is
disabled in every variant (``diverge_th`` huge) so all run exactly ``--steps`` steps; the
steps done are checked.

    python scripts/bench_range_test.py                       # full: 7 repetitions
    python scripts/bench_range_test.py --repeats 5 --no-http # quick (< 2 min)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_PROCESS_START = time.perf_counter()  # as early as this script can take it

# No per-run "View run at" lines from MLflow; tqdm bars (ours and torch-lr-finder's) only on --progress.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
if "--progress" not in sys.argv:
    os.environ.setdefault("TQDM_DISABLE", "1")

DEFAULT_ROOT = "/work/shared/data/mnist-t10k-split"
NO_DIVERGE = 1e30  # diverge_th that never triggers: every variant runs exactly --steps steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="repetitions (medians need >= 5; default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default 100)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for every variant (default 1: steadier on a shared 2-core box)")
    p.add_argument("--progress", action="store_true", help="let the engine show its tqdm bar (on a terminal)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="torchvision MNIST root (has MNIST/raw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-http", action="store_true", help="skip the mlflow-server variant")
    p.add_argument("--no-lrfinder", action="store_true", help="skip the torch-lr-finder variant")
    p.add_argument("--profile", metavar="FILE", help="cProfile one extra lrtrack_sql run into FILE and print the top")
    p.add_argument("--keep", action="store_true", help="keep the temporary MLflow folder")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A local ``mlflow server`` on a free port with a temporary sqlite backend."""
    port = free_port()
    db = workdir / "server.db"
    art = workdir / "server-artifacts"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--host", "127.0.0.1",
           "--port", str(port), "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", str(art), "--workers", "1"]
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {workdir / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError("mlflow server did not come up in 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers only
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- variants


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, http_uri: str | None) -> None:
        import torch

        self.workdir = workdir
        from lrtrack.engine.models import MnistCNN

        self.args = args
        self.torch = torch
        torch.manual_seed(args.seed)
        self.init_state = {k: v.clone() for k, v in MnistCNN().state_dict().items()}
        self.trackers: dict[str, object] = {}
        self.tracker_setup_s: dict[str, float] = {}
        self.add_tracker("sql", f"sqlite:///{workdir / 'bench.db'}")
        if http_uri:
            self.add_tracker("http", http_uri)
        self.rep = 0
        # At LRs near 10 the loss can turn NaN; torch-lr-finder and the bare loop go on, so
        # lrtrack must too (same number of steps) where its engine has the switch.
        import inspect

        from lrtrack.engine.finder import run_range_test

        params = inspect.signature(run_range_test).parameters
        self.no_stop = {"stop_on_non_finite": False} if "stop_on_non_finite" in params else {}

    def add_tracker(self, key: str, uri: str) -> None:
        from lrtrack.tracking.runs import Tracker

        t0 = time.perf_counter()
        self.trackers[key] = Tracker(uri, "bench-range-test", spool_dir=self.workdir / "journals")
        self.tracker_setup_s[key] = time.perf_counter() - t0

    def model_and_optimizer(self):
        from lrtrack.engine.models import MnistCNN

        model = MnistCNN()
        model.load_state_dict(self.init_state)
        opt = self.torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.5)
        return model, opt

    def in_memory_loader(self):
        from lrtrack.data import InMemoryLoader, mnist_tensors

        x, y = mnist_tensors(self.args.root, train=True, download=False)
        return InMemoryLoader(x, y, self.args.batch_size, shuffle=True, seed=self.args.seed + self.rep)

    # ---- the variants: each returns the number of optimizer steps it did

    def run_lrfinder(self) -> int:
        from torch.utils.data import DataLoader
        from torch_lr_finder import LRFinder

        from lrtrack.data import mnist_dataset

        ds = mnist_dataset(self.args.root, train=True, download=False)
        loader = DataLoader(ds, batch_size=self.args.batch_size, shuffle=True,
                            generator=self.torch.Generator().manual_seed(self.args.seed + self.rep))
        model, opt = self.model_and_optimizer()
        finder = LRFinder(model, opt, self.torch.nn.NLLLoss(), device="cpu")
        finder.range_test(loader, end_lr=self.args.end_lr, num_iter=self.args.steps, step_mode="exp",
                          diverge_th=NO_DIVERGE)
        steps = len(finder.history["lr"])
        finder.reset()
        return steps

    def run_bare(self) -> int:
        from lrtrack.engine.finder import lr_grid

        loader = self.in_memory_loader()
        model, opt = self.model_and_optimizer()
        criterion = self.torch.nn.NLLLoss()
        grid = lr_grid(1e-3, self.args.end_lr, self.args.steps, "exp")
        losses: list[float] = []
        group = opt.param_groups[0]
        model.train()
        it = iter(loader)
        for lr in grid:
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return len(losses)

    def run_lrtrack(self, tracker_key: str | None = None) -> int:
        from lrtrack.engine.finder import run_range_test

        loader = self.in_memory_loader()
        model, opt = self.model_and_optimizer()
        run = None
        if tracker_key is not None:
            run = self.trackers[tracker_key].start_run(f"bench {tracker_key} rep {self.rep}")
        result = run_range_test(model, opt, loader, criterion=self.torch.nn.NLLLoss(),
                                end_lr=self.args.end_lr, num_iter=self.args.steps, step_mode="exp",
                                diverge_th=NO_DIVERGE, device="cpu", observer=run, progress=self.args.progress,
                                probe_steps=0, **self.no_stop)  # the sweep alone, as torch-lr-finder runs it
        if run is not None:
            run.end("FINISHED")
        return result.steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats < 1:
        sys.exit("--repeats must be >= 1")
    t_imports0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t_torch = time.perf_counter() - t_imports0

    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run at" lines per run
    workdir = Path(tempfile.mkdtemp(prefix="lrtrack-bench-"))
    server = None
    http_uri = None
    try:
        bench = Bench(args, workdir, None)
        variants: dict[str, callable] = {}
        if not args.no_lrfinder:
            variants["lrfinder"] = bench.run_lrfinder
        variants["bare"] = bench.run_bare
        variants["lrtrack"] = bench.run_lrtrack
        variants["lrtrack_sql"] = lambda: bench.run_lrtrack("sql")

        # Time to the first training step of this process: the imports, the data, the model,
        # the tracker, the run and the engine's set-up, measured by a one-step lrtrack_sql run.
        first_step = {}

        class _FirstStep:
            def on_step(self, step, metrics):
                first_step.setdefault("t", time.perf_counter())

        from lrtrack.engine.finder import run_range_test
        from lrtrack.engine.observers import ObserverGroup

        t0 = time.perf_counter()
        loader = bench.in_memory_loader()
        model, opt = bench.model_and_optimizer()
        run = bench.trackers["sql"].start_run("bench first step")
        run_range_test(model, opt, loader, criterion=torch.nn.NLLLoss(), end_lr=args.end_lr, num_iter=2,
                       device="cpu", observer=ObserverGroup([_FirstStep(), run]), progress=False, probe_steps=0)
        run.end()
        first_step_s = first_step["t"] - T_PROCESS_START
        first_step_local_s = first_step["t"] - t0

        if not args.no_http:
            print("starting a local mlflow server ...", flush=True)
            t0 = time.perf_counter()
            server, http_uri = start_mlflow_server(workdir)
            print(f"  {http_uri} up in {time.perf_counter() - t0:.1f} s", flush=True)
            bench.add_tracker("http", http_uri)
            variants["lrtrack_http"] = lambda: bench.run_lrtrack("http")

        names = list(variants)
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        total = args.warmup + args.repeats
        print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, steps={args.steps}, "
              f"batch={args.batch_size}, repeats={args.repeats} (+{args.warmup} warm-up)", flush=True)
        for rep in range(total):
            bench.rep = rep
            order = names[rep % len(names):] + names[: rep % len(names)]  # rotate
            line = []
            for name in order:
                c0 = time.process_time()
                t0 = time.perf_counter()
                steps = variants[name]()
                dt = time.perf_counter() - t0
                dc = time.process_time() - c0
                if steps != args.steps:  # stopped early on a NaN loss: compare per step
                    print(f"  note: {name} did {steps} of {args.steps} steps; its time is scaled per step")
                    dt, dc = dt * args.steps / steps, dc * args.steps / steps
                if rep >= args.warmup:
                    times[name].append(dt)
                    cpu[name].append(dc)
                line.append(f"{name}={dt:.3f}s")
            tag = "warm-up" if rep < args.warmup else f"rep {rep - args.warmup + 1}"
            print(f"  {tag:8s} " + "  ".join(line), flush=True)

        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            bench.run_lrtrack("sql")
            prof.disable()
            prof.dump_stats(args.profile)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)

        med = {n: median(v) for n, v in times.items()}
        med_cpu = {n: median(v) for n, v in cpu.items()}
        print("\nmedian wall time per run (s), per step (ms), and this process's CPU time per run (s):")
        for n in names:
            print(f"  {n:13s} {med[n]:7.3f} s   {1000 * med[n] / args.steps:6.2f} ms/step   "
                  f"(min {min(times[n]):.3f}, max {max(times[n]):.3f})   cpu {med_cpu[n]:.3f} s")
        print(f"\nprocess start -> first training step: {first_step_s:.2f} s "
              f"(imports of torch {t_torch:.2f} s; data+model+run+engine set-up {first_step_local_s:.2f} s)")
        print("tracker set-up (experiment look-up, once per process): "
              + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in bench.tracker_setup_s.items()))

        results = []

        def target(label: str, a: str, b: str, limit: float) -> None:
            value = med[a] / med[b]
            ok = value <= limit
            results.append(ok)
            print(f"  [{'MET ' if ok else 'MISS'}] {label}: {value:.3f} (target <= {limit:.2f})"
                  f"   [cpu {med_cpu[a] / med_cpu[b]:.3f}]")

        print("\nratios of median wall times (CPU-time ratio in brackets, a cross-check on a busy box):")
        if "lrfinder" in med:
            target("1. lrtrack+sqlite / torch-lr-finder", "lrtrack_sql", "lrfinder", 0.60)
            print(f"         (lrtrack no tracking / torch-lr-finder: {med['lrtrack'] / med['lrfinder']:.3f})")
        target("2a. lrtrack (tracking off) / bare loop", "lrtrack", "bare", 1.05)
        target("2b. lrtrack+sqlite / bare loop", "lrtrack_sql", "bare", 1.10)
        if "lrtrack_http" in med:
            target("2c. lrtrack+http / lrtrack+sqlite", "lrtrack_http", "lrtrack_sql", 1.10)
            print(f"         (lrtrack+http / bare loop: {med['lrtrack_http'] / med['bare']:.3f})")
        print(f"\n{sum(results)}/{len(results)} targets met")
        return 0
    finally:
        if server is not None:
            stop_server(server)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
