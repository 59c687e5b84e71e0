"""A sweep's MLflow record: the parent run (reopened when the study continues), one nested run per trial,
and the study's plots and table."""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# the study remembers its MLflow parent run, so a continued sweep logs under the same run
PARENT_RUN_ATTR = "mlflow_parent_run_id"


def flat_config(prefix: str, obj) -> dict[str, str]:
    out = {}
    for k, v in asdict(obj).items():
        s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        out[f"{prefix}{k}"] = s[:6000]
    return out


def open_parent_run(
    client,
    study,
    config: Any,  # training.sweep.SweepConfig
    storage: str,  # its Optuna storage, password redacted
    base,
    snapshot,
    experiment_id: str,
    flyte_execution_id: str,
) -> str:
    """The sweep's MLflow run: the one this study already has (reopened), else a new one."""
    from mlflow.entities import Param, RunTag

    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(run_id, status="RUNNING")
                return run_id
        except Exception:  # noqa: BLE001 - another tracking server, or the run was deleted
            log.warning(
                "study %s names MLflow run %s, which this tracking server does not have: starting a new "
                "parent run",
                config.study_name,
                run_id,
            )
    tags = {
        "agentloop.stage": "sweep",
        "optuna.study_name": config.study_name,
        "optuna.storage": storage,
        "dataset.snapshot_hash": snapshot.snapshot_hash,
    }
    if flyte_execution_id:
        tags["flyte.execution_id"] = flyte_execution_id
    run = client.create_run(experiment_id, run_name=f"sweep-{config.study_name}", tags=tags)
    params = {
        **flat_config("sweep.", config),
        **flat_config("base.", base),
        "dataset.snapshot_hash": snapshot.snapshot_hash,
    }
    params = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.log_batch(
        run.info.run_id,
        tags=[
            RunTag(
                "mlflow.note.content",
                f"Optuna study `{config.study_name}`: each child run is a trial "
                "(tags optuna.trial_number, optuna.trial_state). Plots under "
                "optuna/.",
            )
        ],
    )
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return run.info.run_id


def trial_run(client, experiment_id: str, parent_run_id: str, run_name: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.mlflow.runName = '{run_name}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def tag_trial_run(
    client,
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    trial_number: int,
    state: str,
    note: str = "",
    run_id: str = "",
) -> str:
    """Tag the trial's run (the trainer made it); a trial that died before making one gets a FAILED stub."""
    from mlflow.entities import RunTag

    run = None
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - not on this server: look it up by name as for pruned/failed trials
            run = None
    run = run or trial_run(client, experiment_id, parent_run_id, run_name)
    if run is None:
        run = client.create_run(experiment_id, run_name=run_name, tags={"mlflow.parentRunId": parent_run_id})
        client.set_terminated(run.info.run_id, status="FAILED" if state == "FAIL" else "KILLED")
    tags = [RunTag("optuna.trial_number", str(trial_number)), RunTag("optuna.trial_state", state)]
    if note:
        tags.append(RunTag("optuna.note", note[:4000]))
    client.log_batch(run.info.run_id, tags=tags)
    return run.info.run_id


def log_study(client, run_id: str, study, out_dir: Path) -> list[str]:
    """Plots (plotly HTML: interactive; matplotlib PNG: readable offline, in the MLflow UI) and the trials table."""
    import optuna
    from optuna.trial import TrialState

    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {
        "optimization_history": (
            optuna.visualization.plot_optimization_history,
            optuna.visualization.matplotlib.plot_optimization_history,
        ),
        "intermediate_values": (
            optuna.visualization.plot_intermediate_values,
            optuna.visualization.matplotlib.plot_intermediate_values,
        ),
    }
    if len(complete) >= 2 and any(
        len({str(t.params.get(p)) for t in complete}) > 1 for p in complete[0].params
    ):
        plots["param_importances"] = (
            optuna.visualization.plot_param_importances,
            optuna.visualization.matplotlib.plot_param_importances,
        )
    written = []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, (plotly_fn, mpl_fn) in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plotly_fn(study).write_html(out_dir / f"{name}.html", include_plotlyjs="cdn")
                ax = mpl_fn(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
                fig.savefig(out_dir / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(fig)
            written.append(name)
        except Exception as e:  # noqa: BLE001 - a plot must not fail the sweep; say which and why
            log.warning("optuna plot %s failed: %s", name, e)
    study.trials_dataframe().to_csv(out_dir / "trials.csv", index=False)
    client.log_artifacts(run_id, str(out_dir), artifact_path="optuna")
    return written


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
