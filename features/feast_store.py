"""Feast from plain Python: apply the definitions, materialize, read online, build training and monitoring frames.

    cfg = FeastConfig(offline_store="/data/store")        # defaults: $AGENTLOOP_HOME/store, SQLite
    apply(cfg)                                            # registers features/repo/definitions.py
    write_agent_daily_stats(cfg.offline_store)            # features.aggregates, after each ingestion
    materialize_incremental(cfg, end_date)                # agent_daily_stats -> online store
    online_agent_stats(cfg, "agent-bruno")                # {"n_interactions": 41, "mean_rating": 3.8, ...}
    get_training_frame(cfg, start, end, min_rating=4)     # the only way training/ reads data

Feast's own state (registry, SQLite online store, the effective feature_store.yaml) lives in a work
folder next to the data it describes, <store>/_feast, never in the source tree: any store folder
works, and `feast -c features/repo -f <store>/_feast/feature_store.yaml ...` (with
AGENTLOOP_OFFLINE_STORE=<store>) sees the same registry from the command line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import runpy
from dataclasses import astuple, dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import yaml

from features.aggregates import INTERACTIONS_DIR, filesystem_and_path, interactions_dataset
from features.fsutil import utc
from features.home import agentloop_home
from features.store import Store

REPO_DIR = Path(__file__).resolve().parent / "repo"
CLUSTER_YAML = REPO_DIR / "cluster" / "feature_store.yaml"
# interaction_features' source path below <store>/interactions (features/repo/definitions.py says why)
INTERACTION_FILES = "day=*/*.parquet"
STATE_DIR = "_feast"  # under the store root; "_" keeps it out of dataset readers' way

INTERACTION_VIEW = "interaction_features"
STATS_VIEW = "agent_daily_stats"
TRAINING_SERVICE = "training_v1"
MONITORING_SERVICE = "monitoring_v1"


def default_offline_store() -> str:
    """$AGENTLOOP_OFFLINE_STORE, else $AGENTLOOP_HOME/store (the definitions use the same rule)."""
    return os.environ.get("AGENTLOOP_OFFLINE_STORE") or str(agentloop_home() / "store")


def _is_remote(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


@dataclass
class FeastConfig:
    """Where the definitions, the data and Feast's state are. Empty fields take the embedded defaults.

    online_store: "" keeps the yaml's online store (SQLite in work_dir for the embedded yaml);
    a Redis connection string ("host:port,db=N,password=..." as Feast writes it, or
    redis://[:password@]host:port/N) switches to Redis. The cluster: feature_store_yaml=CLUSTER_YAML.
    """

    repo_path: str = ""  # the definitions; default features/repo
    offline_store: str = ""  # store root (folder or s3://bucket/prefix); default default_offline_store()
    online_store: str = ""  # Redis connection string; "" = the yaml's online store
    registry: str = ""  # default <offline_store>/_feast/registry.db
    feature_store_yaml: str = ""  # base settings; default <repo_path>/feature_store.yaml
    work_dir: str = ""  # effective feature_store.yaml, SQLite file; default <store>/_feast (local stores)
    project: str = ""  # default: the yaml's project (tests use a unique one per Redis run)

    def resolved(self) -> FeastConfig:
        """A copy with every default filled in (absolute local paths; string operations only, it is on
        the online read path)."""
        repo = _absolute(self.repo_path or str(REPO_DIR))
        store = self.offline_store or default_offline_store()
        if not _is_remote(store):
            store = _absolute(store)
        if self.work_dir:
            work = _absolute(self.work_dir)
        elif not _is_remote(store):
            work = f"{store}/{STATE_DIR}"
        else:  # only the effective yaml goes here; registry and online store are remote
            slug = re.sub(r"[^A-Za-z0-9]+", "-", store).strip("-")[:60]
            work = str(
                agentloop_home() / "feast" / f"{slug}-{hashlib.sha256(store.encode()).hexdigest()[:8]}"
            )
        return replace(
            self,
            repo_path=repo,
            offline_store=store.rstrip("/"),
            registry=self.registry or f"{store.rstrip('/')}/{STATE_DIR}/registry.db",
            feature_store_yaml=_absolute(self.feature_store_yaml or f"{repo}/feature_store.yaml"),
            work_dir=work,
        )


# --- configuration --------------------------------------------------------------------------------


def redis_connection_string(value: str) -> str:
    """Feast's Redis connection string ("host:port,db=N,...") from itself or a redis:// URL."""
    if not value.startswith(("redis://", "rediss://")):
        return value
    from urllib.parse import urlparse

    url = urlparse(value)
    parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
    if url.path.strip("/"):
        parts.append(f"db={url.path.strip('/')}")
    if url.password:
        parts.append(f"password={url.password}")
    if url.username and url.username != "default":
        parts.append(f"username={url.username}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config_dict(config: FeastConfig) -> dict:
    """The effective feature_store.yaml as a dict: the base yaml, with locations taken from `config`."""
    c = config.resolved()
    path = Path(c.feature_store_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"no Feast settings at {path} (FeastConfig.feature_store_yaml)")
    # Feast itself substitutes ${VAR} with os.path.expandvars when it reads a feature_store.yaml.
    raw = yaml.safe_load(os.path.expandvars(path.read_text())) or {}
    registry = raw.get("registry")
    raw["registry"] = {**(registry if isinstance(registry, dict) else {}), "path": c.registry}
    online = raw.get("online_store") or {"type": "sqlite"}
    online = {"type": online} if isinstance(online, str) else dict(online)
    if c.online_store:
        kept = online if online.get("type") == "redis" else {}
        online = {**kept, "type": "redis", "connection_string": redis_connection_string(c.online_store)}
    elif online.get("type", "sqlite") == "sqlite":
        online["path"] = f"{c.work_dir}/online_store.db"
    raw["online_store"] = online
    if c.project:
        raw["project"] = c.project
    unset = sorted(set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(raw))))
    if unset:
        raise ValueError(
            f"{path} uses environment variables that are not set: {', '.join(unset)}; export them, "
            "or set the matching FeastConfig field (online_store, registry)"
        )
    return raw


