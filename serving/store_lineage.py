"""What the registry's lineage needs of the offline store: the oldest interactions version a model names.

    floor = oldest_table_version()          # MLFLOW_TRACKING_URI; every registered model
    maintain_store(store, keep_from_version=floor.table_version)   # features.store_maintenance

A training set records the Delta version of the interactions table it was read at
(features.feast_store.get_training_frame: frame.attrs["table_version"]); the trainer logs it as the
run's `dataset.source.table_version` param and registration copies it to the version's
`agentloop.table_version` tag. Every registered version counts, whatever its aliases: any of them can
be rolled back to, audited or retrained from, and each needs the rows it was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from serving.registry import TAG_TABLE_VERSION, TAG_TRAINING_RUN, client

log = logging.getLogger(__name__)

RUN_PARAM = "dataset.source.table_version"


class LineageError(RuntimeError):
    """A registered version's lineage cannot be read: what it needs of the store is unknown."""


@dataclass
class LineageFloor:
    """The oldest interactions version the registry names, and which model versions said what."""

    table_version: int | None  # None: no registered version names one
    named_by: list[str] = field(default_factory=list)  # "name/version" naming table_version
    versions: dict[str, int] = field(default_factory=dict)  # "name/version" -> its table version
    unnamed: list[str] = field(default_factory=list)  # versions whose lineage names no table version


def oldest_table_version(tracking_uri: str = "", model_names: Sequence[str] = ()) -> LineageFloor:
    """The oldest offline-store table version any registered model version's lineage names.

    model_names: the registered models to read (default: every one on the server). A version's tag
    wins; older versions (registered before the tag existed) are read from their training run.
    """
    c = client(tracking_uri)
    names = list(model_names) or _registered_names(c)
    found: dict[str, int] = {}
    unnamed: list[str] = []
    for name in names:
        for mv in _versions(c, name):
            key = f"{name}/{mv.version}"
            value = _table_version(c, mv)
            if value is None:
                unnamed.append(key)
            else:
                found[key] = value
    if unnamed:
        log.info("registered versions naming no offline-store version (ignored): %s", ", ".join(unnamed))
    if not found:
        return LineageFloor(None, unnamed=unnamed)
    oldest = min(found.values())
    return LineageFloor(oldest, sorted(k for k, v in found.items() if v == oldest), found, unnamed)


def _registered_names(c) -> list[str]:
    names, token = [], None
    while True:
        page = c.search_registered_models(max_results=100, page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            return names


def _versions(c, name: str) -> list:
    out, token = [], None
    while True:
        page = c.search_model_versions(f"name='{name}'", page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _table_version(c, mv) -> int | None:
    from mlflow.exceptions import MlflowException

    value = (mv.tags or {}).get(TAG_TABLE_VERSION)
    if not value:
        run_id = (mv.tags or {}).get(TAG_TRAINING_RUN) or mv.run_id
        try:
            value = c.get_run(run_id).data.params.get(RUN_PARAM) if run_id else None
        except MlflowException as exc:
            # Unknown is not "nothing": a vacuum on an incomplete picture could delete its rows.
            raise LineageError(
                f"model version {mv.name}/{mv.version}: its training run {run_id} cannot be read ({exc}); "
                f"set its {TAG_TABLE_VERSION} tag (or 'none'), or delete the version, then retry"
            ) from exc
    try:
        return int(value)
    except (TypeError, ValueError):  # "", "None", "none": a store in the old format, or no lineage
        return None
