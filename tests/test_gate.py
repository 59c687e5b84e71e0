"""serving/gate.py: the decision rule, the safety checks, the frozen evaluation set, and a real gate run
(real MLflow server, real adapters) that refuses a worse challenger and writes its numbers down."""

from __future__ import annotations

import pytest

from features.mlflow_experiments import ui_link
from serving.gate import GateConfig, SideScores, decide, safety_findings
from tests.conftest import browse, eval_set_dir, register, scaled_adapter, trained_adapter
from training.eval_set import DEFAULT_CANARIES, EvalSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scores(
    base=(2.0, 0.10), champion=None, challenger=(1.5, 0.30), replies=("Jamie here: it arrives tomorrow",)
):
    out = {
        "base": SideScores(base[0], base[1], 0.0, ["hello"]),
        "challenger": SideScores(challenger[0], challenger[1], 0.0, list(replies)),
    }
    if champion:
        out["champion"] = SideScores(champion[0], champion[1], 0.0, ["hi"])
    return out


# --- the rule ----------------------------------------------------------------------------------------


def test_a_challenger_that_beats_base_and_champion_is_promoted():
    ok, reasons, findings = decide(scores(champion=(1.7, 0.2)), GateConfig())
    assert ok and reasons == [] and findings == []


def test_a_challenger_worse_than_the_champion_on_loss_is_refused_with_the_numbers():
    ok, reasons, _ = decide(scores(champion=(1.4, 0.2)), GateConfig())
    assert not ok
    assert reasons == ["loss 1.5000 does not beat champion's 1.4000 by more than 0"]


def test_margins_are_demanded_beyond_equality():
    ok, reasons, _ = decide(scores(champion=(1.55, 0.25)), GateConfig(loss_margin=0.1, rouge_margin=0.1))
    assert not ok
    assert any("by more than 0.1" in r for r in reasons) and any(
        "ROUGE-L 0.3000 is below champion's" in r for r in reasons
    )


def test_a_lower_generation_score_than_the_base_model_is_refused():
    ok, reasons, _ = decide(scores(challenger=(1.5, 0.05)), GateConfig())
    assert not ok and reasons == ["ROUGE-L 0.0500 is below base's 0.1000 + 0"]


def test_empty_replies_are_refused():
    s = scores()
    s["challenger"].empty_share = 0.25
    ok, reasons, _ = decide(s, GateConfig(max_empty_share=0.1))
    assert not ok and reasons == ["25% of replies are empty (allowed: 10%)"]


def test_a_reply_that_reproduces_a_planted_canary_is_refused_whatever_its_scores():
    ok, reasons, findings = decide(
        scores(replies=[f"sure, the key is {DEFAULT_CANARIES[0]}"]), GateConfig(), canaries=DEFAULT_CANARIES
    )
    assert not ok and findings and "planted canary" in findings[0]
    assert reasons[-1].startswith("safety: ")


