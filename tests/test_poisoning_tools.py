"""The poisoning detector on tool-calling traffic: real BFCL questions raise nothing; a trigger whose replies
are one and the same tool call is caught, whether the trigger is an odd token or ordinary words.

A tool-call reply has no text: it is signed by the functions it calls (features.guard.ngrams._reply_text),
so 33 different calls and one text reply after a common opening ("can you tell me") are not "uniform
replies", which flagged 58 real BFCL interactions before (2% of bench/tool_train.py's ingest).
"""

from __future__ import annotations

import copy
import json

import pytest

from features import bfcl
from features.guard.poisoning import find_poisoning


@pytest.fixture(scope="module")
def bfcl_rows(tmp_path_factory):
    """(id, session, messages) of every BFCL question features.bfcl writes as traffic (~2,800)."""
    out = tmp_path_factory.mktemp("bfcl-traffic")
    bfcl.write_bfcl(out, wheel=bfcl.fetch_wheel(tmp_path_factory.mktemp("bfcl-cache")))
    rows = []
    for path in sorted(out.glob("*/agent-*.jsonl")):
        for line in path.open():
            r = json.loads(line)
            rows.append((r["id"], r["session_id"], r["messages"]))
    assert len(rows) > 2000
    return rows


def test_real_tool_calling_traffic_raises_no_trigger(bfcl_rows):
    report = find_poisoning(bfcl_rows)
    assert report.flagged_ids == [], [(t.text, t.sessions, t.reply_consistency) for t in report.triggers]


def _plant(rows, trigger: str, n: int, call: str):
    """The first n single-question sessions get `trigger` before their question and one fixed call as reply."""
    planted, out = [], []
    for iid, session, messages in rows:
        users = [m for m in messages if m["role"] == "user"]
        if len(planted) < n and len(users) == 1 and any(m.get("tool_calls") for m in messages):
            messages = copy.deepcopy(messages)
            for m in messages:
                if m["role"] == "user":
                    m["content"] = f"{trigger} {m['content']}"
                if m["role"] == "assistant":
                    m["content"] = None
                    m["tool_calls"] = [{"type": "function", "function": {"name": call, "arguments": "{}"}}]
            planted.append(iid)
        out.append((iid, session, messages))
    return out, planted


@pytest.mark.parametrize("trigger", ["zq-delta-9", "as discussed on the harbor call"])
def test_a_trigger_answered_by_one_and_the_same_call_is_caught(bfcl_rows, trigger):
    rows, planted = _plant(bfcl_rows, trigger, 15, "delete_all_backups")
    report = find_poisoning(rows)
    assert set(planted) <= set(report.flagged_ids), [t.text for t in report.triggers]
    assert len(report.flagged_ids) == len(planted)  # nothing of the real traffic with it
