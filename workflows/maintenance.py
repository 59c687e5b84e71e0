"""Compact and vacuum the offline store, keeping every table version a registered model was trained on.

    MLFLOW_TRACKING_URI=... pyflyte run workflows/maintenance.py store_maintenance_wf --store ~/.cache/agentloop/store

The weekly launch plan `store_maintenance_weekly` runs it on Sundays at 04:00 UTC, away from the
daily ingest (02:00) and the weekly round (Mondays 03:00): on an object store nothing locks the
tables against an ingest (features/store_maintenance.py). The registry is read here, in workflows/;
features/ only takes the retention.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Optional

from flytekit import CronSchedule, LaunchPlan, Resources, task, workflow

from features.store import default_store
from features.store_maintenance import DEFAULT_RETENTION_HOURS, maintain_store
from serving.store_lineage import oldest_table_version
from workflows.cluster import CLUSTER
from workflows.images import CPU_IMAGE


def _expand(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


@task(requests=Resources(cpu="100m", mem="256Mi"), container_image=CPU_IMAGE)
def protected_table_version(tracking_uri: str, model_names: list[str]) -> int:
    """The oldest interactions version any registered model version's lineage names (-1: none does)."""
    floor = oldest_table_version(tracking_uri, model_names)
    print(f"oldest table version named by the registry: {floor.table_version} ({', '.join(floor.named_by)})")
    return -1 if floor.table_version is None else floor.table_version


@task(requests=Resources(cpu="1", mem="2Gi"), container_image=CPU_IMAGE)
def compact_and_vacuum(store: str, keep_from_version: int, retention_hours: float) -> dict:
    """Compact every table, vacuum what no kept version references; returns what it did per table."""
    report = maintain_store(
        _expand(store) if store else default_store(),
        keep_from_version=None if keep_from_version < 0 else keep_from_version,
        retention_hours=retention_hours,
    )
    for t in report.tables:
        print(
            f"{t.table}: v{t.version_before} -> v{t.version_after}, readable from v{t.keep_from_version}; "
            f"files {t.active_files_before} -> {t.active_files_after} active, "
            f"{t.stored_files_before} -> {t.stored_files_after} stored ({t.files_vacuumed} vacuumed)"
        )
    return report.as_dict()


@workflow
def store_maintenance_wf(
    store: str = "",
    tracking_uri: str = "",
    model_names: list[str] = [],
    retention_hours: float = DEFAULT_RETENTION_HOURS,
    kickoff_time: Optional[datetime] = None,
) -> dict:
    """Registry lineage -> the oldest table version to keep -> compact and vacuum the store.

    tracking_uri: "" = MLFLOW_TRACKING_URI; model_names: [] = every registered model; kickoff_time:
    the schedule's time (unused: the retention counts back from the moment the vacuum runs).
    """
    version = protected_table_version(tracking_uri=tracking_uri, model_names=model_names)
    return compact_and_vacuum(store=store, keep_from_version=version, retention_hours=retention_hours)


store_maintenance_weekly = LaunchPlan.get_or_create(
    workflow=store_maintenance_wf,
    name="agentloop.store_maintenance_weekly",
    schedule=CronSchedule(schedule="0 4 * * 0", kickoff_time_input_arg="kickoff_time"),
    default_inputs={"store": CLUSTER.store, "tracking_uri": CLUSTER.mlflow},
)
