"""A battery of bad inputs: does each end in one clear line, with nothing started?

Each case runs ``python -m lrtrack +model=mnist_cnn +experiment=smoke <bad override>`` in a fresh
folder (some cases prepare a broken file, a store or an earlier run first). A case passes when the
process exits 2 within a minute, prints no traceback, its stderr holds one ``lrtrack: error:`` line
(one problem per case here), the line names the setting or file (and the bad value, for the
generated cases), and no MLflow run was created by it.

The hand-written cases come first; then cases GENERATED FROM THE SCHEMA (:func:`schema_cases`):
every numeric setting of lrtrack's typed config (its field's ``Rule`` in lrtrack/app/config.py)
and of the data builders, with each of nan, inf, -inf, 0, -1, a huge count and a value past int64
that its rule refuses (a value the rule allows is never listed as bad), and every number in the
smoke run's optimizer, schedule and model YAML with nan, inf and -inf; then config files (YAML
errors and alias bombs in a --config-dir), MLflow state (a deleted experiment, names past MLflow's
limits) and ``train.lr_from`` a range test of another model or optimizer.

    .venv/bin/python scripts/bad_inputs.py --jobs 2        # about 4 min on 2 cores; exits 1 on a miss
    .venv/bin/python scripts/bad_inputs.py -k diverge_th    # only the cases whose overrides contain it
    .venv/bin/python scripts/bad_inputs.py --list           # the cases, without running them
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = ["+model=mnist_cnn", "+experiment=smoke"]
CASE_SECONDS = 60  # a bad input is refused at once: a case that takes longer is not clean

# (overrides, the words the error line must contain, what to prepare in the folder)
Case = tuple[list[str], "str | tuple[str, ...]", "str | None"]
CASES: list[Case] = [
    ([], "+model", "no-model"),
    (["+model=nope"], "model", "no-base"),
    (["optimizer=nope"], "optimizer", None),
    (["schedule=nope"], "schedule", None),
    (["finder=nope"], "finder", None),
    (["data=nope"], "data", None),
    (["criterion=nope"], "criterion", None),
    (["metric=nope"], "metric", None),
    (["finder.num_iter=abc"], "finder.num_iter", None),
    (["finder.num_iter=1"], "finder.num_iter", None),
    (["finder.num_iter=-5"], "finder.num_iter", None),
    (["finder.end_lr=0"], "finder.end_lr", None),
    (["finder.end_lr=-1"], "finder.end_lr", None),
    (["finder.end_lr=abc"], "finder.end_lr", None),
    (["finder.start_lr=20"], "finder.start_lr", None),
    (["finder.start_lr=-1"], "finder.start_lr", None),
    (["finder.step_mode=cubic"], "finder.step_mode", None),
    (["finder.smoothing=1.5"], "finder.smoothing", None),
    (["finder.smoothing=-0.1"], "finder.smoothing", None),
    (["finder.diverge_th=1"], "finder.diverge_th", None),
    (["finder.diverge_th=0.5"], "finder.diverge_th", None),
    (["finder.accumulation_steps=0"], "finder.accumulation_steps", None),
    (["finder.val_batches=-1"], "finder.val_batches", None),
    (["finder.suggestion=best"], "finder.suggestion", None),
    (["finder.repeats=0"], "finder.repeats", None),
    (["finder.bogus=1"], "finder.bogus", None),
    (["+finder.num_iters=5"], "finder.num_iters", None),
    (["optimizer.lr=-0.1"], "optimizer.lr", None),
    (["optimizer.lr=0"], "optimizer.lr", None),
    (["optimizer.momentum=-1"], "optimizer", None),
    (["optimizer.weight_decay=-1"], "optimizer", None),
    (["+optimizer.momentom=0.9"], "optimizer", None),
    (["schedule.pct_start=1.5"], "schedule", None),
    (["schedule.anneal_strategy=cubic"], "schedule", None),
    (["+schedule.pct_strt=0.4"], "schedule", None),
    (["schedule=triangular", "optimizer.momentum=0"], "schedule", None),
    (["bounds.max_lr=-1"], "bounds.max_lr", None),
    (["bounds.max_lr=abc"], "bounds.max_lr", None),
    (["bounds.max_lr_rule=best"], "bounds.max_lr_rule", None),
    (["bounds.base_divisor=0.5"], "bounds.base_divisor", None),
    (["bounds.bogus=1"], "bounds.bogus", None),
    (["train.epochs=0"], "train.epochs", None),
    (["train.epochs=abc"], "train.epochs", None),
    (["train.accumulation_steps=0"], "train.accumulation_steps", None),
    (["train.grad_clip_norm=-1"], "train.grad_clip_norm", None),
    (["train.smoothing=1"], "train.smoothing", None),
    (["stage=bogus"], "stage", None),
    (["stage=train"], "stage=train", None),
    (["stage=train", "train.lr_from=0123456789abcdef"], "train.lr_from", None),
    (["train.resume=0123456789abcdef"], "train.resume", None),
    (["stage=range_test", "train.resume=0123456789abcdef"], "train.resume", None),
    (["device=cuda"], "device", "no-cuda"),
    (["device=tpu9"], "device", None),
    (["data.batch_size=0"], "data.batch_size", None),
    (["data.val_batch_size=0"], "data.val_batch_size", None),
    (["data.batch_size=abc"], "data.batch_size", None),
    (["data=mnist", "data.root=missing", "data.fallback=null"], "data.root", None),
    (["data=mnist", "data.fallback=imagenet"], "data.fallback", None),
    (["data=mnist", "data.root=broken-mnist"], "train-images", "broken-mnist"),
    (["data=imagefolder", "data.root=missing"], "data.root", None),
    (["data=tensors", "data.path=missing.pt"], "data.path", None),
    (["data=tensors", "data.path=corrupt.pt"], "corrupt.pt", "corrupt-tensors"),
    # Free text left empty (an unset shell variable): refused, not taken for null.
    (["train.resume="], "train.resume", None),
    (["stage=train", "train.lr_from="], "train.lr_from", None),
    (["tracking.tracking_uri="], "tracking.tracking_uri", None),
    (["tracking.register_model="], "tracking.register_model", None),
    # A hyperparameter of the wrong length (torch indexes it without a check).
    (["optimizer=adamw", "optimizer.betas=[0.9]"], "optimizer.betas", None),
    (["optimizer=adam", "optimizer.betas=0.9"], "optimizer.betas", None),
    # Data checked past the first batch, before any run (lrtrack/data/checks.py): a defect deep in the file.
    (["data=tensors", "data.path=data.pt"], "negative class labels", "tensors-negative-label"),
    (["data=tensors", "data.path=data.pt"], "negative class labels", "tensors-negative-val-label"),
    (["data=tensors", "data.path=data.pt"], "labels >= 10", "tensors-label-past-classes"),
    (["data=tensors", "data.path=data.pt"], "inf or NaN", "tensors-inf-row"),
    (["data=tensors", "data.path=data.pt"], "inf or NaN", "tensors-nan-row"),
    (["data=tensors", "data.path=data.pt"], "inf or NaN", "tensors-nan-validation"),
    (["data=tensors", "data.path=data.pt"], "validation", "tensors-val-shape"),
    (["data=tensors", "data.path=data.pt"], "validation targets", "tensors-val-float-targets"),
    (["data=tensors", "data.path=data.pt"], "complex", "tensors-complex-x"),
    (["data=tensors", "data.path=data.pt"], "complex", "tensors-complex-y"),
    # A data=tensors file of the wrong structure, shape, size or dtype: one line naming data.path and the key.
    (["data=tensors", "data.path=data.pt"], ("data.path", "x_val has no rows"), "tensors-empty-val"),
    (["data=tensors", "data.path=data.pt"], ("data.path", "x_train is a single number"), "tensors-0d-x"),
    (["data=tensors", "data.path=data.pt"], ("data.path", "x_train is a dict (keys: pixels)"), "tensors-nested-dict"),
    (["data=tensors", "data.path=data.pt"], ("data.path", "y_train (uint64)", "past int64's largest",
                                             "9223372036854775813"), "tensors-uint64-labels"),
    # A _target_ that builds what its group cannot use (lrtrack/app/kinds.py), and a metric that cannot
    # measure (tried on the first batch: lrtrack/engine/metric_check.py)
    (["model._target_=builtins.int", "~model.num_classes", "~model.dropout"],
     ("model._target_=builtins.int", "built an int, not a torch.nn.Module"), None),
    (["model._target_=battery_parts.text_model"], ("model._target_=battery_parts.text_model", "built a str"),
     "user-parts"),
    (["+model._partial_=true"], ("model._target_=lrtrack.engine.models.MnistCNN", "functools.partial",
                                 "drop model._partial_"), None),
    (["optimizer._target_=battery_parts.list_optimizer", "stage=range_test"],
     ("optimizer._target_=battery_parts.list_optimizer", "built a list", "torch.optim.Optimizer"), "user-parts"),
    (["criterion._target_=builtins.int"], ("criterion._target_=builtins.int", "not a loss function"), None),
    (["data._target_=battery_parts.text_data"], ("data._target_=battery_parts.text_data", "returned a str"),
     "user-parts"),
    (["+metric={_target_: builtins.print, _partial_: true}"], ("metric._target_=builtins.print", "returned None"),
     None),
    (["metric._target_=battery_parts.text_metric"], ("metric._target_=battery_parts.text_metric", "returned a str"),
     "user-parts"),
    (["metric._target_=battery_parts.no_arg_metric"],
     ("metric._target_=battery_parts.no_arg_metric", "takes 0 positional arguments"), "user-parts"),
    (["tracking.tracking_uri=garbage://x"], "garbage://x", None),
    (["tracking.tracking_uri=http://127.0.0.1:9"], "127.0.0.1:9", None),
    (["tracking.tracking_uri=sqlite:////nonexistent-folder/x.db"], "nonexistent-folder", None),
    (["tracking.flush_every=0"], "tracking.flush_every", None),  # a setting that no longer exists
    (["tracking.spool_dir=/etc/hostname"], "tracking.spool_dir", None),  # a file, not a folder
    (["tracking.delivery_timeout_s=-1"], "tracking.delivery_timeout_s", None),
    (["criterion=mse"], "criterion", None),
    (["criterion=cross_entropy", "model._target_=lrtrack.engine.models.MLP", "+model.in_features=10"], "model", None),
    (["model._target_=nonexistent_module.Net"], "nonexistent_module", None),
    (["model.num_classes=abc"], "model", None),
    (["seed=abc"], "seed", None),
    (["progress=maybe"], "progress", None),
    # config files in the user's --config-dir: one line naming the file (and the line), at once
    (["--config-dir", "conf", "+model=broken"], ("broken.yaml", "line 3"), "yaml-syntax"),
    (["--config-dir", "conf", "+model=tabs"], ("tabs.yaml", "line 2"), "yaml-tabs"),
    (["--config-dir", "conf", "+model=bomb"], ("bomb.yaml", "aliases"), "yaml-bomb"),
    (["--config-dir", "conf", "+model=loop"], ("loop.yaml", "refers to itself"), "yaml-loop"),
    (["--config-dir", "conf", "+experiment=mine"], ("mine.yaml", "invalid YAML"), "yaml-experiment"),
    (["--config-dir", "conf", "+model=huge"], ("huge.yaml", "MiB"), "yaml-huge"),
    (["--config-dir", "conf", "+model=oddkey"], "model.a!b", "yaml-oddkey"),
    (["--config-dir", "conf", "+model=nanlayer"], ("model.dropout", "nan"), "yaml-nan"),
    (["hydra.searchpath=[file://conf]", "+model=broken"], ("broken.yaml", "line 3"), "yaml-syntax"),
    (["--config-dir", "conf", "+model=listed"], ("model=", "_target_"), "yaml-list"),
    (["--config-dir", "conf", "+model=ibomb"], ("model.s", "expands to"), "yaml-interpolation-bomb"),
    (["--config-dir", "conf", "+model=empty"], ("model=", "_target_"), "yaml-empty"),
    (["--config-dir", "conf", "+model=envmiss"], ("model.num_classes", "cannot be resolved"), "yaml-envmiss"),
    (["finder.num_iter=${oc.env:LRTRACK_BATTERY_UNSET}"], ("finder.num_iter", "LRTRACK_BATTERY_UNSET"), None),
    (["finder.end_lr=${finder.nope}"], ("finder.end_lr", "cannot be resolved"), None),
    # numbers outside the typed schema, relations the estimates derive, sweeps checked before they start
    (["optimizer=adam", "optimizer.betas=[0.9,nan]"], ("optimizer.betas[1]", "nan"), None),
    (["schedule=cosine_restarts", "schedule.T_0=100000000000000000000"], "schedule.T_0", None),
    (["schedule=step", "schedule.gamma=nan"], ("schedule.gamma", "nan"), None),
    (["criterion=cross_entropy", "criterion.label_smoothing=nan", "metric=none"],
     ("criterion.label_smoothing", "nan"), None),
    (["data=digits", "data.num_workers=1000000"], ("data.num_workers", "memory"), None),
    (["data=imagefolder", "data.size=1000000"], ("data.size", "memory"), None),
    (["data=imagefolder", "data.std=0"], ("data.std", "> 0"), None),
    (["data=imagefolder", "data.mean=nan"], ("data.mean", "nan"), None),
    (["train.accumulation_steps=100000"], ("train.accumulation_steps", "no optimizer step"), None),
    (["stage=train", "bounds.max_lr=nan"], ("bounds.max_lr", "nan"), None),
    (["+model=mlp", "model.hidden=20000", "limits.max_memory_gb=0.1"], ("model (", "copies"), None),
    (["+model=mlp", "model.hidden=100000000000"], ("model (", "memory"), None),
    (["-m", "finder.diverge_th=nan,2"], ("finder.diverge_th=nan", "sweep job"), None),
    (["-m", "seed=0,-1", "stage=range_test"], ("seed=-1", "sweep job"), None),
    (["+experiment=seeds", "finder.num_iter=1000000000000"], ("finder.num_iter", "sweep job"), None),
    # MLflow: its state and its limits, checked before any run
    ([], ("deleted", "mlflow experiments restore", "tracking.experiment_name"), "deleted-experiment"),
    (["tracking.experiment_name=gone"], ("'gone'", "deleted", "restore"), "deleted-named"),
    (["tracking.experiment_name=" + "e" * 501], ("tracking.experiment_name", "500 characters"), None),
    (["tracking.experiment_name=' '"], ("tracking.experiment_name", "empty"), None),
    (["+model." + "k" * 300 + "=1"], ("override", "250"), None),
    # train.lr_from: a range test of another model or optimizer (a real one, run first in the folder)
    (["stage=train"], ("train.lr_from", "another setup", "model._target_", "train.allow_other_setup=true"),
     "range-test-mlp"),
    (["stage=train"], ("train.lr_from", "another setup", "optimizer._target_"), "range-test-adam"),
    (["stage=train", "optimizer.momentum=0.9"], ("train.lr_from", "optimizer.momentum"), "range-test-sgd"),
    # settings a component's signature says it cannot mean (Python reads True as 1, "maybe" as true)
    (["optimizer.momentum=true"], ("optimizer.momentum=true", "not a boolean"), None),
    (["optimizer.nesterov=maybe"], ("optimizer.nesterov='maybe'", "true or false"), None),
    (["+optimizer.foreach=sometimes"], ("optimizer.foreach='sometimes'", "true or false"), None),
    (["optimizer=adamw", "+optimizer.amsgrad=5"], ("optimizer.amsgrad=5", "true or false"), None),
    (["optimizer.weight_decay=false"], ("optimizer.weight_decay=false", "not a boolean"), None),
    (["optimizer.lr=fast"], ("optimizer.lr='fast'", "not a string"), None),
    (["optimizer.lr=[0.1]"], ("optimizer.lr=[0.1]", "not a list"), None),
    (["schedule.three_phase=sometimes"], ("schedule.three_phase='sometimes'", "true or false"), None),
    (["schedule=triangular", "schedule.cycle_momentum=2"], ("schedule.cycle_momentum=2", "true or false"), None),
    (["data=digits", "data.in_memory=7"], ("data.in_memory=7", "true or false"), None),
    (["train.amp=2"], ("train.amp=2", "true or false"), None),
    (["progress=5"], ("progress=5", "true or false"), None),
    (["tracking.enabled=3"], ("tracking.enabled=3", "true or false"), None),
    # settings by name whatever the class; numbers that are 0 in float32; meaningless schedule factors
    (["optimizer=schedulefree_adamw", "schedule=constant", "optimizer.warmup_steps=-5"],
     ("optimizer.warmup_steps=-5", ">= 0"), None),
    (["optimizer=schedulefree_adamw", "schedule=constant", "optimizer.warmup_steps=2.5"],
     ("optimizer.warmup_steps=2.5", "whole number"), None),
    (["optimizer=prodigy", "optimizer.d_coef=0"], ("optimizer.d_coef=0", "> 0"), None),
    (["optimizer=prodigy", "optimizer.d0=1e-320"], ("optimizer.d0=1e-320",), None),
    (["model.dropout=1.0"], ("model.dropout=1.0", "[0, 1)"), None),
    (["schedule.pct_start=1e-320"], ("schedule.pct_start=1e-320", "float32"), None),
    (["schedule.div_factor=0.5"], ("div_factor", ">= 1"), None),
    (["schedule.final_div_factor=0.5"], ("final_div_factor", ">= 1"), None),
    (["train.grad_clip_norm=1e-320"], ("train.grad_clip_norm=1e-320", "float32"), None),
    (["limits.max_hours=1e-320"], ("limits.max_hours=1e-320", "float32"), None),
    (["limits.max_memory_gb=1e-320"], ("limits.max_memory_gb=1e-320", "float32"), None),
    (["finder.start_lr=1e-300"], ("finder.start_lr=1e-300", "[1e-12, 1e+06]"), None),
    (["device=meta"], ("device='meta'", "cpu"), None),
    (["device=mps"], ("device='mps'", "cpu"), None),
    (["device=xla"], ("device='xla'", "cpu"), None),
    # settings ignored or refused only at the end, and what MLflow's registry refuses
    (["train.lr_from=0123456789abcdef0123456789abcdef"], ("train.lr_from", "stage=train"), None),
    (["tracking.register_model=my/model:v1"], ("tracking.register_model", "'/'"), None),
    (["tracking.register_model=cnn", "tracking.log_model=false"], ("tracking.register_model", "log_model"), None),
    (["tracking.experiment_name='line1\nline2'"], ("tracking.experiment_name", "control characters"), None),
    # the command line before Hydra: groups set to null, flags after overrides, folders, unreadable URIs
    (["finder=null"], ("finder=null", "one of its options"), None),
    (["optimizer=null"], ("optimizer=null", "one of its options"), None),
    (["hydra.searchpath=[file:///nonexistent-battery]"], ("hydra.searchpath", "/nonexistent-battery"), None),
    (["hydra.run.dir=/proc/battery-out"], ("/proc/battery-out", "output folder"), None),
    (["hydra.run.dir=/etc/hostname"], ("/etc/hostname", "output folder"), None),
    (["finder.num_iter=1e3"], ("finder.num_iter=1e3", "whole number", "write 1000"), None),
    (["train.resume=[a,b]"], ("train.resume=[a,b]", "one value"), None),
    (["tracking.tracking_uri=http://127.0.0.1:99999"], ("http://127.0.0.1:99999", "not a valid URL"), None),
    (["tracking.tracking_uri=http://127.0.0.1:abc"], ("http://127.0.0.1:abc", "not a valid URL"), None),
    (["tracking.tracking_uri='http://[::1'"], ("http://[::1", "not a valid URL"), None),
    (["tracking.tracking_uri=mysql://"], ("mysql://", "driver"), None),
    (["tracking.tracking_uri=postgresql:///db"], ("postgresql:///db", "driver"), None),
    (["-m", "stage=range_test", "tracking.tracking_uri=http://127.0.0.1:99999"], ("not a valid URL",), None),
    (["-m", "stage=range_test", "seed=0,1", "tracking.tracking_uri=http://127.0.0.1:9"], ("127.0.0.1:9",), None),
    # the third battery's classes: top-level typos, deleted schema nodes, settings a stage never reads,
    # conflicts, whole numbers written as floats, null numbers, Hydra's flags and sweep expansions
    (["+epochs=5"], ("epochs=5", "did you mean train.epochs?"), None),
    (["+models=mlp"], ("models='mlp'", "did you mean model?"), None),
    (["+finder_num_iter=5"], ("finder_num_iter=5", "finder.num_iter"), None),
    (["++epochs=5"], ("epochs=5", "train.epochs"), None),
    (["~finder"], ("finder.step_mode", "~finder deleted them"), None),
    (["~train"], ("train is missing", "~train deleted it"), None),
    (["~tracking"], ("tracking.enabled", "~tracking deleted them"), None),
    (["~stage"], ("stage is missing", "~stage"), None),
    (["stage=range_test", "bounds.max_lr=0.1"], ("bounds.max_lr='0.1'", "stage=range_test"), None),
    (["stage=range_test", "train.epochs=2"], ("train.epochs='2'", "stage=range_test"), None),
    (["stage=range_test", "schedule=cosine"], ("schedule='cosine'", "stage=range_test"), None),
    (["tracking.enabled=false", "tracking.register_model=cnn"], ("tracking.register_model", "tracking.enabled"),
     None),
    (["optimizer=schedulefree_adamw"], ("schedule=", "schedule=constant"), None),
    (["optimizer=schedulefree_sgd", "schedule=cosine"], ("schedule=", "schedule=constant"), None),
    (["device=cpu:1"], ("device='cpu:1'", "use device=cpu"), None),
    (["model.num_classes=1e1"], ("model.num_classes=10.0", "whole number", "write 10"), None),
    (["model.num_classes=10.0"], ("model.num_classes=10.0", "whole number"), None),
    (["optimizer.lr=${bounds.max_lr}"], ("optimizer.lr=${bounds.max_lr}", "not null"), None),
    (["schedule=step", "schedule.step_size=1000"], ("step_size=1000", "never decays"), None),
    (["data=fake", "data.fake_size=2"], ("data.fake_size=2", ">= 16"), None),
    (["+model=mnist_cnn.yaml"], ("model=mnist_cnn.yaml", "write +model=mnist_cnn"), None),
    (["optimizer=adam.yaml"], ("optimizer=adam.yaml", "write optimizer=adam"), None),
    (["hydra.run.dir="], ("hydra.run.dir=''", "launch folder"), None),
    (["--cfg=badvalue"], ("--cfg", "badvalue"), None),
    (["--info=badtopic"], ("--info", "badtopic"), None),
    (["-m", "stage=range_test", "seed=range(0,3,0)"], ("seed=range(0,3,0)", "cannot be swept"), None),
    (["-m", "stage=range_test", "optimizer.lr=interval(0,1)"], ("optimizer.lr=interval(0,1)", "cannot be swept"),
     None),
    (["-m", "stage=range_test", "seed=range(3,1)"], ("seed=range(3,1)", "no jobs"), None),
    (["+criterion.reduction=avg"], ("criterion.reduction='avg'", "not a valid value"), None),
    (["model._target_=torch.nn.Identity", "~model.num_classes", "~model.dropout"],
     ("model._target_=torch.nn.Identity", "no trainable parameters"), None),
    # the fourth battery's classes: settings a run never reads, schedules longer than the run, LRs below
    # the floor, limits that are themselves wrong, optimizers that climb or fail at their first step
    (["stage=train", "bounds.max_lr=0.1", "finder.num_iter=50"], ("finder.num_iter='50'", "stage=train"), None),
    (["stage=train", "bounds.max_lr=0.1", "finder=linear"], ("finder='linear'", "stage=train"), None),
    (["bounds.max_lr=0.1", "bounds.max_lr_rule=valley"], ("bounds.max_lr_rule='valley'", "sets max_lr itself"), None),
    (["train.allow_partial=true"], ("train.allow_partial", "no train.lr_from"), None),
    (["train.allow_other_setup=true"], ("train.allow_other_setup", "no train.lr_from"), None),
    (["schedule=cosine_restarts", "schedule.T_0=5"], ("T_0=5", "no restart"), None),
    (["schedule.three_phase=true", "schedule.pct_start=0.6"], ("pct_start", "three_phase"), None),
    (["bounds.base_divisor=1e30"], ("bounds.base_divisor=1e+30", "10000"), None),
    (["stage=train", "bounds.max_lr=1e-12"], ("bounds.max_lr=1e-12", "base LR"), None),
    (["limits.max_hours=1e-9"], ("limits.max_hours=1e-09", "1/3600"), None),
    (["+optimizer.maximize=true"], ("optimizer.maximize", "climbs"), None),
    (["optimizer=adam", "+optimizer.capturable=true"], ("optimizer (torch.optim.Adam)", "first step fails"), None),
    (["stage=range_test", "finder=linear", "finder.start_lr=0"], ("finder.start_lr=0.0", "log-LR axis"), None),
    # the fifth battery's: look-alike and invisible characters, one folder for every sweep job, seeds
    (["stage=r\u0430nge_test"], ("U+0430", "CYRILLIC"), None),
    (["finder.num_iter=12\u200b"], ("U+200B", "ZERO WIDTH SPACE"), None),
    (["-m", "stage=range_test", "seed=0,1", "hydra.sweep.subdir=same"], ("hydra.sweep.subdir=same", "one folder"),
     None),
    (["experiment=seeds", "seed=5"], ("seed=5", "+experiment=seeds"), None),
    (["~schedule._partial_"], ("schedule (", "_partial_: true"), None),
]

HUGE_COUNT = 10**12  # within int64: refused by the time or memory estimate (or the setting's own range)
PAST_INT64 = 10**20  # refused for every integer (torch and numpy overflow)
FLOAT_TRIALS = ("nan", "inf", "-inf", 0.0, -1.0, 1e300, 1e-300)


def schema_cases() -> list[Case]:
    """Cases generated from the schema: each numeric setting with each value its rule refuses."""
    import typing
    from dataclasses import fields

    from lrtrack.app.config import (
        _TYPED_NODES,
        DATA_RULES,
        OPTIMIZER_RULES,
        LRTrackConfig,
        Rule,
        _scalar_type,
    )

    settings: list[tuple[str, type, Rule]] = []
    for node, schema in (("", LRTrackConfig), *_TYPED_NODES.items()):
        hints = typing.get_type_hints(schema)
        for f in fields(schema):
            kind = _scalar_type(hints[f.name])
            if kind is not None:
                settings.append((f"{node}.{f.name}" if node else f.name, kind, f.metadata.get("rule", Rule())))
    smoke_data = yaml.safe_load((ROOT / "conf" / "data" / "fake.yaml").read_text())
    settings += [(f"data.{key}", kind, r) for key, (kind, r) in DATA_RULES.items() if key in smoke_data]
    cases: list[Case] = []
    for setting, kind, r in settings:
        for value in _refused_values(kind, r):
            text = value if isinstance(value, str) else repr(value)
            cases.append(([f"{setting}={text}"], (setting, text), None))
    for group, option in (("optimizer", "sgd"), ("optimizer", "adam"), ("schedule", "onecycle"),
                          ("model", "mnist_cnn")):
        chosen = [] if group == "model" else [f"{group}={option}"]
        for key, value in yaml.safe_load((ROOT / "conf" / group / f"{option}.yaml").read_text()).items():
            known = OPTIMIZER_RULES.get(key) if group == "optimizer" else None
            if isinstance(value, float) and known is not None:  # the optimizers' hyperparameters by name
                cases += [([*chosen, f"{group}.{key}={v}"], (f"{group}.{key}", v if isinstance(v, str) else repr(v)),
                           None) for v in _refused_values(float, known)]
            elif isinstance(value, float):  # every other number finite and within float32
                cases += [([*chosen, f"{group}.{key}={v}"], (f"{group}.{key}", v), None)
                          for v in ("nan", "inf", "-inf", "1e+39")]
            elif isinstance(value, int) and not isinstance(value, bool):  # every integer within int64
                cases.append(([*chosen, f"{group}.{key}={PAST_INT64}"], f"{group}.{key}", None))
    return list({" ".join(c[0]): c for c in cases}.values())  # sgd and adam share some settings


def _refused_values(kind: type, r: object) -> list[object]:
    """The trial values the setting's rule refuses (its type, finiteness, range, int64, cost bound)."""
    out: list[object] = []
    for value in FLOAT_TRIALS if kind is float else ("nan", "inf", 0, -1, HUGE_COUNT, PAST_INT64):
        number = float(value) if isinstance(value, str) else value
        refused = (not math.isfinite(number) or not r.admits(number)  # type: ignore[attr-defined]
                   or (kind is int and getattr(r, "cost", None) is not None and number == HUGE_COUNT)
                   or (kind is int and abs(number) > 2**63 - 1))
        if refused:
            out.append(value)
    return out