def _store_key(config: FeastConfig) -> tuple:
    return astuple(config.resolved())


def feature_store(config: FeastConfig):
    """The FeatureStore for `config` (cached per configuration; writes the effective yaml to work_dir)."""
    return _feature_store(_store_key(config))


@functools.lru_cache(maxsize=8)
def _feature_store(key: tuple):
    from feast import FeatureStore, RepoConfig

    c = FeastConfig(*key)
    raw = repo_config_dict(c)
    work = Path(c.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "feature_store.yaml").write_text(
        f"# Written by features.feast_store from {c.feature_store_yaml}; regenerated on every use.\n"
        + yaml.safe_dump(raw, sort_keys=False)
    )
    repo_config = RepoConfig(**raw)
    repo_config.repo_path = work
    return FeatureStore(config=repo_config)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, restoring what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- definitions: apply, materialize -------------------------------------------------------------


def load_definitions(config: FeastConfig):
    """The Feast objects of the repo's .py files, as `feast apply` would collect them (feast RepoContents).

    The files run with AGENTLOOP_OFFLINE_STORE set to config's store, so the sources point there.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.feature_view import DUMMY_ENTITY
    from feast.project import Project
    from feast.repo_contents import RepoContents
    from feast.repo_operations import get_repo_files

    c = config.resolved()
    project = repo_config_dict(c)["project"]
    entities, sources, views, services = [], [], [], []

    def add(bucket: list, obj) -> None:
        if not any(obj is seen for seen in bucket):
            bucket.append(obj)

    with _environ(AGENTLOOP_OFFLINE_STORE=c.offline_store):
        for path in get_repo_files(Path(c.repo_path)):
            namespace = runpy.run_path(str(path), run_name=f"agentloop_feast_repo_{path.stem}")
            for name, obj in namespace.items():
                if isinstance(obj, Entity):
                    add(entities, obj)
                elif isinstance(obj, FeatureView):  # includes batch/stream views: refuse those below
                    if type(obj) is not FeatureView:
                        raise TypeError(
                            f"{path}: {name} is a {type(obj).__name__}; apply it with the feast CLI"
                        )
                    add(views, obj)
                    if obj.batch_source is not None:
                        add(sources, obj.batch_source)
                elif isinstance(obj, DataSource):
                    add(sources, obj)
                elif isinstance(obj, FeatureService):
                    add(services, obj)
    if not views:
        raise ValueError(
            f"no feature views found in {c.repo_path}: is repo_path the Feast definitions folder?"
        )
    entities.append(DUMMY_ENTITY)  # as feast's parse_repo does, so CLI and Python applies agree
    return RepoContents(
        projects=[Project(name=project)],
        data_sources=sources,
        feature_views=views,
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=entities,
        feature_services=services,
        permissions=[],
    )


def apply(config: FeastConfig) -> list[str]:
    """Register the definitions (what `feast apply` does, without its chdir); return the object names.

    Objects that left the definitions are deleted from the registry, as with the CLI.
    """
    from feast.repo_operations import apply_total_with_repo_instance

    c = config.resolved()
    store = feature_store(c)
    repo = load_definitions(c)
    with contextlib.suppress(FileNotFoundError):  # a store with no data yet can still be applied
        check_partition_layout(interactions_dataset(c.offline_store), f"{c.offline_store}/{INTERACTIONS_DIR}")
    # Feast's source validation opens each folder with ParquetDataset, whose hive discovery types `day`
    # as a dictionary and then fails to merge it with the string `day` the files store: it can only
    # log a false warning here. check_partition_layout checks what Feast's dask reader really needs.
    apply_total_with_repo_instance(store, store.project, store.registry, repo, skip_source_validation=True)
    store.refresh_registry()
    return sorted(
        o.name
        for o in [*repo.entities, *repo.feature_views, *repo.feature_services]
        if not o.name.startswith("__")
    )


def materialize_incremental(config: FeastConfig, end_date: datetime) -> dict[str, tuple[datetime, datetime]]:
    """Load the online views' rows up to end_date into the online store; return {view: (start, end)}.

    Unlike Feast's own materialize_incremental, a view's first run starts at end_date - ttl (not at
    now - ttl), so backfills and tests with past dates load what they ask for. Later runs continue
    from the previous end. Run features.aggregates.write_agent_daily_stats first.
    """
    store = feature_store(config)
    end = utc(end_date)
    windows: dict[str, tuple[datetime, datetime]] = {}
    for view in store.list_feature_views():
        if not view.online:
            continue
        start = view.most_recent_end_time
        if start is None:
            if not view.ttl:
                raise ValueError(
                    f"feature view {view.name} has no ttl: give it one, or run feast materialize once"
                )
            start = end - view.ttl
        start = utc(start)
        if start >= end:
            continue
        fs, path = filesystem_and_path(view.batch_source.path)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(
                f"feature view {view.name} reads {view.batch_source.path}, which does not exist: "
                "run features.aggregates.write_agent_daily_stats(store) after ingesting, then materialize"
            )
        with _layout_errors(config):
            store.materialize(start_date=start, end_date=end, feature_views=[view.name])
        windows[view.name] = (start, end)
    return windows


# --- reads ---------------------------------------------------------------------------------------


def online_agent_stats(config: FeastConfig, agent: str) -> dict[str, Any]:
    """The agent's latest materialized daily stats (agent_daily_stats features, plus `agent`).

    Values are None for an agent that has none online.
    """
    store = feature_store(config)
    response = store.get_online_features(
        features=_stats_refs(_store_key(config)), entity_rows=[{"agent": agent}]
    )
    return {name: values[0] for name, values in response.to_dict().items()}


@functools.lru_cache(maxsize=8)
def _stats_refs(key: tuple) -> list[str]:
    view = _feature_store(key).get_feature_view(STATS_VIEW)
    return [f"{STATS_VIEW}:{f.name}" for f in view.features]


def get_training_frame(
    config: FeastConfig,
    start: datetime | date,
    end: datetime | date,
    agents: Sequence[str] | None = None,
    min_rating: int | None = None,
    exclude_guard_flags: bool = True,
    table_version: int | None = None,
) -> pd.DataFrame:
    """The point-in-time training set of interactions in [start, end) via the `training_v1` feature service.

    One row per interaction, joined at its own event_timestamp: a later copy of the same interaction
    (re-ingested, feedback updated) never leaks into it. Filters: agents (None = all); min_rating
    keeps rated interactions with rating >= min_rating; exclude_guard_flags drops interactions the
    guard flagged (warn-level rules, guard_flags != ""). Dates mean midnight UTC; naive datetimes UTC.
    frame.attrs records the feature service, the window, the project and the Delta version of the
    interactions table that chose the rows (lineage). table_version: rebuild the frame of that
    version (time travel: rows landed since are left out; the store is append-only, so the rows of
    that version join the same features they joined then).
    """
    frame = _historical_frame(config, TRAINING_SERVICE, start, end, agents, table_version)
    if min_rating is not None:
        frame = frame[frame["rating"].notna() & (frame["rating"] >= min_rating)]
    if exclude_guard_flags:
        frame = frame[frame["guard_flags"].fillna("") == ""]
    out = frame.reset_index(drop=True)
    out.attrs = {**frame.attrs, "min_rating": min_rating, "exclude_guard_flags": exclude_guard_flags}
    return out


def get_monitoring_frame(config: FeastConfig, start: datetime | date, end: datetime | date) -> pd.DataFrame:
    """The interactions in [start, end) with the `monitoring_v1` features (drift reference or current window)."""
    return _historical_frame(config, MONITORING_SERVICE, start, end, None)


def _historical_frame(config, service_name, start, end, agents, table_version=None) -> pd.DataFrame:
    store = feature_store(config)
    lo, hi = utc(start), utc(end)
    if lo >= hi:
        raise ValueError(f"empty window: start {lo.isoformat()} is not before end {hi.isoformat()}")
    service = store.get_feature_service(service_name)
    source = store.get_feature_view(INTERACTION_VIEW).batch_source.path
    entity_df, table_version = _entity_frame(source, lo, hi, agents, table_version)
    features = [f.name for p in service.feature_view_projections for f in p.features]
    if entity_df.empty:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in [*entity_df.columns, *features]})
    else:
        with _layout_errors(config):
            frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
        frame = frame[[*entity_df.columns, *features]]
        if "rating" in frame:  # Feast hands back null ints as float NaN; ratings are integers 1-5
            frame["rating"] = frame["rating"].astype("Int64")
        frame = frame.sort_values(["event_timestamp", "interaction_id"], kind="stable").reset_index(drop=True)
    frame.attrs = {
        "feature_service": service_name,
        "project": store.project,
        "source": source,
        "start": lo.isoformat(),
        "end": hi.isoformat(),
        "agents": sorted(agents) if agents else None,
        "table_version": table_version,  # None: a store in the old parquet format (no versions)
    }
    return frame


def _entity_frame(
    source: str, start: datetime, end: datetime, agents: Sequence[str] | None, version: int | None = None
) -> tuple[pd.DataFrame, int | None]:
    """interaction_id + event_timestamp of the interactions in [start, end), read with partition pruning,
    and the Delta table version they were read at (the given one, else the current one).

    An interaction stored more than once is joined at its first event_timestamp.
    """
    folder = source.removesuffix(f"/{INTERACTION_FILES}")
    root = folder[: -len(INTERACTIONS_DIR)].rstrip("/") if folder.endswith(INTERACTIONS_DIR) else None
    if root is None:
        raise ValueError(
            f"interaction_features reads {source}, not <store>/{INTERACTIONS_DIR}/{INTERACTION_FILES}: "
            "re-run apply"
        )
    dt = Store(root).delta(INTERACTIONS_DIR, version)  # None: the old parquet format (no versions)
    if dt is not None:
        dataset, version = dt.to_pyarrow_dataset(), dt.version()
    else:
        dataset = interactions_dataset(root)
    last_day = (end - timedelta(microseconds=1)).date()
    days = [(start.date() + timedelta(days=i)).isoformat() for i in range((last_day - start.date()).days + 1)]
    flt = (
        ds.field("day").isin(days)
        & (ds.field("event_timestamp") >= pd.Timestamp(start))
        & (ds.field("event_timestamp") < pd.Timestamp(end))
    )
    if agents is not None:
        flt = flt & ds.field("agent").isin(list(agents))
    table = dataset.to_table(columns=["interaction_id", "event_timestamp"], filter=flt)
    frame = table.to_pandas()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame = frame.sort_values(["event_timestamp", "interaction_id"], kind="stable")
    return frame.drop_duplicates("interaction_id", keep="first").reset_index(drop=True), version


# --- the hive layout Feast can read ---------------------------------------------------------------


class OfflineStoreLayoutError(RuntimeError):
    """The dataset's files disagree on a column, which Feast's dask reader cannot handle."""


def check_partition_layout(dataset: ds.Dataset, where: str) -> None:
    """Raise OfflineStoreLayoutError when some files store the `day` partition column and others do not.

    Feast's file offline store reads the folder with dask, which takes the columns of the first file
    for all: when that file holds `day` and a later one does not, every read fails with
    KeyError "['day'] not in index". Either layout alone is fine.
    """
    with_day, without_day = [], []
    for fragment in dataset.get_fragments():
        (with_day if "day" in fragment.physical_schema.names else without_day).append(fragment.path)
        if with_day and without_day:
            raise OfflineStoreLayoutError(
                f"{where}: {with_day[0]} stores the `day` partition column and {without_day[0]} does not; "
                "Feast's file offline store needs every file of the dataset to agree. Rewrite the older "
                "partitions in the writer's current layout (features/ingest.py), then retry"
            )


@contextlib.contextmanager
def _layout_errors(config: FeastConfig) -> Iterator[None]:
    try:
        yield
    except KeyError as exc:
        if "day" not in str(exc):
            raise
        c = config.resolved()
        check_partition_layout(interactions_dataset(c.offline_store), f"{c.offline_store}/{INTERACTIONS_DIR}")
        raise
