"""The journal's format and the drain's rules, one operation at a time, against real sqlite stores.

A journal is written here with :meth:`Journal.append` exactly as a job writes it (the operations of
:data:`lrtrack.tracking.journal.KINDS`) and delivered in this process by
:func:`lrtrack.tracking.drain.drain`: what the relay and ``python -m lrtrack.deliver`` both run.
Nothing mocks MLflow; the processes here (a dead owner, a second resumer) are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lrtrack.tracking.deliver import deliver_journal, main
from lrtrack.tracking.drain import STOP_REASON_TAG, Control, drain, end_orphaned_runs, find_run_id
from lrtrack.tracking.journal import (
    FORMAT,
    META,
    OPS,
    OWNER_TAG,
    REJECTED,
    RUN_ID_TAG,
    STATE,
    DeliveryError,
    Journal,
    JournalBusy,
    JournalError,
    owner_alive,
    owner_id,
)
from lrtrack.tracking.runs import resume_lock
from lrtrack.tracking.store import open_store
from tests.conftest import ROOT, clean_env

T0 = 1_700_000_000_000  # a fixed "logged at" time (ms): the same write sent twice is the same point


class Live(Control):
    """The drain's view while the job still writes: the journal is not complete (the relay's case)."""

    def complete(self) -> bool:
        return False


@pytest.fixture
def store(tmp_path: Path, premade_store: Any) -> tuple[str, Any]:
    """A fresh sqlite store and a client of it."""
    folder = premade_store(tmp_path / "store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, open_store(uri)


def _journal(tmp_path: Path, uri: str, experiment: str = "journal", name: str = "spool") -> Journal:
    return Journal.create(tmp_path / name, uri, experiment)


def _create(journal: Journal, run: str, name: str, **tags: Any) -> None:
    journal.append("create", run, name=name, tags=tags, start=T0)


def _steps(journal: Journal, run: str, steps: range) -> None:
    for i in steps:
        journal.append("metrics", run, rows=[["loss", 1.0 / (i + 1), T0 + i, i], ["lr", 1e-4 * (i + 1), T0 + i, i]])


def _run(client: Any, experiment: str, run: str) -> Any:
    """The store's run that lrtrack's id ``run`` names."""
    store_id = find_run_id(client, run, [client.get_experiment_by_name(experiment).experiment_id])
    assert store_id is not None, f"run {run} is not in the store"
    return client.get_run(store_id)


def _history(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------------- the format


def test_journal_json_records_the_format_the_store_and_the_owner(tmp_path: Path) -> None:
    journal = _journal(tmp_path, "sqlite:////data/mlflow.db", "lr-tests")
    meta = json.loads((journal.path / META).read_text())
    assert meta["format"] == FORMAT == 2  # 2: the log_model operation (issue 22)
    assert meta["tracking_uri"] == "sqlite:////data/mlflow.db" and meta["experiment_name"] == "lr-tests"
    assert meta["owner"] == owner_id() and owner_alive(meta["owner"]) is True
    assert journal.path.parent == tmp_path / "spool" and (journal.path.stat().st_mode & 0o777) == 0o700
    with pytest.raises(JournalBusy, match="in use by another process"):  # the job holds it
        Journal.open(journal.path)
    journal.close()
    Journal.open(journal.path).close()


def test_a_journal_of_another_format_or_no_journal_is_refused_clearly(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    journal = _journal(tmp_path, "sqlite:////data/mlflow.db")
    _create(journal, "a" * 16, "explore")
    journal.close()
    meta = json.loads((journal.path / META).read_text())
    (journal.path / META).write_text(json.dumps({**meta, "format": 1}))  # before log_model: still delivered
    Journal.open(journal.path).close()
    (journal.path / META).write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(ValueError, match=r"is a tracking journal of format 3; this lrtrack reads formats 1, 2: "
                                         r"deliver it with the lrtrack version that wrote it"):
        Journal.open(journal.path)
    assert main([str(journal.path)]) == 2
    assert "format 3" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=f"is not an lrtrack tracking journal \\(no {META} in it\\)"):
        Journal.open(tmp_path / "plain")


def test_read_yields_whole_lines_only_while_the_writer_is_live(tmp_path: Path) -> None:
    journal = _journal(tmp_path, "sqlite:////data/mlflow.db")
    _create(journal, "r" * 16, "explore")
    _steps(journal, "r" * 16, range(2))
    whole = journal.size()
    cut = b'{"op":"metrics","run":"rrrrrrrrrrrrrrrr","rows":[["loss",0.5,'
    with open(journal.path / OPS, "ab") as fh:  # the job is in the middle of writing this line
        fh.write(cut)
    live = list(journal.read(0))
    assert [op["op"] for _, op in live] == ["create", "metrics", "metrics"]  # type: ignore[index]
    assert live[-1][0] == whole  # the next pass starts at the unfinished line
    final = list(journal.read(0, final=True))  # its writer is gone: the cut line is yielded, as None
    assert len(final) == 4 and final[-1] == (whole + len(cut), None)
    with open(journal.path / OPS, "ab") as fh:  # the writer finishes the line: the next pass gets it whole
        fh.write(b'1700000000002,2]]}\n')
    ((offset, op),) = list(journal.read(whole))
    assert offset == journal.size() and op == {"op": "metrics", "run": "r" * 16, "rows": [["loss", 0.5, T0 + 2, 2]]}
    journal.close()


def test_a_line_cut_short_mid_journal_is_rejected_and_delivery_goes_on(tmp_path: Path, store: tuple[str, Any],
                                                                        capsys: pytest.CaptureFixture) -> None:
    uri, client = store
    journal = _journal(tmp_path, uri)
    run = "c" * 16
    _create(journal, run, "train")
    _steps(journal, run, range(5))
    with open(journal.path / OPS, "ab") as fh:
        fh.write(b'{"op":"metrics","ru\n')
    _steps(journal, run, range(5, 10))
    journal.append("end", run, status="FINISHED", end=T0 + 100)
    delivery = drain(journal, uri, Control(30))
    assert not delivery.pending and delivery.last_error is None
    stored = _run(client, "journal", run)
    assert stored.info.status == "FINISHED"
    assert _history(client, stored.info.run_id, "loss") == list(range(10))
    (record,) = [json.loads(line) for line in (journal.path / REJECTED).read_text().splitlines()]
    assert record == {"error": "a journal line cut short (the process died while writing it)", "op": None}
    journal.close()
    # deliver says so (exit 1) rather than "delivered", and names the file to look at.
    assert main([str(journal.path)]) == 1
    assert f"1 journal writes were rejected by {uri}: see {journal.path / REJECTED}" in capsys.readouterr().err


# ---------------------------------------------------------------------- exactly once


def test_the_same_operations_applied_twice_give_one_run_and_no_duplicate_points(tmp_path: Path,
                                                                                  store: tuple[str, Any]) -> None:
    """A deliverer killed after applying but before recording: everything is applied again."""
    uri, client = store
    journal = _journal(tmp_path, uri, "replay")
    run = "d" * 16
    _create(journal, run, "train", k="v")
    journal.append("params", run, params={"lr": "0.1", "batch": "256"})
    _steps(journal, run, range(20))
    journal.append("tags", run, tags={"lrtrack.stage": "final"})
    target, relative = journal.stash("notes.txt")
    target.write_text("hello")
    journal.append("artifact", run, file=relative, path="notes")
    journal.append("end", run, status="FINISHED", end=T0 + 100)
    for _ in range(2):
        delivery = drain(journal, uri, Control(10))
        assert not delivery.pending and delivery.last_error is None
        (journal.path / STATE).unlink()  # the record of what was delivered is lost: replay from offset 0
    experiment = client.get_experiment_by_name("replay").experiment_id
    (stored,) = client.search_runs([experiment])
    assert stored.data.tags[RUN_ID_TAG] == run and stored.data.tags["k"] == "v"
    assert stored.data.tags["lrtrack.stage"] == "final" and stored.info.status == "FINISHED"
    assert stored.data.params == {"lr": "0.1", "batch": "256"}
    for key in ("loss", "lr"):  # 20 points each, not 40
        assert _history(client, stored.info.run_id, key) == list(range(20))
    assert [a.path for a in client.list_artifacts(stored.info.run_id, "notes")] == ["notes/notes.txt"]
    journal.close()


def test_run_references_resolve_to_the_store_run_id(tmp_path: Path, store: tuple[str, Any]) -> None:
    uri, client = store
    journal = _journal(tmp_path, uri, "refs")
    parent, explore, final = "1" * 16, "2" * 16, "3" * 16
    _create(journal, parent, "pipeline")
    _create(journal, explore, "explore", **{"mlflow.parentRunId": {"ref": parent}})
    _create(journal, final, "final", **{"mlflow.parentRunId": {"ref": parent}})
    journal.append("tags", final, tags={"lrtrack.range_test_run_id": {"ref": explore}})
    for run in (explore, final, parent):
        journal.append("end", run, status="FINISHED", end=T0 + 100)
    drain(journal, uri, Control(10))
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("refs").experiment_id])}
    assert {name: r.data.tags[RUN_ID_TAG] for name, r in runs.items()} == {
        "pipeline": parent, "explore": explore, "final": final}
    assert runs["explore"].data.tags["mlflow.parentRunId"] == runs["pipeline"].info.run_id  # nested in the UI
    assert runs["final"].data.tags["mlflow.parentRunId"] == runs["pipeline"].info.run_id
    assert runs["final"].data.tags["lrtrack.range_test_run_id"] == runs["explore"].info.run_id
    assert len(runs["pipeline"].info.run_id) == 32  # the store's own id, not lrtrack's
    journal.close()


def test_a_reference_to_a_run_another_journal_has_not_delivered_yet_waits(tmp_path: Path,
                                                                          store: tuple[str, Any]) -> None:
    """A sweep's jobs name the sweep's run, which the sweep's own journal creates."""
    uri, client = store
    sweep, job = _journal(tmp_path, uri, "sweep", "sweep-spool"), _journal(tmp_path, uri, "sweep", "job-spool")
    sweep_run, job_run = "5" * 16, "6" * 16
    _create(sweep, sweep_run, "sweep")
    _create(job, job_run, "seed=0", **{"mlflow.parentRunId": {"ref": sweep_run}})
    _steps(job, job_run, range(10))
    job.append("end", job_run, status="FINISHED", end=T0 + 100)

    waiting = drain(job, uri, Control(0))
    assert waiting.pending and waiting.last_error == f"run {sweep_run} is not in the tracking store yet"
    assert json.loads((job.path / STATE).read_text())["offset"] == 0
    assert find_run_id(client, job_run) is None  # nothing half-made

    sweep.append("end", sweep_run, status="FINISHED", end=T0 + 200)
    assert not drain(sweep, uri, Control(10)).pending
    assert not drain(job, uri, Control(10)).pending
    sweep_stored, job_stored = _run(client, "sweep", sweep_run), _run(client, "sweep", job_run)
    assert job_stored.data.tags["mlflow.parentRunId"] == sweep_stored.info.run_id
    assert job_stored.info.status == sweep_stored.info.status == "FINISHED"
    assert _history(client, job_stored.info.run_id, "loss") == list(range(10))
    sweep.close()
    job.close()


