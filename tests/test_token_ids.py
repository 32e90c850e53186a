"""Integer inputs keep their dtype (issue 22): token ids in a ``data=tensors`` file reach an
``nn.Embedding`` as int64; only floating data is cast; the first-batch check names dtypes when
they are the cause."""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from lrtrack import data as lrdata
from lrtrack.engine.tasks import first_batch_problem
from tests.conftest import run_cli_here

TOKENS_MODEL = '''
import torch
from torch import nn


class TokenClassifier(nn.Module):
    """Token ids (batch, length) -> class scores: an embedding bag and a linear head."""

    def __init__(self, vocab: int = 64, dim: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))
'''


def _token_data(path: Path, dtype: torch.dtype = torch.int64) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (320, 6), generator=g)
    labels = ids[:, 0] % 4  # learnable from the first token
    torch.save({"x_train": ids[:256].to(dtype), "y_train": labels[:256],
                "x_val": ids[256:].to(dtype), "y_val": labels[256:]}, path)


def _project(tmp_path: Path, dtype: torch.dtype = torch.int64) -> None:
    (tmp_path / "tokens.py").write_text(TOKENS_MODEL)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tokens.yaml").write_text(textwrap.dedent("""\
        _target_: tokens.TokenClassifier
        vocab: 64
        dim: 16
        num_classes: 4
        """))
    _token_data(tmp_path / "ids.pt", dtype)


ARGS = ["--config-dir", "conf", "+model=tokens", "data=tensors", "data.path=ids.pt", "data.batch_size=32",
        "criterion=cross_entropy", "optimizer=adam", "optimizer.lr=1e-4", "finder.num_iter=24", "finder.repeats=1",
        "finder.probe_steps=0", "train.epochs=2", "progress=false"]


def test_integer_inputs_keep_their_dtype_and_floats_become_float32(tmp_path: Path) -> None:
    torch.save({"x_train": torch.arange(12).reshape(6, 2).to(torch.int32), "y_train": torch.arange(6) % 2,
                "x_val": torch.ones(2, 2, dtype=torch.float64), "y_val": torch.zeros(2, dtype=torch.int64)},
               tmp_path / "mixed.pt")
    bundle = lrdata.tensors(tmp_path / "mixed.pt", batch_size=6)
    assert next(iter(bundle.train))[0].dtype == torch.int32  # kept as stored
    assert next(iter(bundle.val))[0].dtype == torch.float32  # float64 cast
    assert "x_train (6, 2) int32" in bundle.source


def test_the_first_batch_check_names_dtypes_when_they_are_the_cause(tmp_path: Path) -> None:
    embed = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    targets = torch.zeros(4, dtype=torch.int64)
    problem = first_batch_problem(embed, (torch.ones(4, 2), targets), criterion=torch.nn.CrossEntropyLoss())
    assert problem is not None and problem.startswith("the model cannot take the data's inputs (4, 2) float32: ")
    assert problem.endswith("; the inputs are float32 but the model's nn.Embedding takes integer ids: store the ids "
                            "as integers (int64) in the data (data=tensors keeps integer inputs as they are)")
    linear = torch.nn.Linear(2, 3)
    problem = first_batch_problem(linear, (torch.ones(4, 2, dtype=torch.uint8), targets),
                                  criterion=torch.nn.CrossEntropyLoss())
    assert problem is not None and problem.endswith(
        "the inputs are uint8 (integers) but the model computes in float32: store the inputs as floats (images: "
        "x.float() / 255), or start the model with nn.Embedding for token ids")
    shapes = first_batch_problem(linear, (torch.ones(4, 5), targets), criterion=torch.nn.CrossEntropyLoss())
    assert shapes is not None and shapes.endswith("make the model.* settings fit the data (input size, channels)")


@pytest.mark.slow
def test_a_token_id_model_trains_through_data_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(tmp_path)
    proc = run_cli_here(ARGS, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lrtrack-tokens")
    (final,) = client.search_runs([exp.experiment_id], filter_string="tags.`lrtrack.stage` = 'final'")
    assert final.info.status == "FINISHED"
    assert "x_train (256, 6) int64" in final.data.tags["lrtrack.data_source"]
    assert final.data.metrics["final_val_accuracy"] > 0.25  # better than chance on the first token's class
    # The logged model takes int64 ids (its class comes from the launch folder, as in the job).
    monkeypatch.syspath_prepend(str(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        (logged,) = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
        spec = Model.load(f"models:/{logged.model_id}").signature.inputs.to_dict()[0]["tensor-spec"]
        assert spec["dtype"] == "int64" and list(spec["shape"]) == [-1, 6]
        model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
        assert model(torch.randint(0, 64, (3, 6))).shape == (3, 4)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_token_ids_stored_as_floats_get_a_hint_naming_the_dtypes(tmp_path: Path) -> None:
    _project(tmp_path, dtype=torch.float32)
    proc = run_cli_here(ARGS, tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lrtrack: error: first batch: the model cannot take the data's inputs (32, 6) float32")
    assert "the model's nn.Embedding takes integer ids: store the ids as integers (int64)" in line
