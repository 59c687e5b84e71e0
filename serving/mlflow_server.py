"""A real local MLflow tracking server: SQLite backend, local artifacts, started and stopped by pid.

The demo and the tests use it; on the cluster MLFLOW_TRACKING_URI points at the real server
(Postgres backend, S3/MinIO artifacts) and nothing here is started. Memory: the server's job
runner is switched off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false), which cuts its RSS severalfold
(bench/RESULTS.md, set-up), and telemetry is off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests

from features.configcli import add_options, from_options
from features.home import agentloop_home
from serving.processes import alive, free_port, log_tail, port_free, spawn, stop_group, wait_healthy

SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


@dataclass
class MLflowServerConfig:
    """Where the server keeps its data. `backend_store_uri` may be postgresql://... (the cluster's choice)."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 5000  # 0 = pick a free port
    backend_store_uri: str = ""  # default: sqlite:///<root>/mlflow.db
    artifacts_destination: str = (
        ""  # default: <root>/artifacts; the cluster's: s3://bucket/prefix (MLFLOW_S3_ENDPOINT_URL)
    )
    workers: int = 1
    startup_timeout_s: float = 120.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def sqlite_uri(self) -> str:
        return f"sqlite:///{Path(self.root).resolve() / 'mlflow.db'}"


@dataclass
class MLflowServer:
    pid: int
    url: str
    log_path: Path
    _proc: subprocess.Popen | None = None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server's whole process group (uvicorn spawns workers)."""
        if self._proc is not None:
            self._proc.poll()
        stop_pid(self.pid, timeout)
        if self._proc is not None:
            self._proc.wait(timeout=timeout)

    def __enter__(self) -> "MLflowServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left after timeout."""
    left = stop_group(pid, timeout)
    if left:
        raise RuntimeError(f"MLflow server process group {pid} still has {left} after SIGKILL")


def backend_uri(uri: str) -> str:
    """postgresql://... with the driver we ship (psycopg2-binary): SQLAlchemy 2.1 would pick psycopg 3."""
    if re.match(r"postgres(ql)?://", uri):
        return "postgresql+psycopg2://" + uri.split("://", 1)[1]
    return uri


def start(config: MLflowServerConfig) -> MLflowServer:
    """Start `mlflow server` in its own process group and wait for /health."""
    root = Path(config.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    artifacts = config.artifacts_destination
    if not artifacts:
        artifacts = str(root / "artifacts")
        Path(artifacts).mkdir(exist_ok=True)
    port = config.port or free_port(config.host)
    url = f"http://{config.host}:{port}"
    log_path = root / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri(config.backend_store_uri) or config.sqlite_uri,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--host",
        config.host,
        "--port",
        str(port),
        "--workers",
        str(config.workers),
    ]
    env = {**os.environ, **SERVER_ENV, **config.extra_env}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = spawn(cmd, log_path, env, cwd=root)
    server = MLflowServer(pid=proc.pid, url=url, log_path=log_path, _proc=proc)
    try:
        wait_healthy(
            f"{url}/health",
            proc.poll,
            config.startup_timeout_s,
            lambda what: f"MLflow server {what}; log {log_path}:\n" + log_tail(log_path, 30),
        )
    except BaseException:
        server.stop()
        raise
    return server


# --- CLI: detached server for the Makefile and the demo, remembered in <root>/server.json ---


def _state_file(root: Path) -> Path:
    return Path(root) / "server.json"


def running(root: Path) -> dict | None:
    """The server started by `up` for this root, if it is still alive and healthy."""
    state = _state_file(root)
    if not state.exists():
        return None
    info = json.loads(state.read_text())
    if not alive(info["pid"]):
        return None
    try:
        requests.get(f"{info['url']}/health", timeout=2).raise_for_status()
    except requests.RequestException:
        return None
    return info


def up(config: MLflowServerConfig) -> dict:
    """Start a detached server unless one for this root is already up (idempotent)."""
    info = running(config.root)
    if info:
        return info
    if config.port and not port_free(config.host, config.port):
        print(
            f"port {config.port} on {config.host} is taken by another process; using a free port",
            file=sys.stderr,
        )
        config = replace(config, port=0)
    server = start(config)
    info = {"pid": server.pid, "url": server.url, "log": str(server.log_path)}
    _state_file(config.root).write_text(json.dumps(info) + "\n")
    return info


def down(root: Path) -> bool:
    state = _state_file(root)
    if not state.exists():
        return False
    info = json.loads(state.read_text())
    stop_pid(info["pid"])
    state.unlink()
    return True


def default_root() -> Path:
    return agentloop_home() / "mlflow"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Local MLflow server (SQLite backend, local artifacts by default)."
    )
    p.add_argument("action", choices=["up", "down", "status", "url"])
    add_options(
        p,
        MLflowServerConfig,
        exclude={"extra_env"},
        defaults={"root": default_root(), "port": int(os.environ.get("AGENTLOOP_MLFLOW_PORT", 5000))},
    )
    args = p.parse_args(argv)
    if args.action == "up":
        info = up(from_options(MLflowServerConfig, args))
        print(f"MLflow server up: {info['url']} (pid {info['pid']}, log {info['log']})")
    elif args.action == "down":
        print(
            "MLflow server stopped"
            if down(args.root)
            else "no MLflow server recorded under " + str(args.root)
        )
    else:
        info = running(args.root)
        if args.action == "url":
            if not info:
                print(f"no MLflow server running for {args.root}; run `make mlflow-up`", file=sys.stderr)
                return 1
            print(info["url"])
        else:
            print(json.dumps(info) if info else "down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
