"""The trained model as an MLflow 3 logged model, through the journal.

The job never imports MLflow: :func:`save_model` writes the module (``torch.save`` of the whole
``nn.Module``) and an input example (the first rows of the first training batch) into a journal
folder, and the run journals a ``log_model`` operation. The deliverer (the relay, or
``python -m lrtrack.deliver``) applies it with :func:`deliver_model`: ``mlflow.pytorch.log_model``
with that input example and a signature inferred from it and the model's output on it, linked to
the run (MLflow's Models tab, ``mlflow.search_logged_models``), and registered under a name when
``tracking.register_model`` is set. ``mlflow.pytorch.load_model`` on it returns the trained model.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
EXAMPLE_FILE = "input_example.pt"
EXAMPLE_ROWS = 5  # rows of the first batch kept as the input example
#: How MLflow stores the model. MLflow 3.17's default, "pt2" (torch.export), traces the forward
#: pass at the example's batch size and loads back as a graph that cannot switch to eval mode or
#: train on; "pickle" (cloudpickle) loads back the module itself, for any batch size.
SERIALIZATION_FORMAT = "pickle"


_preloading: list[Any] = []


def preload() -> None:
    """Import ``mlflow.pytorch`` (and torch, seconds) in a background thread of the deliverer, once:
    called when a training run is created, so the import overlaps the training instead of
    delaying the model's delivery at the end."""
    if _preloading:
        return
    import importlib
    import threading

    thread = threading.Thread(target=importlib.import_module, args=("mlflow.pytorch",), daemon=True,
                              name="lrtrack-preload-mlflow.pytorch")
    _preloading.append(thread)
    thread.start()


def bare_module(model: Any) -> Any:
    """The module under a DistributedDataParallel / DataParallel wrapper (``.module``)."""
    from torch import nn

    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def input_example(batch: Any) -> Any:
    """The input example of a logged model: the first :data:`EXAMPLE_ROWS` inputs of an
    ``(inputs, targets)`` batch, on the CPU and with their dtype (token ids stay integers); None
    for batches of another shape (dicts for ``step=model_loss``)."""
    import torch

    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0][:EXAMPLE_ROWS].detach().cpu().clone()
    return None


def save_model(model: Any, example: Any, folder: Path) -> None:
    """Write ``model`` (the whole module, in eval mode, on the CPU) and ``example`` into ``folder``.

    The model is saved as it is and its training mode put back; a model on another device is
    loaded onto the CPU by the deliverer (``map_location``)."""
    import torch

    module = bare_module(model)
    was_training = module.training
    module.eval()
    try:
        torch.save(module, folder / MODEL_FILE)
    finally:
        module.train(was_training)
    if example is not None:
        torch.save(example, folder / EXAMPLE_FILE)


@contextlib.contextmanager
def _importable_from(paths: Sequence[str]) -> Iterator[None]:
    """The job's ``sys.path`` entries this process lacks, for as long as the model is unpickled
    (a model class from the launch folder)."""
    added = [p for p in paths if p and p not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


@contextlib.contextmanager
def _fluent(tracking_uri: str, experiment_id: str) -> Iterator[None]:
    """``mlflow.pytorch.log_model`` writes through MLflow's fluent API: point it at this store, and
    at the run's experiment (it creates the logged model in the fluent API's experiment, which the
    environment names here)."""
    import os

    import mlflow

    keys = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    previous, saved = mlflow.get_tracking_uri(), {k: os.environ.pop(k, None) for k in keys}
    mlflow.set_tracking_uri(tracking_uri)
    os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def load_saved(folder: Path, paths: Sequence[str] = ()) -> tuple[Any, Any]:
    """The model and input example :func:`save_model` wrote (the model on the CPU)."""
    import torch

    with _importable_from(paths):
        model = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=False)
    example_file = folder / EXAMPLE_FILE
    example = torch.load(example_file, map_location="cpu", weights_only=True) if example_file.is_file() else None
    return model, example


def _signature(model: Any, example: Any) -> Any:
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(example)
    if not isinstance(output, torch.Tensor):  # a model returning a structure: the input side only
        return infer_signature(example.numpy())
    return infer_signature(example.numpy(), output.detach().float().numpy())


def deliver_model(tracking_uri: str, experiment_id: str, run_id: str, op: Mapping[str, Any], folder: Path) -> str:
    """Log the model saved in ``folder`` as a logged model of run ``run_id`` (the store's id) in
    its experiment; register it when the operation names a registered model. Returns the logged
    model's id."""
    import mlflow.pytorch

    try:
        model, example = load_saved(folder, op.get("paths") or ())
    except OSError as err:  # a local file, not the store: rejected, not retried as an outage
        raise RuntimeError(f"the model saved in {folder} cannot be read ({err})") from err
    kwargs: dict[str, Any] = {}
    if example is not None:
        try:
            kwargs = {"input_example": example.numpy(), "signature": _signature(model, example)}
        except Exception as err:  # a forward pass the CPU cannot run: the model without its example
            log.warning("lrtrack: the model's signature cannot be inferred on the CPU (%s: %s); it is logged "
                        "without an input example", type(err).__name__, err)
    quiet = logging.getLogger("mlflow.pytorch")  # its warning on "pickle": chosen above, on purpose
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with _fluent(tracking_uri, experiment_id), contextlib.ExitStack() as restore:
        restore.callback(quiet.setLevel, level)
        info = mlflow.pytorch.log_model(
            model, name=op.get("name") or "model", run_id=run_id,
            registered_model_name=op.get("registered_model_name") or None,
            # Named, not inferred: inference loads the model again in a subprocess (seconds).
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            serialization_format=SERIALIZATION_FORMAT, **kwargs)
    log.info("lrtrack: logged model %s of run %s%s", info.model_id, run_id,
             f", registered as {op['registered_model_name']}" if op.get("registered_model_name") else "")
    return str(info.model_id)
