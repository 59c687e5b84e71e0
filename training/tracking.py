"""A training run's MLflow record (rank 0): params, per-step metrics, artifacts, the loss curve as a PNG.

Through MlflowClient, never the fluent API's global active run, so callers (a sweep's parent run, a Flyte
task) keep theirs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from features.mlflow_experiments import ensure_experiment

log = logging.getLogger(__name__)


class Tracker:
    """One MLflow run through MlflowClient (no global active run: callers may have their own)."""

    def __init__(
        self,
        experiment: str,
        run_name: str,
        parent_run_id: str | None,
        resume_run_id: str,
        tags: dict[str, str],
    ):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        exp_id = ensure_experiment(experiment, self.client)
        self.resumed = False
        if resume_run_id:
            try:
                self.client.get_run(resume_run_id)
                self.client.update_run(resume_run_id, status="RUNNING")
                self.run_id, self.resumed = resume_run_id, True
            except Exception:  # noqa: BLE001 - another tracking server: start a new run
                log.warning(
                    "MLflow run %s of the checkpoint is not on %s; starting a new run",
                    resume_run_id,
                    self.client.tracking_uri,
                )
        if not self.resumed:
            if parent_run_id:
                tags = {**tags, "mlflow.parentRunId": parent_run_id}
            self.run_id = self.client.create_run(exp_id, run_name=run_name or None, tags=tags).info.run_id

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(k, float(v), now, step)
                for k, v in values.items()
                if v is not None and math.isfinite(v)
            ],
        )

    def artifacts(self, local: Path, artifact_path: str | None = None) -> None:
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local), artifact_path)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def end_status(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TrialPruned":
        return "KILLED"  # stopped on purpose (a pruned Optuna trial, ^C), not broken
    return "FAILED"


def flat_params(prefix: str, d: dict) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_params(f"{prefix}{k}.", v))
        elif isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = ",".join(map(str, v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def loss_curve(history: list[dict], path: Path) -> Path:
    """Train loss per step and validation loss per evaluation, as a PNG (Agg; no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], lw=1, label="train")
    val = [h for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot([h["step"] for h in val], [h["val_loss"] for h in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / label token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def package_version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
