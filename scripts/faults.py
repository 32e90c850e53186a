"""Faults against real processes: signals, secrets, full or unwritable folders and failing sweeps. Each case says what it does, what
should happen and what did, PASS or FAIL; the script exits 1 when any case fails.

Every case runs ``python -m lrtrack +model=mnist_cnn +experiment=smoke ...`` (or ``lrtrack.report``)
in a fresh folder with a premade sqlite store, reads the runs back with ``MlflowClient`` and looks
at the files the job left. Signals are sent when the stage's marker appears in the job's output;
full disks are small tmpfs mounts (root only: those cases are SKIPped elsewhere).

    .venv/bin/python scripts/faults.py              # about 3 min on 2 cores
    .venv/bin/python scripts/faults.py -k signal    # only the cases whose name contains it
    .venv/bin/python scripts/faults.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = ["+model=mnist_cnn", "+experiment=smoke"]
TRAIN = [*BASE, "stage=train", "bounds.max_lr=0.05"]
LONG_TRAIN = [*TRAIN, "train.epochs=50", "data.fake_size=2048"]
STOP_WITHIN_S = 5.0


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    out.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return out


class Job:
    """``python -m lrtrack ARGS`` in ``folder``, its output read line by line."""

    def __init__(self, args: list[str], folder: Path, module: str = "lrtrack", **extra_env: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=folder, env=env(**extra_env),
                                     text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            self.seen.append(line)
            if re.search(pattern, line):
                return True
        return False

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:  # the relay may hold the output pipe open while it delivers on, after the job ended
            while (line := self.lines.get(timeout=5)) is not None:
                self.seen.append(line)
        except queue.Empty:
            pass
        return self.proc.returncode, "".join(self.seen)

    def stop(self, signum: int, then: float = 0.0) -> tuple[int, str, float]:
        """Send ``signum`` (and, ``then`` s later, again when ``then`` > 0); the exit code, output, seconds."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        if then:
            time.sleep(then)
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - start  # the job's own exit (its relay may deliver on, holding the pipe)
        code, out = self.finish(timeout=60)
        return code, out, took