CASES += schema_cases()


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 10)}]\n" for p, a in zip("abcdefgh", "bcdefghi"))
YAML_FILES = {  # prepare name -> (path under the folder, content)
    "yaml-syntax": ("conf/model/broken.yaml", "_target_: lrtrack.engine.models.MLP\nin_features: 784\n"
                    "  hidden: [128\nnum_classes: 10\n"),
    "yaml-tabs": ("conf/model/tabs.yaml", "_target_: lrtrack.engine.models.MnistCNN\n\tnum_classes: 10\n"),
    "yaml-bomb": ("conf/model/bomb.yaml", "_target_: lrtrack.engine.models.MnistCNN\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
                  + BOMB),
    "yaml-loop": ("conf/model/loop.yaml", "_target_: lrtrack.engine.models.MnistCNN\nlayers: &a [1, *a]\n"),
    "yaml-experiment": ("conf/experiment/mine.yaml", "# @package _global_\nfinder:\n  num_iter: [1, 2\n"),
    "yaml-huge": ("conf/model/huge.yaml", "_target_: lrtrack.engine.models.MnistCNN\n" + "# padding\n" * 1_200_000),
    "yaml-oddkey": ("conf/model/oddkey.yaml", "_target_: lrtrack.engine.models.MnistCNN\n'a!b': 1\n"),
    "yaml-nan": ("conf/model/nanlayer.yaml", "_target_: lrtrack.engine.models.MnistCNN\ndropout: .nan\n"),
    "yaml-list": ("conf/model/listed.yaml", "- a\n- b\n"),
    "yaml-interpolation-bomb": ("conf/model/ibomb.yaml", "_target_: lrtrack.engine.models.MnistCNN\ns0: xxxxxxxxxx\n"
                                + "".join(f"s{i}: ${{model.s{i - 1}}}${{model.s{i - 1}}}\n" for i in range(1, 31))),
    "yaml-empty": ("conf/model/empty.yaml", ""),
    "yaml-envmiss": ("conf/model/envmiss.yaml", "_target_: lrtrack.engine.models.MnistCNN\n"
                     "num_classes: ${oc.env:LRTRACK_BATTERY_UNSET}\n"),
}
USER_MODULES = {  # prepare name -> (path under the folder, content): a user's own _target_s
    "user-parts": ("battery_parts.py", "def text_model(**settings):\n    return 'a model'\n\n\n"
                   "def list_optimizer(params, **settings):\n    return list(params)\n\n\n"
                   "def text_data(**settings):\n    return 'loaders'\n\n\n"
                   "def text_metric(outputs, targets):\n    return 'good'\n\n\n"
                   "def no_arg_metric():\n    return 1.0\n"),
}
RANGE_TESTS = {"range-test-mlp": ["+model=mlp"], "range-test-adam": ["+model=mnist_cnn", "optimizer=adam"],
               "range-test-sgd": ["+model=mnist_cnn"]}


