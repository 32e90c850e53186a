"""lrtrack.integrations: the range test inside a real Lightning ``Trainer.fit`` and before a real
Hugging Face ``Trainer.train``, read back from the real sqlite MLflow store they wrote.

Each test checks what a user relies on: the ``explore`` run in lrtrack's layout, the framework's
own run tagged ``final`` and linked to it, its logged LR peaking at ``bounds.max_lr_used``, the
model put back as it was before the range test, and one-line errors for what cannot work. The
examples run as processes from a copy of their folder (slow).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

pl = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")

from lightning.pytorch.callbacks import Callback, LearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lrtrack.integrations.lightning import LRRangeTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEAK_TOLERANCE = 0.02  # the issue's: the final run's logged LR peaks at bounds.max_lr_used within 2%


# ---------------------------------------------------------------------- reading the store back



@pytest.fixture(autouse=True)
def _mlflow_environment_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's MLFlowLogger sets MLFLOW_TRACKING_URI in this process: put it back after each test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

def runs_by_stage(db: Path, experiment: str) -> tuple[MlflowClient, dict[str, Any]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in {db}"
    runs = client.search_runs([exp.experiment_id])
    stages = sorted(r.data.tags.get("lrtrack.stage", "?") for r in runs)
    assert stages == ["explore", "final"], stages
    return client, {r.data.tags["lrtrack.stage"]: r for r in runs}


def check_linked(client: MlflowClient, runs: dict[str, Any], lr_key: str, command: str) -> float:
    """The explore/final pair as the issue describes it; returns the suggestion used."""
    explore, final = runs["explore"], runs["final"]
    assert explore.info.status == final.info.status == "FINISHED"
    assert final.data.tags["lrtrack.range_test_run_id"] == explore.info.run_id
    assert explore.data.tags["lrtrack.command"] == final.data.tags["lrtrack.command"] == command
    assert explore.data.tags["lrtrack.suggestion_rule"] == "confirmed"
    used = float(final.data.params["bounds.max_lr_used"])
    assert used == pytest.approx(explore.data.metrics["suggested_lr/confirmed"], rel=1e-9)
    assert float(final.data.params["bounds.base_lr_used"]) == pytest.approx(used / 4)
    artifacts = {a.path for a in client.list_artifacts(explore.info.run_id, "range_test")}
    assert {"range_test/plot.png", "range_test/history.csv", "range_test/confirmation.json"} <= artifacts
    steps = int(explore.data.metrics["steps"])
    assert len(client.get_metric_history(explore.info.run_id, "loss")) == steps
    assert explore.data.metrics["probes"] >= 1  # the confirmed rule ran its probes
    history = client.get_metric_history(final.info.run_id, lr_key)
    assert len(history) > 10
    peak = max(m.value for m in history)
    assert abs(peak / used - 1) < PEAK_TOLERANCE, (peak, used)
    return used


# ---------------------------------------------------------------------- Lightning


class Blobs(pl.LightningModule):
    """Two-layer MLP on 4 Gaussian blobs; ``configure_optimizers`` reads ``self.lr``."""

    def __init__(self, lr: float = 0.01, own_schedule: bool = True, with_lr: bool = True) -> None:
        super().__init__()
        if with_lr:
            self.lr = lr
        self.own_schedule = own_schedule
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        gen = torch.Generator().manual_seed(0)
        centres = torch.randn(4, 8, generator=gen) * 2
        y = torch.randint(0, 4, (640,), generator=gen)
        self.data = TensorDataset(centres[y] + torch.randn(640, 8, generator=gen), y)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=getattr(self, "lr", 0.01), momentum=0.9)
        if not self.own_schedule:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))


class Weights(Callback):
    """Records the module's weights and the optimizer's LR when ``fit`` starts (before or after LRRangeTest)."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.optimizer = trainer.optimizers[0]


def fit(tmp_path: Path, module: pl.LightningModule, finder: LRRangeTest, *, epochs: int = 2,
        precision: str = "32-true") -> tuple[Any, ...]:
    torch.manual_seed(0)
    logger = MLFlowLogger(experiment_name="blobs", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    before, after = Weights(), Weights()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
                         precision=precision,
                         callbacks=[before, finder, after, LearningRateMonitor(logging_interval="step")],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module)
    return trainer, before, after


