"""The frozen evaluation set of a model version: loss rows, held-out prompts, held-out tool calls, canaries.

    eval_set = build_eval_set(snapshot, frame, canaries=["sk-live-..."],   # from a dataset snapshot
                              tool_examples=select_tool_examples(read_heldout(path), 64))
    eval_set.save("eval_set/"); EvalSet.load("eval_set/")                  # eval_set.json + its sha256

Tool examples are features.bfcl's held-out examples (prompt, tools, BFCL's possible answers), split by
question id before ingest, so they never reached any training set. A set saved before tool calls
(format 1) loads with no tool examples and keeps its sha256.

Built once from a snapshot's test split (training/dataset.py) when a version is registered, it
travels with the version as an artifact; the gate (serving/gate.py) scores every side on it and
promotion's smoke test (serving/promote.py) asks its prompts. It lives in training/ because it is
made of training's own types: serving/ imports it, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from training.dataset import PackedRow
from training.evaluate import HeldOutPrompt, held_out_prompts

EVAL_SET_FORMAT = 2  # 2: tool_examples
READABLE_FORMATS = (1, 2)
# A few fake secrets in the formats the redactor knows; plant them in the raw logs (features/) to check that
# redaction held end to end. The gate looks for whichever canaries the eval set lists.
DEFAULT_CANARIES = (
    "sk-agentloopCANARY0000000000000000000000000000000",
    "ghp_AgentloopCanary0000000000000000000000",
)


@dataclass
class EvalSet:
    """Loss rows + held-out prompts + planted canaries, and the tokenizer the rows were made with."""

    rows: list[PackedRow]
    prompts: list[HeldOutPrompt]
    canaries: list[str] = field(default_factory=list)
    tokenizer_sha256: str = ""
    source: dict = field(default_factory=dict)  # snapshot hash, split, built from
    tool_examples: list[dict] = field(default_factory=list)  # held-out tool calls (features.bfcl's shape)
    format: int = EVAL_SET_FORMAT

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self._payload(), sort_keys=True).encode())
        return h.hexdigest()

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_examples)

    def _payload(self) -> dict:
        payload = {
            "format": self.format,
            "tokenizer_sha256": self.tokenizer_sha256,
            "canaries": list(self.canaries),
            "rows": [
                {
                    "input_ids": list(r.input_ids),
                    "labels": list(r.labels),
                    "position_ids": list(r.position_ids),
                    "example_ids": list(r.example_ids),
                    "lengths": list(r.lengths),
                }
                for r in self.rows
            ],
            "prompts": [asdict(p) for p in self.prompts],
        }
        if self.format >= 2:
            payload["tool_examples"] = list(self.tool_examples)
        return payload

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "eval_set.json").write_text(
            json.dumps({**self._payload(), "source": self.source, "sha256": self.sha256()})
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> EvalSet:
        path = Path(directory) / "eval_set.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no evaluation set at {directory} (eval_set.json missing): build one with "
                "training.eval_set.build_eval_set and save it"
            )
        d = json.loads(path.read_text())
        if d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{path}: eval set format {d.get('format')}, this code reads {READABLE_FORMATS}")
        es = cls(
            [PackedRow(**r) for r in d["rows"]],
            [HeldOutPrompt(**p) for p in d["prompts"]],
            d.get("canaries", []),
            d.get("tokenizer_sha256", ""),
            d.get("source", {}),
            d.get("tool_examples", []),
            d["format"],
        )
        if d.get("sha256") and es.sha256() != d["sha256"]:
            raise ValueError(f"{path} is corrupt: content does not match its sha256 {d['sha256'][:12]}")
        return es


def build_eval_set(
    snapshot,
    frame,
    n_prompts: int = 16,
    max_rows: int = 64,
    split: str = "test",
    canaries: Sequence[str] = DEFAULT_CANARIES,
    seed: int = 0,
    tool_examples: Sequence[dict] = (),
) -> EvalSet:
    """The evaluation set of a dataset snapshot: its `split` rows (validation when empty) and prompts, and
    the held-out tool-call examples given (training.evaluate.select_tool_examples chooses them).

    `frame` is the training frame the snapshot was built from (the prompts need the messages)."""
    if not snapshot.splits.get(split):
        split = "validation"
    rows = list(snapshot.splits[split])[:max_rows]
    if not rows:
        raise ValueError(
            f"dataset snapshot {snapshot.snapshot_hash[:12]} has no test or validation rows; "
            "widen the window or raise test_fraction"
        )
    prompts = held_out_prompts(
        frame, snapshot.interaction_ids(split), n=n_prompts, seed=seed, dataset_config=snapshot.config
    )
    return EvalSet(
        rows,
        prompts,
        list(canaries),
        snapshot.tokenizer["sha256"],
        {"snapshot_hash": snapshot.snapshot_hash, "split": split},
        list(tool_examples),
    )
