"""serving/monitoring/drift.py + serving/monitoring/decision.py: drift that is there is found, drift that is not is not, and the
decision to retrain says why, waits out its cooldown, and reaches MLflow.

Frames are real sample logs (chitchat conversations, features.sample_logs) in monitoring_v1 columns;
the Feast test reads them back from a real offline store, the MLflow tests use the real server.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.mlflow_experiments import ui_link
from features.sample_logs import generate_sample_logs
from serving.monitoring.config import ColumnDrift, DriftReport, MonitorConfig, ReferenceWindow, ScopeDrift
from serving.monitoring.decision import DecisionConfig, decide, read_state
from serving.monitoring.drift import check_drift, run_drift_check
from serving.monitoring.embeddings import auc_null_threshold, embedding_drift
from serving.monitoring.report import log_drift_report, save_report
from serving.monitoring.windows import resolve_reference
from tests.conftest import browse
from tests.test_feast_store import read_sample_rows, write_store

END = date(2025, 1, 7)  # last day of the sample logs
DAYS = 7
CURRENT_END = datetime(2025, 1, 8, tzinfo=timezone.utc)


def fast_config(**overrides) -> MonitorConfig:
    """Small samples so a check takes seconds here; the real defaults are benchmarked in bench/drift.py."""
    base = MonitorConfig(embedding_sample=150, progress=False, min_rows=30)
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    raw = tmp_path_factory.mktemp("raw")
    generate_sample_logs(raw, conversations=480, days=DAYS, seed=3, end_date=END, progress=False)
    return sorted(read_sample_rows(raw), key=lambda r: (r["event_timestamp"], r["interaction_id"]))


@pytest.fixture(scope="module")
def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows)


def halves(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random re-split of one window: two samples of the same distribution."""
    order = np.random.default_rng(seed).permutation(len(frame))
    mid = len(frame) // 2
    return frame.iloc[order[:mid]].reset_index(drop=True), frame.iloc[order[mid:]].reset_index(drop=True)


# Conversations about something else entirely (infrastructure support tickets), cut to the exact length of
# the text they replace: the length distribution cannot move, the topic does.
SUBJECTS = [
    "the kubernetes pod",
    "our postgres replica",
    "the invoice export",
    "the VPN client",
    "the nightly backup",
    "the load balancer",
    "my mortgage statement",
    "the payroll run",
    "the TLS certificate",
    "the build cache",
]
PROBLEMS = [
    "keeps timing out",
    "fails after the upgrade",
    "shows a permission error",
    "is stuck in a restart loop",
    "returns stale numbers",
    "rejects the new password",
    "uses all the disk",
    "drops connections at noon",
]
ASKS = [
    "Can you check the logs",
    "Should I open a ticket",
    "Which config flag controls this",
    "Is there a known outage",
    "How do I roll it back",
    "Who owns the on-call rota",
]


def off_topic_text(length: int, rng: random.Random) -> str:
    parts: list[str] = []
    while len(" ".join(parts)) < length:
        parts.append(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(PROBLEMS)}. {rng.choice(ASKS)}?")
    return " ".join(parts)[:length]