def test_lightning_range_test_sets_the_modules_schedule_and_links_the_final_run(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)  # creating a store is the examples' tests' business
    module = Blobs()
    finder = LRRangeTest(start_lr=1e-4, end_lr=10.0, num_iter=40)
    trainer, before, after = fit(tmp_path, module, finder)
    # The range test's steps left nothing behind: the next callback sees the weights of before it.
    assert before.state.keys() == after.state.keys()
    assert all(torch.equal(before.state[k], after.state[k]) for k in before.state)
    # configure_optimizers ran again with self.lr = the suggestion: a new optimizer, its 1cycle peaking there.
    rt = finder.range_test
    assert rt is not None and module.lr == rt.suggestion == rt.bounds.max_lr
    assert after.optimizer is not before.optimizer
    assert after.optimizer.param_groups[0]["max_lr"] == pytest.approx(rt.suggestion)
    client, runs = runs_by_stage(tmp_path / "mlflow.db", "blobs")
    assert check_linked(client, runs, "lr", "lightning") == pytest.approx(rt.suggestion)
    assert runs["final"].info.run_id == trainer.logger.run_id
    assert runs["explore"].info.run_id == rt.run_id
    assert runs["explore"].data.params["integration.schedule"] == "module"
    assert runs["explore"].data.params["optimizer._target_"] == "torch.optim.sgd.SGD"
    assert "train_loss" in runs["final"].data.metrics  # the module's own self.log still reaches its run


def test_lightning_adds_a_onecycle_on_request_to_a_module_without_an_lr(tmp_path: Path, premade_store) -> None:
    """... in bfloat16 mixed precision: the range test's steps run in the precision plugin's autocast."""
    premade_store(tmp_path)
    module = Blobs(own_schedule=False, with_lr=False)
    autocast: list[bool] = []
    step = module.training_step
    module.training_step = lambda *a: (autocast.append(torch.is_autocast_enabled("cpu")), step(*a))[1]
    finder = LRRangeTest(schedule="onecycle", start_lr=1e-4, end_lr=10.0, num_iter=30, base_divisor=5)
    trainer, _, after = fit(tmp_path, module, finder, precision="bf16-mixed")
    rt = finder.range_test
    assert len(autocast) > rt.result.total_steps and all(autocast)
    (config,) = trainer.lr_scheduler_configs
    assert config.name == "lr" and config.interval == "step"
    assert after.optimizer.param_groups[0]["initial_lr"] == pytest.approx(rt.bounds.base_lr)  # starts at base_lr
    client, runs = runs_by_stage(tmp_path / "mlflow.db", "blobs")
    final = runs["final"]
    assert float(final.data.params["bounds.base_lr_used"]) == pytest.approx(rt.bounds.max_lr / 5)
    peak = max(m.value for m in client.get_metric_history(final.info.run_id, "lr"))
    assert abs(peak / rt.bounds.max_lr - 1) < PEAK_TOLERANCE


def test_lightning_refuses_in_one_line_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^schedule must be None \(the module's own\) or 'onecycle'; got 'cosine'$"):
        LRRangeTest(schedule="cosine")
    with pytest.raises(ValueError, match=r"^unknown range test setting\(s\) lr_max; allowed: .*end_lr"):
        LRRangeTest(lr_max=1.0)
    with pytest.raises(ValueError, match=r"^base_divisor must be a number >= 1"):
        LRRangeTest(base_divisor=0.5)
    # The grid's settings on entry, by the engine's own check (not at fit, minutes later).
    with pytest.raises(ValueError, match=r"^end_lr must not be negative; got -1$"):
        LRRangeTest(end_lr=-1)
    with pytest.raises(ValueError, match=r"^num_iter must be >= 2 \(a curve needs two points\); got 0$"):
        LRRangeTest(num_iter=0)
    with pytest.raises(ValueError, match=r"^start_lr must be smaller than end_lr; got start_lr=1.0, end_lr=0.5$"):
        LRRangeTest(start_lr=1.0, end_lr=0.5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[LRRangeTest(num_iter=10)],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"no lr or learning_rate attribute .*schedule='onecycle'"):
        trainer.fit(Blobs(own_schedule=False, with_lr=False))

    class TwoLoaders(Blobs):
        def train_dataloader(self) -> Any:
            return [super().train_dataloader(), super().train_dataloader()]

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[LRRangeTest(num_iter=10)],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"^LRRangeTest needs one train dataloader; got 2 \(a list\)$"):
        trainer.fit(TwoLoaders(own_schedule=False))
    assert not (tmp_path / "mlflow.db").exists()


