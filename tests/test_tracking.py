"""The tracking package end to end: pre-flight, the store template, and runs logged through a
:class:`~lrtrack.tracking.runs.Tracker` (the job's journal) and delivered by its relay process or
by ``python -m lrtrack.deliver``.

Everything runs against real MLflow stores (sqlite files), real processes (the relay, a job killed
with SIGKILL) and real, refused connections (a port nothing listens on); nothing mocks MLflow.
A store "away" is a real one: a port nothing listens on, or an sqlite store whose folder is made
read-only. The journal's format and the drain's rules, one by one, are in test_journal.py; a real
``mlflow server`` killed mid-run is in test_faults_tracking.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lrtrack.tracking.deliver import deliver_journal, main
from lrtrack.tracking.drain import STOP_REASON_TAG, Control, drain, find_run_id
from lrtrack.tracking.journal import (
    FILES,
    META,
    OPS,
    RUN_ID_TAG,
    DeliveryError,
    Journal,
    JournalError,
    find_journals,
)
from lrtrack.tracking.runs import TrackedRun, Tracker
from lrtrack.tracking.store import HTTP_LIMITS, TrackingUnavailable, open_store, preflight
from tests.conftest import ROOT, clean_env, free_port


def _fails_fast(uri: str, timeout_s: float = 10.0) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as info:
        preflight(uri, timeout_s=timeout_s)
    message = str(info.value)
    assert "\n" not in message
    return message, time.monotonic() - start


# ---------------------------------------------------------------------- pre-flight



def test_preflight_names_the_allowed_forms_for_an_unsupported_scheme() -> None:
    message, took = _fails_fast("garbage://x")
    assert took < 1
    assert "'garbage://x' is not supported" in message
    assert "sqlite:////" in message and "http://host:port" in message and "tracking.tracking_uri" in message


def test_preflight_says_which_setting_to_fix_when_the_uri_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "garbage://x")
    message, _ = _fails_fast("garbage://x")
    assert "MLFLOW_TRACKING_URI" in message


def test_preflight_unreachable_server_fails_within_a_second() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    message, took = _fails_fast(uri)
    assert took < 1.5, took
    assert f"nothing answers at tracking server {uri} (connection refused)" in message
    assert "mlflow server --host 127.0.0.1" in message and "tracking.enabled=false" in message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_preflight_server_that_never_answers_is_bounded_by_the_timeout(silent_server: str) -> None:
    message, took = _fails_fast(silent_server, timeout_s=2.0)
    assert took < 3.0, took
    assert "did not answer within" in message


def test_preflight_masks_credentials_in_the_uri() -> None:
    message, _ = _fails_fast(f"http://alice:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in message and "***@127.0.0.1" in message


def test_preflight_missing_folder(tmp_path: Path) -> None:
    message, took = _fails_fast(f"sqlite:///{tmp_path}/nope/mlflow.db")
    assert took < 1 and f"the folder {tmp_path}/nope does not exist" in message and "mkdir -p" in message


def make_read_only(folder: Path) -> None:
    """Nobody may create a file in ``folder``: chmod for a user, ``chattr +i`` for root (which
    ignores modes). Skips the test where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not available: cannot make a read-only folder")


def make_writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=True, capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    make_read_only(folder)
    try:
        yield folder
    finally:
        make_writable(folder)


def test_preflight_read_only_folder_fails_at_once(read_only_folder: Path) -> None:
    message, took = _fails_fast(f"sqlite:///{read_only_folder}/mlflow.db")
    assert took < 1, took
    assert f"cannot write in {read_only_folder}" in message and "make it writable" in message


def test_a_tracker_whose_journal_folder_is_read_only_fails_at_once(read_only_folder: Path, tmp_path: Path) -> None:
    """The job's side of "cannot write": the journal, not the store (which only the relay opens)."""
    with pytest.raises(JournalError) as info:
        Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x", spool_dir=read_only_folder)
    message = str(info.value)
    assert "\n" not in message and f"tracking.spool_dir={str(read_only_folder)!r}" in message
    assert "cannot create the tracking journal there" in message and "set tracking.spool_dir to a writable" in message
    assert not (tmp_path / "mlflow.db").exists()


def test_preflight_rejects_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("hello, I am not sqlite")
    message, _ = _fails_fast(f"sqlite:///{tmp_path}/notes.db")
    assert "is not an SQLite database" in message


