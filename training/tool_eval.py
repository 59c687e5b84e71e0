"""Tool-call accuracy, scored the way BFCL's AST checker scores it, and the paired test the gate reads.

The checker follows bfcl_eval/eval_checker/ast_eval/ast_checker.py of bfcl-eval 2026.3.23 (the
wheel features/bfcl.py fetches; read it with `unzip -p <wheel> bfcl_eval/eval_checker/ast_eval/ast_checker.py`),
Python language only, function by function (`simple_function_checker`, `type_checker`,
`standardize_string`, `string_checker`, `list_checker`, `dict_checker`, `list_dict_checker`,
`parallel_function_checker_no_order`, `multiple_function_checker`), including its quirks: an int is
accepted for a float, a bool is not an int, strings are compared after removing spaces and
`,./-_*^` and lower-casing, dicts and lists of dicts key by key, parallel calls in any order.
Irrelevance and relevance follow eval_runner.py `_evaluate_single_relevance_entry`: an output that
does not decode into calls, or decodes to none, is "no call".

Model outputs are OpenAI-style assistant messages. Decoding follows BFCL's OpenAI function-calling
handler (model_handler/api_inference/openai_completion.py decode_ast): each call's `arguments` is
JSON text; one that does not parse, or is not an object, makes the whole output undecodable (wrong
for a call category, "no call" for irrelevance). Malformed outputs are counted by reason
(MALFORMED_REASONS); they are statistics, never training data.

Function names are compared as offered (features/bfcl.py keeps BFCL's names, dots included), so
BFCL's underscore-for-dot renaming of OpenAI-style models does not apply. Accuracy here is the
share of examples correct (overall and per category), not BFCL's leaderboard weighting.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from scipy.stats import beta, binomtest

# ast_checker.py PYTHON_TYPE_MAPPING, plus the JSON Schema names (features.bfcl.to_json_schema) for
# examples that carry only OpenAI tool definitions.
PYTHON_TYPE_MAPPING: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
    "number": float,
    "object": dict,
}
PYTHON_NESTED_TYPE_CHECK_LIST = ("array", "tuple")

INVALID_ARGUMENTS_JSON = "invalid_arguments_json"
ARGUMENTS_NOT_OBJECT = "arguments_not_object"
ARGUMENTS_NOT_STRING = "arguments_not_string"
BAD_TOOL_CALL = "bad_tool_call"  # not {"function": {"name": str, "arguments": ...}}
FUNCTION_NOT_OFFERED = "function_not_offered"
MALFORMED_REASONS = (
    INVALID_ARGUMENTS_JSON,
    ARGUMENTS_NOT_OBJECT,
    ARGUMENTS_NOT_STRING,
    BAD_TOOL_CALL,
    FUNCTION_NOT_OFFERED,
)


@dataclass
class CheckResult:
    valid: bool
    error_type: str = ""  # BFCL's error_type, e.g. simple_function_checker:missing_required
    error: str = ""


_OK = CheckResult(True)


# ------------------------------------------------------------------------------------------------ checker


def standardize_string(value: str) -> str:
    """BFCL's string normalisation: drop spaces and `,./-_*^`, lower-case, single quotes to double."""
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", value).lower().replace("'", '"')


def _possible_answer_type(possible: list) -> type | None:
    for answer in possible:
        if answer != "":  # "" marks an optional parameter
            return type(answer)
    return None


def _type_check(
    param: str, value: Any, possible: list, expected: type, nested: type | None
) -> tuple[bool, bool]:
    """(valid, is_variable), as ast_checker.py type_checker (one level of nesting, like BFCL's)."""
    answer_type = _possible_answer_type(possible)
    # A possible answer of another type than the declared one is a variable name given as a string.
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return True, is_variable
        for item in possible:
            ok = True
            if type(item) is list:
                for value_item in value:
                    if not _type_check(param, value_item, item, nested, None)[0]:
                        ok = False
                        break
            if ok:
                return True, is_variable
        return False, is_variable  # BFCL: type_error:nested (its fall-through returns invalid too)
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, is_variable


