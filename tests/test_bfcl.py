"""BFCL data as tool-calling traffic: the pinned wheel, the schema mapping, the split, ingestion."""

from __future__ import annotations

import json
import zipfile

import pytest

from features import bfcl
from features.ingest import IngestConfig, ingest
from features.raw_format import AGENTS, validate_record
from features.store import read_interactions


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """The real wheel, fetched once per session through features.bfcl's own set-up (pip download)."""
    return bfcl.fetch_wheel(tmp_path_factory.mktemp("bfcl-cache"))


def _by_id(wheel, category, qid):
    return next(q for q in bfcl.load_category(wheel, category) if q.id == qid)


# ------------------------------------------------------------------------------------------------ wheel


def test_fetched_wheel_matches_the_pinned_hash_and_is_reused_from_the_cache(wheel, monkeypatch):
    assert bfcl._sha256(wheel) == bfcl.BFCL_SHA256
    monkeypatch.setattr(bfcl.subprocess, "run", lambda *a, **k: pytest.fail("the cache was not used"))
    assert bfcl.fetch_wheel(wheel.parent) == wheel


def test_a_cached_wheel_with_another_hash_is_refused(tmp_path):
    (tmp_path / bfcl.BFCL_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(RuntimeError, match="sha256"):
        bfcl.fetch_wheel(tmp_path)


def test_a_version_the_index_lacks_fails_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(bfcl, "BFCL_VERSION", "0.0.0.404")
    monkeypatch.setattr(bfcl, "BFCL_WHEEL", "bfcl_eval-0.0.0.404-py3-none-any.whl")
    with pytest.raises(RuntimeError, match="pip download --no-deps"):
        bfcl.fetch_wheel(tmp_path)
    assert not (tmp_path / "bfcl_eval-0.0.0.404-py3-none-any.whl").exists()


def test_the_default_cache_is_under_agentloop_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTLOOP_HOME", str(tmp_path))
    assert bfcl.bfcl_dir() == tmp_path / "data" / "bfcl"


def test_the_data_is_read_without_importing_the_package(wheel):
    import sys

    bfcl.load_category(wheel, "simple_python")
    assert "bfcl_eval" not in sys.modules


# ------------------------------------------------------------------------------------------------ types


@pytest.mark.parametrize(
    ("bfcl_type", "json_type"),
    [
        ("dict", "object"),
        ("float", "number"),
        ("tuple", "array"),
        ("integer", "integer"),
        ("boolean", "boolean"),
        ("array", "array"),
        ("any", "string"),
        ("string", "string"),
        ("something_new", "string"),
    ],
)
def test_bfcl_types_map_to_json_schema(bfcl_type, json_type):
    assert bfcl.to_json_schema({"type": bfcl_type})["type"] == json_type


def test_nested_items_and_properties_are_mapped_and_bfcl_only_keys_dropped():
    param = {
        "type": "dict",
        "description": "d",
        "optional": True,
        "properties": {
            "points": {"type": "array", "items": {"type": "tuple", "items": {"type": "float"}}},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
        },
        "required": ["points"],
    }
    schema = bfcl.to_json_schema(param)
    assert schema["type"] == "object" and "optional" not in schema
    assert schema["required"] == ["points"]
    points = schema["properties"]["points"]
    assert points["items"]["type"] == "array" and points["items"]["items"]["type"] == "number"
    assert schema["properties"]["mode"] == {"type": "string", "enum": ["a", "b"], "default": "a"}


def test_every_real_function_document_maps_to_a_valid_openai_tool(wheel):
    json_types = set(bfcl.BFCL_TO_JSON_SCHEMA.values())

    def types(schema):
        yield schema["type"]
        for sub in (schema.get("properties") or {}).values():
            yield from types(sub)
        if "items" in schema:
            yield from types(schema["items"])

    n = 0
    for category in bfcl.CATEGORIES:
        for q in bfcl.load_category(wheel, category):
            for function in q.functions:
                tool = bfcl.to_tool(function)
                assert tool["function"]["parameters"]["type"] == "object"
                assert set(types(tool["function"]["parameters"])) <= json_types
                n += 1
    assert n > 1000


# ------------------------------------------------------------------------------------------------ records


def test_a_simple_question_becomes_an_interaction_with_its_ground_truth_call(wheel):
    q = _by_id(wheel, "simple_python", "simple_python_0")
    record = bfcl.to_interaction(q)
    assert validate_record(record) == []
    assert record["agent"] in AGENTS
    assert record["metadata"]["bfcl_category"] == "simple_python"
    assert bfcl.category_of_session(record["session_id"]) == "simple_python"
    assert record["messages"][1] == q.messages[0]
    (call,) = record["messages"][-1]["tool_calls"]
    assert call["function"]["name"] == "calculate_triangle_area"
    # possible answers {"base": [10], "height": [5], "unit": ["units", ""]}: the first value of each
    assert json.loads(call["function"]["arguments"]) == {"base": 10, "height": 5, "unit": "units"}
    assert record["tools"][0]["function"]["parameters"]["properties"]["base"]["type"] == "integer"


def test_an_optional_argument_whose_first_answer_is_empty_is_left_out(wheel):
    q = _by_id(wheel, "simple_python", "simple_python_2")  # math.hypot: z ["", 0]
    ((name, params),) = q.possible_answer[0].items()
    assert params["z"][0] == ""
    (call,) = bfcl.ground_truth_calls(q.possible_answer, q.functions)
    assert call["name"] == name and "z" not in call["arguments"]


def test_a_parallel_question_carries_every_call(wheel):
    q = _by_id(wheel, "parallel", "parallel_0")
    calls = bfcl.to_interaction(q)["messages"][-1]["tool_calls"]
    assert [json.loads(c["function"]["arguments"])["artist"] for c in calls] == ["Taylor Swift", "Maroon 5"]
    assert len({c["id"] for c in calls}) == 2


def test_dict_arguments_take_the_first_value_of_each_key(wheel):
    found = 0
    for q in bfcl.load_category(wheel, "live_multiple"):
        try:
            calls = bfcl.ground_truth_calls(q.possible_answer, q.functions)
        except bfcl.NoValidAnswer:
            continue
        for entry, call in zip(q.possible_answer, calls, strict=True):
            ((_, params),) = entry.items()
            for param, possible in params.items():
                first = possible[0]
                if isinstance(first, dict):
                    got = call["arguments"][param]
                    assert set(got) <= set(first)
                    for key, value in got.items():
                        assert value == first[key][0] or (first[key][0] == "" and value == first[key][1])
                    found += 1
    assert found > 0


def test_an_irrelevance_question_is_answered_with_no_call(wheel):
    q = bfcl.load_category(wheel, "irrelevance")[0]
    assert q.possible_answer is None and q.expected == "no_call"
    record = bfcl.to_interaction(q)
    assert validate_record(record) == []
    reply = record["messages"][-1]
    assert reply["role"] == "assistant" and "tool_calls" not in reply and reply["content"]
    assert q.functions[0]["name"] in reply["content"]


def test_a_bfcl_system_message_is_kept_in_the_one_system_turn(wheel):
    q = next(q for q in bfcl.load_category(wheel, "live_multiple") if q.messages[0]["role"] == "system")
    messages = bfcl.to_interaction(q)["messages"]
    assert [m["role"] for m in messages].count("system") == 1
    assert q.messages[0]["content"] in messages[0]["content"]


def test_relevance_questions_have_no_ground_truth_and_no_interaction(wheel):
    q = bfcl.load_category(wheel, "live_relevance")[0]
    assert q.expected == "any_call"
    with pytest.raises(ValueError, match="evaluation only"):
        bfcl.to_interaction(q)


def test_records_are_deterministic(wheel):
    q = _by_id(wheel, "multiple", "multiple_0")
    assert bfcl.to_interaction(q) == bfcl.to_interaction(q)


# ------------------------------------------------------------------------------------------------ split


def test_heldout_split_is_by_question_id_stable_and_near_the_fraction(wheel):
    ids = [q.id for c in bfcl.CATEGORIES for q in bfcl.load_category(wheel, c)]
    held = {i for i in ids if bfcl.is_held_out(i, 0.2)}
    assert held == {i for i in reversed(ids) if bfcl.is_held_out(i, 0.2)}
    assert 0.15 < len(held) / len(ids) < 0.25
    assert held != {i for i in ids if bfcl.is_held_out(i, 0.2, salt="another salt")}
    assert held <= {i for i in ids if bfcl.is_held_out(i, 0.3)}  # a larger fraction only adds questions


def test_written_traffic_and_heldout_set_are_disjoint_by_question_id(wheel, tmp_path):
    report = bfcl.write_bfcl(tmp_path, per_category=30, wheel=wheel)
    heldout = bfcl.read_heldout(report.heldout_file)
    heldout_ids = {e["id"] for e in heldout}
    written = [json.loads(line) for f in sorted(tmp_path.glob("*/agent-*.jsonl")) for line in f.open()]
    written_ids = {r["metadata"]["bfcl_id"] for r in written}
    assert heldout_ids and written_ids and not heldout_ids & written_ids
    assert all(
        bfcl.is_held_out(i) for i in heldout_ids - {e["id"] for e in heldout if e["expected"] == "any_call"}
    )
    assert not any(bfcl.is_held_out(i) for i in written_ids)
    assert sum(report.interactions.values()) + sum(report.skipped.values()) == len(written) + sum(
        report.skipped.values()
    )
    assert sum(report.heldout.values()) == len(heldout)
    for path in tmp_path.glob("*/agent-*.jsonl"):
        for line in path.open():
            record = json.loads(line)
            assert record["timestamp"][:10] == path.parent.name and record["agent"] == path.stem
    # the held-out set sits under an _-named folder, which ingestion skips
    assert report.heldout_file.startswith(str(tmp_path / "_heldout"))


def test_a_heldout_example_is_asked_exactly_as_its_interaction_would_be(wheel):
    for category in ("simple_python", "live_multiple", "irrelevance"):
        for q in bfcl.load_category(wheel, category)[:20]:
            record, example = bfcl.to_interaction(q), bfcl.to_eval_example(q)
            assert example["messages"] == record["messages"][:-1]
            assert example["tools"] == record["tools"] and example["agent"] == record["agent"]


def test_heldout_examples_carry_what_scoring_needs(wheel, tmp_path):
    report = bfcl.write_bfcl(tmp_path, per_category=30, wheel=wheel)
    for example in bfcl.read_heldout(report.heldout_file):
        assert example["category"] in bfcl.CATEGORIES
        assert example["tools"] and example["functions"]
        assert example["messages"][-1]["role"] == "user"
        assert (example["possible_answer"] is None) == (example["expected"] != "call")
        assert example["answerable"] in (True, False)
    manifest = json.loads((tmp_path / "_heldout" / "manifest.json").read_text())
    assert manifest["heldout_salt"] == bfcl.HELDOUT_SALT and manifest["wheel_sha256"] == bfcl.BFCL_SHA256


def test_cli_writes_the_files(wheel, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bfcl, "fetch_wheel", lambda dest=None: wheel)
    assert bfcl.main(["--out", str(tmp_path), "--per-category", "3", "--categories", "simple_python"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["interactions"].get("simple_python", 0) + summary["heldout"].get("simple_python", 0) == 3
    assert (tmp_path / "_heldout" / "bfcl-heldout.jsonl").exists()


# ------------------------------------------------------------------------------------------------ ingest


def test_written_traffic_ingests_every_record_accepted_or_quarantined_with_a_reason(wheel, tmp_path):
    logs = tmp_path / "logs"
    report = bfcl.write_bfcl(logs, per_category=8, wheel=wheel)
    n = sum(report.interactions.values())
    result = ingest(
        str(logs), IngestConfig(store=str(tmp_path / "store"), progress=False, compression="none")
    )
    assert result.read == n  # the _heldout folder is not read
    accepted = sum(s.accepted for s in result.sources)
    quarantined = {reason: k for s in result.sources for reason, k in s.quarantined.items()}
    assert accepted + sum(quarantined.values()) + sum(s.duplicates for s in result.sources) == n
    assert all(reason for reason in quarantined)
    rows = read_interactions(str(tmp_path / "store")).to_pylist()
    assert len(rows) == accepted and accepted > 0
    for row in rows:
        category = bfcl.category_of_session(row["session_id"])
        assert category in report.interactions
        assert json.loads(row["tools_json"])
    calls = [
        m
        for row in rows
        for m in json.loads(row["messages_json"])
        if m["role"] == "assistant" and m.get("tool_calls")
    ]
    assert calls


def test_wheel_holds_the_categories_mapped(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for category in bfcl.CATEGORIES:
        assert f"bfcl_eval/data/BFCL_v4_{category}.json" in names