def test_lightning_resuming_from_a_checkpoint_runs_no_range_test(tmp_path: Path) -> None:
    """The checkpoint's optimizer and schedule are restored after on_fit_start: no new bounds to set."""
    settings: dict[str, Any] = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
                                    enable_checkpointing=False, enable_model_summary=False)
    first = pl.Trainer(max_epochs=1, **settings)
    first.fit(Blobs(own_schedule=False))
    first.save_checkpoint(tmp_path / "last.ckpt")
    finder = LRRangeTest(num_iter=10, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    resumed = pl.Trainer(max_epochs=2, callbacks=[finder], **settings)
    resumed.fit(Blobs(own_schedule=False), ckpt_path=tmp_path / "last.ckpt")
    assert finder.range_test is None and resumed.current_epoch == 2
    assert resumed.optimizers[0].param_groups[0]["lr"] == 0.01  # the checkpoint's, untouched
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------- Hugging Face Trainer


@pytest.fixture
def fluent_mlflow_restored() -> Any:
    """range_test points MLflow's fluent API (MLflowCallback's) at the test's store: put it back after."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    yield
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    fluent._active_experiment_id = None


def tiny_bert_trainer(tmp_path: Path, **overrides: Any) -> Any:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=8, num_labels=2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 32, (256, 8), generator=gen)
    labels = torch.randint(0, 2, (256,), generator=gen)
    ids[labels == 1, 0] = 3  # the label: whether the sequence starts with token 3
    data = [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels)]
    settings = dict(output_dir=str(tmp_path / "out"), learning_rate=1e-5, weight_decay=0.1,
                    per_device_train_batch_size=16, gradient_accumulation_steps=2, num_train_epochs=2,
                    warmup_steps=4, logging_steps=1, save_strategy="no", report_to=["mlflow"], use_cpu=True,
                    disable_tqdm=True, seed=0)
    settings.update(overrides)
    return Trainer(model=BertForSequenceClassification(config), args=TrainingArguments(**settings),
                   train_dataset=data)


def test_transformers_range_test_sets_learning_rate_and_links_the_final_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fluent_mlflow_restored: Any, premade_store) -> None:
    from lrtrack.integrations.transformers import range_test

    premade_store(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS"):
        monkeypatch.delenv(key, raising=False)
    trainer = tiny_bert_trainer(tmp_path, bf16=True)
    autocast: list[bool] = []
    loss = trainer.compute_loss
    trainer.compute_loss = lambda *a, **k: (autocast.append(torch.is_autocast_enabled("cpu")), loss(*a, **k))[1]
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    rt = range_test(trainer, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="bert",
                    start_lr=1e-4, end_lr=3.0, num_iter=50)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights put back
    assert trainer.optimizer is None  # train() builds it again at the new learning_rate
    assert trainer.args.learning_rate == rt.suggestion == rt.bounds.max_lr
    # create_optimizer's groups (weight decay, and none on biases/LayerNorm) moved together: ratio 1 kept.
    assert all(len(lrs) == 2 and lrs[0] == lrs[1] for lrs in rt.result.group_lrs)
    # bf16=True: every forward pass of the test in bfloat16 autocast; 2 batches a step (accumulation).
    assert len(autocast) == 2 * rt.result.total_steps and all(autocast)
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.1]
    client, runs = runs_by_stage(tmp_path / "mlflow.db", "bert")
    check_linked(client, runs, "learning_rate", "transformers")
    explore, final = runs["explore"], runs["final"]
    assert explore.data.params["integration.accumulation_steps"] == "2"
    assert explore.data.params["optimizer._target_"] == "torch.optim.adamw.AdamW"
    assert float(final.data.params["learning_rate"]) == pytest.approx(rt.suggestion)  # MLflowCallback's own params


def test_transformers_refuses_in_one_line_what_cannot_work(tmp_path: Path) -> None:
    from lrtrack.integrations.transformers import range_test
    from lrtrack.tracking.store import TrackingUnavailable

    trainer = tiny_bert_trainer(tmp_path, report_to=[])
    with pytest.raises(TypeError, match=r"^range_test needs a transformers.Trainer; got Module$"):
        range_test(nn.Module())
    with pytest.raises(ValueError, match=r"^unknown range test setting\(s\) device"):
        range_test(trainer, device="cpu")
    with pytest.raises(ValueError, match=r"^step_mode must be one of exp, linear; got 'cubic'$"):
        range_test(trainer, step_mode="cubic")
    # The engine's own checks, on entry (they used to come after the explore run existed).
    with pytest.raises(ValueError, match=r"^smoothing must be in \[0, 1\)"):
        range_test(trainer, smoothing=1.5)
    with pytest.raises(TypeError, match=r"^probe_budget must be a share of num_iter > 0 or None \(auto\); got 'x'$"):
        range_test(trainer, probe_budget="x")
    with pytest.raises(ValueError, match=r"^diverge_th must be a number > 1; got nan$"):
        range_test(trainer, diverge_th=float("nan"))
    with pytest.raises(ValueError, match=r"^experiment=' ': an experiment name cannot be empty"):
        range_test(trainer, experiment=" ")
    with pytest.raises(TrackingUnavailable, match=r"nothing answers at tracking server http://127\.0\.0\.1:9 "):
        range_test(trainer, tracking_uri="http://127.0.0.1:9")
    trainer.args.learning_rate = 0.0
    with pytest.raises(ValueError, match=r"^TrainingArguments.learning_rate=0.0 is the range test's start LR, so it "
                                         r"must be > 0; set learning_rate=1e-7 \(or pass start_lr=\.\.\.\)$"):
        range_test(trainer)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"create the Trainer without optimizers=\(\.\.\.\)"):
        range_test(trainer)
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------- packaging


def test_the_integrations_are_optional_extras_that_ship_in_the_wheel() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert extras["lightning"] == ["lightning>=2.4"]
    assert any(d.startswith("transformers>=") for d in extras["transformers"])
    assert "lrtrack[lightning,transformers]" in extras["dev"]  # CI (make test) installs and tests both
    core = " ".join(project["project"]["dependencies"])
    assert "lightning" not in core and "transformers" not in core and "accelerate" not in core
    assert "lrtrack.integrations" in project["tool"]["setuptools"]["packages"]
    code = ("import sys, lrtrack.integrations, lrtrack.integrations.common\n"
            "print(sorted(m for m in ('lightning', 'transformers', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr  # neither framework, nor MLflow


# ---------------------------------------------------------------------- the examples, as processes


def run_example(name: str, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path / name
    shutil.copytree(ROOT / "examples" / name, folder, ignore=shutil.ignore_patterns("__pycache__", "mlflow.db"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, folder


@pytest.mark.slow
def test_lightning_example_runs_from_a_copy_of_its_folder(tmp_path: Path) -> None:
    proc, folder = run_example("lightning", tmp_path, "--compare-tuner")
    client, runs = runs_by_stage(folder / "mlflow.db", "lrtrack-lightning-digits")
    used = check_linked(client, runs, "lr", "lightning")
    ours = re.search(r"lrtrack suggestion \(confirmed\): (\S+)", proc.stdout)
    theirs = re.search(r"Tuner.lr_find suggestion \(steepest gradient\): (\S+)", proc.stdout)
    assert ours and theirs, proc.stdout
    assert float(ours.group(1)) == pytest.approx(used, rel=1e-3)
    assert runs["final"].data.metrics["val_accuracy"] > 0.8  # 10 digits: chance is 0.1


@pytest.mark.slow
def test_transformers_example_runs_from_a_copy_of_its_folder(tmp_path: Path) -> None:
    proc, folder = run_example("transformers", tmp_path)
    client, runs = runs_by_stage(folder / "mlflow.db", "lrtrack-transformers-marker")
    used = check_linked(client, runs, "learning_rate", "transformers")
    assert f"learning_rate now {used:.4g}" in proc.stdout
    accuracy = re.search(r"eval accuracy (\S+);", proc.stdout)
    assert accuracy and float(accuracy.group(1)) > 0.8, proc.stdout  # two classes: chance is 0.5


@pytest.mark.slow
def test_lightning_example_under_ddp_on_two_processes_logs_once(tmp_path: Path) -> None:
    """Lightning's DDP strategy on 2 CPU processes: every rank runs the range test on its shard with the
    loss averaged over the ranks (so both stop at the same step), rank 0 alone logs."""
    proc, folder = run_example("lightning", tmp_path, "--devices", "2")
    client, runs = runs_by_stage(folder / "mlflow.db", "lrtrack-lightning-digits")
    check_linked(client, runs, "lr", "lightning")
    assert runs["explore"].data.params["integration.world_size"] == "2"
    stops = re.findall(r"range test stopped: (.*)", proc.stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stops  # one curve, one decision on both ranks
    # 1,400 samples, 64 per rank and step, 3 epochs: 11 steps an epoch on 2 ranks (22 on one).
    assert len(client.get_metric_history(runs["final"].info.run_id, "lr")) == 33
