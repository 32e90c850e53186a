"""The MLflow adapter: pre-flight, the store lock, runs, and the local spool with its delivery.

Everything runs against real MLflow stores (sqlite files) and real, refused connections (a
port nothing listens on); nothing mocks MLflow. The server-process faults are in
test_faults_tracking.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lrtrack.tracking.deliver import deliver_spool, find_spools, main
from lrtrack.tracking.spool import CREATE_ID_TAG, Courier, DeliveryError, Spool, SpoolBusy, is_pending
from lrtrack.tracking.runs import (
    TrackedRun,
    Tracker,
    TrackingUnavailable,
    open_store,
    preflight,
)
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


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write in: chmod for a user, ``chattr +i`` for root (which ignores modes)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not available: cannot make a read-only folder")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_preflight_read_only_folder_fails_at_once(read_only_folder: Path) -> None:
    message, took = _fails_fast(f"sqlite:///{read_only_folder}/mlflow.db")
    assert took < 1, took
    assert f"cannot write in {read_only_folder}" in message and "make it writable" in message


def test_a_tracker_on_a_read_only_folder_fails_fast_too(read_only_folder: Path) -> None:
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="cannot create the lock file"):
        Tracker(f"sqlite:///{read_only_folder}/mlflow.db", "x")
    assert time.monotonic() - start < 10


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


def test_importing_changes_no_environment_and_a_tracker_bounds_http_retries_unless_set() -> None:
    code = ("import os, json; before = dict(os.environ); import lrtrack.tracking.runs as t; "
            "assert dict(os.environ) == before, 'import changed the environment'; "
            "t.open_store('http://127.0.0.1:9'); "
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


def _history(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_runs_log_every_step_once_and_end_with_the_right_status(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "runs", flush_every=7, spool_dir=tmp_path / "spool")
    with tracker.start_run("ok", tags={"k": 1}) as ok:
        ok.log_params({"+model": "cnn", "lr": 0.1})
        for i in range(250):
            ok.on_step(i, {"loss": 1.0 / (i + 1)})
        ok.log_dict({"a": 1}, "config/resolved.yaml")
        ok.log_text("hello", "notes.txt")
    with pytest.raises(RuntimeError), tracker.start_run("bad", parent_run_id=ok.run_id):
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), tracker.start_run("stopped"):
        raise KeyboardInterrupt
    tracker.close()
    client = tracker.client
    runs = {r.info.run_name: r for r in client.search_runs([tracker.experiment_id])}
    assert {n: r.info.status for n, r in runs.items()} == {"ok": "FINISHED", "bad": "FAILED", "stopped": "KILLED"}
    assert _history(client, ok.run_id, "loss") == list(range(250))
    assert runs["ok"].data.params == {"_model": "cnn", "lr": "0.1"} and runs["ok"].data.tags["k"] == "1"
    assert runs["bad"].data.tags["mlflow.parentRunId"] == ok.run_id
    assert {a.path for a in client.list_artifacts(ok.run_id)} == {"config", "notes.txt"}
    assert tracker.undelivered is None and not (tmp_path / "spool").exists()  # nothing spooled, no folder


# ---------------------------------------------------------------------- the store goes away


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A courier whose server is gone (a refused port), and the real store its runs belong to."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    client = open_store(store)
    experiment_id = client.create_experiment("offline")
    gone = f"http://127.0.0.1:{free_port()}"
    courier = Courier(MlflowClient(tracking_uri=gone), gone, experiment_id, spool_dir=tmp_path / "spool",
                      retry_delays=(), probe_max_s=0.2)
    return {"store": store, "client": client, "experiment_id": experiment_id, "courier": courier}


def _log_offline(courier: Courier, experiment_id: str, steps: int = 250) -> tuple[TrackedRun, TrackedRun]:
    """A parent and a child run, logged entirely while the store is away (the recipe's writes)."""
    from matplotlib.figure import Figure

    def create(name: str) -> Any:
        return lambda tags: courier.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    parent = TrackedRun(courier, courier.create_run(experiment_id, "pipeline", {}, create("pipeline")), experiment_id)
    child_id = courier.create_run(experiment_id, "train", {"mlflow.parentRunId": parent.run_id}, create("train"))
    with TrackedRun(courier, child_id, experiment_id, flush_every=10) as child:
        child.log_params({"lr": 0.1})
        child.set_tags({"lrtrack.range_test_run_id": parent.run_id})
        start = time.monotonic()
        for i in range(steps):
            child.on_step(i, {"loss": 1.0 / (i + 1), "lr": float("nan") if i == 3 else 1e-3 * i})
        assert time.monotonic() - start < 2.0, "a store that is away must not slow the training loop"
        figure = Figure()
        figure.add_subplot().plot([1, 2, 3])
        child.log_figure(figure, "plots/curve.png")
        child.log_dict({"a": 1}, "config/resolved.yaml")
        checkpoint = Path(courier.spool_dir).parent / "model.pt"
        checkpoint.write_bytes(b"weights")
        child.log_artifact(checkpoint, "checkpoints")
        child.log_summary({"final_val_loss": 0.25}, step=steps - 1)
    parent.end("FINISHED")
    return parent, child


def _check_delivered(client: Any, experiment_id: str, steps: int = 250) -> None:
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    assert sorted(runs) == ["pipeline", "train"]  # each created exactly once
    parent, child = runs["pipeline"], runs["train"]
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id  # placeholder ids resolved
    assert child.data.tags["lrtrack.range_test_run_id"] == parent.info.run_id
    assert child.data.tags[CREATE_ID_TAG].startswith("pending-")
    assert _history(client, child.info.run_id, "loss") == list(range(steps))
    assert _history(client, child.info.run_id, "lr") == list(range(steps))
    assert child.data.params == {"lr": "0.1"} and child.data.metrics["final_val_loss"] == 0.25
    paths = {a.path for folder in ("plots", "config", "checkpoints")
             for a in client.list_artifacts(child.info.run_id, folder)}
    assert paths == {"plots/curve.png", "config/resolved.yaml", "checkpoints/model.pt"}


def test_writes_to_a_store_that_is_away_are_spooled_then_delivered_exactly_once(offline: dict[str, Any]) -> None:
    courier, experiment_id = offline["courier"], offline["experiment_id"]
    parent, child = _log_offline(courier, experiment_id)
    assert is_pending(child.run_id) and not courier.online
    with pytest.raises(DeliveryError) as info:
        courier.close(timeout_s=0.5)
    err = info.value
    assert err.spool is not None and err.command == f"python -m lrtrack.deliver {err.spool}"
    message = str(err)
    assert "still unavailable (connection refused" in message and "after waiting 0.5 s" in message
    assert "501 metric values" in message and "2 runs to create" in message and "2 run endings" in message
    assert "3 artifacts" in message and err.command in message
    backup = err.spool.parent / "backup"
    shutil.copytree(err.spool, backup)

    delivered = deliver_spool(err.spool, tracking_uri=offline["store"])
    assert delivered["metric values"] == 500 + 1  # + the summary metric
    _check_delivered(offline["client"], experiment_id)
    assert deliver_spool(err.spool, tracking_uri=offline["store"]) == {}  # again: already delivered

    # A process killed after sending everything but before recording it: the same journal again.
    (backup / "lock").unlink()
    deliver_spool(backup, tracking_uri=offline["store"])
    _check_delivered(offline["client"], experiment_id)


def test_delivery_resumes_from_where_an_interrupted_delivery_stopped(offline: dict[str, Any]) -> None:
    courier, experiment_id = offline["courier"], offline["experiment_id"]
    _log_offline(courier, experiment_id)
    with pytest.raises(DeliveryError) as info:
        courier.close(timeout_s=0)
    spool = Spool.open(info.value.spool)
    from lrtrack.tracking.spool import apply_op

    for n, (offset, op) in enumerate(spool.pending()):  # deliver the first 4 writes, then "crash"
        apply_op(offline["client"], spool, op)
        spool.advance(offset)
        if n == 3:
            break
    spool.close()
    deliver_spool(info.value.spool, tracking_uri=offline["store"])
    _check_delivered(offline["client"], experiment_id)


def test_deliver_refuses_a_store_without_the_runs_experiment(offline: dict[str, Any], tmp_path: Path) -> None:
    _log_offline(offline["courier"], offline["experiment_id"])
    with pytest.raises(DeliveryError) as info:
        offline["courier"].close(timeout_s=0)
    with pytest.raises(ValueError, match="has no experiment"):
        deliver_spool(info.value.spool, tracking_uri=f"sqlite:///{tmp_path}/other.db")
    assert Spool.open(info.value.spool).has_pending()  # nothing was marked delivered


def test_deliver_gives_up_after_its_timeout_and_keeps_the_spool(offline: dict[str, Any]) -> None:
    _log_offline(offline["courier"], offline["experiment_id"], steps=20)
    with pytest.raises(DeliveryError) as info:
        offline["courier"].close(timeout_s=0)
    start = time.monotonic()
    with pytest.raises(DeliveryError, match="still unavailable after 1 s") as again:
        deliver_spool(info.value.spool, timeout_s=1.0)  # the recorded, refused URI
    assert time.monotonic() - start < 5
    assert again.value.spool == info.value.spool and Spool.open(info.value.spool).has_pending()


def test_deliver_command_exit_codes(offline: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nothing-here")]) == 2
    assert "no lrtrack spool at" in capsys.readouterr().err
    _log_offline(offline["courier"], offline["experiment_id"], steps=20)
    with pytest.raises(DeliveryError) as info:
        offline["courier"].close(timeout_s=0)
    holder = Spool.open(info.value.spool)  # a live process still owns it
    assert main([str(info.value.spool)]) == 1
    assert "in use by another process" in capsys.readouterr().err
    holder.close()
    assert find_spools(tmp_path) == [info.value.spool]
    assert main([str(tmp_path), "--tracking-uri", offline["store"]]) == 0
    assert "delivered 41 metric values" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 0
    assert "already delivered" in capsys.readouterr().out


def test_a_spool_never_stores_credentials(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, "http://alice:s3cret@127.0.0.1:5000", "1")
    spool.append({"op": "end", "run": "abc", "status": "FINISHED"})
    assert "s3cret" not in (spool.path / "spool.json").read_text()
    with pytest.raises(SpoolBusy):
        Spool.open(spool.path)
    spool.close()
    with pytest.raises(ValueError, match="give it again with --tracking-uri"):
        deliver_spool(spool.path)


def test_runs_created_before_an_outage_get_their_writes_when_it_ends(tmp_path: Path) -> None:
    """Online, then away (the sqlite file is replaced by a folder), then back: all arrive once."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    tracker = Tracker(f"sqlite:///{db}", "flaky", flush_every=5, flush_seconds=0.05, spool_dir=tmp_path / "spool")
    tracker.courier.retry_delays = ()
    run = tracker.start_run("train")
    for i in range(20):
        run.on_step(i, {"loss": float(i)})
    run.courier.wait_sent()
    db.parent.rename(tmp_path / "store-away")  # the store vanishes (a lost mount)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "mlflow.db").mkdir()
    for i in range(20, 40):
        run.on_step(i, {"loss": float(i)})
    run.log_params({"lr": 0.5})
    deadline = time.monotonic() + 10
    while tracker.courier.online and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tracker.courier.online and tracker.undelivered is not None
    shutil.rmtree(tmp_path / "store")
    (tmp_path / "store-away").rename(tmp_path / "store")  # back
    run.end()
    tracker.close(timeout_s=20)
    client = tracker.client
    assert _history(client, run.run_id, "loss") == list(range(40))
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).data.params == {"lr": "0.5"}
    assert not (tmp_path / "spool").exists()


# ---------------------------------------------------------------------- the relay (background trackers)


def test_a_background_tracker_spools_everything_and_its_relay_delivers_it(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "mlflow.db"  # a store the relay creates
    db.parent.mkdir()
    tracker = Tracker(f"sqlite:///{db}", "background", flush_every=10, spool_dir=tmp_path / "spool", background=True)
    assert tracker.courier.relaying and tracker.courier.client is None  # this process never talks to MLflow
    start = time.monotonic()
    parent = tracker.start_run("pipeline")
    with tracker.start_run("explore", tags={"link": parent.run_id}, parent_run_id=parent.run_id) as run:
        assert is_pending(run._run_id) and is_pending(parent._run_id)  # placeholders, created by the relay
        run.log_params({"lr": 0.1})
        for i in range(120):
            run.on_step(i, {"loss": 1.0 / (i + 1)})
        run.log_summary({"min_loss": 0.01}, step=0)
        run.log_dict({"a": 1}, "config/resolved.yaml")
    assert time.monotonic() - start < 5  # nothing above waited for the store
    stored = run.stored_run_id()  # waits for the relay to create the run
    assert not is_pending(stored)
    parent.end()
    tracker.close()
    assert tracker.courier._relay is not None and tracker.courier._relay.returncode == 0
    assert not is_pending(run.run_id) and not is_pending(parent.run_id) and run.run_id == stored
    client = tracker.client
    runs = {r.info.run_name: r for r in client.search_runs([tracker.experiment_id])}
    assert {n: r.info.status for n, r in runs.items()} == {"pipeline": "FINISHED", "explore": "FINISHED"}
    explore = runs["explore"]
    assert explore.data.tags["mlflow.parentRunId"] == parent.run_id == explore.data.tags["link"]
    assert _history(client, run.run_id, "loss") == list(range(120))
    assert explore.data.params == {"lr": "0.1"} and explore.data.metrics["min_loss"] == 0.01
    assert {a.path for a in client.list_artifacts(run.run_id, "config")} == {"config/resolved.yaml"}
    assert tracker.undelivered is None and not (tmp_path / "spool").exists()


def test_a_background_tracker_that_logged_nothing_ends_at_once_and_creates_no_store(tmp_path: Path) -> None:
    """A job that fails in its set-up: no store file, no spool, and no wait for MLflow's import."""
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", "nothing", spool_dir=tmp_path / "spool", background=True)
    relay = tracker.courier._relay
    assert relay is not None
    start = time.monotonic()
    tracker.close()
    assert time.monotonic() - start < 1.5
    assert relay.poll() is not None and not db.exists() and not (tmp_path / "spool").exists()


def test_the_relay_delivers_what_a_killed_process_logged(tmp_path: Path) -> None:
    """kill -9 after logging: the relay (its own process, its own session) still delivers it all."""
    db = tmp_path / "mlflow.db"
    script = f"""
import os, signal
from lrtrack.tracking.runs import Tracker
tracker = Tracker("sqlite:///{db}", "killed", spool_dir={str(tmp_path / "spool")!r}, flush_every=5,
                  background=True)
run = tracker.start_run("doomed")
run.log_params({{"lr": 0.3}})
for i in range(50):
    run.on_step(i, {{"loss": float(i)}})
run.metrics.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], env=clean_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == -9
    deadline = time.monotonic() + 90
    while True:  # the relay goes on after its parent died
        if db.exists():
            client = open_store(f"sqlite:///{db}")
            experiment = client.get_experiment_by_name("killed")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and len(_history(client, runs[0].info.run_id, "loss")) == 50:
                break
        assert time.monotonic() < deadline, "the relay did not deliver what the killed process logged"
        time.sleep(0.5)
    (stored,) = runs
    assert stored.info.run_name == "doomed" and stored.data.params == {"lr": "0.3"}
    assert stored.info.status == "RUNNING"  # nobody ended it: train.resume reopens such a run
    while find_spools(tmp_path / "spool"):  # delivered: the relay removes the spool its parent left
        assert time.monotonic() < deadline, "the relay left the delivered spool behind"
        time.sleep(0.2)


def test_a_store_that_never_opens_keeps_the_writes_for_deliver(tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(refused, "never-opened", spool_dir=tmp_path / "spool", delivery_timeout_s=1.0,
                      background=True)
    with tracker.start_run("explore") as run:
        for i in range(30):
            run.on_step(i, {"loss": float(i)})
    with pytest.raises(DeliveryError, match="deliver them when the store is back") as info:
        tracker.close()
    assert "connection refused" in str(info.value)  # the relay's last error, in the parent's message
    with pytest.raises(TrackingUnavailable, match="cannot be used"):
        tracker.client  # noqa: B018
    # Delivered later into a store that has never seen the experiment: it is created by name.
    store = f"sqlite:///{tmp_path}/later.db"
    assert deliver_spool(info.value.spool, tracking_uri=store)["metric values"] == 30
    client = open_store(store)
    experiment = client.get_experiment_by_name("never-opened")
    (stored,) = client.search_runs([experiment.experiment_id])
    assert stored.info.run_name == "explore" and stored.info.status == "FINISHED"
    assert _history(client, stored.info.run_id, "loss") == list(range(30))


# ---------------------------------------------------------------------- fresh stores from a template


def test_fresh_sqlite_stores_after_the_first_are_copies_of_an_empty_template(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from lrtrack.tracking import store_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = store_template.template_path()
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
    from lrtrack.tracking import store_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    template = store_template.template_path()
    assert template is not None
    template.parent.mkdir(parents=True)
    template.write_bytes(b"this is not an sqlite file" * 100)
    with caplog.at_level("WARNING", logger="lrtrack.tracking.store_template"):
        client = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    assert "is not one; it is deleted" in caplog.text
    assert client.get_experiment("0").name == "Default"
    assert template.is_file() and template.read_bytes()[:16] == b"SQLite format 3\x00"  # a good one replaced it


def test_replay_drops_each_artifact_copy_once_it_is_delivered(tmp_path: Path) -> None:
    """A long run's checkpoints (copied into the spool for the relay) must not pile up on disk."""
    from lrtrack.tracking.spool import replay

    client = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("copies")).info.run_id
    spool = Spool.create(tmp_path / "spool", f"sqlite:///{tmp_path}/mlflow.db", None, "copies")
    copies = []
    for epoch in range(3):
        target, relative = spool.stash("last.pt")
        target.write_bytes(b"weights %d" % epoch)
        spool.append({"op": "artifact", "run": run_id, "file": relative, "path": "checkpoints"})
        copies.append(target)
    assert all(c.is_file() for c in copies)
    assert replay(client, spool)
    assert not any(c.exists() for c in copies) and not list((spool.path / "files").iterdir())
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/last.pt"]
    local = client.download_artifacts(run_id, "checkpoints/last.pt", str(tmp_path))
    assert Path(local).read_bytes() == b"weights 2"  # the last one delivered wins, as an upload would
    spool.close()


def test_a_checkpoint_waits_in_the_spool_as_a_hard_link_that_a_replaced_file_does_not_change(
        offline: dict[str, Any], tmp_path: Path) -> None:
    courier, experiment_id = offline["courier"], offline["experiment_id"]
    run = TrackedRun(courier, courier.create_run(experiment_id, "train", {}, lambda tags: "never"), experiment_id)
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"epoch 1")
    run.on_checkpoint(checkpoint, step=31)
    (waiting,) = [p for p in (courier.spool.path / "files").rglob("last.pt")]
    assert waiting.stat().st_ino == checkpoint.stat().st_ino  # linked, not copied
    aside = tmp_path / "last.pt.tmp"
    aside.write_bytes(b"epoch 2")
    os.replace(aside, checkpoint)  # how lrtrack.engine.train writes the next one
    assert waiting.read_bytes() == b"epoch 1"
    run.log_artifact(checkpoint, "other")  # any other file: a copy (it might be rewritten in place)
    copies = [p for p in (courier.spool.path / "files").rglob("last.pt") if p != waiting]
    assert len(copies) == 1 and copies[0].stat().st_ino != checkpoint.stat().st_ino
    with pytest.raises(DeliveryError):
        courier.close(timeout_s=0)


