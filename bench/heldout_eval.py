"""Today's redaction and guard on the frozen held-out sets of issue 14 (tests/data/HELDOUT.md).

    .venv/bin/python bench/heldout_eval.py            # tables on stdout
    .venv/bin/python bench/heldout_eval.py --json out.json

Public API only:
- secrets/PII: `redact_text(text).text`; recall = share of positive `values` absent from the redacted text
  (a record is caught when all its values are gone); negatives untouched = `redacted == text`;
  precision = caught positive records / (caught positive records + touched negatives).
- injection: `check_interaction(messages)` on a conversation carrying the text in a message of its `role`
  (user: [user]; tool: user question, assistant tool call, tool result; system: [system, user "hi"]);
  an attack is caught when any hit fires; a benign text is a false positive when any hit fires. Figures
  are given for any hit and for hits whose action is "quarantine".
- poisoning: `find_poisoning([(id, session_id, messages), ...])` once per corpus with the default
  GuardConfig; recall over planted interactions (per plant), false positives over look-alike and
  background interactions.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.guard import GuardConfig, check_interaction, find_poisoning  # noqa: E402
from features.redact import redact_text  # noqa: E402

DATA = ROOT / "tests" / "data"


def rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def eval_secrets() -> dict:
    data = rows("heldout_secrets_pii.jsonl")
    per_kind = collections.defaultdict(lambda: {"records": 0, "caught": 0, "values": 0, "values_gone": 0})
    per_look = collections.defaultdict(lambda: {"records": 0, "touched": 0})
    missed, touched = [], []
    t0 = time.perf_counter()
    for r in data:
        out = redact_text(r["text"]).text
        if r["kind"] == "none":
            k = per_look[r["lookalike_of"]]
            k["records"] += 1
            if out != r["text"]:
                k["touched"] += 1
                touched.append(r["id"])
            continue
        k = per_kind[r["kind"]]
        k["records"] += 1
        gone = [v not in out for v in r["values"]]
        k["values"] += len(gone)
        k["values_gone"] += sum(gone)
        if all(gone):
            k["caught"] += 1
        else:
            missed.append(r["id"])
    secs = time.perf_counter() - t0
    pos_records = sum(k["records"] for k in per_kind.values())
    caught = sum(k["caught"] for k in per_kind.values())
    values = sum(k["values"] for k in per_kind.values())
    gone = sum(k["values_gone"] for k in per_kind.values())
    neg = sum(k["records"] for k in per_look.values())
    n_touched = sum(k["touched"] for k in per_look.values())
    return {
        "positives": pos_records,
        "negatives": neg,
        "value_recall": ratio(gone, values),
        "record_recall": ratio(caught, pos_records),
        "negatives_untouched": ratio(neg - n_touched, neg),
        "precision": ratio(caught, caught + n_touched),
        "per_kind": {
            k: {**v, "value_recall": ratio(v["values_gone"], v["values"])}
            for k, v in sorted(per_kind.items())
        },
        "per_lookalike": {
            k: {**v, "untouched": ratio(v["records"] - v["touched"], v["records"])}
            for k, v in sorted(per_look.items())
        },
        "missed_ids": missed,
        "touched_ids": touched,
        "us_per_record": round(secs / len(data) * 1e6, 1),
    }


def conversation(role: str, text: str) -> list[dict]:
    if role == "user":
        return [{"role": "user", "content": text}]
    if role == "system":
        return [{"role": "system", "content": text}, {"role": "user", "content": "hi"}]
    call = {"id": "call_1", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}
    return [
        {"role": "user", "content": "Can you look this up for me?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": text},
    ]


def eval_injection() -> dict:
    data = rows("heldout_injection.jsonl")
    per = collections.defaultdict(lambda: {"records": 0, "any_hit": 0, "quarantine_hit": 0})
    rules_fired = collections.Counter()
    missed, false_pos = [], []
    t0 = time.perf_counter()
    for r in data:
        hits = check_interaction(conversation(r["role"], r["text"]))
        key = (r["label"], r["role"])
        p = per[key]
        p["records"] += 1
        if hits:
            p["any_hit"] += 1
            rules_fired.update(h.rule for h in hits)
            if r["label"] == "benign":
                false_pos.append(r["id"])
        elif r["label"] != "benign":
            missed.append(r["id"])
        if any(h.action == "quarantine" for h in hits):
            p["quarantine_hit"] += 1
    secs = time.perf_counter() - t0

    def side(benign: bool, field: str) -> tuple[int, int]:
        sel = [v for (label, _), v in per.items() if (label == "benign") == benign]
        return sum(v[field] for v in sel), sum(v["records"] for v in sel)

    out = {"per_label_role": {f"{label}/{role}": v for (label, role), v in sorted(per.items())}}
    for field in ("any_hit", "quarantine_hit"):
        tp, n_att = side(False, field)
        fp, n_ben = side(True, field)
        out[field] = {
            "attacks": n_att,
            "benign": n_ben,
            "recall": ratio(tp, n_att),
            "precision": ratio(tp, tp + fp),
            "benign_flagged": fp,
        }
    per_label = collections.defaultdict(lambda: {"records": 0, "any_hit": 0})
    for (label, _), v in per.items():
        per_label[label]["records"] += v["records"]
        per_label[label]["any_hit"] += v["any_hit"]
    out["per_label"] = {
        k: {**v, "rate": ratio(v["any_hit"], v["records"])} for k, v in sorted(per_label.items())
    }
    out["rules_fired"] = dict(rules_fired.most_common())
    out["missed_ids"] = missed
    out["false_positive_ids"] = false_pos
    out["us_per_record"] = round(secs / len(data) * 1e6, 1)
    return out


def eval_poisoning() -> dict:
    data = rows("heldout_poisoning.jsonl")
    corpora = collections.defaultdict(list)
    for r in data:
        corpora[r["corpus"]].append(r)
    flagged: set[str] = set()
    triggers = {}
    t0 = time.perf_counter()
    for name, rs in sorted(corpora.items()):
        batch = [
            (
                r["id"],
                r["session_id"],
                [{"role": "user", "content": r["user"]}, {"role": "assistant", "content": r["assistant"]}],
            )
            for r in rs
        ]
        report = find_poisoning(batch, GuardConfig())
        flagged |= set(report.flagged_ids)
        triggers[name] = [
            f"{getattr(t, 'text', t)!r} ({getattr(t, 'kind', '?')}, {getattr(t, 'sessions', '?')} sessions)"
            for t in report.triggers
        ]
    secs = time.perf_counter() - t0
    per_plant = collections.defaultdict(lambda: {"planted": 0, "flagged": 0})
    per_look = collections.defaultdict(lambda: {"records": 0, "flagged": 0})
    background = {"records": 0, "flagged": 0}
    for r in data:
        hit = r["id"] in flagged
        if r["plant_id"]:
            p = per_plant[f"{r['plant_id']} ({r['corpus']})"]
            p["planted"] += 1
            p["flagged"] += hit
        elif r["lookalike_id"]:
            p = per_look[f"{r['lookalike_id']} ({r['corpus']})"]
            p["records"] += 1
            p["flagged"] += hit
        else:
            background["records"] += 1
            background["flagged"] += hit
    tp = sum(v["flagged"] for v in per_plant.values())
    planted = sum(v["planted"] for v in per_plant.values())
    fp_look = sum(v["flagged"] for v in per_look.values())
    fp = fp_look + background["flagged"]
    return {
        "planted": planted,
        "recall": ratio(tp, planted),
        "precision": ratio(tp, tp + fp),
        "precision_without_background": ratio(tp, tp + fp_look),
        "lookalike_flagged": fp_look,
        "lookalikes": sum(v["records"] for v in per_look.values()),
        "background_flagged": background["flagged"],
        "background": background["records"],
        "plants_caught_fully": sum(v["flagged"] == v["planted"] for v in per_plant.values()),
        "plants": len(per_plant),
        "per_plant": dict(sorted(per_plant.items())),
        "per_lookalike": dict(sorted(per_look.items())),
        "triggers": triggers,
        "us_per_interaction": round(secs / len(data) * 1e6, 1),
    }


def eval_replies(dirs: list[Path]) -> dict:
    """destructive_reply warnings on real traffic (JSONL logs, e.g. `python -m features.bfcl --out DIR`):
    every assistant message counted, no labels; each hit is a false positive unless a person says
    otherwise (the hits' evidence is printed for that)."""
    import gzip

    from features.raw_format import unwrap

    out = {}
    for d in dirs:
        records = messages = hits = 0
        evidence = []
        for path in sorted(d.rglob("*.jsonl*")):
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    record = unwrap(json.loads(line))
                    msgs = record.get("messages") or []
                    records += 1
                    messages += sum(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs)
                    found = [h for h in check_interaction(msgs) if h.rule == "destructive_reply"]
                    hits += len(found)
                    evidence += [h.evidence for h in found][:3]
        out[str(d)] = {
            "records": records,
            "assistant_messages": messages,
            "destructive_reply_hits": hits,
            "rate": ratio(hits, messages),
            "evidence": evidence[:20],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write all figures (with missed ids) to this file")
    ap.add_argument(
        "--replies",
        type=Path,
        nargs="*",
        default=[],
        help="only measure destructive_reply warnings on the JSONL logs under these folders (unlabeled traffic)",
    )
    args = ap.parse_args()
    if args.replies:
        for d, v in eval_replies(args.replies).items():
            print(
                f"destructive_reply on {d}: {v['destructive_reply_hits']} hits over {v['assistant_messages']} "
                f"assistant messages ({v['records']} records), rate {v['rate']}"
            )
            for e in v["evidence"]:
                print(f"    {e!r}")
        return
    res = {"secrets_pii": eval_secrets(), "injection": eval_injection(), "poisoning": eval_poisoning()}
    s = res["secrets_pii"]
    print(f"secrets/PII: {s['positives']} positives, {s['negatives']} look-alike negatives")
    print(
        f"  value recall {s['value_recall']}  record recall {s['record_recall']}  "
        f"negatives untouched {s['negatives_untouched']}  precision {s['precision']}  ({s['us_per_record']} us/record)"
    )
    print("  per kind (records caught / records, value recall):")
    for k, v in s["per_kind"].items():
        print(f"    {k:20s} {v['caught']:3d}/{v['records']:<3d} {v['value_recall']}")
    print("  negatives touched per look-alike kind:")
    for k, v in s["per_lookalike"].items():
        print(f"    {k:20s} {v['touched']:3d}/{v['records']:<3d} untouched {v['untouched']}")
    i = res["injection"]
    for field in ("any_hit", "quarantine_hit"):
        f = i[field]
        print(
            f"injection ({field}): recall {f['recall']} precision {f['precision']} "
            f"benign flagged {f['benign_flagged']}/{f['benign']}"
        )
    print(f"  ({i['us_per_record']} us/record)  per label (any hit):")
    for k, v in i["per_label"].items():
        print(f"    {k:26s} {v['any_hit']:3d}/{v['records']:<3d} {v['rate']}")
    p = res["poisoning"]
    print(
        f"poisoning: recall {p['recall']} over {p['planted']} planted, precision {p['precision']} "
        f"({p['precision_without_background']} counting look-alikes only); "
        f"plants fully caught {p['plants_caught_fully']}/{p['plants']}; look-alikes flagged "
        f"{p['lookalike_flagged']}/{p['lookalikes']}, background flagged {p['background_flagged']}/{p['background']}"
    )
    for k, v in p["per_plant"].items():
        print(f"    plant {k:14s} {v['flagged']:3d}/{v['planted']}")
    for k, v in p["per_lookalike"].items():
        print(f"    look-alike {k:14s} flagged {v['flagged']:3d}/{v['records']}")
    for corpus, ts in p["triggers"].items():
        print(f"    triggers in {corpus}: {len(ts)}" + "".join(f"\n      {t}" for t in ts[:12]))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