def _bad_tensors(path: Path, defect: str) -> None:
    """A ``data=tensors`` file for the MNIST CNN whose first batches are fine and whose defect lies
    further in (row 300 of 512, or the validation half)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g)
    xv, yv = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    if defect == "negative-label":
        y[300] = -1
    elif defect == "negative-val-label":
        yv[100] = -2
    elif defect == "label-past-classes":
        y[300] = 12
    elif defect == "inf-row":
        x[300, 0, 5, 5] = float("inf")
    elif defect == "nan-row":
        x[300, 0, 5, 5] = float("nan")
    elif defect == "nan-validation":
        xv = torch.full_like(xv, float("nan"))
    elif defect == "val-shape":
        xv = torch.randn(128, 1, 32, 32, generator=g)
    elif defect == "val-float-targets":
        yv = yv.float()
    elif defect == "complex-x":
        x = torch.complex(x, x)
    elif defect == "complex-y":
        y = torch.complex(y.float(), y.float())
    elif defect == "empty-val":
        xv, yv = xv[:0], yv[:0]
    elif defect == "0d-x":
        x = torch.tensor(1.0)
    elif defect == "nested-dict":
        x = {"pixels": x}  # type: ignore[assignment]
    elif defect == "uint64-labels":
        y = y.to(torch.uint64)
        y[300] = 2**63 + 5  # past int64: read as int64 it would be negative
    else:
        raise ValueError(f"unknown tensors defect {defect!r}")
    torch.save({"x_train": x, "y_train": y, "x_val": xv, "y_val": yv}, path)


def _prepare(folder: Path, what: str | None, env: dict[str, str]) -> list[str]:
    """Set up the folder for a case; returns overrides the case needs (the id of a run made here)."""
    if what == "broken-mnist":  # real file names, a header that is not MNIST's
        raw = folder / "broken-mnist" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            (raw / name).write_bytes(b"\x00\x00\x08\x03" + b"\x01" * 64)
    elif what == "corrupt-tensors":
        (folder / "corrupt.pt").write_bytes(b"this is not a torch file")
    elif what is not None and what.startswith("tensors-"):
        _bad_tensors(folder / "data.pt", what.removeprefix("tensors-"))
    elif what in YAML_FILES or what in USER_MODULES:
        path, text = {**YAML_FILES, **USER_MODULES}[what]
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    elif what in ("deleted-experiment", "deleted-named"):  # a store holding a deleted experiment (MLflow's own API)
        name = "lrtrack-mnist_cnn" if what == "deleted-experiment" else "gone"
        code = ("import sys; from mlflow.tracking import MlflowClient; c = MlflowClient(sys.argv[1]); "
                "c.delete_experiment(c.create_experiment(sys.argv[2]))")
        subprocess.run([sys.executable, "-c", code, f"sqlite:///{folder / 'mlflow.db'}", name], cwd=folder, env=env,
                       check=True, capture_output=True, timeout=120)
    elif what in RANGE_TESTS:  # a real range test of another setup, in this folder's store
        proc = subprocess.run([sys.executable, "-m", "lrtrack", *RANGE_TESTS[what], "+experiment=smoke",
                               "stage=range_test"], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        found = re.search(r"range-test run: (\w+)", proc.stdout + proc.stderr)
        if found is None:
            raise RuntimeError(f"preparing {what}: the range test failed:\n{proc.stderr[-2000:]}")
        return ["stage=train", f"train.lr_from={found.group(1)}"]
    return []


def _runs_created(folder: Path) -> int:
    db = folder / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def _command(overrides: list[str], extra: list[str]) -> list[str]:
    """Hydra's flags first (``--config-dir conf``), then BASE (less the keys a case sets), then the rest."""
    valued = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
    flags = [a for i, a in enumerate(overrides) if a.startswith("-") or (i and overrides[i - 1] in valued)]
    rest = [a for a in [*extra, *overrides] if a not in flags]
    keys = {a.split("=", 1)[0] for a in rest}
    return [*flags, *[b for b in BASE if b.split("=", 1)[0] not in keys], *dict.fromkeys(rest)]


