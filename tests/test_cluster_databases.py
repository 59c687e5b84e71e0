"""The cluster's database choice, for real: MLflow's backend store on PostgreSQL (127.0.0.1:5432).

deploy/mlflow.yaml runs `mlflow server` with MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://... and
proxied artifacts; serving/mlflow_server.py starts the same server here with a Postgres backend, so
these tests exercise the code path the cluster uses (schema creation by MLflow's migrations, runs,
logged models, registry, aliases). Each test gets a fresh database, dropped afterwards.

Optuna's study storage on Postgres (the other cluster database) is covered by
tests/test_sweep.py::test_sweep_on_postgres_storage, which runs a real two-trial sweep on it.
"""

from __future__ import annotations

import uuid

import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_db():
    """A fresh, empty database on the local server: its postgresql:// URL (no password: trust auth)."""
    import psycopg2

    name = f"agentloop_mlflow_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _count(url: str, table: str) -> int:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


@pytest.mark.slow
@pytest.mark.services("postgres")
def test_mlflow_on_postgres_keeps_runs_models_and_aliases_across_a_server_restart(postgres_db, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from serving.mlflow_server import MLflowServerConfig, start

    artifacts = tmp_path / "artifacts"  # stands in for s3://bucket/mlflow: any --artifacts-destination
    artifacts.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("adapter card")

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str]) -> list[str]:
            return model_input

    config = MLflowServerConfig(
        root=tmp_path / "first", port=0, backend_store_uri=postgres_db, artifacts_destination=str(artifacts)
    )
    with start(config) as server:
        mlflow.set_tracking_uri(server.url)
        try:
            mlflow.set_experiment("cluster-db")
            with mlflow.start_run() as run:
                mlflow.log_params({"lora_r": 16, "dataset.snapshot_hash": "abc123"})
                mlflow.log_metric("val_loss", 1.25, step=10)
                mlflow.log_artifact(str(note))
                info = mlflow.pyfunc.log_model(
                    name="adapter", python_model=Echo(), pip_requirements=["mlflow"]
                )
            version = mlflow.register_model(
                info.model_uri, "agentloop-cluster-db", tags={"agentloop.stage": "test"}
            )
            client = MlflowClient(server.url)
            client.set_registered_model_alias("agentloop-cluster-db", "champion", version.version)
        finally:
            mlflow.set_tracking_uri(None)

    # the data is in Postgres, not in a file next to the server
    assert _count(postgres_db, "runs") == 1
    assert _count(postgres_db, "model_versions") == 1
    assert not (tmp_path / "first" / "mlflow.db").exists()

    # a new server (new pod: fresh root, same database and artifact store) sees everything
    restarted = MLflowServerConfig(
        root=tmp_path / "second", port=0, backend_store_uri=postgres_db, artifacts_destination=str(artifacts)
    )
    with start(restarted) as server:
        client = MlflowClient(server.url)
        got = client.get_run(run.info.run_id)
        assert got.data.params["lora_r"] == "16" and got.data.metrics["val_loss"] == 1.25
        assert got.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients need no S3 keys
        champion = client.get_model_version_by_alias("agentloop-cluster-db", "champion")
        assert champion.version == version.version and champion.run_id == run.info.run_id
        assert champion.tags["agentloop.stage"] == "test"
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id,
            artifact_path="note.txt",
            dst_path=str(tmp_path / "dl"),
            tracking_uri=server.url,
        )
        assert open(local).read() == "adapter card"


def test_a_plain_postgresql_url_gets_the_driver_that_is_installed():
    from serving.mlflow_server import backend_uri

    assert backend_uri("postgresql://u@h:5432/mlflow") == "postgresql+psycopg2://u@h:5432/mlflow"
    assert backend_uri("postgres://u@h/mlflow") == "postgresql+psycopg2://u@h/mlflow"
    assert backend_uri("postgresql+psycopg2://u@h/mlflow") == "postgresql+psycopg2://u@h/mlflow"
    assert backend_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
