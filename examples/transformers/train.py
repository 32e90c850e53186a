"""python train.py   (or: torchrun --standalone --nproc-per-node=2 train.py)

A Hugging Face Trainer script with lrtrack's range test added (the lines marked ``# lrtrack``): a
tiny BERT built from a config (no download, no tokenizer) learns to tell whether a marker token
occurs in the first quarter of a sequence of random token ids, with AdamW (weight decay, none on biases and
LayerNorms), linear warm-up and decay, logged by Hugging Face's MLflowCallback to ./mlflow.db.
The range test lands in the same experiment as an ``explore`` run; the training run is tagged
``lrtrack.stage=final`` and linked to it, its ``learning_rate`` peaking at the suggestion. About
15 s on 2 CPU cores.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from lrtrack.integrations.transformers import range_test  # lrtrack

EXPERIMENT = "lrtrack-transformers-marker"
VOCAB, LENGTH, MARKER, SEED = 64, 16, 7, 0


class MarkerTokens(torch.utils.data.Dataset):
    """Random token ids; the label says whether the marker token occurs (in the first quarter; about half do)."""

    def __init__(self, size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(MARKER + 1, VOCAB, (size, LENGTH), generator=gen)
        self.labels = torch.randint(0, 2, (size,), generator=gen)
        where = torch.randint(0, LENGTH // 4, (size,), generator=gen)
        rows = self.labels.nonzero().squeeze(1)
        self.ids[rows, where[rows]] = MARKER

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lrtrack").setLevel(logging.INFO)
    torch.set_num_threads(1)
    started = time.perf_counter()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)

    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-out-"), learning_rate=1e-5, weight_decay=0.01,
        per_device_train_batch_size=64, num_train_epochs=3, warmup_steps=10, lr_scheduler_type="linear",
        logging_steps=1, save_strategy="no", report_to=["mlflow"], run_name="train tiny bert", seed=SEED,
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=MarkerTokens(2048, SEED),
                      eval_dataset=MarkerTokens(256, SEED + 1))
    rt = range_test(trainer, start_lr=1e-4, end_lr=10.0, num_iter=60)  # lrtrack: sets args.learning_rate
    trainer.train()
    accuracy = _accuracy(trainer)
    if not trainer.is_world_process_zero():  # under torchrun: rank 0 reports
        return

    print(f"lrtrack suggestion (confirmed): {rt.suggestion:.4g}  (range test run {rt.run_id}, "
          f"{rt.result.steps} sweep steps + {rt.result.probe_steps} probe steps); learning_rate now "
          f"{trainer.args.learning_rate:.4g}")
    print(f"eval accuracy {accuracy:.3f}; done in {time.perf_counter() - started:.1f} s; "
          f"mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}")


def _accuracy(trainer: Trainer) -> float:
    out = trainer.predict(trainer.eval_dataset)
    return float((out.predictions.argmax(-1) == out.label_ids).mean())


if __name__ == "__main__":
    main()