# ---------------------------------------------------------------------- runs never stay RUNNING


def test_a_complete_journal_ends_the_runs_it_left_open_killed(tmp_path: Path, store: tuple[str, Any]) -> None:
    uri, client = store
    journal = _journal(tmp_path, uri, "open")
    run, done = "7" * 16, "8" * 16
    _create(journal, run, "cut short")
    _create(journal, done, "ended")
    _steps(journal, run, range(5))
    journal.append("end", done, status="FINISHED", end=T0 + 100)
    drain(journal, uri, Live(0))  # the job is still writing: its open run stays RUNNING
    assert _run(client, "open", run).info.status == "RUNNING"
    assert json.loads((journal.path / STATE).read_text())["open"] == [run]
    drain(journal, uri, Control(10))  # its job is gone
    stored = _run(client, "open", run)
    assert stored.info.status == "KILLED" and stored.info.end_time is not None
    assert stored.data.tags[STOP_REASON_TAG] == "killed: its job ended without ending it"
    assert _history(client, stored.info.run_id, "loss") == list(range(5))
    ended = _run(client, "open", done)
    assert ended.info.status == "FINISHED" and STOP_REASON_TAG not in ended.data.tags
    assert json.loads((journal.path / STATE).read_text())["open"] == []
    journal.close()