def _string_ok(value: str, possible: list) -> bool:
    return standardize_string(value) in [standardize_string(p) for p in possible if type(p) is str]


def _list_ok(value: list, possible: list) -> bool:
    std = [standardize_string(v) if type(v) is str else v for v in value]
    std_possible = [[standardize_string(v) if type(v) is str else v for v in p] for p in possible]
    return std in std_possible


def _dict_ok(value: dict, possible_answers: list) -> CheckResult:
    result = CheckResult(False, "dict_checker:unclear")
    for possible in possible_answers:
        if possible == "":
            continue
        result = CheckResult(False, "dict_checker:unclear")
        ok = True
        for key, item in value.items():
            if key not in possible:
                result = CheckResult(False, "value_error:dict_key", f"unexpected dict key {key!r}")
                ok = False
                break
            std = standardize_string(item) if type(item) is str else item
            std_possible = [standardize_string(p) if type(p) is str else p for p in possible[key]]
            if std not in std_possible:
                result = CheckResult(False, "value_error:dict_value", f"invalid value for dict key {key!r}")
                ok = False
                break
        for key, item in possible.items():
            if key not in value and "" not in item:
                result = CheckResult(False, "value_error:dict_key", f"missing dict key {key!r}")
                ok = False
                break
        if ok:
            return _OK
    return result


def _list_dict_ok(value: list, possible_answers: list) -> CheckResult:
    result = CheckResult(False, "list_dict_checker:unclear")
    for possible in possible_answers:
        if len(value) != len(possible):
            result = CheckResult(False, "value_error:list_dict_count", "wrong number of dictionaries")
            continue
        ok = True
        for item, possible_item in zip(value, possible, strict=True):
            result = _dict_ok(item, [possible_item])
            if not result.valid:
                ok = False
                break
        if ok:
            return _OK
    return result


def check_call(
    function: Mapping, call: Mapping[str, dict], possible_answer: Mapping[str, dict]
) -> CheckResult:
    """One call {name: arguments} against one function document and one ground-truth entry {name: {param: [...]}}.

    ast_checker.py simple_function_checker, Python: name, required parameters present, no parameter
    outside the document or the answer, each value's type and value among the possible answers,
    every parameter the answer does not mark optional ("") given.
    """
    possible = next(iter(possible_answer.values()))
    name = function["name"]
    params = function.get("parameters") or {}
    details = params.get("properties") or {}
    if name not in call:
        return CheckResult(False, "simple_function_checker:wrong_func_name", f"function {name!r} not called")
    arguments = call[name]
    for param in params.get("required") or []:
        if param not in arguments:
            return CheckResult(False, "simple_function_checker:missing_required", f"missing {param!r}")
    for param, value in arguments.items():
        if param not in details or param not in possible:
            return CheckResult(False, "simple_function_checker:unexpected_param", f"unexpected {param!r}")
        declared = details[param].get("type", "string")
        expected = PYTHON_TYPE_MAPPING.get(declared, str)
        nested = None
        if declared in PYTHON_NESTED_TYPE_CHECK_LIST:
            nested = PYTHON_TYPE_MAPPING.get((details[param].get("items") or {}).get("type", "string"), str)
        if declared == "float" or declared == "number":
            if type(value) is int:  # Python's int-to-float conversion, as BFCL allows it
                value = float(value)
        valid, is_variable = _type_check(param, value, possible[param], expected, nested)
        if not valid:
            return CheckResult(False, "type_error:simple" if nested is None else "type_error:nested", param)
        if not is_variable:
            if expected is dict:
                result = _dict_ok(value, possible[param])
                if not result.valid:
                    return result
                continue
            if expected is list and nested is dict:
                result = _list_dict_ok(value, possible[param])
                if not result.valid:
                    return result
                continue
            if expected is str:
                if not _string_ok(value, possible[param]):
                    return CheckResult(False, "value_error:string", f"invalid value for {param!r}")
                continue
            if expected is list:
                if not _list_ok(value, possible[param]):
                    return CheckResult(False, "value_error:list/tuple", f"invalid value for {param!r}")
                continue
        if value not in possible[param]:
            return CheckResult(False, "value_error:others", f"invalid value for {param!r}")
    for param, answers in possible.items():
        if param not in arguments and "" not in answers:
            return CheckResult(False, "simple_function_checker:missing_optional", f"{param!r} not given")
    return _OK