def run_case(case: Case) -> dict[str, object]:
    overrides, words, prep = case
    words = (words,) if isinstance(words, str) else words
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        extra = _prepare(folder, prep, env)
        args = list(overrides) if prep in ("no-model", "no-base") else _command(overrides, extra)
        if prep == "no-cuda":
            env["CUDA_VISIBLE_DEVICES"] = ""
        before = _runs_created(folder)
        started = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "lrtrack", *args], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=CASE_SECONDS)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as err:
            code, stderr = "timeout", (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else str(err.stderr)
        seconds = time.monotonic() - started
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        runs = _runs_created(folder) - before
    clear = (code == 2 and "Traceback" not in stderr and len(lines) == 1
             and lines[0].startswith("lrtrack: error: ") and all(w in lines[0] for w in words) and runs == 0)
    shown = " ".join(o if len(o) <= 80 else o[:60] + f"...({len(o)} chars)" for o in overrides)
    return {"case": (shown or "(no overrides)") + (f"  [{prep}]" if prep else ""), "ok": clear, "code": code,
            "runs": runs, "line": lines[-1] if lines else "", "lines": len(lines), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only the cases whose overrides or preparation contain this substring")
    parser.add_argument("--list", action="store_true", help="list the cases without running them")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.keyword is None or args.keyword in " ".join(c[0]) + f" {c[2] or ''}"]
    if args.list:
        for overrides, words, prep in cases:
            print(" ".join(overrides)[:120], "|", words, "|", prep or "")
        print(f"{len(cases)} cases")
        return 0
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_case, cases))
    for r in results:
        mark = "ok  " if r["ok"] else "MISS"
        print(f"{mark} exit {r['code']} runs {r['runs']} lines {r['lines']} {r['seconds']:.1f}s  {r['case']}\n"
              f"       {str(r['line'])[:300]}")
    good = sum(1 for r in results if r["ok"])
    print(f"\n{good} of {len(results)} bad inputs end in one clear line with nothing started")
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
