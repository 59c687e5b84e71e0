"""The MLflow experiments the loop writes to: found or created in one place, each tagged as what it is.

MLflow 3's UI opens an experiment without `mlflow.experimentKind` in its GenAI view (traces, sessions,
judges), where the loop's runs (ingest reports, training curves, sweeps, drift) are one click away and
the landing page says "traces: 0". Every experiment the loop creates or writes to is tagged
`custom_model_development`, the kind the UI opens on its runs table.
"""

from __future__ import annotations

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(name: str, client=None) -> str:
    """The id of experiment `name` (created, or restored if deleted), tagged with the loop's kind."""
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def use_experiment(name: str) -> str:
    """`mlflow.set_experiment` for the fluent API, on the tagged experiment; returns its id."""
    import mlflow

    exp_id = ensure_experiment(name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


# MLflow 3.17's UI takes an experiment's view from a UI-wide switch (GenAI | Model training, remembered per
# browser, GenAI by default) where that switch is on, and from the tag above only where it is off. The links
# the loop prints carry the switch's URL parameter, so they open on the runs, the metrics and the artifacts.
UI_WORKFLOW = "workflowType=machine_learning"


def ui_link(tracking_uri: str, route: str) -> str:
    """A link into the MLflow UI (`route` as "experiments/1/runs/abc" or "models/name/versions/3") that
    opens in its model-training view."""
    return f"{tracking_uri.rstrip('/')}/#/{route.strip('/')}?{UI_WORKFLOW}"
