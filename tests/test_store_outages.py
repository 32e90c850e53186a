"""An sqlite tracking store that goes away mid-run, against the real relay process and real stores.

The contract: a store outage mid-run loses nothing; the job finishes, and what it logged reaches the
store once the store is back. Each test here is one way an sqlite file goes away (the fault
battery's E1-E4): moved away and put back, deleted, locked, read-only for a while. And what
``python -m lrtrack.deliver`` says (one line, no traceback) where the store is not there, or is not
the store its journal delivered into. Nothing is mocked: the relay is the process a job starts.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lrtrack.tracking.deliver import main
from lrtrack.tracking.drain import Control, drain, find_run_id
from lrtrack.tracking.journal import OPS, DeliveryError, Journal
from lrtrack.tracking.runs import Tracker
from lrtrack.tracking.store import is_transient, open_store
from tests.conftest import ROOT, clean_env

T0 = 1_700_000_000_000


def _history(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _only_run(uri: str, experiment: str) -> Any:
    """The experiment's one run, read with a client of this process (the store as it is now)."""
    client = open_store(uri, create=False)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    (run,) = client.search_runs([found.experiment_id])
    return client, run


def _wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def _relay_met_outage(tracker: Tracker) -> bool:
    relay = tracker._relay
    assert relay is not None and relay.poll() is None, f"the relay exited {relay and relay.returncode}"
    return tracker.journal.load_state().get("last_error") is not None


def _wait_delivered(tracker: Tracker) -> None:
    _wait_for("the relay delivers what was journaled",
              lambda: tracker.journal.load_state()["offset"] >= tracker.journal.size(), timeout=60)


# ---------------------------------------------------------------------- E1, E2: the file moved away, or deleted