def run(args: list[str], folder: Path, module: str = "lrtrack", **extra_env: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=folder, env=env(**extra_env),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def premade(folder: Path) -> Path:
    from tests.conftest import _make_store

    folder.mkdir(parents=True, exist_ok=True)
    _make_store(folder / "mlflow.db")
    return folder


def runs_ended(folder: Path, timeout: float = 60) -> list[Any]:
    """The store's runs once none is RUNNING (or after ``timeout``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    deadline = time.monotonic() + timeout
    while True:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if (runs and all(r.info.status != "RUNNING" for r in runs)) or time.monotonic() > deadline:
            return runs
        time.sleep(0.3)


def statuses(runs: list[Any]) -> str:
    return ", ".join(f"{r.data.tags.get('lrtrack.stage', '?')}={r.info.status}" for r in runs) or "no runs"


def failed_runs_verdict(code: int | None, err: str, runs: list[Any], *, folder_named: str, tag_says: str) -> Result:
    """A write that failed: exit 1, one error line naming the folder, no traceback, every run FAILED
    with an lrtrack.error tag that says why."""
    lines = error_lines(err)
    tagged = bool(runs) and all(tag_says in r.data.tags.get("lrtrack.error", "") for r in runs)
    ok = (code == 1 and len(lines) == 1 and folder_named in lines[0] and "Traceback" not in err
          and {r.info.status for r in runs} == {"FAILED"} and tagged)
    return Result(ok, f"exit {code}, runs {statuses(runs)}, lrtrack.error tags: {tagged}, {len(lines)} error "
                      f"line(s): {(lines or [''])[-1][:150]}")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("lrtrack: error:")]


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path | None]:
    folder.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@dataclass
class Result:
    ok: bool | None  # None: skipped
    actual: str


@dataclass
class Case:
    name: str
    does: str
    expected: str
    check: Callable[[Path], Result]


# --------------------------------------------------------------------------- signals


def signal_case(extra: list[str], marker: str, signum: int, delay: float = 0.0, again: float = 0.0,
                allow_finished: bool = False, expect_stages: set[str] | None = None,
                children_too: bool = False) -> Callable[[Path], Result]:
    def check(folder: Path) -> Result:
        premade(folder)
        flags = [a for a in extra if a == "-m"]  # Hydra's flags before the overrides
        job = Job([*flags, *BASE, *[a for a in extra if a != "-m"]], folder)
        if not job.wait_for(marker):
            code, out = job.finish(60)
            return Result(False, f"marker {marker!r} never appeared (exit {code}): {out[-300:]}")
        time.sleep(delay)
        if children_too:  # as a cluster does: every process of the job (its own-session relay is not one)
            for pid in Path(f"/proc/{job.proc.pid}/task/{job.proc.pid}/children").read_text().split():
                os.kill(int(pid), signum)
        code, out, took = job.stop(signum, again)
        runs = runs_ended(folder)
        if expect_stages and {r.data.tags.get("lrtrack.stage") for r in runs} < expect_stages:
            time.sleep(15)  # the jobs' journals are delivered after the job exited
            runs = runs_ended(folder)
        states = {r.info.status for r in runs}
        lines = error_lines(out)
        stages_ok = not expect_stages or {r.data.tags.get("lrtrack.stage") for r in runs} >= expect_stages
        killed = bool(runs) and states == {"KILLED"} and stages_ok
        finished_ok = allow_finished and code in (0, 130) and states <= {"FINISHED", "KILLED"}
        ok = ((code == 130 and killed) or finished_ok) and took < STOP_WITHIN_S and "Traceback" not in out
        resume = " (resume command printed)" if "train.resume=" in " ".join(lines) else ""
        tail = "" if ok else f"\n  output's end: {out[-600:]}"
        return Result(ok, f"exit {code} in {took:.1f} s, runs {statuses(runs)}, {len(lines)} error line(s){resume}: "
                          f"{(lines or [''])[-1][:160]}{tail}")
    return check


SIGNAL_CASES = [
    Case("signal: SIGTERM in the sweep", "SIGTERM 0.5 s into the range test's sweep (100000 steps)",
         "exit 130 within 5 s, every run KILLED",
         signal_case(["finder.num_iter=100000", "finder.end_lr=0.002"], r"range test: \d+ steps from",
                     signal.SIGTERM, 0.5)),
    Case("signal: SIGTERM in the repeats", "optimizer=adam (2 repeats); SIGTERM as the second repeat starts",
         "exit 130 within 5 s, every run KILLED (no training)",
         signal_case(["optimizer=adam", "finder.num_iter=400", "finder.end_lr=0.01", "finder.probe_steps=4"],
                     r"repeat 1: ", signal.SIGTERM)),
    Case("signal: Ctrl-C in the probes", "SIGINT 0.3 s into a 5000-step confirmation probe",
         "exit 130 within 5 s, every run KILLED (no training)",
         signal_case(["finder.num_iter=60", "finder.end_lr=1", "finder.probe_steps=5000"],
                     r"confirmation probes: ", signal.SIGINT, 0.3)),
    Case("signal: two SIGTERMs in the probes", "SIGTERM, and another 0.2 s later, in a confirmation probe",
         "exit 130 (not 2) within 5 s, every run KILLED",
         signal_case(["finder.num_iter=60", "finder.end_lr=1", "finder.probe_steps=5000"],
                     r"confirmation probes: ", signal.SIGTERM, 0.3, again=0.2)),
    Case("signal: Ctrl-C in training", "SIGINT after the first of 50 epochs",
         "exit 130 within 5 s, the run KILLED, the resume command printed",
         signal_case(LONG_TRAIN[2:], r"epoch 1/50: ", signal.SIGINT)),
    Case("signal: SIGTERM to the job and its DataLoader workers", "SIGTERM to the job and every child (2 "
         "DataLoader workers, the relay) after epoch 1, as a cluster's preemption does",
         "exit 130 within 5 s, the run KILLED, no 'worker killed' traceback",
         signal_case([*LONG_TRAIN[2:], "data.in_memory=false", "+data.num_workers=2"], r"epoch 1/50: ",
                     signal.SIGTERM, 0.3, children_too=True)),
    Case("signal: SIGTERM in delivery", "SIGTERM as the job logs 'training done' and waits for its runs' delivery",
         "exit 130 (or 0 when delivery was already over) within 5 s; the run KILLED (or FINISHED when it had "
         "ended), none RUNNING",
         signal_case(TRAIN[2:], r"training done", signal.SIGTERM, allow_finished=True)),
    Case("signal: SIGTERM in a sweep's job", "-m seed=0,1; SIGTERM 0.5 s into job 0's range test",
         "exit 130 within 5 s; the sweep run and job 0's runs KILLED; job 1 never starts",
         signal_case(["-m", "finder.num_iter=100000", "finder.end_lr=0.002", "seed=0,1"],
                     r"range test: \d+ steps from", signal.SIGTERM, 0.5)),
    Case("signal: SIGTERM in a joblib sweep", "-m seed=0,1 hydra/launcher=joblib n_jobs=2; SIGTERM 1 s into "
         "the range tests (joblib SIGKILLs its workers and their relays)",
         "exit 130 within 5 s; the sweep run and both jobs' runs KILLED (their journals delivered afterwards)",
         signal_case(["-m", "finder.num_iter=100000", "finder.end_lr=0.002", "seed=0,1", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2"], r"range test: \d+ steps from", signal.SIGTERM, 1.0,
                     expect_stages={"sweep", "pipeline", "explore"})),
]


# --------------------------------------------------------------------------- secrets

SECRET_MODEL = '''
from lrtrack.engine.models import MnistCNN

class Net(MnistCNN):
    def __init__(self, api_key: str = "", db_password: str = "", **kw):
        super().__init__(**kw)
'''


def leaks(folder: Path, secrets: list[str], texts: list[str]) -> list[str]:
    """Where any of ``secrets`` shows: the output, the store's params, tags and config artifacts, the files."""
    found = [f"output: {s}" for s in secrets for t in texts if s in t]
    if (folder / "mlflow.db").is_file():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            record = json.dumps([r.data.params, r.data.tags, r.info.run_name])
            found += [f"run {r.info.run_name}: {s}" for s in secrets if s in record]
            for path in ("config/resolved.yaml", "config/hydra_overrides.yaml"):
                try:
                    local = Path(client.download_artifacts(r.info.run_id, path, tempfile.mkdtemp()))
                except Exception:
                    continue
                found += [f"{path}: {s}" for s in secrets if s in local.read_text()]
    for path in folder.rglob("*"):
        if path.is_file() and path.name != "mlflow.db" and "mlruns" not in path.parts:
            data = path.read_bytes()
            found += [f"{path.relative_to(folder)}: {s}" for s in secrets if s.encode() in data]
    return found


def secret_uri(folder: Path) -> Result:
    secret = "p@ss@w0rd-7Q"
    code, out, err = run([*BASE, f"tracking.tracking_uri=http://bob:{secret}@127.0.0.1:1"], folder)
    found = leaks(folder, [secret, "w0rd-7Q"], [out, err])
    lines = error_lines(err)
    ok = code == 2 and len(lines) == 1 and "http://***@127.0.0.1:1" in lines[0] and not found
    return Result(ok, f"exit {code}, {len(lines)} error line(s), leaks: {found or 'none'}: {(lines or [''])[-1][:140]}")


def secret_settings(folder: Path) -> Result:
    premade(folder)
    (folder / "secretmodel.py").write_text(SECRET_MODEL)
    token, password = "tok-ENV-5be1f0", "pw-SET-c72d"
    code, out, err = run([*TRAIN, "model._target_=secretmodel.Net", "+model.api_key=${oc.env:FAULTS_TOKEN}",
                          f"+model.db_password={password}"], folder, FAULTS_TOKEN=token)
    runs = runs_ended(folder)
    found = leaks(folder, [token, password], [out, err])
    masked = bool(runs) and all(r.data.params.get("model.api_key") == "***" for r in runs)
    ok = code == 0 and masked and not found
    return Result(ok, f"exit {code}, runs {statuses(runs)}, model.api_key param masked: {masked}, "
                      f"leaks: {found or 'none'}")


def secret_modes(folder: Path) -> Result:
    """kill -9 the job and its relay mid-training: the journal stays; its folder and files are private."""
    premade(folder)
    spool = folder / "my-spool"
    job = Job([*LONG_TRAIN, f"tracking.spool_dir={spool}"], folder)
    if not job.wait_for(r"epoch 1/50: "):
        return Result(False, "training never reached epoch 1")
    children = Path(f"/proc/{job.proc.pid}/task/{job.proc.pid}/children").read_text().split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    job.proc.kill()
    job.finish(30)
    modes = {str(p.relative_to(folder)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [spool, *spool.rglob("*")]}
    output = next(folder.glob("outputs/*/*"))
    modes.update({str(p.relative_to(folder)): oct(stat.S_IMODE(p.stat().st_mode))
                  for p in [*output.glob("*.log"), *output.glob(".hydra/*"), *output.glob("checkpoints/*.pt")]})
    wrong = {p: m for p, m in modes.items() if m != ("0o700" if (folder / p).is_dir() else "0o600")}
    ok = len(modes) > 6 and not wrong
    return Result(ok, f"{len(modes)} paths checked (spool, journal, ops, checkpoint, log, saved config); "
                      f"not private: {wrong or 'none'}")


SECRET_CASES = [
    Case("secret: a password with @ in the tracking URI", "tracking.tracking_uri=http://bob:p@ss@w0rd-7Q@127.0.0.1:1",
         "exit 2, one line showing http://***@127.0.0.1:1; no part of the password in the output or any file",
         secret_uri),
    Case("secret: oc.env token and a password setting", "+model.api_key=${oc.env:FAULTS_TOKEN} "
         "+model.db_password=pw-SET-c72d (a user model taking both); a training run",
         "exit 0; neither value in params, tags, config artifacts, output, logs, saved config or any file",
         secret_settings),
    Case("secret: private files", "tracking.spool_dir=my-spool; kill -9 the job and its relay in training",
         "the spool and journal folders 0700; journal files, checkpoint, log and saved config 0600", secret_modes),
]


# --------------------------------------------------------------------------- files and full disks


def full_output(size: str, extra: list[str]) -> Callable[[Path], Result]:
    def check(folder: Path) -> Result:
        premade(folder)
        with tmpfs(folder / "small-disk", size) as disk:
            if disk is None:
                return Result(None, "cannot mount a tmpfs here (needs root)")
            code, out, err = run([*extra, f"hydra.run.dir={disk}/run"], folder)
            runs = runs_ended(folder)
        return failed_runs_verdict(code, err, runs, folder_named=str(disk), tag_says="full")
    return check


def full_at_start(folder: Path) -> Result:
    premade(folder)
    with tmpfs(folder / "full-disk", "8k") as disk:
        if disk is None:
            return Result(None, "cannot mount a tmpfs here (needs root)")
        try:
            with open(disk / "filler", "wb") as fh:  # fill it
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        except OSError:
            pass
        code, out, err = run([*BASE, f"hydra.run.dir={disk}/run"], folder)
    lines = error_lines(err)
    ok = code == 1 and len(lines) == 1 and str(disk) in lines[0] and "Traceback" not in err
    return Result(ok, f"exit {code}, {len(lines)} error line(s): {(lines or [''])[-1][:150]}")


def bad_checkpoint(folder: Path) -> Result:
    premade(folder)
    code, _, err = run(TRAIN, folder)
    (final,) = runs_ended(folder)
    stored = Path(final.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "last.pt"
    stored.write_bytes(stored.read_bytes()[:1000])
    code, out, err = run([*TRAIN, f"train.resume={final.info.run_id}"], folder)
    (after,) = runs_ended(folder)
    lines = error_lines(err)
    ok = code == 2 and len(lines) == 1 and "cannot be loaded" in lines[0] and after.info.status == "FINISHED" \
        and "Traceback" not in err
    return Result(ok, f"exit {code}, the run {after.info.status}, {len(lines)} error line(s): "
                      f"{(lines or [''])[-1][:150]}")


def report_on_a_file(folder: Path) -> Result:
    premade(folder)
    (folder / "taken").write_text("a file")
    code, out, err = run(["lrtrack-mnist_cnn", "--out", "taken"], folder, module="lrtrack.report")
    lines = error_lines(err)
    ok = code == 2 and len(lines) == 1 and "is a file" in lines[0] and "Traceback" not in err
    return Result(ok, f"exit {code}, {len(lines)} error line(s): {(lines or [''])[-1][:150]}")


def unwritable_checkpoints(read_only: bool) -> Callable[[Path], Result]:
    """The output folder's checkpoints/ is a file, or a read-only tmpfs: not a full disk."""
    def check(folder: Path) -> Result:
        premade(folder)
        checkpoints = folder / "out" / "checkpoints"
        checkpoints.parent.mkdir(parents=True)
        mounted = False
        if read_only:
            checkpoints.mkdir()
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(checkpoints)],
                                     capture_output=True).returncode == 0
            if not mounted:
                return Result(None, "cannot mount a read-only tmpfs here (needs root)")
        else:
            checkpoints.write_text("a file")
        try:
            code, out, err = run([*TRAIN, f"hydra.run.dir={folder}/out"], folder)
            runs = runs_ended(folder)
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(checkpoints)], check=False)
        return failed_runs_verdict(code, err, runs, folder_named=str(checkpoints), tag_says="cannot write the checkpoint")
    return check