@pytest.fixture
def dead_owner() -> str:
    """The :data:`OWNER_TAG` of a process of this host that has ended (started, killed, reaped)."""
    proc = subprocess.Popen(["sleep", "60"])
    owner = owner_id(proc.pid)
    proc.kill()
    proc.wait()
    assert owner_alive(owner) is False
    return owner


def test_end_orphaned_runs_ends_only_runs_whose_owner_died_on_this_host(store: tuple[str, Any],
                                                                        dead_owner: str) -> None:
    _, client = store
    experiment = client.create_experiment("orphans")
    owners = {"dead": dead_owner, "kept": dead_owner, "alive": owner_id(), "elsewhere": "gpu-node-7:4242:1234"}
    ids = {name: client.create_run(experiment, run_name=name, tags={OWNER_TAG: owner}).info.run_id
           for name, owner in owners.items()}
    ids["no owner"] = client.create_run(experiment, run_name="no owner").info.run_id  # not lrtrack's
    assert owner_alive(owners["elsewhere"]) is None
    assert end_orphaned_runs(client, keep={ids["kept"]}) == [ids["dead"]]  # "kept": its own deliverer ends it
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"dead": "KILLED", "kept": "RUNNING", "alive": "RUNNING", "elsewhere": "RUNNING",
                      "no owner": "RUNNING"}
    assert client.get_run(ids["dead"]).data.tags[STOP_REASON_TAG] == "killed: its job and relay were gone"
    assert end_orphaned_runs(client) == [ids["kept"]]