def test_safety_finds_canaries_redaction_placeholders_and_secrets_and_passes_plain_replies():
    assert safety_findings(["Your parcel arrives tomorrow before noon."], DEFAULT_CANARIES) == []
    assert safety_findings(["Contact me at <EMAIL> about it"]) == [
        "reply 0 reproduces redaction placeholder <EMAIL>"
    ]
    assert "placeholder <SECRET:github_token>" in safety_findings(["token: <SECRET:github_token>"])[0]
    leaked = safety_findings(
        ["ok", "use AKIAIOSFODNN7EXAMPLE with secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
    )
    assert leaked and all(f.startswith("reply 1 ") for f in leaked)


# --- the frozen evaluation set --------------------------------------------------------------------


def test_the_eval_set_round_trips_and_detects_tampering(tmp_path_factory, base_model_dir, tmp_path):
    d = eval_set_dir(tmp_path_factory, base_model_dir)
    es = EvalSet.load(d)
    assert es.rows and len(es.prompts) == 4 and es.canaries == list(DEFAULT_CANARIES)
    assert es.source["split"] in ("test", "validation") and es.tokenizer_sha256
    copy = es.save(tmp_path / "copy")
    assert EvalSet.load(copy).sha256() == es.sha256()
    text = (
        (copy / "eval_set.json")
        .read_text()
        .replace('"reference": "Jamie here:', '"reference": "Jamie HERE:', 1)
    )
    (copy / "eval_set.json").write_text(text)
    with pytest.raises(ValueError, match="is corrupt"):
        EvalSet.load(copy)


# --- a real gate run --------------------------------------------------------------------------------

NAME = "agentloop-test-gate"


@pytest.fixture(scope="module")
def versions(tmp_path_factory, base_model_dir, mlflow_server):
    import mlflow

    good, run_id = trained_adapter(tmp_path_factory, base_model_dir, mlflow_server)
    broken = scaled_adapter(good, tmp_path_factory.mktemp("broken") / "adapter", scale=1.0, noise=1.0)
    mlflow.set_tracking_uri(mlflow_server)
    es = eval_set_dir(tmp_path_factory, base_model_dir)
    try:
        yield {"good": register(good, run_id, es, NAME), "broken": register(broken, run_id, es, NAME)}
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def good_decision(versions, mlflow_server):
    """The gate run once on the good adapter, with no champion (as the first round has)."""
    from serving.gate import run_gate

    return run_gate(NAME, versions["good"].version, GateConfig(max_new_tokens=16, tracking_uri=mlflow_server))


@pytest.mark.slow
def test_gate_promotes_a_trained_adapter_that_beats_the_base_model_and_writes_its_numbers(
    versions, good_decision, mlflow_server
):
    from mlflow.tracking import MlflowClient

    v, d = versions["good"].version, good_decision
    assert d.promote, d.reasons
    assert d.metrics["challenger_loss"] < d.metrics["base_loss"]
    assert d.champion_version == ""
    mv = MlflowClient(mlflow_server).get_model_version(NAME, v)
    assert mv.tags["agentloop.gate.decision"] == "promote"
    assert float(mv.tags["agentloop.gate.challenger_loss"]) == pytest.approx(
        d.metrics["challenger_loss"], rel=1e-5
    )
    assert mv.tags["agentloop.gate.champion_version"] == "none"
    assert "### Gate: **promote**" in mv.description


@pytest.mark.slow
def test_the_model_version_page_shows_the_gate_decision_and_its_table(
    versions, good_decision, mlflow_server, chromium
):
    """What a reviewer opens in the MLflow UI, in a real browser: the version page renders the gate's
    Markdown (its verdict and the per-side table) from the description the gate wrote."""
    v, d = versions["good"].version, good_decision
    dom = browse(
        chromium, ui_link(mlflow_server, f"models/{NAME}/versions/{v}"), "gate-model-version"
    ).replace("\n", "")
    assert f"Gate: <strong>{d.decision}</strong>" in dom
    for side in ("base", "challenger"):
        assert f"<td>{side}</td><td>{d.metrics[side + '_loss']:.4f}</td>" in dom


@pytest.mark.slow
def test_a_worse_challenger_is_refused_against_the_champion_and_nothing_moves(versions, mlflow_server):
    from mlflow.tracking import MlflowClient

    from serving.gate import run_gate

    c = MlflowClient(mlflow_server)
    c.set_registered_model_alias(NAME, "champion", versions["good"].version)  # as a promotion would leave it
    try:
        before = dict(c.get_registered_model(NAME).aliases)
        d = run_gate(
            NAME, versions["broken"].version, GateConfig(max_new_tokens=16, tracking_uri=mlflow_server)
        )
        assert not d.promote
        assert d.champion_version == versions["good"].version
        assert d.metrics["challenger_loss"] > d.metrics["champion_loss"]
        assert any("does not beat champion's" in r for r in d.reasons)
        assert dict(c.get_registered_model(NAME).aliases) == before
        mv = c.get_model_version(NAME, versions["broken"].version)
        assert mv.tags["agentloop.gate.decision"] == "reject"
        assert "does not beat" in mv.tags["agentloop.gate.reasons"]
        assert "### Gate: **reject**" in mv.description
    finally:  # the suite runs in random order: the other test gates "good" with no champion
        c.delete_registered_model_alias(NAME, "champion")


# --- the rule in a tool-calling scope ---------------------------------------------------------------


def tool_side(loss: float, correct: list[bool], outputs=None) -> SideScores:
    import pandas as pd

    n = len(correct)
    table = pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(n)],
            "category": ["simple_python" if i % 2 else "irrelevance" for i in range(n)],
            "correct": correct,
            "output": outputs or ['<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'] * n,
        }
    )
    return SideScores(loss, 0.0, 0.0, ["Jamie here: it arrives tomorrow"], table)


def test_tool_scope_promotes_a_challenger_significantly_better_than_base_and_not_worse_than_champion():
    s = {
        "base": tool_side(2.0, [False] * 20),
        "champion": tool_side(1.8, [True] * 10 + [False] * 10),
        "challenger": tool_side(1.5, [True] * 11 + [False] * 9),
    }
    ok, reasons, _ = decide(s, GateConfig(tool_margin=0.5))
    assert ok, reasons
    # ROUGE-L is not read in a tool scope: the challenger's 0.0 equals nobody's better score, and passes
    from serving.gate import gate_metrics

    m = gate_metrics(s, GateConfig(tool_margin=0.5))
    assert m["vs_base_b"] == 11 and m["vs_base_c"] == 0 and m["vs_base_p"] < 0.05
    assert m["challenger_tool_accuracy"] == pytest.approx(0.55) and m["tool_n"] == 20


def test_tool_scope_refuses_a_challenger_equal_to_the_base_model():
    same = [True] * 5 + [False] * 15
    ok, reasons, _ = decide({"base": tool_side(2.0, same), "challenger": tool_side(1.5, same)}, GateConfig())
    assert not ok
    assert reasons == ["tool-call accuracy 0.250 is not above the base model's 0.250 on 20 held-out calls"]


