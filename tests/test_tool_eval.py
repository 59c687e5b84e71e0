"""Tool-call scoring as BFCL's AST checker scores, and the paired McNemar comparison the gate reads."""

from __future__ import annotations

import copy
import json
import random
import sys
import types
import zipfile
from math import comb

import pytest
from scipy.stats import beta

from features import bfcl
from training.tool_eval import (
    ARGUMENTS_NOT_OBJECT,
    FUNCTION_NOT_OFFERED,
    INVALID_ARGUMENTS_JSON,
    NUISANCE_GAMMA,
    check_call,
    check_calls,
    compare_paired,
    parse_output,
    score,
    score_example,
    standardize_string,
)

CALL_CATEGORIES = [c for c in bfcl.CATEGORIES if c not in bfcl.NO_CALL_CATEGORIES + bfcl.ANY_CALL_CATEGORIES]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    return bfcl.fetch_wheel(tmp_path_factory.mktemp("bfcl-cache"))


@pytest.fixture(scope="session")
def questions(wheel):
    return {c: bfcl.load_category(wheel, c) for c in bfcl.CATEGORIES}


def _message(*calls):
    """An OpenAI-style assistant message calling (name, arguments) pairs; arguments as JSON text."""
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)},
            }
            for i, (n, a) in enumerate(calls)
        ],
    }


FN = {
    "name": "book",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string"},
            "nights": {"type": "integer"},
            "budget": {"type": "float"},
            "late": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "point": {"type": "tuple", "items": {"type": "float"}},
            "extra": {
                "type": "dict",
                "properties": {"view": {"type": "string"}, "floor": {"type": "integer"}},
            },
        },
        "required": ["city", "nights"],
    },
}
ANSWER = {
    "book": {
        "city": ["New York, NY", "NYC"],
        "nights": [3],
        "budget": [200.0, ""],
        "late": [False, ""],
        "tags": [["Quiet", "pool"], ""],
        "point": [[1.5, 2.0], ""],
        "extra": [{"view": ["sea"], "floor": [2, ""]}, ""],
    }
}


def _check(arguments):
    return check_call(FN, {"book": arguments}, ANSWER)


# ------------------------------------------------------------------------------------------------ rules


def test_the_right_call_with_optional_arguments_left_out_is_correct():
    assert _check({"city": "NYC", "nights": 3}).valid


def test_an_int_is_accepted_for_a_float_but_not_a_float_for_an_int_nor_a_bool_for_an_int():
    assert _check({"city": "NYC", "nights": 3, "budget": 200}).valid
    assert _check({"city": "NYC", "nights": 3.0}).error_type == "type_error:simple"
    assert _check({"city": "NYC", "nights": True}).error_type == "type_error:simple"


def test_strings_are_compared_after_bfcls_normalisation():
    assert standardize_string("New York, NY") == standardize_string("new-york ny") == "newyorkny"
    assert _check({"city": "new york ny", "nights": 3}).valid
    assert _check({"city": "Boston", "nights": 3}).error_type == "value_error:string"


def test_a_missing_required_argument_and_an_unknown_one_are_wrong():
    assert _check({"city": "NYC"}).error_type == "simple_function_checker:missing_required"
    assert (
        _check({"city": "NYC", "nights": 3, "pets": 1}).error_type
        == "simple_function_checker:unexpected_param"
    )


def test_an_argument_the_answer_does_not_mark_optional_must_be_given():
    answer = copy.deepcopy(ANSWER)
    answer["book"]["late"] = [True]
    assert check_call(FN, {"book": {"city": "NYC", "nights": 3}}, answer).error_type == (
        "simple_function_checker:missing_optional"
    )


def test_lists_are_compared_element_wise_with_strings_normalised():
    assert _check({"city": "NYC", "nights": 3, "tags": ["quiet", "POOL"]}).valid
    assert (
        _check({"city": "NYC", "nights": 3, "tags": ["pool", "quiet"]}).error_type == "value_error:list/tuple"
    )
    assert not _check({"city": "NYC", "nights": 3, "tags": ["quiet", 1]}).valid
    required_tags = copy.deepcopy(ANSWER)
    required_tags["book"]["tags"] = [["Quiet", "pool"]]
    mixed = {"book": {"city": "NYC", "nights": 3, "tags": ["quiet", 1]}}
    assert check_call(FN, mixed, required_tags).error_type == "type_error:nested"
    assert _check({"city": "NYC", "nights": 3, "point": [1.5, 2.0]}).valid


