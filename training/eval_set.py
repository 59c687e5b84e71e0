"""The frozen evaluation set of a model version: loss rows, held-out prompts and planted canaries.

    eval_set = build_eval_set(snapshot, frame, canaries=["sk-live-..."])   # from a dataset snapshot
    eval_set.save("eval_set/"); EvalSet.load("eval_set/")                  # eval_set.json + its sha256

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

EVAL_SET_FORMAT = 1
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

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self._payload(), sort_keys=True).encode())
        return h.hexdigest()

    def _payload(self) -> dict:
        return {
            "format": EVAL_SET_FORMAT,
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
        if d.get("format") != EVAL_SET_FORMAT:
            raise ValueError(f"{path}: eval set format {d.get('format')}, this code reads {EVAL_SET_FORMAT}")
        es = cls(
            [PackedRow(**r) for r in d["rows"]],
            [HeldOutPrompt(**p) for p in d["prompts"]],
            d.get("canaries", []),
            d.get("tokenizer_sha256", ""),
            d.get("source", {}),
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
) -> EvalSet:
    """The evaluation set of a dataset snapshot: its `split` rows (validation when empty) and prompts.

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
    )