def test_preflight_rejects_a_file_store_and_suggests_sqlite(tmp_path: Path) -> None:
    message, _ = _fails_fast(str(tmp_path / "mlruns"))
    assert "file store" in message and f"sqlite:///{tmp_path}/mlruns/mlflow.db" in message


def test_preflight_accepts_a_new_and_an_existing_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    preflight(uri)
    assert not (tmp_path / "mlflow.db").exists()  # checks, creates nothing
    open_store(uri)
    preflight(uri)


def test_importing_changes_no_environment_and_opening_a_server_bounds_http_retries_unless_set() -> None:
    code = ("import os, sys, json; before = dict(os.environ); import lrtrack.tracking.runs; "
            "assert 'mlflow' not in sys.modules, 'the job side imported MLflow'; "
            "import lrtrack.tracking.store as s; "
            "assert dict(os.environ) == before, 'import changed the environment'; "
            "s.open_store('http://127.0.0.1:9'); "
            "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('MLFLOW_HTTP')}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=clean_env(MLFLOW_HTTP_REQUEST_TIMEOUT="99"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "99"}  # the user's own value wins


def test_delivery_timeout_is_validated() -> None:
    from tests.conftest import composed, errors_of

    assert composed().tracking.delivery_timeout_s == 60.0
    assert any(line.startswith("tracking.delivery_timeout_s=-1.0 is invalid")
               for line in errors_of(composed("tracking.delivery_timeout_s=-1")))


# ---------------------------------------------------------------------- runs in a store that answers

# ---------------------------------------------------------------------- helpers


class Live(Control):
    """The drain's view while the job still writes (the relay's, before ``close``)."""

    def complete(self) -> bool:
        return False


def _history(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _runs(client: Any, experiment: str) -> dict[str, Any]:
    """The experiment's runs by name (each name once)."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in the store"
    runs = client.search_runs([found.experiment_id], max_results=100)
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == len(runs), f"a run was created twice: {sorted(r.info.run_name for r in runs)}"
    return by_name


def _relay(tracker: Tracker) -> subprocess.Popen[bytes]:
    assert tracker._relay is not None, "the tracker started no relay"
    return tracker._relay


def _wait_delivered(tracker: Tracker, timeout: float = 90.0) -> None:
    """Until the relay has delivered everything journaled so far (it imports MLflow first: seconds)."""
    deadline = time.monotonic() + timeout
    while tracker.journal.load_state()["offset"] < tracker.journal.size():
        assert _relay(tracker).poll() is None, f"the relay exited {_relay(tracker).returncode}"
        assert time.monotonic() < deadline, f"the relay delivered nothing within {timeout} s"
        time.sleep(0.05)


# ---------------------------------------------------------------------- runs in a store that answers


@pytest.mark.slow
def test_runs_log_every_step_once_and_end_with_the_right_status(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # a fresh store: the relay creates it
    tracker = Tracker(uri, "runs", spool_dir=tmp_path / "spool")
    with tracker.start_run("ok", tags={"k": 1}) as ok:
        ok.log_params({"+model": "cnn", "lr": 0.1})
        for i in range(250):
            ok.on_step(i, {"loss": 1.0 / (i + 1), "lr": 1e-4 * (i + 1)})
        ok.log_summary({"final_val_loss": 0.25, "diverged": float("nan")}, step=249)
        ok.log_dict({"a": 1}, "config/resolved.yaml")
        ok.log_text("hello", "notes.txt")
    with pytest.raises(RuntimeError), tracker.start_run("bad", parent_run_id=ok.run_id):
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), tracker.start_run("stopped"):
        raise KeyboardInterrupt
    tracker.close()
    assert _relay(tracker).returncode == 0
    assert tracker.undelivered is None and not (tmp_path / "spool").exists()  # delivered: no journal, no folder
    client = tracker.client
    runs = _runs(client, "runs")
    assert {n: r.info.status for n, r in runs.items()} == {"ok": "FINISHED", "bad": "FAILED", "stopped": "KILLED"}
    stored = runs["ok"]
    assert find_run_id(client, ok.run_id) == stored.info.run_id and stored.data.tags[RUN_ID_TAG] == ok.run_id
    assert _history(client, stored.info.run_id, "loss") == list(range(250))
    assert _history(client, stored.info.run_id, "lr") == list(range(250))
    assert stored.data.metrics["final_val_loss"] == 0.25 and "diverged" not in stored.data.metrics
    assert stored.data.params == {"_model": "cnn", "lr": "0.1"} and stored.data.tags["k"] == "1"
    assert runs["bad"].data.tags["mlflow.parentRunId"] == stored.info.run_id  # the store's id, resolved
    assert {a.path for a in client.list_artifacts(stored.info.run_id)} == {"config", "notes.txt"}
    local = client.download_artifacts(stored.info.run_id, "config/resolved.yaml", str(tmp_path / "down"))
    assert Path(local).read_text() == "a: 1\n"


@pytest.mark.slow
def test_a_tracker_that_logged_nothing_ends_at_once_and_creates_no_store(tmp_path: Path) -> None:
    """A job that fails in its set-up: no store file, no journal, and no wait for the relay."""
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", "nothing", spool_dir=tmp_path / "spool")
    relay = _relay(tracker)
    tracker.close()
    assert relay.returncode == -signal.SIGKILL  # stopped, not waited for
    assert tracker.undelivered is None and not db.exists() and not (tmp_path / "spool").exists()


# ---------------------------------------------------------------------- the store is away


@pytest.fixture
def store_away(tmp_path: Path, premade_store: Any) -> Iterator[tuple[str, Path]]:
    """An sqlite store whose folder is made read-only (sqlite cannot write its rollback journal
    there: every write fails, reads work): ``(uri, folder)``; :func:`make_writable` brings it back."""
    folder = premade_store(tmp_path / "store")
    make_read_only(folder)
    try:
        yield f"sqlite:///{folder / 'mlflow.db'}", folder
    finally:
        make_writable(folder)


@pytest.mark.slow
def test_a_store_that_is_away_keeps_the_writes_and_deliver_delivers_them_once(
        tmp_path: Path, store_away: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    uri, folder = store_away
    tracker = Tracker(uri, "away", spool_dir=tmp_path / "spool", delivery_timeout_s=1.0)
    with tracker.start_run("pipeline") as parent:
        with tracker.start_run("train", parent_run_id=parent.run_id) as run:
            run.log_params({"lr": 0.1, "epochs": 3})
            for i in range(100):
                run.on_step(i, {"loss": 1.0 / (i + 1), "lr": 1e-3 * (i + 1)})
            run.set_tags({"lrtrack.range_test_run_id": parent.run_id})
            run.log_text("done", "notes/done.txt")
    with pytest.raises(DeliveryError) as info:
        tracker.close(timeout_s=1.0)
    err = info.value
    journal = tracker.journal.path
    assert err.journal == journal and journal.is_dir()
    assert err.command == f"python -m lrtrack.deliver {journal}"
    assert str(err) == (
        f"tracking store {uri} still unavailable (cannot open the database file) after waiting 1 s: 200 metric "
        f"values, 2 params, 1 tag, 1 artifact, 2 runs to create, 2 run endings not delivered, kept in {journal}; "
        f"deliver them with: python -m lrtrack.deliver {journal}")

    assert main([str(journal), "--timeout", "0.5"]) == 1  # still away: kept, try again later
    assert "still unavailable after 0.5 s (cannot open the database file)" in capsys.readouterr().err
    assert (journal / OPS).is_file()

    make_writable(folder)  # back
    assert main([str(journal)]) == 0
    assert capsys.readouterr().out == (f"delivered 200 metric values, 2 params, 1 tag, 1 artifact, 2 runs to create, "
                                       f"2 run endings from {journal}\n")
    assert main([str(journal)]) == 0
    assert capsys.readouterr().out == f"{journal}: already delivered\n"
    assert not (journal / OPS).exists() and not (journal / FILES).exists()  # operations and copies dropped

    client = open_store(uri)
    runs = _runs(client, "away")
    assert sorted(runs) == ["pipeline", "train"]
    train, pipeline = runs["train"], runs["pipeline"]
    assert train.info.status == pipeline.info.status == "FINISHED"
    assert train.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert train.data.tags["lrtrack.range_test_run_id"] == pipeline.info.run_id
    assert train.data.params == {"lr": "0.1", "epochs": "3"}
    for key in ("loss", "lr"):
        assert _history(client, train.info.run_id, key) == list(range(100))
    assert [a.path for a in client.list_artifacts(train.info.run_id, "notes")] == ["notes/done.txt"]


@pytest.mark.slow
def test_an_outage_mid_run_is_bridged_by_the_relay(tmp_path: Path, store_away: tuple[str, Path]) -> None:
    """Away while the job runs (a lost mount), back before it ends: the relay delivers it all, once."""
    uri, folder = store_away
    make_writable(folder)
    tracker = Tracker(uri, "flaky", spool_dir=tmp_path / "spool", delivery_timeout_s=30.0)
    run = tracker.start_run("train")
    for i in range(20):
        run.on_step(i, {"loss": float(i)})
    _wait_delivered(tracker)
    make_read_only(folder)
    for i in range(20, 40):
        run.on_step(i, {"loss": float(i)})
    run.log_params({"lr": 0.5})
    deadline = time.monotonic() + 30
    while tracker.journal.load_state().get("last_error") is None:  # the relay meets the outage
        assert time.monotonic() < deadline, "the relay never noticed the store was away"
        time.sleep(0.05)
    assert tracker.undelivered == tracker.journal.path
    make_writable(folder)
    run.end()
    tracker.close()
    client = open_store(uri)
    (stored,) = _runs(client, "flaky").values()
    assert stored.info.status == "FINISHED" and stored.data.params == {"lr": "0.5"}
    assert _history(client, stored.info.run_id, "loss") == list(range(40))


@pytest.mark.slow
def test_a_journal_never_stores_credentials_and_deliver_exit_codes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A server with a password that is not running: the writes wait, the password is nowhere on
    disk, and deliver needs the URI again."""
    for name, value in {**HTTP_LIMITS, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)  # no retries against a refused port (the relay inherits it)
    port = free_port()
    secret_uri, shown = f"http://alice:s3cret@127.0.0.1:{port}", f"http://***@127.0.0.1:{port}"
    tracker = Tracker(secret_uri, "secret", spool_dir=tmp_path / "spool", delivery_timeout_s=1.0)
    with tracker.start_run("explore") as run:
        for i in range(20):
            run.on_step(i, {"loss": float(i)})
    with pytest.raises(DeliveryError) as info:
        tracker.close()
    journal = info.value.journal
    assert journal is not None and f"tracking store {shown} still unavailable (connection refused)" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert json.loads((journal / META).read_text())["tracking_uri"] == shown
    for path in journal.rglob("*"):
        assert not path.is_file() or b"s3cret" not in path.read_bytes(), path

    assert main([str(tmp_path / "nothing-here")]) == 2
    assert f"no lrtrack tracking journal at {tmp_path / 'nothing-here'}" in capsys.readouterr().err
    assert main([str(journal)]) == 2
    assert "had credentials, which are never stored" in capsys.readouterr().err
    assert main([str(journal), "--tracking-uri", secret_uri, "--timeout", "0.5"]) == 1  # still not running
    err = capsys.readouterr().err
    assert f"tracking store {shown} is still unavailable after 0.5 s (connection refused)" in err
    assert f"20 metric values, 1 run to create, 1 run ending kept in {journal}" in err and "s3cret" not in err
    holder = Journal.open(journal)  # a live process (the job, its relay) holds it
    assert main([str(journal)]) == 1
    assert "is in use by another process" in capsys.readouterr().err
    holder.close()

    store = f"sqlite:///{tmp_path}/moved.db"  # delivered where the runs now live (a folder is searched)
    assert find_journals(tmp_path / "spool") == [journal]
    assert main([str(tmp_path / "spool"), "--tracking-uri", store]) == 0
    assert capsys.readouterr().out == f"delivered 20 metric values, 1 run to create, 1 run ending from {journal}\n"
    client = open_store(store)
    (stored,) = _runs(client, "secret").values()
    assert stored.info.run_name == "explore" and stored.info.status == "FINISHED"
    assert _history(client, stored.info.run_id, "loss") == list(range(20))


# ---------------------------------------------------------------------- the relay


KILLED_JOB = r'''
import os, sys
from lrtrack.tracking.runs import Tracker

uri, spool = sys.argv[1:3]
tracker = Tracker(uri, "killed", spool_dir=spool)
with tracker.start_run("finished") as done:
    done.on_step(0, {"loss": 1.0})
run = tracker.start_run("doomed", parent_run_id=done.run_id)
run.log_params({"lr": 0.3})
for i in range(50):
    run.on_step(i, {"loss": float(i)})
print(tracker.journal.path, flush=True)
os.kill(os.getpid(), 9)
'''


@pytest.mark.slow
def test_the_relay_delivers_what_a_process_killed_with_sigkill_logged(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    # The relay inherits the job's stderr, so this returns once the relay is done as well.
    proc = subprocess.run([sys.executable, "-c", KILLED_JOB, f"sqlite:///{db}", str(tmp_path / "spool")],
                          env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journal = Path(proc.stdout.strip())
    assert journal.parent == tmp_path / "spool"
    assert not journal.exists(), f"the relay left the journal behind: {proc.stderr[-3000:]}"
    client = open_store(f"sqlite:///{db}")
    runs = _runs(client, "killed")
    doomed, finished = runs["doomed"], runs["finished"]
    assert finished.info.status == "FINISHED"
    assert doomed.info.status == "KILLED" and doomed.info.end_time is not None
    assert doomed.data.tags[STOP_REASON_TAG] == "killed: its job ended without ending it"
    assert doomed.data.tags["mlflow.parentRunId"] == finished.info.run_id
    assert doomed.data.params == {"lr": "0.3"}
    assert _history(client, doomed.info.run_id, "loss") == list(range(50))
    assert "ended KILLED" in proc.stderr  # the relay says so


@pytest.mark.slow
def test_a_relay_killed_with_sigkill_loses_nothing(tmp_path: Path) -> None:
    """The relay killed mid-run (the OOM killer, a stray kill): the job goes on, ends with the
    deliver command, and deliver delivers the rest, once."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(store, "relay-died", spool_dir=tmp_path / "spool", delivery_timeout_s=2.0)
    relay = _relay(tracker)
    with tracker.start_run("train") as run:
        for i in range(20):
            run.on_step(i, {"loss": float(i)})
        _wait_delivered(tracker)
        relay.kill()
        relay.wait(timeout=30)
        for i in range(20, 40):
            run.on_step(i, {"loss": float(i)})
        run.log_params({"lr": 0.2})
    with pytest.raises(DeliveryError) as info:
        tracker.close()
    journal = tracker.journal.path
    assert str(info.value) == (f"the tracking relay stopped (exit status -9): 20 metric values, 1 param, 1 run "
                               f"ending not delivered, kept in {journal}; deliver them with: "
                               f"python -m lrtrack.deliver {journal}")
    assert deliver_journal(journal)["metric values"] == 20  # the rest, not again the first 20
    client = open_store(store)
    (stored,) = _runs(client, "relay-died").values()
    assert stored.info.status == "FINISHED" and stored.data.params == {"lr": "0.2"}
    assert _history(client, stored.info.run_id, "loss") == list(range(40))


@pytest.mark.slow
def test_the_relay_ignores_the_sigterm_a_cluster_sends_every_process_of_a_job(tmp_path: Path) -> None:
    """Preemption (SLURM signals all of a job's processes): the job ends its runs as it stops, and
    the relay, which got the same SIGTERM, still delivers that."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(store, "preempted", spool_dir=tmp_path / "spool")
    relay = _relay(tracker)
    run = tracker.start_run("train")
    for i in range(10):
        run.on_step(i, {"loss": float(i)})
    _wait_delivered(tracker)  # the relay is up (its handlers set) and delivering
    relay.send_signal(signal.SIGTERM)
    for i in range(10, 20):
        run.on_step(i, {"loss": float(i)})
    run.end("KILLED")
    tracker.close()  # raises if the relay did not deliver the rest
    assert relay.returncode == 0
    client = open_store(store)
    (stored,) = _runs(client, "preempted").values()
    assert stored.info.status == "KILLED" and _history(client, stored.info.run_id, "loss") == list(range(20))


@pytest.mark.slow
def test_two_trackers_at_once_on_one_fresh_sqlite_file_both_deliver(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two relays create the same new store at once (no template on this machine: MLflow's own
    migrations, which race without the store's lock)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    store = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    (tmp_path / "fresh").mkdir()
    trackers = [Tracker(store, "together", spool_dir=tmp_path / f"spool{n}") for n in range(2)]
    for n, tracker in enumerate(trackers):
        with tracker.start_run(f"job{n}") as run:
            for i in range(30):
                run.on_step(i, {"loss": float(n * 100 + i)})
    for tracker in trackers:
        tracker.close()
    client = open_store(store)
    runs = _runs(client, "together")
    assert sorted(runs) == ["job0", "job1"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    for n in range(2):
        history = client.get_metric_history(runs[f"job{n}"].info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(i, float(n * 100 + i)) for i in range(30)]


# ---------------------------------------------------------------------- artifacts in the journal


def test_a_checkpoint_waits_as_a_hard_link_and_each_copy_is_deleted_once_delivered(
        tmp_path: Path, premade_store: Any) -> None:
    """A long run's checkpoints: no second copy written per epoch, none piling up in the journal,
    the checkpoint itself never touched."""
    uri = f"sqlite:///{premade_store(tmp_path / 'store') / 'mlflow.db'}"
    journal = Journal.create(tmp_path / "spool", uri, "checkpoints")
    journal.append("create", "c" * 16, name="train", tags={}, start=None)
    run = TrackedRun(journal, "c" * 16)
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"epoch 0")
    run.on_checkpoint(checkpoint, step=10)
    (waiting,) = (journal.path / FILES).rglob("last.pt")
    assert waiting.stat().st_ino == checkpoint.stat().st_ino  # linked, not copied
    aside = tmp_path / "last.pt.tmp"
    aside.write_bytes(b"epoch 1")
    os.replace(aside, checkpoint)  # how lrtrack.engine.train writes the next one
    assert waiting.read_bytes() == b"epoch 0"  # the journal's still holds what was logged
    run.log_artifact(checkpoint, "other")  # any other file: a copy (it might be rewritten in place)
    copies = [p for p in (journal.path / FILES).rglob("last.pt") if p != waiting]
    assert len(copies) == 1 and copies[0].stat().st_ino != checkpoint.stat().st_ino

    drain(journal, uri, Live(0))  # the relay's pass while the job runs
    assert not [p for p in (journal.path / FILES).rglob("*") if p.is_file()]
    for epoch in (2, 3):
        aside.write_bytes(b"epoch %d" % epoch)
        os.replace(aside, checkpoint)
        run.on_checkpoint(checkpoint, step=10 * epoch)
        drain(journal, uri, Live(0))
        assert not [p for p in (journal.path / FILES).rglob("*") if p.is_file()]  # none piles up
    assert checkpoint.read_bytes() == b"epoch 3"  # deleting the link left the checkpoint alone
    run.end()
    assert not drain(journal, uri, Control(10)).pending
    client = open_store(uri)
    (stored,) = _runs(client, "checkpoints").values()
    assert {a.path for a in client.list_artifacts(stored.info.run_id)} == {"checkpoints", "other"}
    down = tmp_path / "down"
    assert Path(client.download_artifacts(stored.info.run_id, "checkpoints/last.pt", str(down))).read_bytes() == \
        b"epoch 3"  # the last one delivered wins, as an upload would
    assert Path(client.download_artifacts(stored.info.run_id, "other/last.pt", str(down))).read_bytes() == b"epoch 1"
    journal.close()


# ---------------------------------------------------------------------- fresh stores from a template


def test_fresh_sqlite_stores_after_the_first_are_copies_of_an_empty_template(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from lrtrack.tracking import store as store_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = store_module.template_path()
    assert template is not None
    assert template.parent == tmp_path / "cache" / "lrtrack" and not template.exists()
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    made = open_store(f"sqlite:///{first}/mlflow.db")  # migrated by MLflow, then saved without experiments
    assert template.is_file()
    assert sqlite3.connect(template).execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    monkeypatch.chdir(second)
    copied = open_store(f"sqlite:///{second}/mlflow.db")
    version = "SELECT version_num FROM alembic_version"
    assert sqlite3.connect(second / "mlflow.db").execute(version).fetchall() == \
        sqlite3.connect(first / "mlflow.db").execute(version).fetchall()
    # MLflow made the copy's Default experiment itself, where it belongs (not where the template was made).
    assert made.get_experiment("0").artifact_location == str(first / "mlruns" / "0")
    assert copied.get_experiment("0").artifact_location == str(second / "mlruns" / "0")
    experiment = copied.create_experiment("mine")
    run = copied.create_run(experiment)
    copied.log_metric(run.info.run_id, "loss", 0.5, step=3)
    assert [(m.step, m.value) for m in copied.get_metric_history(run.info.run_id, "loss")] == [(3, 0.5)]


def test_a_broken_store_template_is_dropped_and_the_store_made_anew(tmp_path: Path, monkeypatch, caplog) -> None:
    from lrtrack.tracking import store as store_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    template = store_module.template_path()
    assert template is not None
    template.parent.mkdir(parents=True)
    template.write_bytes(b"this is not an sqlite file" * 100)
    with caplog.at_level("WARNING", logger="lrtrack.tracking.store"):
        client = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    assert "is not one; it is deleted" in caplog.text
    assert client.get_experiment("0").name == "Default"
    assert template.is_file() and template.read_bytes()[:16] == b"SQLite format 3\x00"  # a good one replaced it
