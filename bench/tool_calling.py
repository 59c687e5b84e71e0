"""Tool-call accuracy of the base model and a tuned adapter on held-out BFCL calls (issue 13, part 6).

    python -m features.bfcl --out /tmp/bfcl                      # held-out set: /tmp/bfcl/_heldout/bfcl-heldout.jsonl
    .venv/bin/python bench/tool_calling.py --heldout /tmp/bfcl/_heldout/bfcl-heldout.jsonl --n 200 \\
        --adapter <adapter dir>  [--json out.json]              # without --adapter: the base model only

Both sides get exactly the same prompts (training.evaluate.tool_prompt_text: the held-out messages and
tools through the one template, format instructions in the system turn), greedy generation with the
same token budget, parsed by the hermes parser's port and scored by BFCL's AST checker
(training.tool_eval). Prints the machine-readable lines of bench/RESULTS.md ("Tool calling") and a
per-category table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from features.bfcl import read_heldout
    from training.evaluate import TOOL_MAX_NEW_TOKENS, select_tool_examples, tool_call_outcomes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout", required=True, help="features.bfcl's held-out file")
    p.add_argument("--n", type=int, default=200, help="held-out calls (seeded hash order of ids)")
    p.add_argument("--adapter", default="", help="the tuned LoRA adapter's directory")
    p.add_argument("--base-model", default="", help="base model path (default: the prepared one)")
    p.add_argument("--max-new-tokens", type=int, default=TOOL_MAX_NEW_TOKENS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default="", help="write per-side tables and figures here")
    args = p.parse_args(argv)

    import torch

    from training.base_model import load_model_and_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    examples = select_tool_examples(read_heldout(args.heldout), args.n)
    model, tokenizer, identity = load_model_and_tokenizer(args.base_model or None, dtype="float32")
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    tables, seconds = {}, {}
    sides = ["base", "tuned"] if args.adapter else ["base"]
    for side in sides:
        t0 = time.perf_counter()
        if side == "base" and args.adapter:
            with model.disable_adapter():
                tables[side] = tool_call_outcomes(
                    model, tokenizer, examples, args.max_new_tokens, args.batch_size
                )
        else:
            tables[side] = tool_call_outcomes(
                model, tokenizer, examples, args.max_new_tokens, args.batch_size
            )
        seconds[side] = time.perf_counter() - t0
    print(
        f"# {len(examples)} held-out calls, base {identity.weights_sha256[:12]}, adapter {args.adapter or '-'}"
    )
    for side in sides:
        print(f"tool_call_accuracy_{side}: {tables[side]['correct'].mean():.4f}")
    print(f"tool_call_eval_n: {len(examples)}")
    for side in sides:
        print(f"# {side}: {seconds[side]:.0f} s generating, {torch.get_num_threads()} torch threads")
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
