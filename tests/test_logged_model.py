"""The final run's trained model as an MLflow 3 logged model (issue 22): the real CLI on tiny
settings, read back through MLflow's own client, loaded with ``mlflow.pytorch.load_model`` and
compared with the run's checkpoint; registered with ``tracking.register_model``."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from lrtrack.engine.models import MnistCNN
from tests.conftest import run_cli_here

SMOKE = ["+experiment=smoke"]


@pytest.fixture
def fluent_uri(tmp_path: Path):
    """MLflow's fluent API (load_model, search_logged_models) pointed at the test's store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


def _final_run(client: MlflowClient, experiment: str) -> object:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`lrtrack.stage` = 'final'")
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_the_final_run_logs_a_loadable_registered_model(tmp_path: Path, fluent_uri: str) -> None:
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "tracking.register_model=smoke_cnn"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(fluent_uri)
    final = _final_run(client, "lrtrack-mnist_cnn")
    assert final.info.status == "FINISHED"
    # The checkpoint for resuming stays as it was.
    assert [a.path for a in client.list_artifacts(final.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]

    models = mlflow.search_logged_models(experiment_ids=[final.info.experiment_id], output_format="list")
    assert [(m.name, m.source_run_id) for m in models] == [("mnist_cnn", final.info.run_id)]
    logged = models[0]
    assert final.outputs.model_outputs[0].model_id == logged.model_id  # linked to the run (its Models tab)
    assert logged.metrics and {m.key for m in logged.metrics} >= {"final_val_loss"}

    info = Model.load(f"models:/{logged.model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None
    inputs = info.signature.inputs.to_dict()[0]
    assert list(inputs["tensor-spec"]["shape"]) == [-1, 1, 28, 28] and inputs["tensor-spec"]["dtype"] == "float32"

    loaded = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    checkpoint = torch.load(next(tmp_path.rglob("checkpoints/last.pt")), map_location="cpu", weights_only=False)
    trained = MnistCNN()
    trained.load_state_dict(checkpoint["model"])
    trained.eval()
    loaded.eval()
    x = torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))
        assert not torch.allclose(loaded(x), MnistCNN().eval()(x))  # trained weights, not fresh ones

    versions = client.search_model_versions("name='smoke_cnn'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", final.info.run_id)]
    registered = mlflow.pytorch.load_model("models:/smoke_cnn/1")
    with torch.no_grad():
        torch.testing.assert_close(registered.eval()(x), trained(x))


@pytest.mark.slow
def test_log_model_false_logs_no_model(tmp_path: Path, fluent_uri: str) -> None:
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "tracking.log_model=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    final = _final_run(MlflowClient(fluent_uri), "lrtrack-mnist_cnn")
    assert mlflow.search_logged_models(experiment_ids=[final.info.experiment_id], output_format="list") == []


def test_a_journaled_model_waits_for_the_store_and_is_delivered_later(tmp_path: Path, fluent_uri: str) -> None:
    """The job only writes the module into its journal; ``python -m lrtrack.deliver``'s drain logs
    it (an integer-input model: the signature keeps int64), and a second delivery logs nothing."""
    from lrtrack.tracking.deliver import deliver_journal
    from lrtrack.tracking.journal import Journal
    from lrtrack.tracking.runs import TrackedRun
    from lrtrack.tracking.store import open_store

    journal = Journal.create(tmp_path / "spool", fluent_uri, "models")
    run = TrackedRun(journal, "ab" * 8)
    journal.append("create", run.run_id, name="final", tags={}, start=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 4), torch.nn.Flatten(), torch.nn.Linear(12, 3))
    ids = torch.randint(0, 50, (8, 3))
    run.log_model(model, name="tokens", input_example=ids[:5])
    run.end()
    journal.close()
    assert "mlflow" not in {m.split(".")[0] for m in _modules_imported_by_log_model()}
    open_store(fluent_uri)  # the store a job's start makes: deliver never creates one (tests/test_store_outages.py)
    assert deliver_journal(journal.path)["models"] == 1
    assert deliver_journal(journal.path)["models"] == 0
    (logged,) = mlflow.search_logged_models(experiment_ids=[MlflowClient(fluent_uri).get_experiment_by_name(
        "models").experiment_id], output_format="list")
    assert logged.name == "tokens"
    spec = Model.load(f"models:/{logged.model_id}").signature.inputs.to_dict()[0]["tensor-spec"]
    assert spec["dtype"] == "int64"
    with torch.no_grad():
        torch.testing.assert_close(mlflow.pytorch.load_model(f"models:/{logged.model_id}")(ids), model(ids))


def _modules_imported_by_log_model() -> set[str]:
    """What a fresh process imports to journal a model: torch, not MLflow (the job never imports it)."""
    import subprocess
    import sys

    code = ("import sys, tempfile, torch; from lrtrack.tracking.journal import Journal; "
            "from lrtrack.tracking.runs import TrackedRun; "
            "j = Journal.create(tempfile.mkdtemp(), 'sqlite:///x.db', 'e'); "
            "TrackedRun(j, 'a' * 16).log_model(torch.nn.Linear(2, 1), name='m', input_example=torch.ones(1, 2)); "
            "print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())
