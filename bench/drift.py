"""Drift check at scale: 50k reference rows vs 50k current rows, text columns included.

    .venv/bin/python bench/drift.py --rows 50000
    .venv/bin/python bench/drift.py --rows 50000 --embedding-sample 5000 --no-per-agent

Rows are the real sample interactions (every chitchat conversation with a reply, features.sample_logs)
drawn with replacement into two windows of the same distribution, plus the same current window with
a new topic planted in a tenth of its rows (the texts of the test suite's off-topic generator, cut to
the replaced text's length). Reports wall time per phase (embedding, overall Evidently report,
per-agent reports) and the process's peak RSS (ru_maxrss, which includes the ~1 GB of torch and
Evidently imports: the baseline after imports is printed too).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per window (default 50000)")
    parser.add_argument(
        "--embedding-sample",
        type=int,
        default=None,
        help="rows embedded per window (default: MonitorConfig's)",
    )
    parser.add_argument("--per-agent", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--embedding-backend", default=None, help="onnx | torch (default: MonitorConfig's, onnx)"
    )
    parser.add_argument(
        "--evidently-sample",
        type=int,
        default=None,
        help="rows a window for Evidently; 0 = all (default 10000)",
    )
    parser.add_argument(
        "--topic-share", type=float, default=0.1, help="share of current rows given a new topic"
    )
    parser.add_argument("--out", default="", help="folder for the HTML/JSON report (default: a temp folder)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from features.sample_logs import generate_sample_logs
    from serving.monitoring.decision import DecisionConfig, decide
    from serving.monitoring.drift import MonitorConfig, check_drift
    from serving.monitoring.report import report_html, save_report
    from tests.test_feast_store import read_sample_rows
    from tests.test_monitor import off_topic_text

    with tempfile.TemporaryDirectory() as tmp:
        generate_sample_logs(Path(tmp) / "raw", conversations=0, days=7, seed=0, progress=False)
        base = pd.DataFrame(read_sample_rows(Path(tmp) / "raw"))
    rng = np.random.default_rng(0)
    reference = base.iloc[rng.integers(0, len(base), args.rows)].reset_index(drop=True)
    current = base.iloc[rng.integers(0, len(base), args.rows)].reset_index(drop=True)
    planted = rng.random(len(current)) < args.topic_share
    r = random.Random(0)
    for col in ("last_user_message", "agent_reply"):
        current.loc[planted, col] = [off_topic_text(len(t), r) for t in current.loc[planted, col]]
    text_mb = (
        sum(f[c].str.len().sum() for f in (reference, current) for c in ("last_user_message", "agent_reply"))
        / 1e6
    )
    print(
        f"{len(base)} real interactions -> {len(reference)} reference + {len(current)} current rows "
        f"({planted.sum()} with a planted topic); {text_mb:.1f} M characters of text"
    )

    config = MonitorConfig(progress=True, per_agent=args.per_agent)
    if args.embedding_sample is not None:
        config = replace(config, embedding_sample=args.embedding_sample)
    if args.embedding_backend is not None:
        config = replace(config, embedding_backend=args.embedding_backend)
    if args.evidently_sample is not None:
        config = replace(config, evidently_sample=args.evidently_sample)
    import evidently  # noqa: F401  (imports before the baseline)
    import sentence_transformers  # noqa: F401  (imported before the baseline too)

    baseline = current_rss_mb()
    print(f"RSS after imports and frames: {baseline:.0f} MB")

    started = time.perf_counter()
    report = check_drift(reference, current, config)
    wall = time.perf_counter() - started
    decision = decide(report, DecisionConfig(state_path=str(Path(tempfile.mkdtemp()) / "state.json")))
    html = report_html(report, decision)
    out = Path(args.out or tempfile.mkdtemp(prefix="drift-bench-"))
    save_report(report, out, decision)
    result = {
        "rows_per_window": args.rows,
        "embedding_sample": config.embedding_sample,
        "embedding_backend": config.embedding_backend,
        "evidently_sample": config.evidently_sample,
        "per_agent": config.per_agent,
        "wall_s": round(wall, 1),
        "timings_s": {k: round(v, 1) for k, v in report.timings.items()},
        "peak_rss_mb": round(rss_mb()),
        "rss_before_check_mb": round(baseline),
        "drift_share": round(report.overall.drift_share, 3),
        "drifted_columns": report.overall.drifted_columns,
        "embedding_auc": {e.column: round(e.score, 3) for e in report.overall.embeddings},
        "topic_drift": report.overall.topic_drift,
        "retrain": decision.retrain,
        "html_mb": round(len(html) / 1e6, 1),
        "report": str(out),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
