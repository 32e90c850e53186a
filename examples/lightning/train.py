"""python train.py [--compare-tuner] [--devices 2]

A Lightning training script with lrtrack's range test added (the three lines marked ``# lrtrack``):
a small MLP on scikit-learn's 8x8 digits (bundled, no download), SGD with momentum and the
module's own 1cycle schedule, logged by Lightning's MLFlowLogger to ./mlflow.db. The range test
runs when fit starts and lands in the same experiment as an ``explore`` run; the training run is
tagged ``lrtrack.stage=final`` and linked to it. About 15 s on 2 CPU cores.

--devices 2 trains with Lightning's DDP strategy on 2 CPU processes (each range test step's loss is
the mean over the processes; rank 0 logs). --compare-tuner also runs Lightning's own ``Tuner.lr_find`` on a fresh copy of the module and
prints its suggestion next to lrtrack's.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import MLFlowLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtrack.integrations.lightning import LRRangeTest  # lrtrack

EXPERIMENT = "lrtrack-lightning-digits"
SEED = 0


class DigitsModule(pl.LightningModule):
    """An MLP on 8x8 digits; ``configure_optimizers`` reads its bounds from ``hparams`` (lr, base_lr)."""

    def __init__(self, lr: float = 0.01, base_lr: float = 0.001, hidden: int = 64, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
        self.train_set = TensorDataset(x[order[:1400]], y[order[:1400]])
        self.val_set = TensorDataset(x[order[1400:]], y[order[1400:]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, div_factor=self.hparams.lr / self.hparams.base_lr,
            total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(SEED))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def trainer_for(logger=None, callbacks=(), epochs: int = 3, devices: int = 1) -> pl.Trainer:
    strategy = "ddp" if devices > 1 else "auto"  # DDP: Lightning starts the other processes itself
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=devices, strategy=strategy, logger=logger or False,
                      callbacks=list(callbacks), log_every_n_steps=1, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)


def tuner_suggestion() -> float | None:
    """Lightning's own finder on the same module, grid and data: its steepest-gradient suggestion."""
    from lightning.pytorch.tuner import Tuner

    pl.seed_everything(SEED, verbose=False)
    module = DigitsModule()
    finder = Tuner(trainer_for()).lr_find(module, min_lr=1e-4, max_lr=10.0, num_training=60, update_attr=False)
    return finder.suggestion()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-tuner", action="store_true", help="also run Lightning's Tuner.lr_find")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (2 or more: Lightning's DDP)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lrtrack").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(1)
    started = time.perf_counter()

    pl.seed_everything(SEED, verbose=False)
    module = DigitsModule()
    logger = MLFlowLogger(experiment_name=EXPERIMENT, run_name="train digits mlp",
                          tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")
    finder = LRRangeTest(start_lr=1e-4, end_lr=10.0, num_iter=60)  # lrtrack
    trainer = trainer_for(logger, [finder, LearningRateMonitor(logging_interval="step")],  # lrtrack: the callback
                          devices=args.devices)
    trainer.fit(module)
    if not trainer.is_global_zero:
        return

    rt = finder.range_test
    print(f"lrtrack suggestion (confirmed): {rt.suggestion:.4g}  (range test run {rt.run_id}, "
          f"{rt.result.steps} sweep steps + {rt.result.probe_steps} probe steps)")
    print(f"final run {logger.run_id}: val_accuracy {trainer.callback_metrics['val_accuracy']:.3f}")
    if args.compare_tuner:
        print(f"Tuner.lr_find suggestion (steepest gradient): {tuner_suggestion():.4g}")
    print(f"done in {time.perf_counter() - started:.1f} s; mlflow ui --backend-store-uri "
          f"sqlite:///{Path('mlflow.db').resolve()}")


if __name__ == "__main__":
    main()