DISK_CASES = [
    Case("disk: output folder full at a checkpoint", "stage=train, 3 epochs, hydra.run.dir on a 300 kB tmpfs",
         "exit 1, one line naming the folder, every run FAILED with an lrtrack.error tag",
         full_output("300k", [*TRAIN, "train.epochs=3", "data.fake_size=2048"])),
    Case("disk: output folder full at the range test's plots", "range test + training, hydra.run.dir on a 120 kB tmpfs",
         "exit 1, one line naming the folder, every run FAILED with an lrtrack.error tag", full_output("120k", BASE)),
    Case("disk: output folder full before the job starts", "hydra.run.dir on a full 8 kB tmpfs (Hydra saves "
         "the config there first)", "exit 1, one line naming the folder, no traceback", full_at_start),
    Case("disk: resume from a truncated checkpoint", "train, truncate the stored last.pt, train.resume=<run>",
         "exit 2, one line, the run stays FINISHED", bad_checkpoint),
    Case("disk: report --out naming a file", "python -m lrtrack.report lrtrack-mnist_cnn --out <a file>",
         "exit 2, one line", report_on_a_file),
    Case("disk: a file where the checkpoints folder should be", "stage=train, <output>/checkpoints made a file",
         "exit 1, one line naming the folder, the run FAILED with an lrtrack.error tag",
         unwritable_checkpoints(read_only=False)),
    Case("disk: a read-only checkpoints folder", "stage=train, <output>/checkpoints a read-only tmpfs (EROFS)",
         "exit 1, one line naming the folder, the run FAILED with an lrtrack.error tag",
         unwritable_checkpoints(read_only=True)),
]