def _find(functions: Sequence[Mapping], name: str) -> Mapping:
    for function in functions:
        if function["name"] == name:
            return function
    raise ValueError(f"the ground truth calls {name!r}, which the example's functions do not document")


def check_calls(
    functions: Sequence[Mapping],
    calls: Sequence[Mapping[str, dict]],
    possible_answer: Sequence[Mapping],
    category: str,
) -> CheckResult:
    """Decoded calls [{name: arguments}] against the ground truth, dispatched by category as ast_checker does."""
    if "parallel" in category:  # parallel_function_checker_no_order
        if len(calls) != len(possible_answer):
            return CheckResult(False, "parallel_function_checker_no_order:wrong_count")
        matched: list[int] = []
        for answer in possible_answer:
            function = _find(functions, next(iter(answer)))
            found = False
            for index, call in enumerate(calls):
                if index not in matched and check_call(function, call, answer).valid:
                    matched.append(index)
                    found = True
                    break
            if not found:
                return CheckResult(False, "parallel_function_checker_no_order:cannot_find_match")
        return _OK
    if "multiple" in category:
        if len(calls) != len(possible_answer):
            return CheckResult(False, "multiple_function_checker:wrong_count")
        return check_call(_find(functions, next(iter(possible_answer[0]))), calls[0], possible_answer[0])
    if len(calls) != 1:
        return CheckResult(False, "simple_function_checker:wrong_count")
    return check_call(functions[0], calls[0], possible_answer[0])


# ------------------------------------------------------------------------------------------------ outputs


@dataclass
class ParsedOutput:
    """A model's reply as BFCL's OpenAI handler decodes it."""

    calls: list[dict] = field(default_factory=list)  # [{name: arguments}]
    decoded: bool = True  # False: some call's arguments did not decode (BFCL: decoder_failed)
    malformed: list[str] = field(default_factory=list)  # one MALFORMED_REASONS code per bad call


def parse_output(message: Mapping | None, offered: Iterable[str] = ()) -> ParsedOutput:
    """Decode an OpenAI-style assistant message (`tool_calls` with JSON-text `arguments`) into calls.

    A message without tool calls decodes to no call. `offered` names the functions offered; a call
    to another one is counted as `function_not_offered` (and fails the checker on its name).
    """
    out = ParsedOutput()
    offered = set(offered)
    for item in (message or {}).get("tool_calls") or []:
        fn = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            out.malformed.append(BAD_TOOL_CALL)
            out.decoded = False
            continue
        name, arguments = fn["name"], fn.get("arguments")
        if offered and name not in offered:
            out.malformed.append(FUNCTION_NOT_OFFERED)
        if not isinstance(arguments, str):
            out.malformed.append(ARGUMENTS_NOT_STRING)
            out.decoded = False
            continue
        try:
            parsed = json.loads(arguments)
        except ValueError:
            out.malformed.append(INVALID_ARGUMENTS_JSON)
            out.decoded = False
            continue
        if not isinstance(parsed, dict):
            out.malformed.append(ARGUMENTS_NOT_OBJECT)
            out.decoded = False
            continue
        out.calls.append({name: parsed})
    return out


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class ExampleScore:
    id: str
    category: str
    correct: bool
    error_type: str  # "" when correct
    n_calls: int
    malformed: list[str] = field(default_factory=list)


def _offered(example: Mapping) -> list[str]:
    if example.get("functions"):
        return [f["name"] for f in example["functions"]]
    return [t["function"]["name"] for t in example.get("tools") or []]


def _functions(example: Mapping) -> list[dict]:
    # BFCL's own documents when the example has them (features.bfcl.to_eval_example), else the tools.
    if example.get("functions"):
        return list(example["functions"])
    return [dict(t["function"]) for t in example.get("tools") or []]


