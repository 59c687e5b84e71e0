"""Ingest throughput: parse -> validate -> redact -> dedup -> guard -> write, against a bare orjson parse.

    .venv/bin/python bench/ingest.py --records 100000

Builds N distinct records from the real sample logs (copies get fresh ids and session ids, so dedup
does not discard them), writes them as JSONL (a share gzip, a share CloudEvents, as the agents do),
then in the same process times (1) a bare `orjson.loads` of every line of the same files and
(2) a full `features.ingest.ingest` into an empty store. Reports records/s for both and the ratio,
plus peak RSS. Figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import tempfile
import time
from pathlib import Path

import orjson

from features.ingest import IngestConfig, ingest
from features.raw_format import unwrap
from features.sample_logs import generate_sample_logs


def build_corpus(out: Path, records: int) -> list[Path]:
    seed_dir = out / "seed"
    generate_sample_logs(seed_dir, conversations=0, seed=11)
    base = []
    for path in sorted(seed_dir.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            base.extend(f.read().splitlines())
    files = []
    copy = 0
    written = 0
    while written < records:
        path = (
            out / "raw" / f"copy-{copy:03d}.jsonl" if copy % 4 else out / "raw" / f"copy-{copy:03d}.jsonl.gz"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt") as f:
            for line in base:
                if written >= records:
                    break
                obj = json.loads(line)
                record = unwrap(obj)
                record["id"] = f"{record['id']}-c{copy}"
                record["session_id"] = f"{record['session_id']}-c{copy}"
                if "data" in obj:
                    obj["id"] = record["id"]
                    obj["subject"] = record["session_id"]
                    obj["data"] = record
                f.write(json.dumps(obj if "data" in obj else record) + "\n")
                written += 1
        files.append(path)
        copy += 1
    return files


def bare_parse(files: list[Path]) -> int:
    n = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for line in f:
                if line.strip():
                    orjson.loads(line)
                    n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        files = build_corpus(work, args.records)
        size = sum(f.stat().st_size for f in files)
        print(
            f"corpus: {args.records} records in {len(files)} files, {size / 1e6:.0f} MB on disk, "
            f"built in {time.perf_counter() - t0:.0f}s"
        )

        t0 = time.perf_counter()
        parsed = bare_parse(files)
        bare_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = ingest([str(work / "raw")], IngestConfig(store=str(work / "store"), progress=True))
        ingest_s = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert report.read == parsed == args.records, (report.read, parsed)

        bare_rps, ingest_rps = parsed / bare_s, report.read / ingest_s
        print(report.summary())
        print(f"bare orjson parse: {bare_rps:,.0f} records/s ({bare_s:.1f}s)")
        print(f"full ingest:       {ingest_rps:,.0f} records/s ({ingest_s:.1f}s)")
        print(
            f"ratio ingest/bare: {ingest_rps / bare_rps:.4f} (bare parse is {bare_rps / ingest_rps:.0f}x faster)"
        )
        print(f"peak RSS: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
