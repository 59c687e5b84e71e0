"""The held-out labeled sets of issue 14 are frozen: pinned by sha256, with their minimum counts.

They were written before any rule change by a helper that had not read the rules (tests/data/HELDOUT.md).
Rules are never tuned on them; a changed file fails here. bench/heldout_eval.py measures the rules on them.
"""

import collections
import hashlib
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

FROZEN = {
    "heldout_secrets_pii.jsonl": "e57a516d3df5b53a48b20bfdf25253cd6565e6207022d37cdf17e94554232f85",
    "heldout_injection.jsonl": "e1e369f264a81bda09f53d0617f104b476c7a82633c9b2416308e7b57c56a625",
    "heldout_poisoning.jsonl": "568da2153c78a383b0f1ee1e4ef6c654a1200dfc7bf03817a5672805a015a8f8",
}
MIN_PER_SIDE = 200
INJECTION_LABELS = {
    "direct_injection",
    "indirect_injection",
    "system_prompt_extraction",
    "roleplay_jailbreak",
    "forged_turn",
}


def _rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_frozen_by_hash(name):
    digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    assert digest == FROZEN[name], (
        f"tests/data/{name} changed (sha256 {digest}). The held-out sets of issue 14 are frozen: they were "
        "written before any rule change by someone who had not read the rules, and must not be edited, "
        "extended or re-drawn. Restore the file; see tests/data/HELDOUT.md."
    )


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_ids_unique(name):
    ids = [r["id"] for r in _rows(name)]
    dupes = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, dupes[:10]


def test_secrets_pii_counts_and_values():
    rows = _rows("heldout_secrets_pii.jsonl")
    pos = [r for r in rows if r["kind"] != "none"]
    neg = [r for r in rows if r["kind"] == "none"]
    assert len(pos) >= MIN_PER_SIDE and len(neg) >= MIN_PER_SIDE, (len(pos), len(neg))
    for r in pos:
        assert r["values"], r["id"]
        for v in r["values"]:
            assert v and v in r["text"], (r["id"], v)
    for r in neg:
        assert r["values"] == [] and r.get("lookalike_of"), r["id"]
    assert all(r.get("source") for r in rows)


def test_injection_counts_and_fields():
    rows = _rows("heldout_injection.jsonl")
    attacks = [r for r in rows if r["label"] != "benign"]
    benign = [r for r in rows if r["label"] == "benign"]
    assert len(attacks) >= MIN_PER_SIDE and len(benign) >= MIN_PER_SIDE, (len(attacks), len(benign))
    assert {r["label"] for r in attacks} <= INJECTION_LABELS
    assert {r["role"] for r in rows} <= {"user", "tool", "system"}
    assert all(r["text"].strip() and r.get("source") for r in rows)


def test_poisoning_counts_and_structure():
    rows = _rows("heldout_poisoning.jsonl")
    planted = [r for r in rows if r["label"] == "poisoned"]
    lookalike = [r for r in rows if r["label"] == "benign" and r["lookalike_id"]]
    assert len(planted) >= MIN_PER_SIDE and len(lookalike) >= MIN_PER_SIDE, (len(planted), len(lookalike))
    assert all(r["plant_id"] and not r["lookalike_id"] for r in planted)
    assert {r["label"] for r in rows} == {"poisoned", "benign"}
    # every corpus has exactly the number of sessions it declares; session ids are unique
    per_corpus = collections.Counter(r["corpus"] for r in rows)
    for r in rows:
        assert per_corpus[r["corpus"]] == r["corpus_sessions"], r["corpus"]
    assert len({r["session_id"] for r in rows}) == len(rows)
    # each plant: one corpus, >= 10 sessions, one reply word for word
    plants = collections.defaultdict(list)
    for r in planted:
        plants[r["plant_id"]].append(r)
    assert len(plants) >= 5
    for pid, rs in plants.items():
        assert len({r["corpus"] for r in rs}) == 1, pid
        assert len({r["session_id"] for r in rs}) >= 10, pid
        assert len({r["assistant"] for r in rs}) == 1, pid
