"""Secrets: URL userinfo masked whole (parsed, whatever it holds), settings named like secrets and
values taken from the environment (``${oc.env:...}``) masked everywhere lrtrack writes them, and the
journal, checkpoints and logs readable by their owner only."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from lrtrack.tracking.redact import (
    MASK,
    install_log_redaction,
    redact,
    redact_tree,
    register_secret,
)


@pytest.mark.parametrize("uri, shown", [
    ("http://bob:p@ss@w0rd@mlflow.example.com:5000/x", "http://***@mlflow.example.com:5000/x"),
    ("http://bob:pa/ss@host:5000", "http://***@host:5000"),
    ("http://bob:pa#ss@host:5000", "http://***@host:5000"),
    ("https://tok:en:with:colons@host/path", "https://***@host/path"),
    ("postgresql://u:p@w@db/mlflow?password=x@y&sslmode=require", "postgresql://***@db/mlflow?password=***&sslmode=require"),
])
def test_the_whole_userinfo_is_masked_whatever_it_holds(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    assert redact(f"python -m lrtrack tracking.tracking_uri={uri} seed=1") == (
        f"python -m lrtrack tracking.tracking_uri={shown} seed=1")


def test_what_is_no_secret_is_left_alone() -> None:
    for text in ("http://host:5000/a@b", "sqlite:////tmp/mlflow.db", "mail me: a@b.c", "http://127.0.0.1:5000",
                 "data.tokenizer=bert train.max_tokens=512 lr=0.1"):
        assert redact(text) == text


def test_settings_named_like_secrets_are_masked_by_name() -> None:
    assert redact("python -m lrtrack +model.api_key=abc +data.db_password='x y' hf_token=t1") == (
        "python -m lrtrack +model.api_key=*** +data.db_password='***' hf_token=***")
    config = {"model": {"api_key": "abc", "secret_path": "/s", "max_tokens": 512, "tokenizer": "bert"},
              "flat.password": "pw", "n": 3, "MY_TOKEN": 12345}
    assert redact_tree(config) == {"model": {"api_key": MASK, "secret_path": MASK, "max_tokens": 512,
                                             "tokenizer": "bert"}, "flat.password": MASK, "n": 3, "MY_TOKEN": MASK}


def test_registered_values_and_log_lines_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("env-value-7f3a")
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("lrtrack.test").info("token is %s and uri %s", "env-value-7f3a", "http://u:p@w@h:1")
    assert caplog.records[-1].getMessage() == "token is *** and uri http://***@h:1"


def test_the_journal_is_private(tmp_path: Path) -> None:
    from lrtrack.tracking.journal import Journal

    journal = Journal.create(tmp_path / "spool", "sqlite:////x/mlflow.db", "e")
    journal.append("params", "r1", params={"a": "1"})
    journal.reject({"op": "x"}, "why")
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o700
    for path in journal.path.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    journal.remove()


MODEL = '''
from lrtrack.engine.models import MnistCNN

class Net(MnistCNN):
    def __init__(self, api_key: str = "", **kw):
        super().__init__(**kw)
'''


@pytest.mark.slow
def test_an_env_token_and_a_secret_setting_reach_no_param_tag_artifact_log_or_file(
        tmp_path: Path, premade_store, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli_here

    premade_store(tmp_path)
    (tmp_path / "secretmodel.py").write_text(MODEL)
    token, password = "tok-ENV-81d0c2", "pw-SET-a9e4"
    monkeypatch.setenv("SECRETS_TEST_TOKEN", token)
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train", "bounds.max_lr=0.05",
                         "model._target_=secretmodel.Net", "+model.api_key=${oc.env:SECRETS_TEST_TOKEN}",
                         f"+data.db_password={password}", "data=fake"], tmp_path)
    if proc.returncode == 2 and "db_password" in proc.stderr:  # fake data has no such setting: refused, masked
        assert password not in proc.stderr and "Traceback" not in proc.stderr
        proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train", "bounds.max_lr=0.05",
                             "model._target_=secretmodel.Net", "+model.api_key=${oc.env:SECRETS_TEST_TOKEN}"],
                            tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert token not in proc.stdout + proc.stderr and password not in proc.stdout + proc.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(["1"])
    assert runs
    for run in runs:
        record = json.dumps([run.data.params, run.data.tags, run.info.run_name])
        assert token not in record and password not in record
        assert run.data.params["model.api_key"] == MASK
        local = client.download_artifacts(run.info.run_id, "config/resolved.yaml", str(tmp_path / run.info.run_id))
        assert token not in Path(local).read_text()
    for path in (tmp_path / "outputs").rglob("*"):  # the refused run's folder too
        if path.is_file():
            assert token.encode() not in path.read_bytes() and password.encode() not in path.read_bytes(), path
    output = max(tmp_path.glob("outputs/*/*"))  # the run that trained
    for path in [*output.glob("*.log"), *output.glob(".hydra/*.yaml"), *output.glob("checkpoints/*.pt")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.slow
@pytest.mark.parametrize(("password", "pieces", "code"), [
    ("p@ss@w0rd-Zq", ["p@ss@w0rd-Zq", "w0rd-Zq", "ss@w0rd"], 0),
    ("LfT1q RgT1z", ["LfT1q", "RgT1z"], 0),  # a space ends a URL in free text: masked as a literal
    ("LfT0q/RgT0z", ["LfT0q", "RgT0z"], 2),  # "/" ends the authority for urllib: refused, masked whole
    ("7731/RgTzz", ["7731/", "RgTzz"], 2),  # digits then "/" look like a port
])
def test_a_password_of_any_characters_reaches_no_record_of_a_real_server(
        tmp_path: Path, mlflow_server, password: str, pieces: list[str], code: int) -> None:
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli

    uri = mlflow_server.uri.replace("http://", f"http://alice:{password}@")
    (tmp_path / "kwmodel.py").write_text("from lrtrack.engine.models import MnistCNN\n\n\nclass Net(MnistCNN):\n"
                                         "    def __init__(self, **settings):\n        super().__init__()\n")
    proc = run_cli(["+model=mnist_cnn", "+experiment=smoke", "stage=range_test", f"tracking.tracking_uri='{uri}'",
                    "model._target_=kwmodel.Net", "+model.db_password_2=86753091",
                    "+model.credentials={github: DictSEC-5566}", "+model.note=${model.db_password_2}"], tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    pieces = [*pieces, "86753091", "DictSEC-5566"]
    assert not any(p in proc.stdout + proc.stderr for p in pieces)
    if code:
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("lrtrack: error:")]
        assert "not a valid URL" in line and "percent-encoded" in line and "http://***@" in line
        assert not any(p.encode() in f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() for p in pieces)
        return
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lrtrack-mnist_cnn").experiment_id])
    record = json.dumps([run.data.params, run.data.tags, run.info.run_name])
    assert not any(p in record for p in pieces)
    assert run.data.params["tracking.tracking_uri"] == mlflow_server.uri.replace("http://", "http://***@")
    for path in ("config/resolved.yaml", "config/hydra_overrides.yaml"):
        local = client.download_artifacts(run.info.run_id, path, str(tmp_path / "dl"))
        assert not any(p in Path(local).read_text() for p in pieces)
    for path in tmp_path.glob("outputs/**/*"):
        if path.is_file():
            assert not any(p.encode() in path.read_bytes() for p in pieces), path


def test_tracebacks_are_masked_in_log_lines_and_when_a_bug_ends_the_process() -> None:
    """A bug keeps its traceback, but an exception's message may quote a URI with its password."""
    import subprocess
    import sys

    program = (
        "import logging\n"
        "from lrtrack.tracking.redact import install_log_redaction\n"
        "install_log_redaction()\n"
        "logging.basicConfig()\n"
        "try:\n"
        "    raise ConnectionError('cannot reach http://bob:hunter2@store:5000/api')\n"
        "except ConnectionError:\n"
        "    logging.getLogger('x').exception('delivery failed')\n"
        "raise RuntimeError('a bug while talking to https://ann:s3cr@t@store/')\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "hunter2" not in proc.stderr and "s3cr@t" not in proc.stderr
    # Both tracebacks are still there, with the masked URIs.
    assert "ERROR:x:delivery failed\nTraceback (most recent call last):" in proc.stderr
    assert "ConnectionError: cannot reach http://***@store:5000/api" in proc.stderr
    assert proc.stderr.rstrip().endswith("RuntimeError: a bug while talking to https://***@store/")


@pytest.mark.parametrize(("text", "shown"), [
    # A quoted value after "=" is no key: the word after it is not a secret.
    ("train.resume='xpasswdx': no such MLflow run", "train.resume='xpasswdx': no such MLflow run"),
    ("{'password': 'abc', 'api_key': 'k'}", "{'password': '***', 'api_key': '***'}"),
    ('"token": "zz"', '"token": "***"'),
    ("--db-password=s3 y", "--db-password=*** y"),
])
def test_keyed_secrets_are_masked_and_quoted_values_are_not_taken_for_keys(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_what_hydra_prints_itself_is_masked_too(tmp_path: Path) -> None:
    """``--cfg job`` prints the composed config with Hydra's own print, not through a log line."""
    from tests.conftest import run_cli

    proc = run_cli(["--cfg", "job", "+model=mnist_cnn", "tracking.tracking_uri='http://bob:Pw0rd ZZ@127.0.0.1:5000'",
                    "+model.db_password=PWSETTING9"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tracking_uri: http://***@127.0.0.1:5000" in proc.stdout and "db_password: ***" in proc.stdout
    assert not any(p in proc.stdout + proc.stderr for p in ("Pw0rd", "PWSETTING9"))