def with_new_topic(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    out = frame.copy()
    for col in ("last_user_message", "agent_reply"):
        out[col] = [off_topic_text(len(t), rng) for t in out[col].fillna("")]
    return out


# --- drift that is there --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topic_report(frame) -> DriftReport:
    """The same interactions, about something else: every number and every text length is unchanged."""
    reference, _ = halves(frame, seed=0)
    current = with_new_topic(reference)
    assert (current["last_user_message"].str.len() == reference["last_user_message"].str.len()).all()
    return check_drift(reference, current, fast_config())


def test_a_new_topic_fires_the_embedding_signal_while_text_length_does_not(topic_report, tmp_path):
    report = topic_report
    drifted = {c.column: c for c in report.overall.columns}
    assert set(report.overall.topic_drift) == {"last_user_message", "agent_reply"}
    assert all(e.score > 0.9 for e in report.overall.embeddings), report.overall.embeddings
    for col in (
        "last_user_message.length",
        "agent_reply.length",
        "n_turns",
        "prompt_tokens",
        "latency_ms",
        "agent",
    ):
        assert not drifted[col].drifted, f"{col} cannot see a topic: {drifted[col]}"
    for agent, scope in report.agents.items():
        assert scope.topic_drift == ["last_user_message", "agent_reply"], agent

    decision = decide(report, DecisionConfig(state_path=str(tmp_path / "state.json")))
    assert decision.retrain
    assert "topic_drift:all:last_user_message" in decision.signals
    assert any("topic drift in last_user_message" in r for r in decision.reasons)


def test_a_different_agent_mix_is_detected(frame):
    reference, rest = halves(frame, seed=1)
    agents = sorted(rest["agent"].unique())
    current = rest[rest["agent"].isin(agents[:2])]
    report = check_drift(reference, current, fast_config(embedding_model=""))
    assert {"agent", "model"} <= set(report.overall.drifted_columns)
    assert set(report.agents) == set(agents)
    assert (
        report.agents[agents[3]].status == "insufficient_data" and report.agents[agents[3]].current_rows == 0
    )
    assert report.agents[agents[0]].status == "ok"
    assert "agent" not in {c.column for c in report.agents[agents[0]].columns}, "constant within an agent"


def test_longer_prompts_are_detected(frame):
    reference, rest = halves(frame, seed=2)
    current = rest[rest["prompt_tokens"] > rest["prompt_tokens"].median()]
    report = check_drift(reference, current, fast_config(embedding_model="", per_agent=False))
    assert {"prompt_tokens", "total_tokens", "n_turns"} <= set(report.overall.drifted_columns)
    assert report.overall.dataset_drift == (report.overall.drift_share >= 0.3)
    # the share Evidently's own DriftedColumnsCount computed is the one we report
    count = next(
        m for m in report.evidently["metrics"] if m["config"]["type"].endswith(":DriftedColumnsCount")
    )
    assert count["value"]["share"] == pytest.approx(report.overall.drift_share)


def test_evidently_tests_a_seeded_sample_of_each_window_and_counts_every_row(frame, monkeypatch):
    import serving.monitoring.drift as drift_mod

    seen = []  # the frames handed to Evidently
    prepare = drift_mod._prepare
    monkeypatch.setattr(drift_mod, "_prepare", lambda f: seen.append(len(f)) or prepare(f))
    reference, rest = halves(frame, seed=2)
    current = rest[rest["prompt_tokens"] > rest["prompt_tokens"].median()]
    n = min(len(reference), len(current)) // 2
    config = fast_config(embedding_model="", per_agent=False, evidently_sample=n)
    report = check_drift(reference, current, config)
    assert seen == [n, n]
    assert (report.overall.reference_rows, report.overall.current_rows) == (len(reference), len(current))
    assert {"prompt_tokens", "total_tokens"} <= set(report.overall.drifted_columns)  # still sees the shift
    again = check_drift(reference, current, config)
    assert [c.score for c in again.overall.columns] == [c.score for c in report.overall.columns]  # seeded


def test_a_rating_drop_recommends_retraining(frame, tmp_path):
    reference, rest = halves(frame, seed=3)
    current = rest.copy()
    current["rating"] = current["rating"].map(lambda r: None if pd.isna(r) else max(1, int(r) - 2))
    report = check_drift(reference, current, fast_config(embedding_model="", per_agent=False))
    o = report.overall
    assert o.mean_rating_reference - o.mean_rating_current >= 1.0
    decision = decide(report, DecisionConfig(state_path=str(tmp_path / "state.json"), on_dataset_drift=False))
    assert decision.retrain and decision.signals == ["rating_drop:all"]
    assert "mean rating fell from" in decision.reasons[0]


# --- drift that is not there ----------------------------------------------------------------------


@pytest.mark.slow
def test_random_resplits_of_one_window_do_not_recommend_retraining(frame, tmp_path):
    """False alarms over seeds: each re-split is two samples of one distribution."""
    seeds = range(5)
    alarms, shares, aucs = 0, [], []
    for seed in seeds:
        reference, current = halves(frame, seed=100 + seed)
        report = check_drift(reference, current, fast_config(per_agent=False, seed=seed))
        decision = decide(report, DecisionConfig(state_path=str(tmp_path / f"state-{seed}.json")))
        alarms += decision.retrain
        shares.append(report.overall.drift_share)
        aucs += [e.score for e in report.overall.embeddings]
    print(
        f"false alarms {alarms}/{len(seeds)}; drift shares {np.round(shares, 3).tolist()}; "
        f"embedding AUCs {np.round(aucs, 3).tolist()}"
    )
    assert alarms == 0
    assert max(shares) < 0.3, "no re-split may reach the dataset-drift share"
    assert max(aucs) < auc_null_threshold(150, 150, 1e-4)


def test_the_topic_threshold_shrinks_with_the_sample_down_to_the_floor():
    small, large = auc_null_threshold(150, 150, 1e-4), auc_null_threshold(5000, 5000, 1e-4)
    assert 0.66 < small < 0.69 and 0.52 < large < 0.54
    config = MonitorConfig(embedding_min_auc=0.55)
    rng = np.random.default_rng(0)
    same = embedding_drift(rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8)), "x", config)
    assert not same.drifted and same.threshold == 0.55
    shifted = embedding_drift(rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8)) + 0.5, "x", config)
    assert shifted.drifted and shifted.score > 0.7