def test_dicts_are_compared_key_by_key():
    assert _check({"city": "NYC", "nights": 3, "extra": {"view": "Sea"}}).valid
    assert _check({"city": "NYC", "nights": 3, "extra": {"view": "sea", "floor": 2}}).valid
    assert (
        _check({"city": "NYC", "nights": 3, "extra": {"view": "city"}}).error_type == "value_error:dict_value"
    )
    assert _check({"city": "NYC", "nights": 3, "extra": {"floor": 2}}).error_type == "value_error:dict_key"
    assert (
        _check({"city": "NYC", "nights": 3, "extra": {"view": "sea", "x": 1}}).error_type
        == "value_error:dict_key"
    )


def test_parallel_calls_match_in_any_order_and_the_count_must_agree():
    fn = {
        "name": "play",
        "parameters": {"properties": {"artist": {"type": "string"}}, "required": ["artist"]},
    }
    answer = [{"play": {"artist": ["Taylor Swift"]}}, {"play": {"artist": ["Maroon 5"]}}]
    calls = [{"play": {"artist": "Maroon 5"}}, {"play": {"artist": "taylor swift"}}]
    assert check_calls([fn], calls, answer, "parallel").valid
    assert check_calls([fn], calls[:1], answer, "parallel").error_type.endswith("wrong_count")
    assert not check_calls([fn], [calls[0], calls[0]], answer, "parallel").valid


def test_multiple_checks_the_ground_truth_function_among_those_offered():
    other = {"name": "other", "parameters": {"properties": {}, "required": []}}
    assert check_calls([other, FN], [{"book": {"city": "NYC", "nights": 3}}], [ANSWER], "multiple").valid
    wrong = check_calls([other, FN], [{"other": {}}], [ANSWER], "multiple")
    assert wrong.error_type == "simple_function_checker:wrong_func_name"


# ------------------------------------------------------------------------------------------------ outputs


def test_outputs_are_parsed_from_openai_tool_calls_and_malformed_ones_counted_by_reason():
    parsed = parse_output(
        _message(("book", {"city": "NYC"}), ("book", "{not json"), ("nope", "[1]")), ["book"]
    )
    assert parsed.calls == [{"book": {"city": "NYC"}}]
    assert not parsed.decoded
    assert parsed.malformed == [INVALID_ARGUMENTS_JSON, FUNCTION_NOT_OFFERED, ARGUMENTS_NOT_OBJECT]
    assert parse_output({"role": "assistant", "content": "hello"}).calls == []


def _example(category, expected="call", answer=None):
    return {
        "id": f"{category}_x",
        "category": category,
        "expected": expected,
        "functions": [FN],
        "possible_answer": answer,
    }


def test_for_irrelevance_no_call_is_correct_and_any_decoded_call_is_wrong():
    example = _example("irrelevance", "no_call")
    assert score_example(example, {"role": "assistant", "content": "I can't."}).correct
    assert score_example(example, None).correct
    assert not score_example(example, _message(("book", {"city": "NYC"}))).correct
    # BFCL: an output that does not decode is not a call (eval_runner._evaluate_single_relevance_entry)
    undecodable = score_example(example, _message(("book", "{oops")))
    assert undecodable.correct and undecodable.malformed == [INVALID_ARGUMENTS_JSON]


def test_for_relevance_any_call_is_correct():
    example = _example("live_relevance", "any_call")
    assert score_example(example, _message(("book", {}))).correct
    assert not score_example(example, {"role": "assistant", "content": "sure"}).correct


def test_an_undecodable_output_is_wrong_for_a_call_category():
    example = _example("simple_python", answer=[ANSWER])
    result = score_example(example, _message(("book", '{"city": "NYC", "nights": 3')))
    assert not result.correct and result.error_type == "ast_decoder:decoder_failed"


def test_scores_aggregate_overall_and_per_category_with_malformed_counts():
    examples = [_example("simple_python", answer=[ANSWER]), _example("irrelevance", "no_call")]
    examples[1]["id"] = "irr_1"
    outputs = {
        "simple_python_x": _message(("book", {"city": "NYC", "nights": 3})),
        "irr_1": _message(("nope", "{}")),
    }
    report = score(examples, outputs)
    assert (report.n, report.correct, report.accuracy) == (2, 1, 0.5)
    assert report.per_category["simple_python"] == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert report.per_category["irrelevance"]["correct"] == 0
    assert report.malformed == {FUNCTION_NOT_OFFERED: 1}
    assert report.error_types == {"irrelevance_error:decoder_success": 1}
    assert report.correct_by_id() == {"simple_python_x": True, "irr_1": False}


