"""What a task knows about the Flyte execution it runs in."""

from __future__ import annotations

from flytekit import current_context


def execution_id() -> str:
    """The Flyte execution's name, for lineage tags ("" outside a Flyte execution)."""
    try:
        return current_context().execution_id.name or ""
    except Exception:  # noqa: BLE001 - a plain call from a notebook or test: no execution context
        return ""
