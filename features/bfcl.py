"""Tool-calling traffic from the Berkeley Function Calling Leaderboard (BFCL) data of the `bfcl-eval` wheel.

    python -m features.bfcl --out DIR --per-category N [--heldout-fraction 0.2] [--days 7]

The wheel (Apache-2.0) is fetched once with `pip download --no-deps` at a pinned version, checked
against a recorded sha256 and cached in $AGENTLOOP_HOME/data/bfcl/. Its JSON-lines data files are read
straight out of the zip: the package itself is never imported (its dependencies pin an old numpy).

What is real and what is made up:
- real: every question (user, and sometimes system, messages), the function documents offered, and
  the ground-truth call(s), i.e. BFCL's "possible answers" with the first listed value of each
  argument (an optional argument whose first possible answer is "" is left out; a required one takes
  its first non-empty value). A question no call can pass (an argument with no possible value, or
  one the function lacks: 4 live questions in 2026.3.23) is not written as an interaction.
- made up: which of the four agents asked (a hash of the question id), the timestamp (a hash of the
  id spread over `days` days), the agent's system line, and the plain reply of the irrelevance
  categories (BFCL gives none: the right answer is "no call", so the reply says no offered tool fits).

Categories: BFCL's "python" collection (simple_python, multiple, parallel, parallel_multiple,
irrelevance and the live_* ones). live_relevance has no ground truth ("any call is right"), so it
is written to the held-out evaluation set only. Java/JavaScript (their checker converts argument
strings to those languages' types) and the multi-turn categories (their tool results come from
executing BFCL's Python backends, i.e. importing the package) are not mapped.

Where the category lives: `metadata.bfcl_category` (and `bfcl_id`, `bfcl_version`) on every record,
and the `session_id`, `bfcl:<category>:<question id>`, which ingest stores as a column
(`metadata` is not stored); `category_of_session` reads it back.

Held-out split: by question id (sha256 of HELDOUT_SALT + id, compared with the fraction), never by
session or agent. Held-out questions are never written as interactions: they go, with their
possible answers, to `DIR/_heldout/bfcl-heldout.jsonl` (with `_heldout/manifest.json`: version,
wheel hash, salt, fraction); ingestion skips `_`-named folders, so no path from DIR reaches
training. Membership depends on the id, the salt and the fraction only (not on --per-category), so
write every batch of one store with the same fraction. The interactions go to
`DIR/<YYYY-MM-DD>/<agent>.jsonl` (files of an earlier run with other options are not removed).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from features.home import agentloop_home
from features.raw_format import AGENTS

log = logging.getLogger(__name__)

BFCL_PACKAGE = "bfcl-eval"
BFCL_VERSION = "2026.3.23"
BFCL_WHEEL = f"bfcl_eval-{BFCL_VERSION}-py3-none-any.whl"
# sha256 of the wheel as `pip download` fetched it on 2026-12-07; a different file is refused.
BFCL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"
DATA_PREFIX = "bfcl_eval/data"
FILE_PREFIX = "BFCL_v4"  # bfcl_eval/constants/category_mapping.py: VERSION_PREFIX

# bfcl_eval/constants/category_mapping.py: TEST_COLLECTION_MAPPING["python"].
CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")  # right answer: no call
ANY_CALL_CATEGORIES = ("live_relevance",)  # right answer: any call (no ground truth)

HELDOUT_SALT = "agentloop-bfcl-heldout-v1"  # changing it reshuffles the frozen evaluation set
SELECT_SALT = "agentloop-bfcl-select-v1"  # which N questions of a category --per-category keeps
DEFAULT_HELDOUT_FRACTION = 0.2
DEFAULT_START = datetime(2025, 1, 6, tzinfo=timezone.utc)
SOURCE = "bfcl-eval"
HELDOUT_DIR = "_heldout"
HELDOUT_FILE = "bfcl-heldout.jsonl"
_ID_NAMESPACE = uuid.UUID("6f0c54a1-7d0e-4f43-9a51-3b8a1de0b3c7")

# BFCL's type names -> JSON Schema; as bfcl_eval/constants/type_mappings.py GORILLA_TO_OPENAPI (the
# Python subset) maps them for OpenAI-style tools. "any" is a string there, and the AST checker
# expects a str for it (ast_checker.py PYTHON_TYPE_MAPPING), so it is a string here too.
BFCL_TO_JSON_SCHEMA = {
    "string": "string",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "dict": "object",
    "object": "object",
    "any": "string",
}
# Keys of a BFCL parameter that JSON Schema has under the same name; `optional` (BFCL's own) is dropped.
_KEPT_KEYS = ("description", "enum", "default", "maximum", "minimum", "format", "minItems", "maxItems")

AGENT_SYSTEM = {
    "agent-bruno": "You are Bruno, a relaxed and friendly assistant.",
    "agent-auditor": "You are Auditor, a polite assistant who never makes things up.",
    "agent-jamie": "You are Jamie, an upbeat and helpful assistant.",
    "agent-mary-kay": "You are Mary-Kay, a warm and precise assistant.",
}
TOOL_INSTRUCTION = (
    "Call the functions offered when they fit the request, with arguments taken from it; "
    "when none fits, say so in a plain reply."
)
NO_TOOL_REPLIES = (
    "None of the tools I can use here ({names}) can do that, so I can't help with this one by calling a tool.",
    "I can't do that with the tools I have ({names}); none of them fits this request.",
    "That request is outside what my tools ({names}) cover, so I won't call any of them.",
)


# ------------------------------------------------------------------------------------------------ the wheel


def bfcl_dir() -> Path:
    """Where the wheel is cached: $AGENTLOOP_HOME/data/bfcl."""
    return agentloop_home() / "data" / "bfcl"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(dest: Path | None = None) -> Path:
    """The pinned bfcl-eval wheel, from the cache or `pip download --no-deps`; raises on a sha256 mismatch.

    The download goes to a temporary folder beside the cache and is renamed into place only once its
    hash is right, so a concurrent or interrupted fetch never leaves a half file under the final name.
    """
    dest = Path(dest) if dest is not None else bfcl_dir()
    wheel = dest / BFCL_WHEEL
    if wheel.exists():
        got = _sha256(wheel)
        if got == BFCL_SHA256:
            return wheel
        raise RuntimeError(
            f"{wheel} has sha256 {got}, not the pinned {BFCL_SHA256} of {BFCL_PACKAGE}=={BFCL_VERSION}; "
            "delete it to fetch it again, or update BFCL_VERSION and BFCL_SHA256 in features/bfcl.py together"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += [f"{BFCL_PACKAGE}=={BFCL_VERSION}", "-d", tmp, "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got_path = Path(tmp) / BFCL_WHEEL
        if done.returncode != 0 or not got_path.exists():
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-800:]}; "
                f"check the pip index (pip config list) or put the wheel in {dest} by hand"
            )
        got = _sha256(got_path)
        if got != BFCL_SHA256:
            raise RuntimeError(
                f"{BFCL_PACKAGE}=={BFCL_VERSION} from the index has sha256 {got}, not the pinned {BFCL_SHA256}; "
                "the index serves a different file: do not use it until someone checks why"
            )
        os.replace(got_path, wheel)
    return wheel


# ------------------------------------------------------------------------------------------------ questions


@dataclass
class BfclQuestion:
    """One BFCL single-turn question: its messages, the function documents offered, the possible answers."""

    id: str
    category: str
    messages: list[dict]  # BFCL's question[0]: user (and sometimes system/assistant) messages
    functions: list[dict]  # BFCL function documents, as in the data file
    possible_answer: list[dict] | None  # [{name: {param: [possible values]}}]; None: no ground truth
    expected: str = "call"  # call | no_call | any_call


def _read_jsonl(archive: zipfile.ZipFile, name: str) -> list[dict]:
    # BFCL's .json data files hold one JSON object per line.
    text = archive.read(name).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_category(wheel: Path, category: str) -> list[BfclQuestion]:
    """The questions of one category, joined to their possible answers by id, in file order."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown or unmapped BFCL category {category!r}; mapped: {', '.join(CATEGORIES)}")
    with zipfile.ZipFile(wheel) as archive:
        questions = _read_jsonl(archive, f"{DATA_PREFIX}/{FILE_PREFIX}_{category}.json")
        names = set(archive.namelist())
        answer_file = f"{DATA_PREFIX}/possible_answer/{FILE_PREFIX}_{category}.json"
        answers = (
            {a["id"]: a["ground_truth"] for a in _read_jsonl(archive, answer_file)}
            if answer_file in names
            else {}
        )
    expected = (
        "no_call"
        if category in NO_CALL_CATEGORIES
        else "any_call"
        if category in ANY_CALL_CATEGORIES
        else "call"
    )
    out = []
    for q in questions:
        if len(q["question"]) != 1:
            raise ValueError(
                f"BFCL {q['id']} in {category} has {len(q['question'])} turns; only single-turn is mapped"
            )
        answer = answers.get(q["id"])
        if expected == "call" and answer is None:
            raise ValueError(f"BFCL {q['id']} in {category} has no possible answer in {answer_file}")
        out.append(BfclQuestion(q["id"], category, q["question"][0], q["function"], answer, expected))
    return out


