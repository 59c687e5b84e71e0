"""What every reader shares on its way to the canonical record: ids, agent names, users, feedback.

A reader (JSONL, OTLP, OpenInference, MLflow, OpenAI pairs) builds a record in the documented
format (features/raw_format.py, docs/interaction-format.md) and hands it to ingest, which
validates, redacts, dedups and guards it like any line. Keys starting with `_` are ingest's
lineage (`_lineage`: format, trace and span ids), never part of the format.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from typing import Any

import orjson

from features.raw_format import AGENT_NAME, THUMBS

_NOT_SLUG = re.compile(r"[^a-z0-9._-]+")
LINEAGE = "_lineage"
DERIVED = "_derived"  # feedback columns filled from a named score (features.canonical.feedback_from_scores)
RATING_NAMES = ("rating", "user_rating", "stars")
THUMBS_NAMES = ("thumbs", "user_feedback", "thumbs_up", "helpful")


def agent_slug(name: str) -> str:
    """An agent name as the format wants it: "Support Agent" -> "support-agent" (ASCII, lower case)."""
    if AGENT_NAME.match(name):
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_name.lower()).strip("-._")
    if not slug:  # nothing ASCII in it: a stable name from its bytes
        slug = "agent-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return slug


def derived_id(*parts: str) -> str:
    """A deterministic interaction id from a source's own ids (trace id, span id): the same span, the same id."""
    return "-".join(p.lower() for p in parts)


def content_id(prefix: str, raw: bytes) -> str:
    """An id for a record whose source has none: the sha256 of its bytes."""
    return f"{prefix}-{hashlib.sha256(raw).hexdigest()[:32]}"


def hash_user_id(user_id: str, salt: bytes) -> str:
    """HMAC-SHA256 of a user id with the store's salt: joinable within a store, not reversible, not the id."""
    return hmac.new(salt, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def with_agent(record: dict, name: str | None, fallback: str) -> dict:
    """Set `agent` (a slug) and `agent_name` (the original) from a source's agent name or a fallback."""
    original = name if isinstance(name, str) and name.strip() else fallback
    record["agent"] = agent_slug(original)
    if record["agent"] != original:
        record["agent_name"] = original
    return record


def score(name: str, value: Any, source: str, **extra: Any) -> dict:
    """One feedback item of the unified shape: {"name", "value", "source": human|llm_judge|code, ...}."""
    item = {"name": name, "value": value, "source": source}
    item.update({k: v for k, v in extra.items() if v is not None})
    return item


def feedback_items(feedback: dict | None) -> list[dict]:
    """Every feedback item of a validated record in the unified shape (rating and thumbs included once)."""
    if not feedback:
        return []
    derived = feedback.get(DERIVED) or ()
    items = []
    if feedback.get("rating") is not None and "rating" not in derived:
        items.append(score("rating", feedback["rating"], "human"))
    if feedback.get("thumbs") is not None and "thumbs" not in derived:
        items.append(score("thumbs", feedback["thumbs"], "human"))
    items += list(feedback.get("scores") or [])
    return items


def feedback_from_scores(scores: list[dict]) -> dict | None:
    """A record's `feedback` from unified items, all kept in `scores`; a 1-5 integral rating and an
    up/down judgement also fill the `rating` / `thumbs` columns (marked derived, so never listed twice)."""
    if not scores:
        return None
    feedback: dict[str, Any] = {"scores": list(scores), DERIVED: []}
    for item in scores:
        name, value = str(item.get("name", "")).lower(), item.get("value")
        integral = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
        )
        if name in RATING_NAMES and integral and 1 <= value <= 5 and "rating" not in feedback:
            feedback["rating"] = int(value)
            feedback[DERIVED].append("rating")
        elif name in THUMBS_NAMES and _thumbs(value) is not None and "thumbs" not in feedback:
            feedback["thumbs"] = _thumbs(value)
            feedback[DERIVED].append("thumbs")
    return feedback


def _thumbs(value: Any) -> str | None:
    if isinstance(value, bool):
        return "up" if value else "down"
    if isinstance(value, str) and value.lower() in THUMBS:
        return value.lower()
    if isinstance(value, str) and value.lower() in ("yes", "true", "positive", "good"):
        return "up"
    if isinstance(value, str) and value.lower() in ("no", "false", "negative", "bad"):
        return "down"
    return None


# ------------------------------------------------------------------------------------------ dedup key


def _normalise_text(text: str) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def _normalise(value: Any) -> Any:
    if isinstance(value, str):
        return _normalise_text(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _normalise_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return _normalise(message)
    out = []
    for key in sorted(message):
        value = message[key]
        if isinstance(value, str):
            value = value if key == "role" else _normalise_text(value)
        elif value is not None:
            value = _normalise(value)
        out.append((key, value))
    return out


def content_hash(agent: str, session_id: str, messages: Any) -> str:
    """sha256 hex of the normalised content: agent, session and messages (NFC, whitespace collapsed, keys sorted).

    The hashed document is the JSON array [agent, session_id, [[[key, value], ...] per message]],
    keys sorted, nested values normalised the same way (their keys sorted too).
    """
    doc = (agent, session_id, [_normalise_message(m) for m in messages])
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


# ------------------------------------------------------------------------------------------ user ids

USER_ID_KEYS = ("user_id", "user", "mlflow.trace.user", "user.id", "enduser.id", "gen_ai.user.id")


def mask_user_ids(value: Any, hasher) -> tuple[Any, int]:
    """A JSON value with every user id (the keys of USER_ID_KEYS, and OTLP attributes of those names)
    replaced by `<USER:` + its salted hash + `>`; and how many were replaced. For quarantine copies."""
    count = 0

    def walk(v: Any) -> Any:
        nonlocal count
        if isinstance(v, dict):
            if v.get("key") in USER_ID_KEYS and isinstance(v.get("value"), dict):  # an OTLP attribute
                inner = v["value"]
                if isinstance(inner.get("stringValue"), str):
                    count += 1
                    return {**v, "value": {"stringValue": f"<USER:{hasher(inner['stringValue'])}>"}}
            out = {}
            for k, x in v.items():
                if k in USER_ID_KEYS and isinstance(x, str) and x:
                    count += 1
                    out[k] = f"<USER:{hasher(x)}>"
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value), count
