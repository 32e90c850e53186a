"""Tag a training run that another library logs (Lightning's ``MLFlowLogger``, Hugging Face's
``MLflowCallback``) as lrtrack's ``final`` run, linked to the range test it took its bounds from.

lrtrack's own runs go through the journal (:mod:`lrtrack.tracking.runs`); these runs belong to the
other library, which already holds an MLflow client or an active fluent run, so the few tags and
params are written straight into it here: :mod:`lrtrack.integrations` never imports MLflow itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lrtrack.tracking.layout import (
    BASE_LR_PARAM,
    COMMAND_TAG,
    MAX_LR_PARAM,
    RANGE_TEST_LINK_TAG,
    STAGE_FINAL,
    STAGE_TAG,
)


def final_run_marks(range_test_run_id: str, *, max_lr: float, base_lr: float, rule: str,
                    command: str) -> tuple[dict[str, str], dict[str, str]]:
    """The tags and params that make a run lrtrack's ``final`` run of the range test ``range_test_run_id``."""
    tags = {STAGE_TAG: STAGE_FINAL, RANGE_TEST_LINK_TAG: range_test_run_id, COMMAND_TAG: command}
    params = {MAX_LR_PARAM: repr(float(max_lr)), BASE_LR_PARAM: repr(float(base_lr)), "bounds.rule_used": rule}
    return tags, params


def mark_run(client: Any, run_id: str, tags: Mapping[str, str], params: Mapping[str, str]) -> None:
    """Write ``tags`` and ``params`` into ``run_id`` through ``client`` (an ``MlflowClient``)."""
    from mlflow.entities import Param, RunTag

    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])


def mark_active_run(tags: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    """Write ``tags`` and ``params`` into MLflow's active (fluent) run; returns its id, or None
    when no run is active."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    mark_run(mlflow.MlflowClient(), run.info.run_id, tags, params)
    return str(run.info.run_id)


def client_store(client: Any, experiment_id: str) -> tuple[str, str]:
    """``(tracking_uri, experiment_name)`` of an ``MlflowClient`` and one of its experiments."""
    return str(client.tracking_uri), str(client.get_experiment(experiment_id).name)


def use_store(tracking_uri: str, experiment: str) -> None:
    """Point MLflow's fluent API (what Hugging Face's ``MLflowCallback`` uses) at this store and
    experiment (created when missing)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)


__all__ = ["client_store", "final_run_marks", "mark_active_run", "mark_run", "use_store"]