# --------------------------------------------------------------------------- sweeps

SWEEP_FAST = ["+model=mlp", "data=fake", "data.fake_size=256", "train.epochs=1", "finder.num_iter=10",
              "finder.end_lr=1", "progress=false", "train.checkpoint=false"]


def sweep_all_failed(tracking: bool) -> Callable[[Path], Result]:
    """-m seed=0,1 with model.num_classes=3: every job fails its first-batch check."""
    def check(folder: Path) -> Result:
        premade(folder)
        code, out, err = run(["-m", *SWEEP_FAST, "model.num_classes=3", "seed=0,1", f"tracking.enabled={tracking}"],
                             folder)
        lines = error_lines(err)
        ok = code == 1 and len(lines) == 1 and "2 sweep job(s) failed" in lines[0] and "Traceback" not in err \
            and "UserWarning" not in err
        return Result(ok, f"exit {code}, {len(lines)} error line(s): {(lines or [''])[-1][:150]}")
    return check


SWEEP_CASES = [
    Case("sweep: every job fails", "-m seed=0,1 model.num_classes=3 (each job fails its first-batch check)",
         "exit 1, one line counting the failed jobs", sweep_all_failed(True)),
    Case("sweep: every job fails, tracking off", "the same with tracking.enabled=false (no store to count them in)",
         "exit 1, one line counting the failed jobs", sweep_all_failed(False)),
]
CASES = [*SIGNAL_CASES, *SECRET_CASES, *DISK_CASES, *SWEEP_CASES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="keyword", default=None, help="only the cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases without running them")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.keyword is None or args.keyword in c.name]
    results = []
    for case in cases:
        print(f"{case.name}\n  does:     {case.does}\n  expected: {case.expected}", flush=True)
        if args.list:
            continue
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lrtrack-faults-") as tmp:
            try:
                result = case.check(Path(tmp))
            except Exception as err:  # the case itself broke: a FAIL, with what broke
                result = Result(False, f"the case raised {type(err).__name__}: {err}")
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[result.ok]
        print(f"  actual:   {result.actual}\n  {mark} ({time.monotonic() - start:.0f} s)\n", flush=True)
        results.append(result.ok)
    if args.list:
        print(f"{len(cases)} cases")
        return 0
    print(f"{results.count(True)} PASS, {results.count(False)} FAIL, {results.count(None)} SKIP of {len(results)}")
    return 1 if False in results else 0


if __name__ == "__main__":
    raise SystemExit(main())
