"""Training throughput: training/trainer.py against TRL's SFTTrainer (defaults, and as an expert sets it).

    .venv/bin/python bench/train_throughput.py --steps 10 --warmup 2 --seq-len 512 --tokens-per-step 4096 \
        --threads 2 --micro-batch 4 --which matmul-peak,ours,trl-default,trl-expert --eval

(`pip install -e '.[bench]'` adds TRL 1.16.0 and datasets.)

One invocation runs every configuration back to back, each in its own child process (so each has
its own peak RSS and nothing leaks between them), on the same data, the same model, the same LoRA
adapter (r=16, alpha=32, dropout 0 on q/k/v/o: the trainer's default; --lora-dropout changes it for all), the same sequence length and the same 8 rows
(tokens-per-step / seq-len) per optimizer step, with `--threads` torch threads.

Data. Real sample logs (features.sample_logs: chitchat-dataset conversations), read straight from
the files the generator writes into a DataFrame with the columns training.dataset needs
(interaction_id, session_id, agent, messages_json, has_error) and turned into examples, a session
split and packed rows by training.dataset.build_snapshot. This skips ingest (redaction, guard) and
Feast, so the bench is self-contained; training never sees a different token. All three trainers get
the SAME token sequences, the unpacked examples of the train split: ours as its packed rows, TRL as
a pre-tokenized dataset (input_ids, plus `assistant_masks` = our label positions for the expert).

Useful tokens: the tokens of the examples a step trains on, i.e. every non-padding position
(context and loss-bearing alike); padding (to the batch's longest example, or a packed row's empty
tail) is not counted. Also reported: label tokens, the positions whose next-token loss is taken.

FLOPs: model FLOPs per step as training/flops.py defines them (padding and recompute are waste, not work).
% of peak = those FLOPs per second / the bf16 4096^3 matmul rate measured in the same invocation.

Eval (--eval): the mean cross-entropy per assistant label position (training.loss.LabelLoss) on
the same held-out validation rows for the base model and for each configuration's adapter after its
run (warmup + steps optimizer steps of 8 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0)  # lora_dropout: --lora-dropout
LR = 2e-4


# --- data ----------------------------------------------------------------------------------------------


def sample_frame(conversations: int, seed: int):
    """The training frame of `conversations` sample-log interactions, read back from the generated files."""
    import pandas as pd

    from features.raw_format import unwrap
    from features.raw_sample import iter_raw_lines
    from features.sample_logs import generate_sample_logs

    with tempfile.TemporaryDirectory() as tmp:
        generate_sample_logs(
            tmp, conversations=conversations, seed=seed, end_date="2025-01-07", progress=False
        )
        records = [unwrap(json.loads(line)) for _, _, line in iter_raw_lines(tmp)]  # plain and CloudEvents
    return pd.DataFrame(
        {
            "interaction_id": [r["id"] for r in records],
            "session_id": [r["session_id"] for r in records],
            "agent": [r["agent"] for r in records],
            "messages_json": [json.dumps(r["messages"], ensure_ascii=False) for r in records],
            "has_error": ["error" in r for r in records],
        }
    )


def build_data(args, out: Path) -> dict:
    from transformers import AutoTokenizer

    from training.base_model import resolve_base_model
    from training.dataset import DatasetConfig, build_snapshot

    identity = resolve_base_model("")
    tokenizer = AutoTokenizer.from_pretrained(identity.path)
    snapshot = build_snapshot(
        sample_frame(args.conversations, args.seed), tokenizer, DatasetConfig(max_seq_len=args.seq_len)
    )
    snapshot.save(out)
    return {"model": identity.path, "stats": snapshot.stats}


# --- children: one configuration each ---------------------------------------------------------------


def child_matmul_peak(args) -> dict:
    """bf16 (and fp32) matmul rate: best and median of `reps`, by wall time and by process CPU time / threads."""
    import torch

    out = {}
    for name, (m, k, n), dtype, reps in (
        ("bf16_4096", (4096, 4096, 4096), torch.bfloat16, 12),
        ("fp32_4096", (4096, 4096, 4096), torch.float32, 4),
        ("bf16_4096x576x1536", (4096, 576, 1536), torch.bfloat16, 40),
    ):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        wall, cpu = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            a @ b
            wall.append(time.perf_counter() - t0)
            cpu.append((time.process_time() - c0) / args.threads)
        flop = 2 * m * k * n / 1e12
        out[name] = {
            "best_tflops": flop / min(wall),
            "median_tflops": flop / sorted(wall)[reps // 2],
            "best_cpu_tflops": flop / min(cpu),
            "median_cpu_tflops": flop / sorted(cpu)[reps // 2],
        }
    out["peak_tflops"] = out["bf16_4096"]["best_tflops"]
    out["peak_cpu_tflops"] = out["bf16_4096"]["best_cpu_tflops"]
    return out


def _val_rows(snapshot, n: int):
    return (snapshot.splits.get("validation") or [])[:n]


def _label_eval(peft_model, rows) -> float | None:
    import torch

    from training.loss import LabelLoss, evaluate_rows

    if not rows:
        return None
    loss_fn = LabelLoss(peft_model)
    value = evaluate_rows(loss_fn, rows, 4, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    loss_fn.train()
    return value


def _ours_config(args, output_dir: str, steps: int):
    from training.trainer import TrainConfig

    rows = args.tokens_per_step // args.seq_len
    if rows % args.micro_batch:
        raise SystemExit(f"--micro-batch {args.micro_batch} must divide the {rows} rows of a step")
    return TrainConfig(
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        target_modules=list(TARGETS),
        learning_rate=LR,
        warmup_steps=args.warmup,
        max_steps=steps,
        micro_batch_size=args.micro_batch,
        grad_accum_steps=rows // args.micro_batch,
        eval_every=0,
        checkpoint_every=0,
        mlflow_experiment="",
        num_threads=args.threads,
        output_dir=output_dir,
        seed=args.seed,
        bf16=True,
        log_every=1,
    )


def child_base_eval(args) -> dict:
    from training.dataset import DatasetSnapshot
    from training.distributed import Dist
    from training.peft_model import load_peft_model

    snapshot = DatasetSnapshot.load(args.snapshot)
    model, _, _ = load_peft_model(_ours_config(args, "", 1), Dist())
    return {"eval_loss": _label_eval(model, _val_rows(snapshot, args.eval_rows))}


def child_ours(args) -> dict:
    import logging

    import torch

    from training.dataset import DatasetSnapshot
    from training.row_stream import RowStream
    from training.trainer import train

    torch.set_num_threads(args.threads)
    snapshot = DatasetSnapshot.load(args.snapshot)
    snapshot.splits = {
        **snapshot.splits,
        "validation": _val_rows(snapshot, args.eval_rows) if args.eval else [],
    }
    total = args.warmup + args.steps + 1  # the last step also evaluates: not measured

    ends: list[tuple[float, float]] = []  # (wall, process CPU) when each step's log line is written

    class StepEnds(logging.Handler):
        def emit(self, record):
            if str(record.msg).startswith("step %d/%d"):
                ends.append((time.perf_counter(), time.process_time()))

    trainer_log = logging.getLogger("training.trainer")
    trainer_log.setLevel(logging.INFO)
    trainer_log.propagate = False
    trainer_log.addHandler(StepEnds())
    with tempfile.TemporaryDirectory() as tmp:
        config = _ours_config(args, tmp, total)
        start = (time.perf_counter(), time.process_time())
        result = train(config, snapshot, resume=False)
    ends = [start, *ends]
    # the examples each step held, to charge attention FLOPs exactly (same stream the trainer reads)
    stream, rows = RowStream(snapshot.splits["train"], config.seed), snapshot.splits["train"]
    steps = []
    for h in result.history:
        s = h["step"] - 1
        idx = [
            i
            for g in range(s * config.grad_accum_steps, (s + 1) * config.grad_accum_steps)
            for i in stream.rows(g, config.micro_batch_size).tolist()
        ]
        steps.append(
            {
                "time_s": ends[s + 1][0] - ends[s][0],
                "cpu_s": ends[s + 1][1] - ends[s][1],
                "inner_time_s": h["step_time_s"],
                "useful": h["tokens"],
                "labels": h["loss_tokens"],
                "sum_l_l1": sum(n * (n + 1) for i in idx for n in rows[i].lengths),
                "slots": len(idx) * args.seq_len,
                "loss": h["train_loss"],
            }
        )
    return {
        "steps": steps[:-1],
        "eval_loss": result.final_val_loss,
        "setup": f"packed rows (best-fit), micro-batch {config.micro_batch_size} x accumulation "
        f"{config.grad_accum_steps}, bf16 weights + autocast, no grad checkpointing, "
        f"assistant-only loss from hidden states at label positions, chunked LM head",
    }


def child_trl(args, expert: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.base_model import resolve_base_model
    from training.dataset import IGNORE, DatasetSnapshot

    torch.set_num_threads(args.threads)
    snapshot = DatasetSnapshot.load(args.snapshot)
    examples = snapshot.examples("train")
    columns = {"input_ids": [e.input_ids for e in examples]}
    if expert:  # loss only on our label positions (what assistant_only_loss=True gives from a chat template)
        columns["assistant_masks"] = [[int(label != IGNORE) for label in e.labels] for e in examples]
    dataset = Dataset.from_dict(columns)
    path = resolve_base_model("").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = args.tokens_per_step // args.seq_len
    total = args.warmup + args.steps + 1  # as ours: the same optimizer steps, the last not measured
    steps: list[dict] = []
    pending = {"useful": 0, "labels": 0, "sum_l_l1": 0, "slots": 0}

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                if "attention_mask" in inputs:  # padded batch: one example per row
                    lengths = inputs["attention_mask"].sum(1).tolist()
                else:  # padding-free: one flattened row, examples restart at position 0
                    starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist()
                    lengths = [
                        b - a
                        for a, b in zip(starts, starts[1:] + [inputs["position_ids"].shape[1]], strict=True)
                    ]
                pending["useful"] += sum(lengths)
                pending["labels"] += int((inputs["labels"][:, 1:] != -100).sum())
                pending["sum_l_l1"] += sum(n * (n + 1) for n in lengths)
                pending["slots"] += inputs["input_ids"].numel()
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a, **k):  # end to end: data, forward/backward, clip, optimizer, logging
            now = (time.perf_counter(), time.process_time())
            steps.append({"time_s": now[0] - self.t[0], "cpu_s": now[1] - self.t[1], **pending})
            pending.update(useful=0, labels=0, sum_l_l1=0, slots=0)
            self.t = now

    common = dict(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        max_steps=total,
        max_length=args.seq_len,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    if expert:
        config = SFTConfig(
            **common,
            packing=True,
            packing_strategy="bfd",
            per_device_train_batch_size=1,
            gradient_accumulation_steps=rows,
            gradient_checkpointing=False,
            bf16=True,
            model_init_kwargs={"dtype": torch.bfloat16},
            learning_rate=LR,
            warmup_steps=args.warmup,
            lr_scheduler_type="cosine",
            logging_steps=total,
        )
        setup = (
            f"packing=True, packing_strategy='bfd' (padding-free), batch 1 x accumulation {rows}, bf16 weights, "
            "no gradient checkpointing, loss on assistant positions only, lr 2e-4 cosine"
        )
    else:
        config = SFTConfig(**common, per_device_train_batch_size=rows, gradient_accumulation_steps=1)
        setup = (
            f"defaults: batch {rows} padded to its longest, fp32 weights + bf16 autocast, gradient "
            "checkpointing, loss on every token, lr 2e-5 linear"
        )
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        target_modules=list(TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    trainer = Counting(
        model=path,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    trainer.train()
    out = {"steps": steps[:-1], "setup": setup}
    if args.eval:
        out["eval_loss"] = _label_eval(trainer.model, _val_rows(snapshot, args.eval_rows))
    return out


def child_profile(args) -> dict:
    """Ours' hot loop (training.trainer internals), a phase timing and the torch.profiler op table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from training.dataset import DatasetSnapshot
    from training.distributed import Dist
    from training.loss import LabelLoss
    from training.peft_model import load_peft_model
    from training.row_stream import RowStream

    torch.set_num_threads(args.threads)
    snapshot = DatasetSnapshot.load(args.snapshot)
    config = _ours_config(args, "", 10)
    model, _, _ = load_peft_model(config, Dist())
    loss_fn = LabelLoss(model, config.loss_chunk_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    stream = RowStream(snapshot.splits["train"], config.seed)
    base = model.get_base_model()
    phases: dict[str, float] = {}

    def tick(name, t0):
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        return time.perf_counter()

    def one_step(s: int, timed: bool):
        for g in range(s * config.grad_accum_steps, (s + 1) * config.grad_accum_steps):
            batch = stream.batch(stream.rows(g, config.micro_batch_size), torch.device("cpu"))
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if timed:  # decoder and head+loss separately (LabelLoss.forward, split in two)
                    hidden = base.get_decoder()(
                        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
                    ).last_hidden_state
                    t = tick("forward decoder", t)
                    from training.loss import HeadCrossEntropy, label_positions

                    keep = label_positions(batch["labels"], batch["position_ids"])
                    h, y = hidden[:, :-1][keep], batch["labels"][:, 1:][keep]
                    total = HeadCrossEntropy.apply(
                        h, base.get_output_embeddings().weight, y, config.loss_chunk_tokens
                    )
                    t = tick("forward LM head + loss", t)
                else:
                    total, _ = loss_fn(**batch)
            total.backward()
            if timed:
                t = tick("backward", t)
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if timed:
            tick("clip + optimizer", t)

    one_step(0, False)
    for s in (1, 2):
        one_step(s, True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        one_step(3, False)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
    return {
        "phases_s_per_step": {k: v / 2 for k, v in phases.items()},
        "op_table": table,
        "op_table_by_shape": by_shape,
    }


CHILDREN = {
    "matmul-peak": child_matmul_peak,
    "base-eval": child_base_eval,
    "ours": child_ours,
    "trl-default": lambda a: child_trl(a, expert=False),
    "trl-expert": lambda a: child_trl(a, expert=True),
    "profile": child_profile,
}


# --- the parent: run, summarise ------------------------------------------------------------------


def run_child(name: str, args, snapshot_dir: Path, argv: list[str]) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_TRACKING_URI": "",
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                *argv,
                "--_child",
                name,
                "--_snapshot",
                str(snapshot_dir),
                "--_result",
                result.name,
            ],
            env=env,
        )
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{name} failed (exit {proc.returncode})")
        out = json.loads(Path(result.name).read_text())
    out.update(wall_s=wall, load_before=load0, load_after=os.getloadavg()[0])
    print(
        f"[bench] {name}: {wall:.0f}s wall, load {load0:.2f} -> {out['load_after']:.2f}, "
        f"peak RSS {out['peak_rss_mb']:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return out


def summarise(name: str, res: dict, warmup: int, threads: int, dims: dict, peak: dict | None) -> dict:
    from training.flops import step_flops

    steps = res["steps"][warmup:]
    wall = sum(s["time_s"] for s in steps)
    cpu = sum(s["cpu_s"] for s in steps) / threads  # contention-robust: CPU seconds per thread
    useful, labels, slots = (sum(s[k] for s in steps) for k in ("useful", "labels", "slots"))
    flops = sum(step_flops(dims, s["useful"], s["labels"], s["sum_l_l1"]) for s in steps)
    return {
        "config": name,
        "steps": len(steps),
        "wall_s": wall,
        "cpu_s_per_thread": cpu,
        "useful_per_step": useful / len(steps),
        "useful_tok_s": useful / wall,
        "useful_tok_cpu_s": useful / cpu,
        "label_tok_s": labels / wall,
        "padding_share": 1 - useful / slots,
        "tflops": flops / wall / 1e12,
        "tflops_cpu": flops / cpu / 1e12,
        "pct_peak": 100 * flops / wall / 1e12 / peak["peak_tflops"] if peak else None,
        "pct_peak_cpu": 100 * flops / cpu / 1e12 / peak["peak_cpu_tflops"] if peak else None,
        "peak_rss_mb": res["peak_rss_mb"],
        "eval_loss": res.get("eval_loss"),
        "load": (res["load_before"], res["load_after"]),
        "setup": res.get("setup", ""),
    }


def markdown(rows: list[dict], base_loss, peak: dict | None) -> str:
    ours = next((r for r in rows if r["config"] == "ours"), None)

    def pct(v):
        return f"{v:.1f}%" if v is not None else ""

    lines = [
        "| config | useful tok/s (wall) | ours / this | useful tok/s (CPU-time) | ours / this | label tok/s "
        "(wall) | useful tok/step | padding | TFLOP/s (wall) | % of bf16 peak (wall / CPU-time) | peak RSS | "
        "eval loss | load (1 min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    if base_loss is not None:
        lines.append(f"| base model (no training) | | | | | | | | | | | {base_loss:.3f} | |")
    for r in rows:
        ratio = f"{ours['useful_tok_s'] / r['useful_tok_s']:.2f}x" if ours else ""
        ratio_cpu = f"{ours['useful_tok_cpu_s'] / r['useful_tok_cpu_s']:.2f}x" if ours else ""
        ev = f"{r['eval_loss']:.3f}" if r["eval_loss"] is not None else ""
        lines.append(
            f"| {r['config']} | {r['useful_tok_s']:.0f} | {ratio} | {r['useful_tok_cpu_s']:.0f} | {ratio_cpu} | "
            f"{r['label_tok_s']:.0f} | {r['useful_per_step']:.0f} | {100 * r['padding_share']:.1f}% | "
            f"{r['tflops']:.3f} | {pct(r['pct_peak'])} / {pct(r['pct_peak_cpu'])} | {r['peak_rss_mb']:.0f} MB | "
            f"{ev} | {r['load'][0]:.2f} -> {r['load'][1]:.2f} |"
        )
    if peak:
        b = peak["bf16_4096"]
        lines += [
            "",
            f"bf16 matmul 4096^3: best {b['best_tflops']:.2f} TFLOP/s wall (median {b['median_tflops']:.2f}), "
            f"best {b['best_cpu_tflops']:.2f} by CPU time per thread; fp32 4096^3 best "
            f"{peak['fp32_4096']['best_tflops']:.2f}; bf16 4096x576x1536 (a training-sized matmul) best "
            f"{peak['bf16_4096x576x1536']['best_tflops']:.2f} wall / "
            f"{peak['bf16_4096x576x1536']['best_cpu_tflops']:.2f} CPU-time. Load during it "
            f"{peak['load_before']:.2f} -> {peak['load_after']:.2f}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=15, help="measured optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps run first and not measured")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument(
        "--tokens-per-step", type=int, default=4096, help="row slots per optimizer step (rows = / seq-len)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--which",
        default="matmul-peak,ours,trl-default,trl-expert",
        help="comma list of matmul-peak, ours, trl-default, trl-expert, profile",
    )
    p.add_argument("--eval", action="store_true", help="eval loss of the base model and of each adapter")
    p.add_argument("--eval-rows", type=int, default=32, help="validation rows to evaluate on")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout, for every configuration")
    p.add_argument("--micro-batch", type=int, default=4, help="ours: rows per forward pass")
    p.add_argument(
        "--conversations", type=int, default=600, help="sample-log interactions to build data from"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None, help="write every figure here as JSON")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_snapshot", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        import logging
        import warnings

        import torch

        logging.basicConfig(level=logging.WARNING)
        warnings.filterwarnings("ignore")
        torch.set_num_threads(args.threads)
        args.snapshot = args._snapshot
        LORA["lora_dropout"] = args.lora_dropout
        out = CHILDREN[args._child](args)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args._result).write_text(json.dumps(out))
        return 0

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = set(which) - set(CHILDREN)
    if unknown:
        raise SystemExit(f"--which: unknown {sorted(unknown)}; known {sorted(CHILDREN)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        info = build_data(args, Path(tmp) / "snapshot")
        tr = info["stats"]["splits"]["train"]
        print(
            f"[bench] data: {tr['examples']} train examples, {tr['tokens']} tokens ({tr['loss_tokens']} label), "
            f"{tr['rows']} packed rows; built in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        from training.flops import model_dims

        dims = model_dims(info["model"], LORA["r"], TARGETS)
        results = {}
        order = (
            [w for w in ("matmul-peak",) if w in which]
            + (["base-eval"] if args.eval else [])
            + [w for w in which if w not in ("matmul-peak",)]
        )
        for name in order:
            results[name] = run_child(name, args, Path(tmp) / "snapshot", argv)
    peak = results.get("matmul-peak")
    rows = [
        summarise(n, results[n], args.warmup, args.threads, dims, peak)
        for n in ("ours", "trl-default", "trl-expert")
        if n in results
    ]
    base_loss = results.get("base-eval", {}).get("eval_loss")
    print(
        f"\n## train_throughput: {args.steps} measured steps after {args.warmup} warm-up, seq {args.seq_len}, "
        f"{args.tokens_per_step // args.seq_len} rows/step, {args.threads} threads\n"
    )
    print(markdown(rows, base_loss, peak))
    print()
    for r in rows:
        print(f"- {r['config']}: {r['setup']}")
    print(
        f"\nFLOPs/token constants: N_body {dims['n_body']:,}, N_lora {dims['n_lora']:,}, "
        f"LM head d*V {dims['d'] * dims['vocab']:,}"
    )
    if "profile" in results:
        prof = results["profile"]
        print("\n## profile of ours (one step)\n")
        for k, v in prof["phases_s_per_step"].items():
            print(f"- {k}: {v:.2f} s/step")
        print("\n" + prof["op_table"])
        print("\n" + prof["op_table_by_shape"])
    print(f"\ntotal wall {time.perf_counter() - t0:.0f}s")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "dims": dims,
                    "rows": rows,
                    "base_eval_loss": base_loss,
                    "raw": results,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
