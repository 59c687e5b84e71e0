"""training/evaluate.py: held-out loss on packed rows, base vs adapter replies, the MLflow table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.evaluate import (
    compare_replies,
    evaluate_adapter,
    evaluate_loss,
    generate_replies,
    generation_check,
    held_out_prompts,
    is_refusal,
    log_evaluation,
    rouge_l,
)

CONVERSATIONS = [
    (
        "i-1",
        "s-1",
        "agent-a",
        [
            {"role": "system", "content": "You are Ann, a parcel tracking agent."},
            {"role": "user", "content": "Where is my parcel 4411?"},
            {"role": "assistant", "content": "Parcel 4411 left Lyon this morning and arrives tomorrow."},
        ],
    ),
    (
        "i-2",
        "s-2",
        "agent-a",
        [
            {"role": "user", "content": "Can you change my delivery address?"},
            {"role": "assistant", "content": "Yes. Which address should we use instead?"},
            {"role": "user", "content": "12 Rue de la Paix, Paris."},
            {"role": "assistant", "content": "Done: the parcel now goes to 12 Rue de la Paix."},
        ],
    ),
    (
        "i-3",
        "s-3",
        "agent-b",
        [
            {"role": "system", "content": "You are Bo, a friendly chatter."},
            {"role": "user", "content": "Hi! How was your weekend?"},
            {"role": "assistant", "content": "Lovely, I went hiking by the lake. And yours?"},
        ],
    ),
    (
        "i-4",
        "s-3",
        "agent-b",
        [
            {"role": "user", "content": "Tell me a joke about cats."},
            {
                "role": "assistant",
                "content": "Why did the cat sit on the laptop? To keep an eye on the mouse.",
            },
        ],
    ),
]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "interaction_id": [c[0] for c in CONVERSATIONS],
            "session_id": [c[1] for c in CONVERSATIONS],
            "agent": [c[2] for c in CONVERSATIONS],
            "messages_json": [json.dumps(c[3]) for c in CONVERSATIONS],
        }
    )


@pytest.fixture(scope="module")
def model_and_tokenizer(base_model_dir):
    from training.base_model import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(str(base_model_dir), dtype="float32")
    return model, tokenizer


@pytest.fixture(scope="module")
def adapter_dir(base_model_dir, tmp_path_factory):
    """A tiny LoRA adapter whose B matrices are random (B=0 at init would make it the base model)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from training.base_model import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(str(base_model_dir), dtype="float32")
    torch.manual_seed(0)  # LoRA's A matrices come from torch's global generator: the same adapter every run
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out)
    return out