def test_too_few_rows_give_no_verdict_and_no_retraining(frame, tmp_path):
    reference, current = halves(frame, seed=4)
    report = check_drift(reference, current.head(10), fast_config(embedding_model="", per_agent=False))
    assert report.overall.status == "insufficient_data" and "min_rows 30" in report.overall.note
    decision = decide(report, DecisionConfig(state_path=str(tmp_path / "state.json")))
    assert not decision.retrain and decision.reasons[-1].startswith("no verdict")


# --- the decision's cooldown ----------------------------------------------------------------------


def drifted_report(share: float = 0.5) -> DriftReport:
    scope = ScopeDrift(
        scope="all",
        reference_rows=500,
        current_rows=500,
        drift_share=share,
        dataset_drift=share >= 0.3,
        columns=[ColumnDrift("prompt_tokens", "numerical", "wasserstein", 0.1, 0.4, True)],
    )
    return DriftReport(
        checked_at="2025-01-08T00:00:00+00:00",
        current_start="2025-01-07T00:00:00+00:00",
        current_end="2025-01-08T00:00:00+00:00",
        reference=ReferenceWindow(
            "champion", "2025-01-01T00:00:00+00:00", "2025-01-05T00:00:00+00:00", champion_version="3"
        ),
        overall=scope,
    )


def test_the_cooldown_holds_a_second_trigger_and_survives_a_new_process(tmp_path):
    config = DecisionConfig(cooldown_hours=24, state_path=str(tmp_path / "monitor" / "state.json"))
    t0 = datetime(2025, 1, 8, 0, tzinfo=timezone.utc)
    first = decide(drifted_report(), config, now=t0)
    assert first.retrain and first.signals == ["dataset_drift:all"]
    assert read_state(config.state_path)["last_triggered_at"] == t0.isoformat()

    # a later hour, as a fresh run would see it: only the state file carries the memory
    held = decide(drifted_report(), replace(config), now=t0 + timedelta(hours=1))
    assert not held.retrain and held.held_by_cooldown
    assert held.cooldown_until == (t0 + timedelta(hours=24)).isoformat()
    assert held.signals == ["dataset_drift:all"], "the signal is still reported while held back"
    assert "cooldown of 24 h lasts until 2025-01-09T00:00:00+00:00" in held.reasons[-1]

    quiet = decide(drifted_report(share=0.0), config, now=t0 + timedelta(hours=2))
    assert not quiet.retrain and not quiet.held_by_cooldown and quiet.reasons[0].startswith("no signal")

    after = decide(drifted_report(), config, now=t0 + timedelta(hours=24, minutes=1))
    assert after.retrain
    assert (
        read_state(config.state_path)["last_triggered_at"]
        == (t0 + timedelta(hours=24, minutes=1)).isoformat()
    )


