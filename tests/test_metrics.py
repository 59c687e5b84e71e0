"""serving/monitoring/metrics.py and deploy/monitoring/prometheus-rule.yaml: what Prometheus reads and what it alerts on."""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.monitoring.config import ColumnDrift, DriftReport, ReferenceWindow, ScopeDrift
from serving.monitoring.decision import RetrainDecision
from serving.monitoring.metrics import MetricsConfig, drift_registry, export_metrics, exposition

ROOT = Path(__file__).resolve().parents[1]
RULE = ROOT / "deploy" / "monitoring" / "prometheus-rule.yaml"


def sample_report() -> DriftReport:
    overall = ScopeDrift(
        scope="all",
        reference_rows=1200,
        current_rows=300,
        drift_share=0.25,
        dataset_drift=False,
        columns=[
            ColumnDrift("prompt_tokens", "numerical", "wasserstein", 0.1, 0.31, True),
            ColumnDrift("agent", "categorical", "jensenshannon", 0.1, 0.02, False),
            ColumnDrift("last_user_message.length", "descriptor", "K-S p_value", 0.05, float("nan"), False),
        ],
        embeddings=[ColumnDrift("last_user_message", "embedding", "model", 0.6, 0.93, True)],
        mean_rating_reference=3.9,
        mean_rating_current=3.4,
        rated_reference=600,
        rated_current=150,
    )
    bruno = ScopeDrift(
        scope="agent-bruno",
        reference_rows=300,
        current_rows=80,
        drift_share=0.5,
        dataset_drift=True,
        columns=[ColumnDrift("n_turns", "numerical", "K-S p_value", 0.05, 0.001, True)],
    )
    jamie = ScopeDrift(scope="agent-jamie", reference_rows=300, current_rows=4, status="insufficient_data")
    return DriftReport(
        checked_at="2025-01-08T00:00:05+00:00",
        current_start="2025-01-07T00:00:00+00:00",
        current_end="2025-01-08T00:00:00+00:00",
        reference=ReferenceWindow(
            "champion",
            "2025-01-01T00:00:00+00:00",
            "2025-01-05T00:00:00+00:00",
            registered_model="agentloop-chat",
            champion_version="7",
        ),
        overall=overall,
        agents={"agent-bruno": bruno, "agent-jamie": jamie},
    )


DECISION = RetrainDecision(
    retrain=True,
    reasons=["all: topic drift in last_user_message"],
    signals=["topic_drift:all:last_user_message"],
)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_exposition_parses_with_prometheus_clients_parser():
    got = samples(exposition(drift_registry(sample_report(), DECISION)))
    assert got[("agentloop_drift_share", (("agent", "all"),))] == 0.25
    assert got[("agentloop_drift_share", (("agent", "agent-bruno"),))] == 0.5
    assert ("agentloop_drift_share", (("agent", "agent-jamie"),)) not in got, "no verdict, no share"
    assert got[("agentloop_drift_verdict", (("agent", "agent-jamie"),))] == 0
    assert got[("agentloop_retrain_recommended", ())] == 1
    assert got[("agentloop_column_drifted", (("agent", "all"), ("column", "prompt_tokens")))] == 1
    assert (
        "agentloop_column_drift_score",
        (("agent", "all"), ("column", "last_user_message.length")),
    ) not in got
    assert got[("agentloop_embedding_drift_auc", (("agent", "all"), ("column", "last_user_message")))] == 0.93
    assert got[("agentloop_mean_rating", (("agent", "all"), ("window", "current")))] == 3.4
    assert got[("agentloop_drift_check_timestamp_seconds", ())] == 1736294405.0
    assert (
        got[
            (
                "agentloop_drift_check_info",
                (
                    ("champion_version", "7"),
                    ("reference_source", "champion"),
                    ("registered_model", "agentloop-chat"),
                ),
            )
        ]
        == 1
    )


def test_the_textfile_holds_the_same_metrics(tmp_path):
    export = export_metrics(
        sample_report(), DECISION, MetricsConfig(textfile=str(tmp_path / "prom" / "drift.prom"))
    )
    assert export.pushed_to == ""
    written = Path(export.textfile).read_text()
    assert samples(written) == samples(export.text)
    assert not list((tmp_path / "prom").glob("*.tmp*")), "write_to_textfile renames its temp file into place"


class _FakePushgateway(http.server.BaseHTTPRequestHandler):
    """Records pushes (method, path, body): the real Pushgateway is a Go server that is not installed here."""

    received: list = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(("PUT", self.path, body.decode()))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_metrics_are_pushed_to_a_fake_pushgateway(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakePushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        export = export_metrics(
            sample_report(),
            DECISION,
            MetricsConfig(textfile=str(tmp_path / "d.prom"), pushgateway_url=url, instance="hourly"),
        )
    finally:
        server.shutdown()
    assert export.pushed_to == url
    method, path, body = _FakePushgateway.received[-1]
    assert (method, path) == ("PUT", "/metrics/job/agentloop_drift/instance/hourly")
    assert samples(body)[("agentloop_retrain_recommended", ())] == 1


def test_an_unreachable_pushgateway_is_named_in_the_error(tmp_path):
    with pytest.raises(ConnectionError, match=r"Pushgateway http://127\.0\.0\.1:9 \(job agentloop_drift\)"):
        export_metrics(
            sample_report(),
            DECISION,
            MetricsConfig(textfile=str(tmp_path / "d.prom"), pushgateway_url="http://127.0.0.1:9"),
        )


def test_the_prometheus_rule_alerts_on_metrics_the_check_exports():
    rule = yaml.safe_load(RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert {
        "AgentloopRetrainRecommended",
        "AgentloopDataDrift",
        "AgentloopTopicDrift",
        "AgentloopRatingDrop",
        "AgentloopDriftCheckStale",
    } <= set(alerts)
    assert "agentloop_retrain_recommended" in alerts["AgentloopRetrainRecommended"]["expr"]
    assert 'agentloop_drift_share{agent="all"}' in alerts["AgentloopDataDrift"]["expr"]
    families = list(text_string_to_metric_families(exposition(drift_registry(sample_report(), DECISION))))
    exported = {f.name for f in families} | {s.name for f in families for s in f.samples}
    for r in rules:
        used = set(re.findall(r"\bagentloop_[a-z_]+", r["expr"]))
        assert used and used <= exported, (
            f"{r['alert']} uses {used - exported}, which serving/monitoring/metrics.py never exports"
        )
        assert r["labels"]["severity"] in {"info", "warning", "critical"} and r["annotations"]["summary"]