@pytest.mark.slow
def test_a_store_moved_away_before_the_relay_opens_it_is_waited_for_and_never_made_anew(
        tmp_path: Path, premade_store: Any) -> None:
    """E1: the relay (re)opened the store while its file was away and made a new, empty store
    there; it took the run, and putting the real file back threw it all away."""
    db = premade_store(tmp_path / "store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracker = Tracker(uri, "moved", spool_dir=tmp_path / "spool", delivery_timeout_s=30.0)
    db.rename(db.with_name("away.db"))  # the relay is still importing MLflow: its first open meets the outage
    with tracker.start_run("train") as run:
        run.log_params({"lr": 0.1})
        for i in range(50):
            run.on_step(i, {"loss": 1.0 / (i + 1)})
    _wait_for("the relay tries the store", lambda: _relay_met_outage(tracker) or
              tracker.journal.load_state()["offset"] > 0)
    assert not db.exists(), "a new store was made in place of the one moved away"
    assert "is missing" in tracker.journal.load_state()["last_error"]
    time.sleep(1.0)  # another try or two while it is away
    assert not db.exists()
    db.with_name("away.db").rename(db)
    tracker.close()  # no DeliveryError: everything reached the store once it was back
    assert tracker._relay is not None and tracker._relay.returncode == 0
    client, stored = _only_run(uri, "moved")
    assert stored.info.status == "FINISHED" and stored.data.params == {"lr": "0.1"}
    assert _history(client, stored.info.run_id, "loss") == list(range(50))


@pytest.mark.slow
def test_a_store_moved_away_under_the_relays_connections_is_reopened_once_back(
        tmp_path: Path, premade_store: Any) -> None:
    """The relay had the store open when its file was moved away: its pooled connection holds the
    moved file (sqlite's "readonly database" while it is away). Its retries open the store anew:
    they must wait for the file, not make a new one; once it is back, they deliver the rest."""
    db = premade_store(tmp_path / "store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracker = Tracker(uri, "reopened", spool_dir=tmp_path / "spool", delivery_timeout_s=30.0)
    run = tracker.start_run("train")
    for i in range(20):
        run.on_step(i, {"loss": float(i)})
    _wait_delivered(tracker)
    db.rename(db.with_name("away.db"))
    for i in range(20, 40):
        run.on_step(i, {"loss": float(i)})
    _wait_for("the relay meets the outage", lambda: _relay_met_outage(tracker))
    time.sleep(1.0)
    assert not db.exists(), "a new store was made in place of the one moved away"
    db.with_name("away.db").rename(db)
    for i in range(40, 60):
        run.on_step(i, {"loss": float(i)})
    run.end()
    started = time.monotonic()
    tracker.close()
    assert time.monotonic() - started < 20, "the relay did not see the store come back"
    client, stored = _only_run(uri, "reopened")
    assert stored.info.status == "FINISHED"
    assert _history(client, stored.info.run_id, "loss") == list(range(60))


@pytest.mark.slow
def test_a_store_deleted_mid_run_is_not_made_anew_and_deliver_sends_it_all_once_it_is_back(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Only the job's start may create the store (the relay's first open, here: there was none).
    Deleted mid-run, it is the store away: the writes wait in the journal, not in a new store."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    tracker = Tracker(uri, "deleted", spool_dir=tmp_path / "spool", delivery_timeout_s=2.0)
    run = tracker.start_run("train")
    for i in range(20):
        run.on_step(i, {"loss": float(i)})
    _wait_delivered(tracker)
    assert db.is_file()  # made by the relay, at the job's start
    saved = shutil.copy(db, tmp_path / "saved.db")
    db.unlink()
    for i in range(20, 40):
        run.on_step(i, {"loss": float(i)})
    run.end()
    with pytest.raises(DeliveryError) as info:
        tracker.close()
    assert f"(the database file {db} is missing)" in str(info.value)
    assert not db.exists()
    journal = tracker.journal.path

    assert main([str(journal), "--timeout", "0.5"]) == 1  # deliver does not make it either
    err = capsys.readouterr().err
    assert err.count("lrtrack: error:") == 1 and f"the database file {db} is missing" in err
    assert "Traceback" not in err and not db.exists()

    shutil.copy(saved, db)  # put back
    assert main([str(journal)]) == 0
    assert "delivered 20 metric values, 1 run ending" in capsys.readouterr().out
    client, stored = _only_run(uri, "deleted")
    assert stored.info.status == "FINISHED"
    assert _history(client, stored.info.run_id, "loss") == list(range(40))


@pytest.mark.slow
def test_a_job_whose_store_is_moved_away_and_back_mid_run_delivers_everything(tmp_path: Path, premade_store: Any) -> None:
    """E1 with a real job: mlflow.db renamed away once the job has started (its journal is there),
    so that its relay, still importing MLflow, first opens the store while it is away; put back
    5 s later."""
    premade_store(tmp_path)
    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen([sys.executable, "-m", "lrtrack", "+model=mnist_cnn", "+experiment=smoke", "stage=train",
                            "bounds.max_lr=0.05", "train.epochs=8", "data.fake_size=2048"],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for("the job starts its journal", lambda: any(tmp_path.glob("outputs/*/*/tracking-spool/*/journal.json"))
                  or job.poll() is not None, timeout=120)
        db.rename(tmp_path / "away.db")
        time.sleep(5)
        assert not db.exists(), "a new store was made in place of the one moved away"
        (tmp_path / "away.db").rename(db)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    text = (tmp_path / "job.log").read_text()
    assert job.returncode == 0, text[-2000:]
    assert "Traceback" not in text and "lrtrack: error" not in text
    client = open_store(f"sqlite:///{db}", create=False)
    (stored,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert stored.info.status == "FINISHED"
    assert len(_history(client, stored.info.run_id, "loss")) == 8 * 32


# ---------------------------------------------------------------------- E4: locked


@pytest.mark.slow
def test_a_store_locked_while_the_relay_opens_it_is_waited_for(
        tmp_path: Path, premade_store: Any, capfd: pytest.CaptureFixture) -> None:
    """E4: an exclusive sqlite transaction held while the relay opens the store: SQLAlchemy's own
    "database is locked" (MLflow has not wrapped it yet) is the store away, not a bug."""
    db = premade_store(tmp_path / "store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        tracker = Tracker(uri, "locked", spool_dir=tmp_path / "spool", delivery_timeout_s=30.0)
        with tracker.start_run("train") as run:
            for i in range(30):
                run.on_step(i, {"loss": float(i)})
        _wait_for("the relay meets the lock", lambda: _relay_met_outage(tracker))
        assert tracker.journal.load_state()["last_error"] == "database is locked"
    finally:
        holder.execute("COMMIT")
        holder.close()
    tracker.close()
    assert tracker._relay is not None and tracker._relay.returncode == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "(database is locked)" in err
    client, stored = _only_run(uri, "locked")
    assert stored.info.status == "FINISHED" and _history(client, stored.info.run_id, "loss") == list(range(30))


def test_sqlites_own_errors_are_transient(tmp_path: Path) -> None:
    """What opening an sqlite store raises before MLflow wraps it, made for real."""
    import sqlalchemy

    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("create table t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0.1})
        with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked") as locked:
            sqlalchemy.inspect(engine).get_table_names()
        with pytest.raises(sqlite3.OperationalError, match="database is locked") as raw:
            sqlite3.connect(db, timeout=0.1).execute("select * from t")
    finally:
        holder.execute("COMMIT")
        holder.close()
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file") as missing:
        sqlite3.connect(f"file:{tmp_path / 'nothing.db'}?mode=rw", uri=True)
    assert is_transient(locked.value) and is_transient(raw.value) and is_transient(missing.value)
    # sqlite says a wrong statement or a missing table with the same class: those are no outage
    with pytest.raises(sqlalchemy.exc.OperationalError, match="no such table") as wrong:
        sqlalchemy.create_engine(f"sqlite:///{db}").connect().exec_driver_sql("select * from absent_table")
    assert not is_transient(wrong.value) and not is_transient(wrong.value.orig)


# ---------------------------------------------------------------------- E3: read-only for a while


def _immutable(path: Path, on: bool) -> None:
    if os.geteuid() != 0:
        path.chmod(0o444 if on else 0o644)
        return
    done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("running as root where chattr +i is not available: cannot make a read-only file")


@pytest.mark.slow
def test_a_store_read_only_for_a_while_is_written_once_it_is_writable_again(
        tmp_path: Path, premade_store: Any) -> None:
    """E3: the relay opened the store while its file was read-only; sqlite opened it read-only,
    and the pooled connection stayed so after the file was writable again: the relay waited out
    its deadline. It now drops its connections after a failed write."""
    db = premade_store(tmp_path / "store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    _immutable(db, True)
    try:
        tracker = Tracker(uri, "read-only", spool_dir=tmp_path / "spool", delivery_timeout_s=20.0)
        with tracker.start_run("train") as run:
            for i in range(30):
                run.on_step(i, {"loss": float(i)})
        _wait_for("the relay meets the read-only store", lambda: _relay_met_outage(tracker))
        assert tracker.journal.load_state()["last_error"] == "read-only database"
    finally:
        _immutable(db, False)
    started = time.monotonic()
    tracker.close()  # before: DeliveryError after the full 20 s
    assert time.monotonic() - started < 15
    client, stored = _only_run(uri, "read-only")
    assert stored.info.status == "FINISHED" and _history(client, stored.info.run_id, "loss") == list(range(30))


# ---------------------------------------------------------------------- deliver: the wrong store


class Live(Control):
    """The journal is still being written (the relay's view while the job runs)."""

    def complete(self) -> bool:
        return False


def test_deliver_into_a_store_without_the_journals_runs_is_one_line(tmp_path: Path, premade_store: Any) -> None:
    """After E1, the journal's record said its run was delivered, into the store since thrown away:
    deliver ended in a traceback (``Run with id=... not found``). It is one line, exit 2, and the
    journal is kept for the store that holds its runs."""
    folder = premade_store(tmp_path / "store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    journal = Journal.create(tmp_path / "spool", uri, "replaced")
    run = "a" * 16
    journal.append("create", run, name="train", tags={}, start=T0)
    journal.append("metrics", run, rows=[["loss", 1.0, T0, 0]])
    drain(journal, uri, Live(0))  # delivered as the relay does while the job runs
    store_id = journal.load_state()["ids"][run]
    assert find_run_id(open_store(uri), run) == store_id
    journal.append("metrics", run, rows=[["loss", 0.5, T0 + 1, 1]])
    journal.append("end", run, status="FINISHED", end=T0 + 2)
    journal.close()
    (folder / "mlflow.db").unlink()  # replaced by another, empty store
    premade_store(folder)

    done = subprocess.run([sys.executable, "-m", "lrtrack.deliver", str(journal.path)], capture_output=True,
                          text=True, cwd=tmp_path, env=clean_env(PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrtrack: error: "), done.stderr
    assert f"does not hold run {store_id}" in lines[0] and str(journal.path) in lines[0]
    assert (journal.path / OPS).is_file()  # kept
    with sqlite3.connect(folder / "mlflow.db") as con:  # nothing misdelivered into the other store
        assert con.execute("select count(*) from runs").fetchone() == (0,)


def test_deliver_never_creates_the_store_its_journal_names(tmp_path: Path, premade_store: Any) -> None:
    """A stranded journal whose sqlite store is not there: one line naming the file, which stays
    absent; once the store is there, deliver sends it all."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    journal = Journal.create(tmp_path / "spool", f"sqlite:///{db}", "stranded")
    run = "b" * 16
    journal.append("create", run, name="train", tags={}, start=T0)
    journal.append("metrics", run, rows=[["loss", 1.0, T0, 0]])
    journal.append("end", run, status="FINISHED", end=T0 + 1)
    journal.close()
    command = [sys.executable, "-m", "lrtrack.deliver", str(journal.path), "--timeout", "0.5"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=clean_env(PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrtrack: error: "), done.stderr
    assert f"(the database file {db} is missing)" in lines[0] and "1 run to create" in lines[0]
    assert not db.exists()
    premade_store(db.parent)
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=clean_env(PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 0, done.stderr
    client, stored = _only_run(f"sqlite:///{db}", "stranded")
    assert stored.info.status == "FINISHED"