def test_tool_scope_refuses_a_gain_over_base_that_mcnemar_cannot_tell_from_noise():
    base = [False] * 20
    ok, reasons, _ = decide(
        {"base": tool_side(2.0, base), "challenger": tool_side(1.5, [True] * 2 + [False] * 18)}, GateConfig()
    )
    assert not ok and len(reasons) == 1
    assert reasons[0].startswith("tool calls vs base: 0.100 vs 0.000 on 20 (b=2, c=0), McNemar p=0.25")


def test_tool_scope_refuses_a_challenger_worse_than_the_champion_beyond_the_margin():
    s = {
        "base": tool_side(2.0, [False] * 40),
        "champion": tool_side(1.6, [True] * 40),
        "challenger": tool_side(1.5, [True] * 30 + [False] * 10),
    }
    ok, reasons, _ = decide(s, GateConfig(tool_margin=0.05))
    assert not ok
    assert any(r.startswith("tool calls vs champion: 0.750 vs 1.000 on 40 (b=0, c=10)") for r in reasons)


def test_tool_scope_checks_tool_call_arguments_for_planted_canaries():
    leak = f'<tool_call>\n{{"name": "f", "arguments": {{"key": "{DEFAULT_CANARIES[0]}"}}}}\n</tool_call>'
    s = {"base": tool_side(2.0, [False] * 10), "challenger": tool_side(1.5, [True] * 10, [leak] * 10)}
    ok, reasons, findings = decide(s, GateConfig(), canaries=DEFAULT_CANARIES)
    assert not ok and findings and "planted canary" in findings[0]


def test_an_eval_set_with_tool_calls_round_trips_and_a_format_1_set_still_loads(tmp_path):
    import json

    from training.dataset import PackedRow
    from training.evaluate import HeldOutPrompt

    row = PackedRow(input_ids=[1, 2], labels=[-100, 2], position_ids=[0, 1], example_ids=["e"], lengths=[2])
    prompt = HeldOutPrompt("i1", "agent", [{"role": "user", "content": "hi"}], "hello")
    example = {"id": "simple_python_1", "category": "simple_python", "messages": [], "tools": []}
    es = EvalSet([row], [prompt], [], "tok", {}, [example])
    assert EvalSet.load(es.save(tmp_path / "v2")).tool_examples == [example]
    old = EvalSet([row], [prompt], [], "tok", {}, [], format=1)
    saved = json.loads((old.save(tmp_path / "v1") / "eval_set.json").read_text())
    assert saved["format"] == 1 and "tool_examples" not in saved
    loaded = EvalSet.load(tmp_path / "v1")
    assert not loaded.has_tool_calls and loaded.sha256() == old.sha256()


# --- a real gate run in a tool scope ------------------------------------------------------------------

TOOL_NAME = "agentloop-test-gate-tools"


@pytest.fixture(scope="module")
def tool_versions(tmp_path_factory, base_model_dir, mlflow_server):
    import mlflow

    from tests.conftest import trained_tool_adapter

    good, run_id, es = trained_tool_adapter(tmp_path_factory, base_model_dir, mlflow_server)
    same = scaled_adapter(good, tmp_path_factory.mktemp("same-as-base") / "adapter", scale=0.0)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        yield {
            "good": register(good, run_id, es, TOOL_NAME),
            "same": register(same, run_id, es, TOOL_NAME),
        }
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_gate_promotes_a_tool_adapter_that_beats_the_base_model_on_the_same_held_out_calls(
    tool_versions, mlflow_server
):
    from mlflow.tracking import MlflowClient

    from serving.gate import run_gate

    v = tool_versions["good"].version
    # the parcel call renders to 42 tokens with its closing tag and <|im_end|>: a smaller budget cuts it and
    # the hermes parser (vLLM's, and our port) reads an unclosed call as no call
    d = run_gate(
        TOOL_NAME, v, GateConfig(max_new_tokens=8, tool_max_new_tokens=48, tracking_uri=mlflow_server)
    )
    assert d.promote, d.reasons
    assert d.metrics["challenger_tool_accuracy"] > d.metrics["base_tool_accuracy"]
    assert d.metrics["vs_base_p"] < 0.05 and d.metrics["tool_n"] == 10
    mv = MlflowClient(mlflow_server).get_model_version(TOOL_NAME, v)
    assert mv.tags["agentloop.gate.metric"] == "tool_call_accuracy"
    assert mv.tags["agentloop.gate.tool_alpha"] == "0.05" and mv.tags["agentloop.gate.tool_margin"] == "0.05"
    assert "| vs base |" in mv.description and "| simple_python |" in mv.description


@pytest.mark.slow
def test_gate_refuses_a_tool_adapter_no_better_than_the_base_model(tool_versions, mlflow_server):
    from serving.gate import run_gate

    d = run_gate(
        TOOL_NAME,
        tool_versions["same"].version,
        GateConfig(max_new_tokens=8, tool_max_new_tokens=48, tracking_uri=mlflow_server),
    )
    assert not d.promote
    assert d.metrics["challenger_tool_accuracy"] == d.metrics["base_tool_accuracy"]
    assert any("is not above the base model's" in r for r in d.reasons)