def test_a_relay_that_dies_loses_nothing_the_spool_is_kept_for_deliver(tmp_path: Path) -> None:
    """The relay killed mid-run (the OOM killer, a stray kill): the job goes on, ends with the
    deliver command, and everything arrives once delivered."""
    import signal

    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(store, "relay-died", spool_dir=tmp_path / "spool", flush_every=10, delivery_timeout_s=2.0,
                      background=True)
    relay = tracker.courier._relay
    assert relay is not None
    with tracker.start_run("train") as run:
        for i in range(20):
            run.on_step(i, {"loss": float(i)})
        os.kill(relay.pid, signal.SIGKILL)
        relay.wait(timeout=30)
        for i in range(20, 40):
            run.on_step(i, {"loss": float(i)})
        run.log_params({"lr": 0.2})
    with pytest.raises(DeliveryError, match="python -m lrtrack.deliver") as info:
        tracker.close()
    assert "relay" in str(info.value) and "-9" in str(info.value)  # why it was not delivered
    deliver_spool(info.value.spool, tracking_uri=store)
    client = open_store(store)
    (stored,) = client.search_runs([client.get_experiment_by_name("relay-died").experiment_id])
    assert stored.info.status == "FINISHED" and stored.data.params == {"lr": "0.2"}
    assert _history(client, stored.info.run_id, "loss") == list(range(40))


def test_the_relay_ignores_the_sigterm_a_cluster_sends_every_process_of_a_job(tmp_path: Path) -> None:
    """Preemption (SLURM signals all of a job's processes): the job ends its runs as it stops, and
    the relay, which got the same SIGTERM, still delivers that."""
    import signal

    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(store, "preempted", spool_dir=tmp_path / "spool", flush_every=5, background=True)
    relay = tracker.courier._relay
    assert relay is not None
    run = tracker.start_run("train")
    for i in range(10):
        run.on_step(i, {"loss": float(i)})
    assert run.stored_run_id() and not is_pending(run.run_id)  # the relay is up and delivering
    os.kill(relay.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert relay.poll() is None  # still there
    run.end("KILLED")
    tracker.close()
    client = open_store(store)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "KILLED" and _history(client, run.run_id, "loss") == list(range(10))
