"""Ingest throughput per input format (JSONL, OTLP spans, OTLP logs+spans, OpenInference, MLflow, OpenAI pairs).

    .venv/bin/python bench/ingest_formats.py --conversations 2000

The same sample interactions (features.sample_logs, seeded) written once as JSONL and once in the
trace formats (--trace-share 1: each interaction in one of them); per format, in one process, times
(1) a bare `orjson.loads` of every line of its files and (2) `features.ingest.ingest` of those files
into an empty store. Reports interactions/s for both and their ratio. Figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import orjson

from features.ingest import IngestConfig, ingest
from features.sample_logs import generate_sample_logs

SUFFIXES = {
    "otlp (spans + logs)": (".otlp.jsonl", ".otlp-logs.jsonl"),
    "openinference": (".openinference.jsonl",),
    "mlflow": (".mlflow.jsonl",),
    "openai pairs": (".openai.jsonl",),
}


def bare_parse(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for line in f:
                if line.strip():
                    orjson.loads(line)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        root = Path(tmp)
        generate_sample_logs(root / "jsonl", conversations=args.conversations, seed=5, end_date="2025-01-07")
        generate_sample_logs(
            root / "traces", conversations=args.conversations, seed=5, end_date="2025-01-07", trace_share=1.0
        )
        groups = {"jsonl (plain + CloudEvents)": sorted((root / "jsonl").rglob("*.jsonl*"))}
        for name, suffixes in SUFFIXES.items():
            groups[name] = sorted(p for p in (root / "traces").rglob("*.jsonl") if p.name.endswith(suffixes))
        print("| format | files | MB | interactions | bare parse /s | ingest /s | ratio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for i, (name, files) in enumerate(groups.items()):
            mb = sum(p.stat().st_size for p in files) / 1e6
            bare = bare_parse(files)
            start = time.perf_counter()
            report = ingest(
                [str(p) for p in files], IngestConfig(store=str(root / f"store-{i}"), progress=False)
            )
            seconds = time.perf_counter() - start
            n = report.accepted
            print(
                f"| {name} | {len(files)} | {mb:.1f} | {n} | {n / bare:,.0f} | {n / seconds:,.0f} | "
                f"{bare / seconds:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