def score_example(example: Mapping, message: Mapping | None) -> ExampleScore:
    """Score one reply against one held-out example (features.bfcl.to_eval_example's shape).

    `expected`: "call" (AST check against `possible_answer`), "no_call" (irrelevance), "any_call" (relevance).
    """
    parsed = parse_output(message, _offered(example))
    expected = example.get("expected", "call")
    category = example["category"]
    has_call = parsed.decoded and len(parsed.calls) > 0
    if expected == "no_call":
        result = _OK if not has_call else CheckResult(False, "irrelevance_error:decoder_success")
    elif expected == "any_call":
        result = _OK if has_call else CheckResult(False, "relevance_error:decoder_failed")
    elif not parsed.decoded:
        result = CheckResult(False, "ast_decoder:decoder_failed")
    else:
        result = check_calls(_functions(example), parsed.calls, example["possible_answer"], category)
    return ExampleScore(
        str(example["id"]), category, result.valid, result.error_type, len(parsed.calls), parsed.malformed
    )


@dataclass
class CategoryScore:
    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class ToolEvalReport:
    """Accuracy overall and per category, malformed outputs by reason, failures by BFCL error type."""

    n: int
    correct: int
    accuracy: float
    per_category: dict[str, dict]  # category -> {"n", "correct", "accuracy"}
    malformed: dict[str, int]  # MALFORMED_REASONS code -> calls
    malformed_outputs: int  # replies with at least one malformed call
    error_types: dict[str, int]  # BFCL error_type -> wrong examples
    examples: list[ExampleScore]

    def correct_by_id(self) -> dict[str, bool]:
        """Per-example outcomes, the input of compare_paired."""
        return {e.id: e.correct for e in self.examples}

    def to_dict(self) -> dict:
        return asdict(self)


def score(
    examples: Sequence[Mapping], outputs: Mapping[str, Mapping | None] | Sequence[Mapping | None]
) -> ToolEvalReport:
    """Score replies (by example id, or in the examples' order) against held-out examples.

    An example without a reply in a mapping counts as a reply with no call.
    """
    if isinstance(outputs, Mapping):
        replies = [outputs.get(str(e["id"])) for e in examples]
    else:
        if len(outputs) != len(examples):
            raise ValueError(
                f"{len(outputs)} replies for {len(examples)} examples; pass a dict by id instead"
            )
        replies = list(outputs)
    scores = [score_example(e, r) for e, r in zip(examples, replies, strict=True)]
    per: dict[str, CategoryScore] = {}
    malformed: dict[str, int] = {}
    errors: dict[str, int] = {}
    for s in scores:
        c = per.setdefault(s.category, CategoryScore())
        c.n += 1
        c.correct += s.correct
        for reason in s.malformed:
            malformed[reason] = malformed.get(reason, 0) + 1
        if not s.correct:
            errors[s.error_type] = errors.get(s.error_type, 0) + 1
    correct = sum(s.correct for s in scores)
    return ToolEvalReport(
        n=len(scores),
        correct=correct,
        accuracy=correct / len(scores) if scores else 0.0,
        per_category={
            k: {"n": v.n, "correct": v.correct, "accuracy": v.accuracy} for k, v in sorted(per.items())
        },
        malformed=dict(sorted(malformed.items())),
        malformed_outputs=sum(1 for s in scores if s.malformed),
        error_types=dict(sorted(errors.items())),
        examples=scores,
    )


# ------------------------------------------------------------------------------------------------ paired test


# The confidence given up to bound the nuisance share of discordant pairs (compare_paired, margin > 0).
NUISANCE_GAMMA = 0.001


@dataclass
class PairedComparison:
    """The challenger against another model on the same examples, with the test's numbers and verdict."""

    n: int
    both_correct: int
    challenger_only: int  # b: the challenger right, the other wrong
    other_only: int  # c: the other right, the challenger wrong
    neither: int
    challenger_accuracy: float
    other_accuracy: float
    margin: float
    alpha: float
    null_share: float  # P(a discordant pair favours the challenger) under the null hypothesis
    p_value: float
    passed: bool
    reason: str


