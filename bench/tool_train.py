"""Train the tool-calling adapters bench/tool_calling.py measures, on BFCL traffic through the real pipeline.

    .venv/bin/python bench/tool_train.py --out /tmp/toolbench --steps 40 --name demo-budget
    .venv/bin/python bench/tool_train.py --out /tmp/toolbench --steps 240 --learning-rate 1e-3 --name long

Once per --out: features.bfcl writes every category's questions as the four agents' raw interactions
(held-out questions, split by question id, only under _heldout/), features.ingest takes them through
redaction and the guard into a Delta store, and Feast's training service reads them back
(features.feast_store.get_training_frame) — the path any traffic takes. Then training.dataset builds the
snapshot (max_seq_len 1024: 85% of BFCL prompts with their tools fit, longer ones are split) and
training.trainer fits a LoRA adapter for --steps steps. Prints the adapter folder, the steps, the wall
time and the loss-tokens/s; the held-out file for bench/tool_calling.py is <out>/raw/_heldout/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(out: Path, per_category: int | None):
    """The training frame of the BFCL traffic (written, ingested and applied once per `out`)."""
    from features.bfcl import DEFAULT_START, write_bfcl
    from features.feast_store import FeastConfig, apply, get_training_frame
    from features.ingest import IngestConfig, ingest

    raw, store = out / "raw", out / "store"
    if not (raw / "_heldout" / "bfcl-heldout.jsonl").is_file():
        report = write_bfcl(raw, per_category=per_category)
        print(f"# bfcl: {sum(report.interactions.values())} interactions, held out {report.heldout}")
    if not (store / "_ledger").exists():
        ingested = ingest(str(raw), IngestConfig(store=str(store), flush_traces=True, progress=False))
        print(
            f"# ingest: read {ingested.read}, accepted {ingested.accepted}, duplicates {ingested.duplicates}, "
            f"quarantined {ingested.quarantined}"
        )
    config = FeastConfig(offline_store=str(store))
    apply(config)
    return get_training_frame(config, DEFAULT_START, DEFAULT_START + timedelta(days=8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work folder (raw traffic, store, adapters)")
    p.add_argument("--name", required=True, help="the adapter's folder under <out>/adapters/")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=0, help="0: validate only at the end")
    p.add_argument("--per-category", type=int, default=0, help="BFCL questions per category (0: all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from transformers import AutoTokenizer

    from training.base_model import default_model_dir
    from training.dataset import DatasetConfig, build_snapshot
    from training.trainer import TrainConfig, train

    out = Path(args.out)
    t0 = time.perf_counter()
    frame = prepare(out, args.per_category or None)
    print(f"# training frame: {len(frame)} interactions, table version {frame.attrs.get('table_version')}")
    base = default_model_dir()
    tok = AutoTokenizer.from_pretrained(base)
    snapshot = build_snapshot(
        frame, tok, DatasetConfig(max_seq_len=1024, val_fraction=0.03, test_fraction=0.0)
    )
    rows = {k: len(v) for k, v in snapshot.splits.items()}
    print(
        f"# snapshot {snapshot.snapshot_hash[:12]}: packed rows {rows}; prepared in {time.perf_counter() - t0:.0f} s"
    )
    config = TrainConfig(
        base_model=str(base),
        output_dir=str(out / "adapters" / args.name),
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, args.steps // 20),
        max_steps=args.steps,
        micro_batch_size=args.micro_batch,
        grad_accum_steps=args.grad_accum,
        eval_every=args.eval_every,
        checkpoint_every=0,
        num_threads=args.threads,
        mlflow_experiment="",
        run_name=f"bench-tools-{args.name}",
    )
    t1 = time.perf_counter()
    result = train(config, snapshot, resume=False)
    wall = time.perf_counter() - t1
    summary = {
        "adapter_dir": result.adapter_dir,
        "steps": result.steps,
        "best_step": result.best_step,
        "final_val_loss": result.final_val_loss,
        "train_wall_s": round(wall, 1),
        "loss_tokens_per_s": round(result.loss_tokens_per_s, 1),
        "tokens_seen": result.tokens_seen,
        "config": {
            k: getattr(config, k)
            for k in ("lora_r", "learning_rate", "max_steps", "micro_batch_size", "grad_accum_steps")
        },
    }
    (out / "adapters" / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