def test_a_corrupt_state_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{half")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        decide(drifted_report(), DecisionConfig(state_path=str(path)))


# --- the report people read -----------------------------------------------------------------------


def test_the_html_report_is_self_contained_and_the_json_carries_the_decision(topic_report, tmp_path):
    report = topic_report
    decision = decide(report, DecisionConfig(state_path=str(tmp_path / "state.json")))
    paths = save_report(report, tmp_path / "out", decision)
    page = Path(paths["html"]).read_text()
    assert "<html" in page[:2000].lower()
    assert not re.findall(r"<script[^>]+src=\"https?://", page), "the page must open offline"
    assert "RETRAIN RECOMMENDED" in page and "topic drift" in page
    body = json.loads(Path(paths["json"]).read_text())
    assert body["decision"]["retrain"] is True
    assert body["summary"]["overall"]["topic_drift"] == ["last_user_message", "agent_reply"]
    assert any(m["config"]["type"].endswith(":ValueDrift") for m in body["evidently"]["metrics"])


# --- the champion's lineage and the real servers --------------------------------------------------


def register_champion(name: str, tags: dict[str, str] | None) -> str:
    """A registered model whose @champion version carries `tags` (the registry helper's lineage contract)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mlflow.set_experiment("test-monitor-champion")
    with mlflow.start_run() as run:
        mlflow.log_text("adapter placeholder", "adapter/README.txt")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id, tags=tags or {}
    )
    client.set_registered_model_alias(name, "champion", version.version)
    return str(version.version)


def test_the_reference_is_the_champions_training_window(mlflow_uri):
    name = f"agentloop-chat-test-{datetime.now().strftime('%H%M%S%f')}"
    current_start = CURRENT_END - timedelta(hours=24)
    config = MonitorConfig(registered_model=name, reference_days=3)

    missing = resolve_reference(config, current_start)
    assert missing.source == "fixed" and f"registered model {name!r} has no @champion" in missing.note
    assert (missing.start, missing.end) == ("2025-01-04T00:00:00+00:00", "2025-01-07T00:00:00+00:00")

    version = register_champion(
        name,
        {
            "agentloop.data_start": "2025-01-01T00:00:00Z",
            "agentloop.data_end": "2025-01-05T00:00:00Z",
            "agentloop.agents": "agent-bruno, agent-jamie",
            "dataset.snapshot_hash": "abc123",
        },
    )
    ref = resolve_reference(config, current_start)
    assert ref.source == "champion" and ref.champion_version == version
    assert (ref.start, ref.end) == ("2025-01-01T00:00:00+00:00", "2025-01-05T00:00:00+00:00")
    assert ref.agents == ["agent-bruno", "agent-jamie"] and ref.snapshot_hash == "abc123"

    untagged = f"{name}-untagged"
    register_champion(untagged, {"dataset.snapshot_hash": "x"})
    fallback = resolve_reference(replace(config, registered_model=untagged), current_start)
    assert (
        fallback.source == "fixed"
        and "lacks the lineage tag(s) agentloop.data_start, agentloop.data_end" in fallback.note
    )


def test_the_check_reads_feast_logs_to_mlflow_and_the_run_page_shows_it(rows, tmp_path, mlflow_uri, chromium):
    from mlflow.tracking import MlflowClient

    from features.feast_store import FeastConfig, apply

    store = tmp_path / "store"
    write_store(store, rows)
    apply(FeastConfig(offline_store=str(store)))
    name = f"agentloop-chat-feast-{datetime.now().strftime('%H%M%S%f')}"
    version = register_champion(
        name,
        {
            "agentloop.data_start": "2025-01-01T00:00:00+00:00",
            "agentloop.data_end": "2025-01-06T00:00:00+00:00",
            "agentloop.agents": "",
            "dataset.snapshot_hash": "feedbeef",
        },
    )
    config = fast_config(store=str(store), registered_model=name, window_hours=48)
    report = run_drift_check(config, end=CURRENT_END)

    want_ref = [
        r
        for r in rows
        if datetime(2025, 1, 1, tzinfo=timezone.utc)
        <= r["event_timestamp"]
        < datetime(2025, 1, 6, tzinfo=timezone.utc)
    ]
    want_cur = [r for r in rows if r["event_timestamp"] >= CURRENT_END - timedelta(hours=48)]
    assert report.reference.source == "champion" and report.reference.champion_version == version
    assert (report.overall.reference_rows, report.overall.current_rows) == (len(want_ref), len(want_cur))
    assert report.current_start == "2025-01-06T00:00:00+00:00"

    decision = decide(report, DecisionConfig(state_path=str(tmp_path / "state.json")))
    run_id = log_drift_report(report, decision, flyte_execution_id="f-test")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "monitoring"
    assert run.data.tags["agentloop.champion_version"] == version
    assert run.data.tags["dataset.snapshot_hash"] == "feedbeef"
    assert run.data.tags["agentloop.retrain_recommended"] == str(decision.retrain).lower()
    assert run.data.tags["mlflow.note.content"].count("\n- ") == len(decision.reasons)
    assert run.data.metrics["drift_share"] == pytest.approx(report.overall.drift_share)
    assert (
        "drift_score.prompt_tokens" in run.data.metrics
        and "embedding_auc.last_user_message" in run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"drift_report.html", "drift_report.json", "drift_chart.png", "images"} <= artifacts
    # the chart is a keyed image (the experiment's chart view shows it), the table is the run's description
    assert any(a.path.startswith("images/drift") for a in client.list_artifacts(run_id, "images"))
    note = run.data.tags["mlflow.note.content"]
    assert all(f"| {scope} |" in note for scope in ["all", *report.agents])
    assert (
        client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"]
        == "custom_model_development"
    )
    logged = json.loads(
        Path(client.download_artifacts(run_id, "drift_report.json", str(tmp_path))).read_text()
    )
    assert logged["summary"]["reference"]["champion_version"] == version

    # what a reviewer opens in the MLflow UI, in a real browser: the description (verdict, reasons, a row per
    # scope) on the run's page, and the HTML report in MLflow's artifact viewer
    page = ui_link(mlflow_uri, f"experiments/{run.info.experiment_id}/runs/{run_id}")
    dom = browse(chromium, page, "drift-run")
    verdict = "RETRAIN RECOMMENDED" if decision.retrain else "no retraining"
    assert f"<strong>{verdict}</strong>" in dom
    assert all(f"<td>{scope}</td>" in dom for scope in ["all", *report.agents])
    report_page = ui_link(
        mlflow_uri, f"experiments/{run.info.experiment_id}/runs/{run_id}/artifacts/drift_report.html"
    )
    viewer = browse(chromium, report_page, "drift-report", wait_ms=30_000)
    assert 'class="mlflow-html-iframe"' in viewer


def test_a_sampled_window_keeps_max_rows_from_every_day(rows, tmp_path):
    from features.feast_store import FeastConfig, apply
    from serving.monitoring.windows import load_window

    store = tmp_path / "store"
    write_store(store, rows)
    apply(FeastConfig(offline_store=str(store)))
    config = MonitorConfig(store=str(store), max_rows=200)
    start, end = datetime(2025, 1, 1, tzinfo=timezone.utc), CURRENT_END
    window = load_window(config, start, end)
    assert (
        abs(len(window) - 200) <= DAYS
        and window.attrs["sampled"]
        and window.attrs["rows_in_window"] == len(rows)
    )
    assert window["event_timestamp"].dt.date.nunique() == DAYS
    bruno = load_window(replace(config, max_rows=10_000), start, end, agents=["agent-bruno"])
    assert set(bruno["agent"]) == {"agent-bruno"} and len(bruno) == sum(
        r["agent"] == "agent-bruno" for r in rows
    )


def test_onnx_embeddings_are_the_sentence_transformers_vectors_and_are_exported_once(tmp_path, monkeypatch):
    from serving.monitoring.embeddings import (
        MINILM,
        _OnnxEncoder,
        embed_texts,
        embedding_model_path,
        onnx_export_dir,
    )

    monkeypatch.setenv("AGENTLOOP_HOME", str(tmp_path))
    monkeypatch.setattr(_OnnxEncoder, "_cache", {})
    texts = [
        "where is my parcel?",
        "The deployment rolled back after the readiness probe failed twice.",
        "ok",
        "kubectl get pods -n payments shows three pods in CrashLoopBackOff since 10:42",
        "thanks, that fixed it!" * 20,  # longer than embedding_max_tokens: truncated alike
    ]
    config = MonitorConfig(progress=False, embedding_batch_size=2)
    onnx = embed_texts(texts, config)
    torch_vectors = embed_texts(texts, replace(config, embedding_backend="torch"))
    assert onnx.shape == torch_vectors.shape == (len(texts), 384)
    assert np.abs(np.linalg.norm(onnx, axis=1) - 1).max() < 1e-5
    assert (onnx * torch_vectors).sum(1).min() > 0.9999  # the same vectors, by cosine
    model_file = onnx_export_dir(embedding_model_path(MINILM)) / "model.onnx"
    assert model_file.is_file() and str(model_file).startswith(str(tmp_path))
    exported_at = model_file.stat().st_mtime_ns
    monkeypatch.setattr(_OnnxEncoder, "_cache", {})  # a new process: the cached export is reused
    assert np.allclose(embed_texts(texts[:2], config), onnx[:2], atol=1e-5)
    assert model_file.stat().st_mtime_ns == exported_at
    with pytest.raises(ValueError, match="embedding_backend='tf'"):
        embed_texts(texts, replace(config, embedding_backend="tf"))
