"""What a drift check is asked (MonitorConfig, the columns it tests) and what it answers (DriftReport)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np

# the champion's lineage, in the registry's own names (serving/registry.py writes these tags)
from serving.registry import DEFAULT_MODEL_NAME as DEFAULT_REGISTERED_MODEL

NUMERIC_COLUMNS = (
    "n_turns",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "rating",
    "redacted_secrets",
    "redacted_email",
    "redacted_phone",
    "redacted_card",
    "redacted_ip",
)
CATEGORICAL_COLUMNS = ("agent", "model", "thumbs", "has_error", "error_type", "guard_flags")
TEXT_COLUMNS = ("last_user_message", "agent_reply")
# Evidently descriptors that run offline (regexes and len); suffix -> descriptor factory name
TEXT_DESCRIPTORS = ("length", "words", "sentences", "non_letter_share")
# per agent: agent/model are constant, and the raw-text domain classifier on an agent's slice costs a
# bootstrap of 1000 AUCs per column for little power (the descriptors and embeddings still cover text)
PER_AGENT_SKIP = ("agent", "model", *TEXT_COLUMNS)
MISSING = "<none>"  # categorical null, made explicit so the chi-square/JS tests count it

CHAMPION_ALIAS = "champion"
MINILM = "all-MiniLM-L6-v2"


@dataclass
class MonitorConfig:
    """What to compare and how. Defaults run the embedded world (local store, MiniLM on CPU)."""

    store: str = ""  # offline store root (FeastConfig.offline_store); "" = $AGENTLOOP_HOME/store
    window_hours: int = 24  # the current window: [end - window_hours, end)
    reference_days: int = (
        7  # the fixed reference when there is no champion: the days before the current window
    )
    reference_end: str = ""  # ISO 8601 end of that fixed reference ("" = the current window's start)
    registered_model: str = DEFAULT_REGISTERED_MODEL
    champion_alias: str = CHAMPION_ALIAS
    max_rows: int = 50_000  # per window; larger windows are sampled (seeded, proportionally per day)
    # rows per window and scope that Evidently's column tests see (a seeded sample; counts and ratings use every
    # row): K-S and chi-square on 10,000 a side still resolve small shifts, at a fraction of 50,000's cost
    evidently_sample: int = 10_000
    min_rows: int = 30  # fewer rows in either window (or an agent's slice of it): no verdict for that scope
    per_agent: bool = True
    drift_share: float = 0.3  # a scope has dataset drift when this share of its columns drifted
    text_content_drift: bool = True  # Evidently's TF-IDF domain classifier on the raw text columns
    embedding_model: str = (
        MINILM  # "" = no embedding signal; else MINILM or a sentence-transformers/HF folder
    )
    embedding_sample: int = 1000  # rows per window that are embedded
    # "onnx": the model exported once to ONNX (cached under $AGENTLOOP_HOME) and run by ONNX Runtime, the same
    # vectors several times faster on CPU (bench/RESULTS.md, Drift); "torch": sentence-transformers
    embedding_backend: str = "onnx"
    embedding_batch_size: int = 64
    embedding_max_tokens: int = 128
    embedding_alpha: float = 1e-4  # the AUC must be this significant (one-sided, against 0.5) ...
    embedding_min_auc: float = 0.55  # ... and at least this (large windows make tiny shifts "significant")
    seed: int = 0
    progress: bool = True


@dataclass
class ReferenceWindow:
    """Where the reference came from: the champion's lineage, or a fixed window (and why)."""

    source: str  # "champion" | "fixed"
    start: str  # ISO 8601 UTC, inclusive
    end: str  # exclusive
    agents: list[str] = field(default_factory=list)  # empty = all agents
    registered_model: str = ""
    champion_version: str = ""
    snapshot_hash: str = ""
    note: str = ""


@dataclass
class ColumnDrift:
    column: str
    kind: str  # numerical | categorical | text | descriptor | embedding
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class ScopeDrift:
    """Drift of one scope: every agent together ("all") or one agent."""

    scope: str
    reference_rows: int
    current_rows: int
    status: str = "ok"  # ok | insufficient_data
    note: str = ""
    columns: list[ColumnDrift] = field(default_factory=list)
    embeddings: list[ColumnDrift] = field(default_factory=list)
    drift_share: float = 0.0  # share of `columns` that drifted (embeddings are reported apart)
    dataset_drift: bool = False  # drift_share >= MonitorConfig.drift_share
    mean_rating_reference: float | None = None
    mean_rating_current: float | None = None
    rated_reference: int = 0
    rated_current: int = 0
    rating_std_reference: float | None = None  # sample standard deviations: the decision tests the drop
    rating_std_current: float | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def topic_drift(self) -> list[str]:
        """Text columns whose embeddings drifted."""
        return [e.column for e in self.embeddings if e.drifted]


@dataclass
class DriftReport:
    """The result of one drift check: numbers for the decision, HTML and JSON for people."""

    checked_at: str
    current_start: str
    current_end: str
    reference: ReferenceWindow
    overall: ScopeDrift
    agents: dict[str, ScopeDrift] = field(default_factory=dict)
    embedding_model: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: embeddings, overall, agents
    evidently: dict = field(
        default_factory=dict
    )  # Evidently's own JSON (metrics and tests) of the overall report
    snapshot: Any = field(
        default=None, repr=False, compare=False
    )  # the overall Evidently snapshot (its widgets)

    def summary(self) -> dict:
        """Everything but the HTML and Evidently's JSON, as plain JSON-able values."""

        def scope(s: ScopeDrift) -> dict:
            return {**asdict(s), "drifted_columns": s.drifted_columns, "topic_drift": s.topic_drift}

        return {
            "checked_at": self.checked_at,
            "current_start": self.current_start,
            "current_end": self.current_end,
            "reference": asdict(self.reference),
            "embedding_model": self.embedding_model,
            "seconds": self.seconds,
            "timings": self.timings,
            "overall": scope(self.overall),
            "agents": {a: scope(s) for a, s in sorted(self.agents.items())},
        }

    def to_json(self, decision: Any = None) -> str:
        body = {"summary": self.summary(), "evidently": self.evidently}
        if decision is not None:
            body["decision"] = asdict(decision)
        return json.dumps(body, indent=1, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)