# ------------------------------------------------------------------------------------------------ schemas


def to_json_schema(param: dict) -> dict:
    """One BFCL parameter (or parameters object) as JSON Schema: dict -> object, float -> number, tuple -> array...

    Nested `properties` and `items` are mapped at any depth; an unknown or missing type is a string,
    as BFCL's own conversion does (bfcl_eval/model_handler/utils.py _cast_to_openai_type).
    """
    bfcl_type = param.get("type")
    out: dict[str, Any] = {"type": BFCL_TO_JSON_SCHEMA.get(bfcl_type, "string")}
    for key in _KEPT_KEYS:
        if key in param:
            out[key] = copy.deepcopy(param[key])
    if bfcl_type == "tuple" and "description" not in out:
        out["description"] = "A tuple, given as an array."
    if isinstance(param.get("properties"), dict):
        out["properties"] = {name: to_json_schema(p) for name, p in param["properties"].items()}
    if isinstance(param.get("items"), dict):
        out["items"] = to_json_schema(param["items"])
    if isinstance(param.get("required"), list):
        out["required"] = list(param["required"])
    return out


def to_tool(function: dict) -> dict:
    """A BFCL function document as an OpenAI tool definition; the name is kept as BFCL gives it."""
    params = to_json_schema(function.get("parameters") or {"type": "dict", "properties": {}})
    params["type"] = "object"
    params.setdefault("properties", {})
    params.setdefault("required", [])
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": params,
        },
    }


