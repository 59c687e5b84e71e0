"""Throughput of features.redact on realistic chat lines, with and without detect-secrets' scanner.

    .venv/bin/python bench/redact_bench.py --conversations 3000 --repeat 3
    .venv/bin/python bench/redact_bench.py --per-record   # issue 14: cost per ingest record, one line each

`--per-record` times what ingest runs per record on the chat records (redact_messages, check_interaction)
and per batch (find_poisoning over the same records as one batch), and prints machine-readable lines
`redact_us_per_record: X`, `guard_us_per_record: X`, `poisoning_us_per_record: X`. The same file runs
unchanged on an older checkout (public API only), which gives the before figures.

Chat lines: the message contents of sample logs (features.sample_logs, real chitchat-dataset text),
the common case of the ingest hot path: almost no secrets. Secret-heavy lines: the labeled corpus
of tests/data (every line holds a secret or a look-alike), the worst case. Each configuration runs
on the same lines; the best of `--repeat` runs of process CPU time is printed (wall time is
noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.redact import Redactor  # noqa: E402
from features.sample_logs import generate_sample_logs  # noqa: E402


def chat_records(conversations: int, seed: int) -> list[list[dict]]:
    """The `messages` of every record the sample-log generator writes."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        generate_sample_logs(
            tmp, conversations=conversations, seed=seed, end_date="2025-01-07", progress=False
        )
        for path in sorted(Path(tmp).rglob("*.jsonl*")):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    records.append(record.get("data", record)["messages"])
    return records


def corpus_texts() -> list[str]:
    spec = importlib.util.spec_from_file_location(
        "make_redaction_corpus", ROOT / "tests/data/make_redaction_corpus.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [r["text"] for r in module.build_corpus()]


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-record", action="store_true", help="only the per-record ingest costs")
    args = parser.parse_args(argv)

    records = chat_records(args.conversations, args.seed)
    if args.per_record:
        from features.guard import check_interaction, find_poisoning

        redactor = Redactor()
        batch = [(str(i), f"s{i}", m) for i, m in enumerate(records)]
        costs = {
            "redact": best_of(args.repeat, lambda: [redactor.redact_messages(m) for m in records]),
            "guard": best_of(args.repeat, lambda: [check_interaction(m) for m in records]),
            "poisoning": best_of(args.repeat, lambda: find_poisoning(batch)),
        }
        print(
            f"{len(records)} chat records (sample logs, seed {args.seed}), best of {args.repeat}, process CPU time"
        )
        for name, secs in costs.items():
            print(f"{name}_us_per_record: {secs / len(records) * 1e6:.1f}")
        return 0
    texts = [m["content"] for msgs in records for m in msgs if isinstance(m.get("content"), str)]
    heavy = corpus_texts()
    chars = sum(map(len, texts))
    print(
        f"chat: {len(records)} records, {len(texts)} message texts, {chars / len(texts):.0f} chars/text on average"
    )
    print(f"secret-heavy: {len(heavy)} texts of the labeled redaction corpus\n")

    configs = [
        ("patterns + gate (default)", Redactor()),
        ("patterns, no gate", Redactor(gate=False)),
        ("patterns + detect-secrets scan, gated", Redactor(detect_secrets_scan=True)),
        ("patterns + detect-secrets scan, every line", Redactor(detect_secrets_scan=True, gate=False)),
    ]
    print(f"{'configuration':44s} {'chat texts/s':>13s} {'records/s':>11s} {'heavy texts/s':>14s}")
    for name, redactor in configs:
        t_text = best_of(args.repeat, lambda r=redactor: [r.redact_text(t) for t in texts])
        t_rec = best_of(args.repeat, lambda r=redactor: [r.redact_messages(m) for m in records])
        t_heavy = best_of(args.repeat, lambda r=redactor: [r.redact_text(t) for t in heavy * 5])
        rates = (len(texts) / t_text, len(records) / t_rec, 5 * len(heavy) / t_heavy)
        print(f"{name:44s} {rates[0]:13,.0f} {rates[1]:11,.0f} {rates[2]:14,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