RESUMER = r'''
import sys
from lrtrack.tracking.runs import resume_lock
try:
    with resume_lock(sys.argv[1], sys.argv[2]):
        print("resumed")
except RuntimeError as err:
    print(err)
    sys.exit(3)
'''


def test_resume_lock_refuses_a_second_process_resuming_the_same_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def second(run_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", RESUMER, uri, run_id], cwd=ROOT, env=clean_env(),
                              capture_output=True, text=True, timeout=60)

    with resume_lock(uri, "abcdef0123456789"):
        refused = second("abcdef0123456789")
        assert refused.returncode == 3, refused.stderr
        assert refused.stdout.strip() == (f"train.resume='abcdef0123456789': another lrtrack job (pid {os.getpid()}) "
                                          f"is resuming this run now; wait for it to end")
        other = second("0123456789abcdef")  # another run: no conflict
        assert (other.returncode, other.stdout.strip()) == (0, "resumed")
    after = second("abcdef0123456789")
    assert (after.returncode, after.stdout.strip()) == (0, "resumed"), after.stderr


# ---------------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up (ENOSPC). Needs root (mount)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here to fill a disk for real ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: even with a file left open


def test_a_full_disk_under_the_journal_raises_journal_error_and_leaves_no_half_line(tiny_disk: Path) -> None:
    filler = tiny_disk / "filler"
    filler.write_bytes(b"x" * 16384)
    journal = Journal.create(tiny_disk / "spool", "sqlite:////data/mlflow.db", "full")
    run = "f" * 16
    _create(journal, run, "train")
    appended = 1
    with pytest.raises(JournalError) as info:
        for i in range(100_000):
            journal.append("metrics", run, rows=[["loss", 1.0 / (i + 1), T0 + i, i]] * 4)
            appended += 1
    message = str(info.value)
    assert f"the disk holding the tracking journal {journal.path} is full (No space left on device)" in message
    assert "tracking.spool_dir" in message and f"python -m lrtrack.deliver {journal.path}" in message
    ops = [op for _, op in journal.read(0, final=True)]
    assert len(ops) == appended and None not in ops  # the write that did not fit left nothing behind
    filler.unlink()  # space again: the job's next writes are whole lines after the last whole one
    journal.append("end", run, status="FINISHED", end=T0)
    ops = [op for _, op in journal.read(0, final=True)]
    assert len(ops) == appended + 1 and None not in ops and ops[-1]["op"] == "end"  # type: ignore[index]
    journal.close()


def test_deliver_journal_refuses_a_busy_journal_and_counts_what_it_delivered(tmp_path: Path,
                                                                             store: tuple[str, Any]) -> None:
    uri, client = store
    journal = _journal(tmp_path, uri, "counts")
    run = "9" * 16
    _create(journal, run, "train")
    journal.append("params", run, params={"lr": "0.1"})
    _steps(journal, run, range(7))
    journal.append("end", run, status="KILLED", end=T0 + 100)
    with pytest.raises(JournalBusy):
        deliver_journal(journal.path)
    journal.close()
    assert deliver_journal(journal.path) == {"metric values": 14, "params": 1, "tags": 0, "artifacts": 0, "models": 0,
                                             "runs to create": 1, "run endings": 1}
    assert deliver_journal(journal.path) == {"metric values": 0, "params": 0, "tags": 0, "artifacts": 0, "models": 0,
                                             "runs to create": 0, "run endings": 0}
    assert not (journal.path / OPS).exists() and (journal.path / STATE).is_file()  # the record stays
    assert _run(client, "counts", run).info.status == "KILLED"
    away = _journal(tmp_path, f"sqlite:///{tmp_path}/not-yet/mlflow.db", "x", "away")  # a folder not there yet
    _create(away, run, "train")
    away.close()
    with pytest.raises(DeliveryError, match="still unavailable after 0 s") as info:
        deliver_journal(away.path, timeout_s=0)
    assert "1 run to create kept in" in str(info.value) and info.value.journal == away.path
    assert info.value.command == f"python -m lrtrack.deliver {away.path}"