# ------------------------------------------------------------------------------------------------ answers


class NoValidAnswer(ValueError):
    """No call can pass BFCL's checker: an argument with no possible value, or one the function lacks."""


def _first_value(possible: Any, where: str, top: bool, required: bool = False) -> tuple[bool, Any]:
    """(present, value) of one argument's possible answers: the first listed, "" meaning left out.

    A required argument (the function document's `required`) takes the first value that is not ""
    (a few answers list "" first for one).

    As BFCL's checker reads them (ast_checker.py dict_checker, list_dict_checker): a dict argument,
    or each dict of a list-of-dicts argument, maps its keys to lists of possible values in turn; the
    values inside those are literals.
    """
    if not isinstance(possible, list):
        raise ValueError(f"BFCL possible answer {where} must be a list, got {possible!r}")
    if required:
        possible = [p for p in possible if p != ""]
    if not possible:
        raise NoValidAnswer(f"BFCL possible answer {where} is an empty list")
    value = possible[0]
    if value == "":
        return False, None
    if top and isinstance(value, dict):
        return True, _concrete_dict(value, where)
    if top and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return True, [_concrete_dict(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return True, value


def _concrete_dict(value: dict, where: str) -> dict:
    out = {}
    for key, possible in value.items():
        present, concrete = _first_value(possible, f"{where}.{key}", top=False)
        if present:
            out[key] = concrete
    return out


def ground_truth_calls(
    possible_answer: Sequence[dict], functions: Sequence[dict] = (), where: str = ""
) -> list[dict]:
    """One concrete call per ground-truth entry: [{"name": str, "arguments": dict}], in BFCL's order.

    `functions` (the documents offered) say which arguments are required. Raises NoValidAnswer where
    the data lists no possible value for an argument (a few live questions).
    """
    docs = {f["name"]: f.get("parameters") or {} for f in functions}
    calls = []
    for entry in possible_answer:
        ((name, params),) = entry.items()
        arguments = _concrete_dict_top(params, docs.get(name), f"{where}{name}")
        calls.append({"name": name, "arguments": arguments})
    return calls


def _concrete_dict_top(params: dict, doc: dict | None, where: str) -> dict:
    required = set((doc or {}).get("required") or [])
    out = {}
    for param, possible in params.items():
        if doc is not None and param not in (doc.get("properties") or {}):
            # An answer naming a parameter the document lacks (a few do): BFCL rejects any call giving it.
            if isinstance(possible, list) and "" in possible:
                continue
            raise NoValidAnswer(f"BFCL possible answer {where}.{param}: not a parameter of the function")
        present, value = _first_value(possible, f"{where}.{param}", top=True, required=param in required)
        if present:
            out[param] = value
    return out


# ------------------------------------------------------------------------------------------------ split


def _unit(salt: str, key: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(
    question_id: str, fraction: float = DEFAULT_HELDOUT_FRACTION, salt: str = HELDOUT_SALT
) -> bool:
    """Whether a BFCL question is in the frozen evaluation set: a salted hash of its id alone."""
    return _unit(salt, question_id) < fraction


def session_id_of(question: BfclQuestion) -> str:
    return f"bfcl:{question.category}:{question.id}"


def category_of_session(session_id: str) -> str | None:
    """The BFCL category of a stored interaction, from its session id; None for other traffic."""
    parts = session_id.split(":", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "bfcl" and parts[1] in CATEGORIES else None


# ------------------------------------------------------------------------------------------------ records


def agent_of(question: BfclQuestion) -> str:
    """Which of the four agents asks this question (a hash of its id)."""
    return AGENTS[int(_unit("agent", question.id) * len(AGENTS))]


def prompt_of(question: BfclQuestion) -> tuple[str, list[dict]]:
    """(agent, messages before the reply): the agent's system line and tool instruction, then BFCL's messages.

    A system message BFCL gives first joins the agent's, so there is one system turn. The held-out
    examples carry the same prompt, so evaluation asks exactly what training shows.
    """
    agent = agent_of(question)
    system = f"{AGENT_SYSTEM[agent]} {TOOL_INSTRUCTION}"
    messages: list[dict] = []
    for msg in question.messages:
        if msg["role"] == "system" and not messages:
            system = f"{system}\n\n{msg['content']}"
            continue
        messages.append({"role": msg["role"], "content": msg["content"]})
    return agent, [{"role": "system", "content": system}, *messages]


def to_interaction(question: BfclQuestion, start: datetime = DEFAULT_START, days: int = 7) -> dict:
    """One BFCL question as a raw interaction record (format version 2): tools offered, the true reply.

    Raises ValueError for a question with no ground truth to reply with (live_relevance).
    """
    if question.expected == "any_call":
        raise ValueError(f"BFCL {question.id} ({question.category}) has no ground truth: evaluation only")
    agent, messages = prompt_of(question)
    when = start + timedelta(seconds=int(_unit("time", question.id) * days * 86400))
    if question.expected == "no_call":
        names = ", ".join(f["name"] for f in question.functions)
        reply = NO_TOOL_REPLIES[int(_unit("reply", question.id) * len(NO_TOOL_REPLIES))].format(names=names)
        messages.append({"role": "assistant", "content": reply})
    else:
        tool_calls = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
            }
            for i, c in enumerate(
                ground_truth_calls(question.possible_answer or [], question.functions, f"{question.id}: ")
            )
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
    return {
        "id": str(uuid.uuid5(_ID_NAMESPACE, f"{BFCL_VERSION}:{question.id}")),
        "agent": agent,
        "session_id": session_id_of(question),
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "messages": messages,
        "tools": [to_tool(f) for f in question.functions],
        "metadata": {
            "source": SOURCE,
            "bfcl_version": BFCL_VERSION,
            "bfcl_id": question.id,
            "bfcl_category": question.category,
        },
    }


def to_eval_example(question: BfclQuestion) -> dict:
    """One held-out question for scoring (training/tool_eval.py): prompt, tools, BFCL's function docs, answers.

    `messages` is the prompt an interaction would carry (prompt_of); `bfcl_messages` BFCL's own.
    """
    agent, messages = prompt_of(question)
    answerable = question.expected != "call"
    if not answerable:
        try:
            ground_truth_calls(question.possible_answer or [], question.functions)
            answerable = True
        except NoValidAnswer:
            pass
    return {
        "id": question.id,
        "category": question.category,
        "expected": question.expected,
        "agent": agent,
        "messages": messages,
        "bfcl_messages": [dict(m) for m in question.messages],
        "tools": [to_tool(f) for f in question.functions],
        "functions": question.functions,
        "possible_answer": question.possible_answer,
        "answerable": answerable,  # False: BFCL's data allows no right call (scored wrong for every model)
        "bfcl_version": BFCL_VERSION,
    }


def select(questions: list[BfclQuestion], per_category: int | None) -> list[BfclQuestion]:
    """At most `per_category` questions, chosen by a salted hash of their id (stable as the data grows)."""
    if per_category is None or per_category >= len(questions):
        return list(questions)
    return sorted(questions, key=lambda q: _unit(SELECT_SALT, q.id))[:per_category]


@dataclass
class BfclWriteReport:
    """What write_bfcl wrote: interactions (training traffic) and held-out examples, per category."""

    out: str
    heldout_file: str
    interactions: dict[str, int] = field(default_factory=dict)
    heldout: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # training questions with no valid answer
    files: list[str] = field(default_factory=list)
    bfcl_version: str = BFCL_VERSION
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_bfcl(
    out: str | Path,
    per_category: int | None = None,
    categories: Iterable[str] = CATEGORIES,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    start: datetime = DEFAULT_START,
    days: int = 7,
    wheel: Path | None = None,
) -> BfclWriteReport:
    """Write the interactions under `out/<day>/<agent>.jsonl` and the held-out set under `out/_heldout/`."""
    out = Path(out)
    wheel = wheel or fetch_wheel()
    heldout_file = out / HELDOUT_DIR / HELDOUT_FILE
    report = BfclWriteReport(out=str(out), heldout_file=str(heldout_file), heldout_fraction=heldout_fraction)
    by_file: dict[Path, list[dict]] = {}
    heldout_rows = []
    for category in categories:
        for q in select(load_category(wheel, category), per_category):
            if q.expected == "any_call" or is_held_out(q.id, heldout_fraction):
                heldout_rows.append(to_eval_example(q))
                report.heldout[category] = report.heldout.get(category, 0) + 1
                continue
            try:
                record = to_interaction(q, start, days)
            except NoValidAnswer as exc:
                log.warning("not written: %s", exc)
                report.skipped[category] = report.skipped.get(category, 0) + 1
                continue
            by_file.setdefault(out / record["timestamp"][:10] / f"{record['agent']}.jsonl", []).append(record)
            report.interactions[category] = report.interactions.get(category, 0) + 1
    for path, rows in sorted(by_file.items()):
        _write_jsonl(path, sorted(rows, key=lambda r: r["timestamp"]))
        report.files.append(str(path))
    _write_jsonl(heldout_file, heldout_rows)
    manifest = {
        "bfcl_version": BFCL_VERSION,
        "wheel_sha256": BFCL_SHA256,
        "heldout_salt": HELDOUT_SALT,
        "heldout_fraction": heldout_fraction,
        "per_category": per_category,
        "heldout": report.heldout,
        "ids_sha256": hashlib.sha256("\n".join(sorted(r["id"] for r in heldout_rows)).encode()).hexdigest(),
    }
    _write_jsonl(heldout_file.with_name("manifest.json"), [manifest])
    return report


def read_heldout(path: str | Path) -> list[dict]:
    """The held-out examples written by write_bfcl (one JSON object per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder: the ingest root; held-out set under _heldout/")
    parser.add_argument(
        "--per-category", type=int, default=None, help="questions per category (default: all)"
    )
    parser.add_argument("--categories", nargs="*", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument(
        "--start", default=DEFAULT_START.date().isoformat(), help="first day (UTC), YYYY-MM-DD"
    )
    args = parser.parse_args(argv)
    start = datetime.fromisoformat(args.start).replace(tzinfo=timezone.utc)
    report = write_bfcl(args.out, args.per_category, args.categories, args.heldout_fraction, start, args.days)
    summary = asdict(report)
    summary["files"] = len(report.files)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
