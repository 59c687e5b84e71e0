"""The cluster's addresses and names, in one place: what launch plans and images default to there.

Kubernetes services are `<service>.<namespace>.svc.<cluster domain>`; the manifests in deploy/ create
them from deploy/values.env, and tests/test_deploy_manifests.py checks that the two agree. Change a
host here and in deploy/values.env together (the test says which one differs).

Nothing secret lives here: passwords and keys reach the pods from the Kubernetes secret
`agentloop-credentials` (see docs/runbook.md), through the variables each library reads itself:
PGPASSWORD (Optuna's and MLflow's Postgres), AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (MinIO),
FEAST_REDIS_CONNECTION_STRING (Feast's Redis, password included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

NAMESPACE = "agentloop"
CLUSTER_DOMAIN = "forge.remote"


def service_host(service: str, namespace: str = NAMESPACE) -> str:
    """The in-cluster DNS name of a Kubernetes service."""
    return f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"


@dataclass(frozen=True)
class ClusterDefaults:
    """Defaults of every scheduled run on the cluster (launch-plan inputs and task environment)."""

    bucket: str = "agentloop"
    # agent logs land here (one folder per day, docs/interaction-format.md)
    agent_logs: str = "s3://agentloop/agent-logs/"
    # the offline store ingestion writes and Feast reads (parquet + Feast's registry under _feast/)
    store: str = "s3://agentloop/store"
    # drift reports (HTML + JSON), one folder per run; the retrain decision's state between runs
    reports: str = "s3://agentloop/reports"
    monitor_state: str = "s3://agentloop/monitor/decision_state.json"
    # promoted adapters, one immutable folder per version (serving.promote.PromoteConfig.store)
    model_store: str = "s3://agentloop/model-store"
    # where the hourly drift check pushes its metrics (the Prometheus Pushgateway of kube-prometheus-stack)
    pushgateway: str = f"http://{service_host('pushgateway', 'monitoring')}:9091"
    s3_endpoint: str = f"http://{service_host('minio')}:9000"
    redis: str = f"{service_host('redis')}:6379"
    mlflow: str = f"http://{service_host('mlflow')}:5000"
    # the vLLM replicas a promotion loads adapters on (deploy/vllm/, rendered by serving/manifests.py)
    vllm_replicas: tuple[str, ...] = (f"http://{service_host('vllm')}:8000",)
    # Optuna's study storage; the password comes from PGPASSWORD (libpq reads it), never from the URL
    optuna_storage: str = f"postgresql://agentloop@{service_host('postgres')}:5432/optuna"
    # the base model: an HF folder on the shared model volume (deploy/: PVC agentloop-models at /models)
    base_model: str = "/models/Llama-3.1-8B-Instruct"
    # where images are pushed (flytekit ImageSpec, workflows/images.py); override: AGENTLOOP_IMAGE_REGISTRY
    image_registry: str = "registry.forge.remote/agentloop"

    def task_env(self) -> dict[str, str]:
        """The non-secret environment every agentloop task needs on the cluster (`pyflyte register --env`)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "FEAST_S3_ENDPOINT_URL": self.s3_endpoint,
            "AGENTLOOP_OFFLINE_STORE": self.store,
        }


CLUSTER = ClusterDefaults()


def image_registry() -> str:
    return os.environ.get("AGENTLOOP_IMAGE_REGISTRY") or CLUSTER.image_registry
