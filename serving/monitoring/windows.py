"""The two windows of a drift check: the current one, and the reference (the champion's training window from
its registry lineage, else a fixed window), read from the offline store through Feast."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Sequence

import pandas as pd

from features.aggregates import interactions_dataset
from features.feast_store import FeastConfig, default_offline_store, get_monitoring_frame
from features.fsutil import utc
from serving.monitoring.config import MonitorConfig, ReferenceWindow

# the champion's lineage, in the registry's own names (serving/registry.py writes these tags)
from serving.registry import TAG_AGENTS, TAG_DATA_END, TAG_DATA_START, TAG_SNAPSHOT

# --- windows ------------------------------------------------------------------------------------


def current_window(config: MonitorConfig, end: datetime | None = None) -> tuple[datetime, datetime]:
    """[end - window_hours, end); end defaults to now (UTC)."""
    if config.window_hours <= 0:
        raise ValueError(f"MonitorConfig.window_hours must be > 0, got {config.window_hours}")
    stop = utc(end or datetime.now(timezone.utc))
    return stop - timedelta(hours=config.window_hours), stop


def _fixed_reference(config: MonitorConfig, current_start: datetime, note: str) -> ReferenceWindow:
    end = utc(config.reference_end) if config.reference_end else current_start
    start = end - timedelta(days=config.reference_days)
    return ReferenceWindow(
        source="fixed",
        start=start.isoformat(),
        end=end.isoformat(),
        registered_model=config.registered_model,
        note=note,
    )


def resolve_reference(config: MonitorConfig, current_start: datetime) -> ReferenceWindow:
    """The champion's training window from its model version's lineage tags, else the fixed window.

    The registry is asked only when MLFLOW_TRACKING_URI is set (no local ./mlruns appears by accident).
    """
    name, alias = config.registered_model, config.champion_alias
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return _fixed_reference(
            config,
            current_start,
            "MLFLOW_TRACKING_URI is not set: no registry to find the "
            "champion in; using the fixed reference window",
        )
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        if code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        return _fixed_reference(
            config,
            current_start,
            f"registered model {name!r} has no @{alias} ({code}); using the fixed reference window",
        )
    tags = version.tags or {}
    missing = [t for t in (TAG_DATA_START, TAG_DATA_END) if not tags.get(t)]
    if missing:
        return _fixed_reference(
            config,
            current_start,
            f"{name} version {version.version} (@{alias}) lacks the "
            f"lineage tag(s) {', '.join(missing)}; using the fixed "
            "reference window",
        )
    try:
        start, end = utc(tags[TAG_DATA_START]), utc(tags[TAG_DATA_END])
    except ValueError as exc:
        return _fixed_reference(
            config,
            current_start,
            f"{name} version {version.version}: {TAG_DATA_START}/"
            f"{TAG_DATA_END} are not ISO 8601 ({exc}); using the fixed "
            "reference window",
        )
    agents = sorted(a.strip() for a in (tags.get(TAG_AGENTS) or "").split(",") if a.strip())
    return ReferenceWindow(
        source="champion",
        start=start.isoformat(),
        end=end.isoformat(),
        agents=agents,
        registered_model=name,
        champion_version=str(version.version),
        snapshot_hash=tags.get(TAG_SNAPSHOT, ""),
        note=f"{name} version {version.version} (@{alias}) was trained on [{start.isoformat()}, "
        f"{end.isoformat()})" + (f" for {', '.join(agents)}" if agents else ""),
    )


def load_window(
    config: MonitorConfig, start: datetime, end: datetime, agents: Sequence[str] = (), purpose: str = "window"
) -> pd.DataFrame:
    """The `monitoring_v1` frame of [start, end) (agents: [] = all), sampled down to max_rows.

    A window larger than max_rows is read in chunks of whole days, each sampled in proportion to its
    size, so memory stays near max_rows rows however long the champion's training window was.
    """
    import pyarrow.dataset as ds

    feast = FeastConfig(offline_store=_store(config))
    root = feast.resolved().offline_store
    lo, hi = utc(start), utc(end)
    days = pd.date_range(lo.date(), (hi - timedelta(microseconds=1)).date(), freq="D")
    flt = (ds.field("event_timestamp") >= pd.Timestamp(lo)) & (ds.field("event_timestamp") < pd.Timestamp(hi))
    if agents:
        flt = flt & ds.field("agent").isin(list(agents))
    try:
        dataset = interactions_dataset(root)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no interactions in the offline store {root}: ingest logs first "
            "(workflows/ingest.py), or set MonitorConfig.store"
        ) from exc
    per_day = dataset.to_table(columns=["day"], filter=flt).column("day").to_pandas().value_counts()
    counts = {d.date().isoformat(): int(per_day.get(d.date().isoformat(), 0)) for d in days}
    total = sum(counts.values())
    chunks: list[tuple[datetime, datetime]] = []
    if total <= config.max_rows:
        chunks.append((lo, hi))
    else:  # group whole days into chunks of about max_rows rows
        chunk_start, rows = lo, 0
        for d in days:
            day_end = min(hi, utc(d.date() + timedelta(days=1)))
            rows += counts[d.date().isoformat()]
            if rows >= config.max_rows or day_end >= hi:
                chunks.append((chunk_start, day_end))
                chunk_start, rows = day_end, 0
    parts = []
    for i, (a, b) in enumerate(chunks):
        part = get_monitoring_frame(feast, a, b)
        if agents:
            part = part[part["agent"].isin(list(agents))]
        if total > config.max_rows and len(part):
            keep = max(1, round(config.max_rows * len(part) / total))
            part = part.sample(n=min(keep, len(part)), random_state=config.seed + i)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    frame.attrs = {
        "purpose": purpose,
        "start": lo.isoformat(),
        "end": hi.isoformat(),
        "rows_in_window": total,
        "sampled": total > config.max_rows,
    }
    return frame


def _store(config: MonitorConfig) -> str:
    store = config.store or default_offline_store()
    return store if "://" in store else os.path.abspath(os.path.expanduser(store))
