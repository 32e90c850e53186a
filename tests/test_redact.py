"""Credentials in URIs are masked in everything lrtrack writes or prints."""

from __future__ import annotations

from lrtrack.tracking.redact import redact, redact_tree


def test_userinfo_and_secret_query_values_are_masked() -> None:
    assert redact("http://alice:s3cret@mlflow.example.com:5000") == "http://***@mlflow.example.com:5000"
    assert redact("https://token@host/path") == "https://***@host/path"
    assert redact("python -m lrtrack tracking.tracking_uri=http://u:p@h:1 x=1") == (
        "python -m lrtrack tracking.tracking_uri=http://***@h:1 x=1")
    assert redact("postgresql://user:pw@db/mlflow?password=pw2&sslmode=require") == (
        "postgresql://***@db/mlflow?password=***&sslmode=require")
    # Nothing to hide: unchanged (an e-mail address is not a URL's userinfo).
    for text in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "mail me: a@b.c"):
        assert redact(text) == text


def test_nested_configs_are_masked_everywhere() -> None:
    config = {"tracking": {"tracking_uri": "http://u:p@h:5000", "flush_every": 100},
              "overrides": ["tracking.tracking_uri=http://u:p@h:5000"], "seed": 0}
    assert redact_tree(config) == {"tracking": {"tracking_uri": "http://***@h:5000", "flush_every": 100},
                                   "overrides": ["tracking.tracking_uri=http://***@h:5000"], "seed": 0}


def test_credentials_in_the_tracking_uri_reach_no_param_tag_artifact_log_or_saved_config(
        tmp_path, mlflow_server) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli

    secret = "s3cretpw"
    uri = mlflow_server.uri.replace("http://", f"http://alice:{secret}@")
    proc = run_cli(["+model=mnist_cnn", "+experiment=smoke", f"tracking.tracking_uri={uri}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("lrtrack-mnist_cnn").experiment_id])
    assert {r.data.tags["lrtrack.stage"] for r in runs} == {"pipeline", "explore", "final"}
    for run in runs:
        record = json.dumps([run.data.params, run.data.tags, run.info.run_name])
        assert secret not in record and "alice" not in record
        assert run.data.params["tracking.tracking_uri"] == mlflow_server.uri.replace("http://", "http://***@")
        for path in ("config/resolved.yaml", "config/hydra_overrides.yaml"):
            local = client.download_artifacts(run.info.run_id, path, str(tmp_path / run.info.run_id))
            assert secret not in open(local).read()
    saved = list(tmp_path.glob("outputs/*/*/.hydra/*.yaml"))
    assert saved and all(secret not in p.read_text() for p in saved)
    assert all(secret not in p.read_text() for p in tmp_path.glob("outputs/*/*/*.log"))