def compare_paired(
    challenger_correct: Mapping[str, bool] | Sequence[bool],
    other_correct: Mapping[str, bool] | Sequence[bool],
    margin: float = 0.0,
    alpha: float = 0.05,
) -> PairedComparison:
    """McNemar's exact test, one-sided: is the challenger better (margin 0), or not worse by more than `margin`?

    Outcomes are paired by example id (mappings, which must hold the same ids) or by position.
    Null hypothesis: accuracy(challenger) - accuracy(other) <= -margin. Conditional on the d = b + c
    discordant pairs, b ~ Binomial(d, q). At margin 0, q = 1/2: the exact McNemar test, p = P(X >= b)
    (scipy.stats.binomtest, alternative="greater"). With a margin, q = 1/2 - margin / (2 psi) at the
    null's boundary depends on psi, the share of discordant pairs; p(psi) grows with psi, so psi is
    taken at its one-sided Clopper-Pearson upper bound at level 1 - NUISANCE_GAMMA and
    NUISANCE_GAMMA is added to the p-value (Berger and Boos 1994): conservative, never the plug-in's
    optimism. When even that bound is below the margin (q <= 0) the null cannot hold and p = gamma.
    The challenger passes when p < alpha.
    """
    if not 0.0 <= margin < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"margin must be in [0, 1) and alpha in (0, 1), got margin={margin}, alpha={alpha}")
    if isinstance(challenger_correct, Mapping) or isinstance(other_correct, Mapping):
        if not (isinstance(challenger_correct, Mapping) and isinstance(other_correct, Mapping)):
            raise TypeError("pass both outcomes by example id (mappings) or both by position (sequences)")
        if set(challenger_correct) != set(other_correct):
            missing = sorted(set(challenger_correct) ^ set(other_correct))[:5]
            raise ValueError(
                f"the two models were scored on different examples (e.g. {missing}); score both on one set"
            )
        ids = sorted(challenger_correct)
        pairs = [(bool(challenger_correct[i]), bool(other_correct[i])) for i in ids]
    else:
        if len(challenger_correct) != len(other_correct):
            raise ValueError(
                f"{len(challenger_correct)} challenger outcomes vs {len(other_correct)} for the other"
            )
        pairs = [(bool(a), bool(b)) for a, b in zip(challenger_correct, other_correct, strict=True)]
    n = len(pairs)
    if n == 0:
        raise ValueError("compare_paired needs at least one paired example")
    both = sum(a and b for a, b in pairs)
    b = sum(a and not o for a, o in pairs)
    c = sum(o and not a for a, o in pairs)
    neither = n - both - b - c
    acc_ch, acc_other = (both + b) / n, (both + c) / n
    discordant = b + c
    if margin == 0:
        q = 0.5
        p = float(binomtest(b, discordant, q, alternative="greater").pvalue) if discordant else 1.0
    else:
        psi_upper = (
            1.0 if discordant == n else float(beta.ppf(1 - NUISANCE_GAMMA, discordant + 1, n - discordant))
        )
        q = 0.5 - margin / (2 * psi_upper)
        if q <= 0:
            p = NUISANCE_GAMMA
        elif discordant == 0:
            p = 1.0  # no discordant pair and a discordance bound above the margin: no evidence either way
        else:
            tail = float(binomtest(b, discordant, q, alternative="greater").pvalue)
            p = min(1.0, tail + NUISANCE_GAMMA)
    passed = p < alpha
    claim = "better than" if margin == 0 else f"not worse by more than {margin:g} than"
    verdict = "passes" if passed else "fails"
    reason = (
        f"challenger {acc_ch:.3f} vs {acc_other:.3f} on {n} paired examples (b={b}, c={c}): one-sided exact McNemar "
        f"p={p:.3g} {'<' if passed else '>='} alpha {alpha:g}: {verdict} '{claim} the other'"
    )
    return PairedComparison(n, both, b, c, neither, acc_ch, acc_other, margin, alpha, q, p, passed, reason)
