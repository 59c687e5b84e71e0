"""Offline-store maintenance: compaction, vacuum with a retention from the registry's lineage, the workflow."""

from __future__ import annotations

from collections import OrderedDict
from datetime import date

import pytest

from features.ingest import ingest
from features.store import INTERACTIONS, Store, read_interactions, read_quarantine, table_version
from features.store_maintenance import maintain_store
from tests.test_delta_store import config, record, write


def _ingest_days(tmp_path, store, name: str, ids: range, days=("2025-01-05", "2025-01-06", "2025-01-07")):
    lines = [record(i, day=days[i % len(days)]) for i in ids] + [{"id": f"bad-{name}"}]
    write(tmp_path / name / f"{name}.jsonl", lines)
    ingest(str(tmp_path / name), config(store))
    return table_version(store)


def _snapshot(store) -> tuple:
    st = Store(store)
    return read_interactions(store), read_quarantine(store), st.commits(), st.manifest()


def test_compaction_reduces_the_file_count_and_leaves_every_table_identical(tmp_path):
    store = tmp_path / "store"
    for n in range(4):
        _ingest_days(tmp_path, store, f"s{n}", range(n * 10, n * 10 + 10))
    before = _snapshot(store)

    report = maintain_store(store, retention_hours=0)

    tables = {t.table: t for t in report.tables}
    assert set(tables) == {"interactions", "quarantine", "_keys", "_ledger"}
    interactions = tables[INTERACTIONS]
    assert interactions.active_files_before == 12  # 4 commits x 3 day partitions
    assert interactions.active_files_after == 3  # one file per day
    assert tables["_keys"].active_files_after < tables["_keys"].active_files_before
    # nothing asked to keep older versions: the replaced files are gone from the folder too
    assert all(t.stored_files_after == t.active_files_after for t in report.tables)
    after = _snapshot(store)
    assert after[0].equals(before[0]) and after[1].equals(before[1])
    assert after[2] == before[2] and after[3] == before[3]
    # ingest goes on as before: dedup against the compacted key table, a new commit number
    _ingest_days(tmp_path, store, "again", range(35, 47))  # 35-39 stored already
    assert read_interactions(store).num_rows == 47


def test_vacuum_keeps_time_travel_to_the_protected_version_and_removes_older_files(tmp_path):
    from features.feast_store import FeastConfig, apply, get_training_frame

    store = tmp_path / "store"
    start, end = date(2025, 1, 5), date(2025, 1, 8)
    _ingest_days(tmp_path, store, "a1", range(0, 9))
    first = _ingest_days(tmp_path, store, "a2", range(10, 19))
    # compacts a1's and a2's files into one per day, keeping the originals: `first` still reads them
    maintain_store(store, keep_from_version=first, retention_hours=0)
    assert read_interactions(store, version=first).num_rows == 18
    feast = FeastConfig(offline_store=str(store))
    apply(feast)
    protected = _ingest_days(tmp_path, store, "b", range(100, 109))
    frame = get_training_frame(feast, start, end)
    assert frame.attrs["table_version"] == protected and len(frame) == 27
    rows = read_interactions(store, version=protected)
    _ingest_days(tmp_path, store, "c", range(200, 209))

    report = maintain_store(store, keep_from_version=protected, retention_hours=0)

    interactions = next(t for t in report.tables if t.table == INTERACTIONS)
    assert interactions.keep_from_version <= protected
    assert interactions.active_files_after == 3
    # the protected version's files (a's compacted ones, b's) stay; only versions <= `first` read a's originals
    assert interactions.files_vacuumed == 6
    assert interactions.stored_files_after > interactions.active_files_after
    with pytest.raises(Exception):  # noqa: B017 - delta-rs: a data file of that version is gone
        read_interactions(store, version=first)

    # an ingest's recovery vacuums too, and honours what maintenance kept
    _ingest_days(tmp_path, store, "d", range(300, 303))
    assert read_interactions(store, version=protected).equals(rows)
    again = get_training_frame(feast, start, end, table_version=protected)
    assert again.equals(frame)
    assert len(get_training_frame(feast, start, end)) == 39  # the current version, no row twice


def test_a_version_the_store_never_had_is_refused(tmp_path):
    store = tmp_path / "store"
    current = _ingest_days(tmp_path, store, "a", range(3))
    with pytest.raises(ValueError, match=f"no version {current + 5}"):
        maintain_store(store, keep_from_version=current + 5)