# ------------------------------------------------------------------------------------------------ real data


def test_every_written_ground_truth_call_scores_correct_and_no_call_fails(questions):
    n = 0
    for category in CALL_CATEGORIES:
        for q in questions[category]:
            try:
                record = bfcl.to_interaction(q)
            except bfcl.NoValidAnswer:
                continue
            example = bfcl.to_eval_example(q)
            result = score_example(example, record["messages"][-1])
            assert result.correct, (q.id, result)
            assert not score_example(example, {"role": "assistant", "content": "no"}).correct
            n += 1
    assert n > 2000


def test_irrelevance_replies_written_for_training_score_correct(questions):
    for category in bfcl.NO_CALL_CATEGORIES:
        for q in questions[category][:50]:
            assert score_example(bfcl.to_eval_example(q), bfcl.to_interaction(q)["messages"][-1]).correct


@pytest.fixture(scope="module")
def bfcl_ast_checker(wheel):
    """BFCL's own ast_checker.py, executed from the wheel with stubs for its model registry (test-only)."""
    archive = zipfile.ZipFile(wheel)
    saved = {k: v for k, v in sys.modules.items() if k == "bfcl_eval" or k.startswith("bfcl_eval.")}
    modules = {}

    def load(name, path):
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(archive.read(path), path, "exec"), module.__dict__)
        modules[name] = module
        return module

    try:
        for pkg in (
            "bfcl_eval",
            "bfcl_eval.constants",
            "bfcl_eval.eval_checker",
            "bfcl_eval.eval_checker.ast_eval",
        ):
            sys.modules[pkg] = types.ModuleType(pkg)
        sys.modules["bfcl_eval.eval_checker.ast_eval.type_convertor"] = types.ModuleType("tc")
        enums = load("bfcl_eval.constants.enums", "bfcl_eval/constants/enums.py")
        load("bfcl_eval.constants.type_mappings", "bfcl_eval/constants/type_mappings.py")
        registry = types.ModuleType("bfcl_eval.constants.model_config")
        registry.MODEL_CONFIG_MAPPING = {"agentloop": types.SimpleNamespace(underscore_to_dot=False)}
        sys.modules["bfcl_eval.constants.model_config"] = registry
        tc = "bfcl_eval/eval_checker/ast_eval/type_convertor"
        load(
            "bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter",
            f"{tc}/java_type_converter.py",
        )
        load("bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter", f"{tc}/js_type_converter.py")
        checker = load(
            "bfcl_eval.eval_checker.ast_eval.ast_checker", "bfcl_eval/eval_checker/ast_eval/ast_checker.py"
        )
    finally:
        for k in [k for k in sys.modules if k == "bfcl_eval" or k.startswith("bfcl_eval.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return lambda functions, calls, answer, category: checker.ast_checker(
        functions, calls, answer, enums.Language.PYTHON, category, "agentloop"
    )["valid"]


def _perturb(calls, functions, rng):
    """Near misses of a right answer: what a model gets wrong."""
    calls = copy.deepcopy(calls)
    call = rng.choice(calls)
    ((name, args),) = call.items()
    kind = rng.choice(["drop", "add", "retype", "string", "name", "reorder", "dup", "float"])
    if kind == "drop" and args:
        args.pop(rng.choice(sorted(args)))
    elif kind == "add":
        args[rng.choice(["extra", *sorted(_props(functions, name))])] = 1
    elif kind == "retype" and args:
        key = rng.choice(sorted(args))
        value = args[key]
        args[key] = str(value) if not isinstance(value, str) else 7
    elif kind == "string" and args:
        key = rng.choice(sorted(args))
        if isinstance(args[key], str):
            args[key] = rng.choice([args[key].upper(), args[key] + " x", args[key].replace(" ", "-")])
    elif kind == "name":
        call[name + "_v2"] = call.pop(name)
    elif kind == "reorder":
        calls.reverse()
    elif kind == "dup":
        calls.append(copy.deepcopy(call))
    elif kind == "float" and args:
        key = rng.choice(sorted(args))
        if type(args[key]) is int:
            args[key] = float(args[key])
        elif type(args[key]) is float and args[key].is_integer():
            args[key] = int(args[key])
    return calls


def _props(functions, name):
    for f in functions:
        if f["name"] == name:
            return f["parameters"].get("properties", {})
    return {}


def test_the_checker_agrees_with_bfcls_own_on_right_answers_and_near_misses(questions, bfcl_ast_checker):
    rng = random.Random(13)
    agreed = disagreed = 0
    outcomes = {True: 0, False: 0}
    for category in CALL_CATEGORIES:
        for q in questions[category]:
            try:
                truth = [
                    {c["name"]: c["arguments"]}
                    for c in bfcl.ground_truth_calls(q.possible_answer, q.functions)
                ]
            except bfcl.NoValidAnswer:
                continue
            for calls in [truth] + [_perturb(truth, q.functions, rng) for _ in range(3)]:
                ours = check_calls(q.functions, calls, q.possible_answer, category).valid
                theirs = bfcl_ast_checker(q.functions, copy.deepcopy(calls), q.possible_answer, category)
                outcomes[theirs] += 1
                if ours == theirs:
                    agreed += 1
                else:
                    disagreed += 1
                    pytest.fail(f"{q.id}: ours {ours}, BFCL {theirs} for {calls}")
    print(f"agreed with BFCL on {agreed} outputs: {outcomes[True]} right, {outcomes[False]} wrong")
    assert min(outcomes.values()) > 1000 and agreed > 8000 and disagreed == 0


# ------------------------------------------------------------------------------------------------ paired


def _tail(b, n, q=0.5):
    return sum(comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(b, n + 1))


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_one_sided_p_value():
    challenger = [True] * 30 + [True] * 12 + [False] * 3 + [False] * 5
    other = [True] * 30 + [False] * 12 + [True] * 3 + [False] * 5
    result = compare_paired(challenger, other, margin=0.0, alpha=0.05)
    assert (result.n, result.both_correct, result.challenger_only, result.other_only, result.neither) == (
        50,
        30,
        12,
        3,
        5,
    )
    assert result.challenger_accuracy == pytest.approx(42 / 50) and result.other_accuracy == pytest.approx(
        33 / 50
    )
    assert result.p_value == pytest.approx(_tail(12, 15))
    assert result.passed and "b=12, c=3" in result.reason


def test_a_small_gain_on_few_discordant_pairs_does_not_pass():
    result = compare_paired([True, True, False, True], [False, True, True, False])
    assert result.challenger_only == 2 and result.other_only == 1
    assert result.p_value == pytest.approx(_tail(2, 3)) and not result.passed


def test_identical_outcomes_never_prove_a_gain_but_many_are_within_a_margin():
    same = {f"q{i}": i % 3 == 0 for i in range(400)}
    assert not compare_paired(same, same).passed
    assert compare_paired(same, same, margin=0.05).passed
    few = {"a": True, "b": False, "c": True}
    assert not compare_paired(few, few, margin=0.05).passed  # three examples prove nothing


def test_a_margin_lets_a_slightly_worse_challenger_pass_and_not_a_much_worse_one():
    n = 400
    other = [True] * 300 + [False] * 100
    slightly = [True] * 296 + [False] * 4 + [True] * 2 + [False] * 98  # b=2, c=4: -0.005
    much = [True] * 260 + [False] * 40 + [True] * 2 + [False] * 98  # b=2, c=40: -0.095
    assert compare_paired(slightly, other, margin=0.05).passed
    assert not compare_paired(slightly, other, margin=0.0).passed
    assert not compare_paired(much, other, margin=0.05).passed
    assert len(slightly) == len(much) == n


def test_the_p_value_at_a_margin_is_the_tail_at_the_shifted_share_plus_gamma():
    challenger = [True] * 10 + [False] * 8 + [True] * 82
    other = [False] * 10 + [True] * 8 + [True] * 82
    result = compare_paired(challenger, other, margin=0.02)
    # the share of discordant pairs at its Clopper-Pearson upper bound (18 of 100)
    psi = beta.ppf(1 - NUISANCE_GAMMA, 19, 82)
    q = 0.5 - 0.02 / (2 * psi)
    assert 18 / 100 < psi < 0.5
    assert result.null_share == pytest.approx(q)
    assert result.p_value == pytest.approx(_tail(10, 18, q) + NUISANCE_GAMMA)


def test_a_margin_test_is_more_conservative_than_plugging_in_the_observed_discordance():
    # 15 of 400 examples lost, none won: -0.0375, inside a 0.05 margin, but not surely so
    challenger = [False] * 15 + [True] * 385
    other = [True] * 400
    result = compare_paired(challenger, other, margin=0.05)
    assert 15 / 400 < 0.05 and not result.passed
    assert compare_paired(challenger, other, margin=0.10).passed


def test_outcomes_by_id_must_cover_the_same_examples():
    with pytest.raises(ValueError, match="different examples"):
        compare_paired({"a": True}, {"b": True})
    with pytest.raises(ValueError):
        compare_paired([True], [True, False])
