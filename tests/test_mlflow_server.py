"""The local MLflow server really starts, records runs, and stops by pid."""

import socket

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from serving.mlflow_server import MLflowServerConfig, down, running, start, up
from serving.processes import alive


def test_session_server_records_a_run_that_a_fresh_client_reads_back(mlflow_uri, tmp_path):
    mlflow.set_experiment("test-mlflow-fixture")
    (tmp_path / "note.txt").write_text("hello")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.001)
        mlflow.log_metric("loss", 1.5, step=3)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    got = MlflowClient(tracking_uri=mlflow_uri).get_run(run.info.run_id)
    assert got.data.params["lr"] == "0.001"
    assert got.data.metrics["loss"] == 1.5
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="note.txt", dst_path=str(tmp_path / "dl")
    )
    assert open(local).read() == "hello"
    # artifacts are proxied by the server (mlflow-artifacts:), so a remote client needs no shared disk
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")


def test_up_is_idempotent_and_down_stops_the_process(tmp_path):
    cfg = MLflowServerConfig(root=tmp_path / "srv", port=0)
    first = up(cfg)
    try:
        assert up(cfg)["pid"] == first["pid"]
        assert running(cfg.root)["url"] == first["url"]
        assert requests.get(first["url"] + "/health", timeout=5).status_code == 200
    finally:
        assert down(cfg.root)
    assert not alive(first["pid"])
    assert running(cfg.root) is None


def test_a_taken_port_fails_fast_with_the_log_tail(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises((RuntimeError, TimeoutError), match="MLflow server"):
            start(MLflowServerConfig(root=tmp_path / "srv", port=port, startup_timeout_s=60))


def test_up_moves_to_a_free_port_when_the_default_one_is_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        info = up(MLflowServerConfig(root=tmp_path / "srv", port=taken))
        try:
            assert not info["url"].endswith(f":{taken}")
            assert requests.get(info["url"] + "/health", timeout=5).status_code == 200
        finally:
            down(tmp_path / "srv")


def test_every_experiment_the_loop_writes_to_opens_on_its_runs_not_the_genai_view(mlflow_uri):
    from features.mlflow_experiments import (
        EXPERIMENT_KIND,
        EXPERIMENT_KIND_TAG,
        ensure_experiment,
        use_experiment,
    )

    client = MlflowClient(tracking_uri=mlflow_uri)
    created = ensure_experiment("test-kind-new", client)
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # one made elsewhere without the tag (an older round, a person) gets it when the loop writes to it
    untagged = client.create_experiment("test-kind-untagged")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(untagged).tags
    assert use_experiment("test-kind-untagged") == untagged
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # a deleted one is restored, not recreated under a new id
    client.delete_experiment(created)
    assert ensure_experiment("test-kind-new", client) == created
    assert client.get_experiment(created).lifecycle_stage == "active"