@given(st.text(max_size=60), st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_rouge_l_is_a_symmetric_f1_in_unit_range(a, b):
    score = rouge_l(a, b)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(rouge_l(b, a))


def test_rouge_l_matches_hand_computed_lcs():
    # LCS "the cat on the mat" = 5 of 6 words each way -> F1 5/6; case and punctuation are not words
    assert rouge_l("The cat sat on the mat.", "the cat, is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("parcel arrives tomorrow", "Parcel arrives TOMORROW!") == 1.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    # precision 2/2, recall 2/4 -> F1 2/3
    assert rouge_l("a b", "a x b y") == pytest.approx(2 / 3)


def test_refusal_flag_catches_common_declines_only():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI, I do not have weekends.")
    assert not is_refusal("Your parcel arrives tomorrow.")


def test_held_out_prompts_cut_before_the_last_reply_and_apply_the_system_policy():
    prompts = held_out_prompts(_frame(), interaction_ids=["i-2", "i-3"], n=10)
    assert sorted(p.interaction_id for p in prompts) == ["i-2", "i-3"]
    by_id = {p.interaction_id: p for p in prompts}
    i2 = by_id["i-2"]
    assert i2.reference == "Done: the parcel now goes to 12 Rue de la Paix."
    # no system message in the record: an explicit empty one, as training renders it (never SmolLM's persona)
    assert i2.messages[0] == {"role": "system", "content": ""}
    assert [m["role"] for m in i2.messages] == ["system", "user", "assistant", "user"]
    assert by_id["i-3"].messages[0]["content"] == "You are Bo, a friendly chatter."
    # the order is a stable function of the ids and the seed
    assert [p.interaction_id for p in held_out_prompts(_frame(), n=4)] == [
        p.interaction_id for p in held_out_prompts(_frame(), n=4)
    ]
    assert len(held_out_prompts(_frame(), n=2)) == 2


def test_loss_on_packed_rows_equals_the_loss_of_each_example_alone(model_and_tokenizer):
    """Packing (position_ids, no mask) and label-only logits change nothing: same loss as one example at a time."""
    import torch

    from training.dataset import DatasetConfig, build_examples, pack

    model, tokenizer = model_and_tokenizer
    examples = build_examples(_frame(), tokenizer, DatasetConfig(max_seq_len=128))
    rows = pack(examples, 256, pad_id=tokenizer.pad_token_id)
    assert len(rows) < len(examples), "the test needs at least one row holding two examples"
    packed = evaluate_loss(model, rows, batch_size=2, bf16=False)

    total, count = 0.0, 0
    with torch.inference_mode():
        for ex in examples:
            ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    assert packed["loss_tokens"] == count
    assert packed["loss"] == pytest.approx(total / count, rel=1e-4)
    assert packed["perplexity"] == pytest.approx(torch.tensor(total / count).exp().item(), rel=1e-4)
    assert not model.training


def test_generation_check_answers_the_same_prompts_with_base_and_adapter(
    base_model_dir, adapter_dir, model_and_tokenizer
):
    prompts = held_out_prompts(_frame(), n=2)
    table, summary = generation_check(
        str(base_model_dir), adapter_dir, prompts, max_new_tokens=6, batch_size=2
    )

    assert list(table["interaction_id"]) == [p.interaction_id for p in prompts]
    assert list(table["agent_reply"]) == [p.reference for p in prompts]
    # the base side is the plain base model (adapter switched off), on exactly these prompts
    model, tokenizer = model_and_tokenizer
    assert list(table["base_reply"]) == generate_replies(
        model, tokenizer, prompts, max_new_tokens=6, batch_size=1
    )
    assert list(table["adapter_reply"]) != list(table["base_reply"]), (
        "a perturbed adapter must answer differently"
    )
    for side in ("base", "adapter"):
        assert table[f"{side}_rouge_l"].between(0, 1).all()
        assert set(table[f"{side}_empty"]) <= {True, False}
        assert summary[f"{side}_rouge_l"] == pytest.approx(table[f"{side}_rouge_l"].mean())
        assert summary[f"{side}_mean_words"] == pytest.approx(table[f"{side}_words"].mean())
        assert 0 <= summary[f"{side}_refusal_share"] <= 1 and 0 <= summary[f"{side}_empty_share"] <= 1
    assert summary["rouge_l_gain"] == pytest.approx(summary["adapter_rouge_l"] - summary["base_rouge_l"])
    assert summary["prompts"] == 2


def test_evaluate_adapter_reports_base_and_adapter_loss_on_the_same_rows(
    base_model_dir, adapter_dir, model_and_tokenizer
):
    from training.dataset import DatasetConfig, build_examples, pack

    model, tokenizer = model_and_tokenizer
    rows = pack(
        build_examples(_frame().iloc[:2], tokenizer, DatasetConfig(max_seq_len=128)),
        128,
        tokenizer.pad_token_id,
    )
    result = evaluate_adapter(
        str(base_model_dir), adapter_dir, {"test": rows, "validation": []}, prompts=[], batch_size=4
    )
    base = evaluate_loss(model, rows, batch_size=4)
    assert result.metrics["base_test_loss"] == pytest.approx(base["loss"], rel=1e-5)
    assert result.metrics["test_loss"] != pytest.approx(base["loss"], rel=1e-3)
    assert "validation_loss" not in result.metrics  # an empty split is skipped, not reported as 0
    assert result.table.empty


def test_evaluate_loss_is_the_trainers_validation_loss(base_model_dir, adapter_dir):
    """Evaluation and training's validation measure the same thing: one number for a reader to compare."""
    from training.dataset import DatasetConfig, build_examples, pack
    from training.evaluate import load_with_adapter
    from training.loss import LabelLoss, evaluate_rows

    model, tokenizer, _ = load_with_adapter(str(base_model_dir), adapter_dir)
    rows = pack(
        build_examples(_frame(), tokenizer, DatasetConfig(max_seq_len=128)), 256, tokenizer.pad_token_id
    )
    ours = evaluate_loss(model, rows, batch_size=2, bf16=False)["loss"]
    assert ours == pytest.approx(evaluate_rows(LabelLoss(model), rows, micro_batch_size=2), rel=1e-5)


def test_log_evaluation_writes_a_table_and_metrics_a_reviewer_can_read(mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    table = pd.DataFrame(
        {
            "interaction_id": ["i-1"],
            "prompt": ["Where is my parcel?"],
            "agent_reply": ["Tomorrow."],
            "base_reply": ["I'm sorry"],
            "adapter_reply": ["Tomorrow."],
            "base_rouge_l": [0.0],
            "adapter_rouge_l": [1.0],
        }
    )
    mlflow.set_experiment("test-evaluate")
    with mlflow.start_run() as run:
        pass  # a finished run: evaluation is usually logged after training has ended it
    log_evaluation(
        table,
        {"adapter_rouge_l": 1.0, "base_rouge_l": 0.0, "nan_is_skipped": float("nan")},
        run_id=run.info.run_id,
    )

    client = MlflowClient(mlflow_uri)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["eval.adapter_rouge_l"] == 1.0 and metrics["eval.base_rouge_l"] == 0.0
    assert "eval.nan_is_skipped" not in metrics
    back = mlflow.load_table("evaluation/generations.json", run_ids=[run.info.run_id])
    assert back["adapter_reply"].tolist() == ["Tomorrow."]
    with pytest.raises(RuntimeError, match="needs run_id or an active MLflow run"):
        log_evaluation(table, {})


def test_an_empty_split_is_an_error_that_names_it(model_and_tokenizer):
    model, _ = model_and_tokenizer
    with pytest.raises(ValueError, match="split is empty"):
        evaluate_loss(model, [])
    with pytest.raises(ValueError, match="no prompts"):
        compare_replies(model, None, [])


# --- tool calls ------------------------------------------------------------------------------------

PARCEL_TOOL = {
    "type": "function",
    "function": {
        "name": "get_parcel_status",
        "description": "Where a parcel is.",
        "parameters": {
            "type": "object",
            "properties": {"tracking_number": {"type": "string", "description": "e.g. PX-1234"}},
            "required": ["tracking_number"],
        },
    },
}


def parcel_example(i: int, expected: str = "call") -> dict:
    return {
        "id": f"parcel_{i}",
        "category": "simple_python" if expected == "call" else "irrelevance",
        "expected": expected,
        "messages": [
            {"role": "system", "content": "You are a parcel agent."},
            {"role": "user", "content": f"Where is parcel PX-{1000 + i}?"},
        ],
        "tools": [PARCEL_TOOL],
        "possible_answer": [{"get_parcel_status": {"tracking_number": [f"PX-{1000 + i}"]}}]
        if expected == "call"
        else [],
    }


def test_base_and_adapter_get_the_same_prompt_with_the_tools_and_format_instructions(base_model_dir):
    from transformers import AutoTokenizer

    from training.evaluate import tool_prompt_text

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    text = tool_prompt_text(tok, parcel_example(1))
    assert "<tools>" in text and '"name": "get_parcel_status"' in text and "<tool_call>" in text
    assert text.startswith("<|im_start|>system\nYou are a parcel agent.") and text.endswith(
        "<|im_start|>assistant\n"
    )


def test_tool_call_outcomes_are_generations_scored_by_the_checker(base_model_dir):
    """The real base model, greedy: every row's verdict is the checker's verdict on its own parsed output."""
    from training.base_model import load_model_and_tokenizer
    from training.evaluate import tool_call_outcomes, tool_summary
    from training.tool_eval import score_example
    from training.tool_format import parse_tool_calls

    examples = [parcel_example(1), parcel_example(2, "no_call")]
    model, tok, _ = load_model_and_tokenizer(str(base_model_dir), dtype="float32")
    table = tool_call_outcomes(model, tok, examples, max_new_tokens=24, batch_size=2)
    assert list(table["id"]) == ["parcel_1", "parcel_2"]
    for example, row in zip(examples, table.itertuples(), strict=True):
        assert row.correct == score_example(example, parse_tool_calls(row.output)).correct
    m = tool_summary(table, "base")
    assert m["tool_n"] == 2 and m["tool_base_accuracy"] == table["correct"].mean()
    assert set(m) >= {"tool_base_accuracy_simple_python", "tool_base_accuracy_irrelevance"}


def test_tool_outcomes_are_reused_only_for_the_same_calls_template_weights_adapter_and_budget(mlflow_uri):
    import mlflow

    from training.evaluate import load_tool_outcomes, log_tool_outcomes, tool_cache_key

    examples = [parcel_example(1), parcel_example(2)]
    key = tool_cache_key(examples, "weights-a", 96, 4096, "adapter-a")
    table = pd.DataFrame(
        {
            "id": ["parcel_1", "parcel_2"],
            "category": ["simple_python"] * 2,
            "expected": ["call"] * 2,
            "correct": [True, False],
            "error_type": ["", "simple_function_checker:wrong_count"],
            "n_calls": [1, 0],
            "malformed": ["", ""],
            "output": ["<tool_call>...", "hello"],
        }
    )
    mlflow.set_experiment("test-tool-cache")
    with mlflow.start_run() as run:
        pass
    log_tool_outcomes({"base": table.assign(correct=[False, False]), "adapter": table}, key, run.info.run_id)
    got = load_tool_outcomes(run.info.run_id, key)
    assert set(got) == {"base", "adapter"}
    assert (
        got["adapter"]["correct"].tolist() == [True, False] and got["base"]["correct"].tolist() == [False] * 2
    )
    assert (
        load_tool_outcomes(run.info.run_id, tool_cache_key(examples, "weights-a", 64, 4096, "adapter-a"))
        == {}
    )
    assert (
        load_tool_outcomes(run.info.run_id, tool_cache_key(examples[:1], "weights-a", 96, 4096, "adapter-a"))
        == {}
    )
    # another adapter registered under the same training run (a checkpoint, a copy) is measured, not assumed
    assert (
        load_tool_outcomes(run.info.run_id, tool_cache_key(examples, "weights-a", 96, 4096, "adapter-b"))
        == {}
    )