# ------------------------------------------------------------------------------------ registry -> retention


def _version(c, name: str, table_version: str | None, as_tag: bool):
    """A registered model version whose training run (or tag) names a table version."""
    from serving.registry import TAG_TABLE_VERSION, TAG_TRAINING_RUN

    experiment = c.get_experiment_by_name("maintenance-test") or c.get_experiment(
        c.create_experiment("maintenance-test")
    )
    run = c.create_run(experiment.experiment_id)
    if table_version is not None and not as_tag:
        c.log_param(run.info.run_id, "dataset.source.table_version", table_version)
    c.set_terminated(run.info.run_id)
    tags = {TAG_TRAINING_RUN: run.info.run_id}
    if as_tag:
        tags[TAG_TABLE_VERSION] = table_version or ""
    if not c.search_registered_models(f"name='{name}'"):
        c.create_registered_model(name)
    return c.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags
    ).version


@pytest.fixture
def registry(mlflow_uri, request):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_uri)
    prefix = f"maint-{request.node.name[-20:].replace('_', '-')}"
    chat, tools = f"{prefix}-chat", f"{prefix}-tools"
    _version(c, chat, "7", as_tag=False)  # registered before the tag existed: read from the run
    _version(c, chat, "12", as_tag=True)
    _version(c, tools, "5", as_tag=True)
    _version(c, tools, "None", as_tag=False)  # a store in the old format: names nothing
    return mlflow_uri, [chat, tools]


def test_the_oldest_table_version_any_registered_version_names_is_the_retention(registry):
    from serving.store_lineage import oldest_table_version

    uri, (chat, tools) = registry
    floor = oldest_table_version(uri, [chat, tools])
    assert floor.table_version == 5 and floor.named_by == [f"{tools}/1"]
    assert floor.versions == {f"{chat}/1": 7, f"{chat}/2": 12, f"{tools}/1": 5}
    assert floor.unnamed == [f"{tools}/2"]
    assert oldest_table_version(uri, [chat]).table_version == 7
    assert oldest_table_version(uri).table_version <= 5  # every registered model on the server


# ------------------------------------------------------------------------------------------- the workflow


def test_the_maintenance_workflow_runs_locally_with_the_registry_s_retention(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from workflows.maintenance import store_maintenance_wf

    store = tmp_path / "store"
    first = _ingest_days(tmp_path, store, "a", range(0, 6))
    protected = _ingest_days(tmp_path, store, "b", range(10, 16))
    name = "maint-workflow-chat"
    _version(MlflowClient(mlflow_uri), name, str(protected), as_tag=True)
    rows = read_interactions(store, version=protected)

    out = store_maintenance_wf(
        store=str(store), tracking_uri=mlflow_uri, model_names=[name], retention_hours=0.0
    )

    assert out["keep_from_version"] == protected
    tables = {t["table"]: t for t in out["tables"]}
    assert tables[INTERACTIONS]["active_files_after"] == 3
    assert tables[INTERACTIONS]["keep_from_version"] in (first, protected)
    assert read_interactions(store, version=protected).equals(rows)


def test_the_maintenance_workflow_and_its_weekly_schedule_serialise():
    from flytekit.configuration import Image, ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    from workflows.cluster import CLUSTER
    from workflows.maintenance import store_maintenance_weekly, store_maintenance_wf

    settings = SerializationSettings(
        image_config=ImageConfig(default_image=Image(name="default", fqn="agentloop", tag="test"))
    )
    spec = get_serializable(OrderedDict(), settings, store_maintenance_wf)
    assert [n.id for n in spec.template.nodes] == ["n0", "n1"]
    plan = get_serializable(OrderedDict(), settings, store_maintenance_weekly)
    assert plan.spec.entity_metadata.schedule.cron_schedule.schedule == "0 4 * * 0"
    assert plan.spec.entity_metadata.schedule.kickoff_time_input_arg == "kickoff_time"
    defaults = store_maintenance_weekly.parameters.parameters
    assert defaults["store"].default.scalar.primitive.string_value == CLUSTER.store
    assert defaults["tracking_uri"].default.scalar.primitive.string_value == CLUSTER.mlflow
