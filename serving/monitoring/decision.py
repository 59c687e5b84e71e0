"""Whether a drift check should start retraining: signals, thresholds, and a cooldown that survives restarts.

    decision = decide(report, DecisionConfig(cooldown_hours=24))
    decision.retrain, decision.reasons        # True, ["overall: 41% of columns drifted (>= 30%)", ...]

Signals (each one a reason): dataset drift overall or for an agent (the report's share of drifted
columns passed MonitorConfig.drift_share), topic drift (the embeddings of a text column drifted),
and a fall in mean rating by at least `rating_drop_margin` (with at least `min_rated` ratings on
each side). When a signal fires within `cooldown_hours` of the last retraining this decision
started, retraining is held back and the reasons say until when: one bad hour does not retrain
all day. The last trigger is kept in a small JSON state file (local path or any fsspec URL such as
s3://), so the cooldown holds across processes, pods and scheduled runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from features.fsutil import atomic_write_text
from features.home import agentloop_home
from serving.monitoring.config import DriftReport, ScopeDrift


@dataclass
class DecisionConfig:
    """Which signals may start retraining, and how often."""

    on_dataset_drift: bool = True  # the share of drifted columns passed MonitorConfig.drift_share ...
    per_agent: bool = True  # ... overall, or (True) for any one agent
    on_topic_drift: bool = True  # the embeddings of a text column drifted
    rating_drop_margin: float = 0.3  # mean rating fell by at least this much (1-5 scale); <= 0 disables ...
    rating_alpha: float = 0.01  # ... and the fall is significant (one-sided Welch z-test)
    min_rated: int = 20  # ratings needed on each side before the rating signal counts
    cooldown_hours: float = 24.0
    state_path: str = ""  # default $AGENTLOOP_HOME/monitor/decision_state.json; s3://... on the cluster


@dataclass
class RetrainDecision:
    """The decision and why: what fired, and whether the cooldown held it back."""

    retrain: bool
    reasons: list[str] = field(default_factory=list)  # one line per fired signal, or why nothing fired
    signals: list[str] = field(
        default_factory=list
    )  # ids: dataset_drift:all, topic_drift:all:agent_reply, ...
    held_by_cooldown: bool = False
    cooldown_until: str = ""  # ISO 8601 UTC, when held back
    last_triggered_at: str = ""  # the previous trigger, from the state file
    decided_at: str = ""
    champion_version: str = ""


def default_state_path() -> str:
    return str(agentloop_home() / "monitor" / "decision_state.json")


def _signals_of(scope: ScopeDrift, config: DecisionConfig) -> list[tuple[str, str]]:
    fired: list[tuple[str, str]] = []
    if scope.status != "ok":
        return fired
    if config.on_dataset_drift and scope.dataset_drift:
        fired.append(
            (
                f"dataset_drift:{scope.scope}",
                f"{scope.scope}: {scope.drift_share:.0%} of columns drifted "
                f"({', '.join(scope.drifted_columns)})",
            )
        )
    if config.on_topic_drift:
        for e in scope.embeddings:
            if e.drifted:
                fired.append(
                    (
                        f"topic_drift:{scope.scope}:{e.column}",
                        f"{scope.scope}: topic drift in {e.column} (embedding classifier AUC {e.score:.3f})",
                    )
                )
    p = rating_drop_p_value(scope)
    ref, cur = scope.mean_rating_reference, scope.mean_rating_current
    if (
        config.rating_drop_margin > 0
        and p is not None
        and ref - cur >= config.rating_drop_margin
        and min(scope.rated_reference, scope.rated_current) >= config.min_rated
        and p < config.rating_alpha
    ):
        fired.append(
            (
                f"rating_drop:{scope.scope}",
                f"{scope.scope}: mean rating fell from {ref:.2f} to {cur:.2f} "
                f"(margin {config.rating_drop_margin:g}, p={p:.2g})",
            )
        )
    return fired


def rating_drop_p_value(scope: ScopeDrift) -> float | None:
    """One-sided p-value that the current mean rating is no lower than the reference's (Welch z), or None."""
    from scipy.stats import norm

    ref, cur = scope.mean_rating_reference, scope.mean_rating_current
    s1, s2 = scope.rating_std_reference, scope.rating_std_current
    if None in (ref, cur, s1, s2) or min(scope.rated_reference, scope.rated_current) < 2:
        return None
    se = math.sqrt(s1**2 / scope.rated_reference + s2**2 / scope.rated_current)
    if se == 0:
        return 0.0 if ref > cur else 1.0
    return float(norm.sf((ref - cur) / se))


def retrain_signals(report: DriftReport, config: DecisionConfig) -> list[tuple[str, str]]:
    """(signal id, reason) for every signal that fired, before any cooldown."""
    fired = _signals_of(report.overall, config)
    if config.per_agent:
        for scope in report.agents.values():
            fired += _signals_of(scope, config)
    return fired


def read_state(path: str) -> dict:
    """The decision state ({} when there is none yet)."""
    import fsspec

    try:
        with fsspec.open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"decision state {path} is not JSON ({exc}): delete it to reset the cooldown"
        ) from exc


def write_state(path: str, state: dict) -> None:
    """Write the state (atomically for local files: a half-written file would reset the cooldown)."""
    import fsspec

    text = json.dumps(state, indent=1, sort_keys=True)
    if "://" not in path:
        atomic_write_text(path, text)
        return
    with fsspec.open(path, "w") as f:
        f.write(text)


def decide(
    report: DriftReport, config: DecisionConfig | None = None, now: datetime | None = None
) -> RetrainDecision:
    """Retrain or not, with reasons; records the trigger in the state file when it says retrain."""
    config = config or DecisionConfig()
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    path = config.state_path or default_state_path()
    state = read_state(path)
    last = state.get("last_triggered_at", "")
    decision = RetrainDecision(
        retrain=False,
        decided_at=now.isoformat(),
        last_triggered_at=last,
        champion_version=report.reference.champion_version,
    )
    fired = retrain_signals(report, config)
    decision.signals = [s for s, _ in fired]
    decision.reasons = [r for _, r in fired]
    if report.overall.status != "ok":
        decision.reasons.append(f"no verdict: {report.overall.note}")
        return decision
    if not fired:
        decision.reasons.append(
            f"no signal: {report.overall.drift_share:.0%} of columns drifted, no topic drift, no rating drop"
        )
        return decision
    if last:
        until = datetime.fromisoformat(last) + timedelta(hours=config.cooldown_hours)
        if now < until:
            decision.held_by_cooldown = True
            decision.cooldown_until = until.isoformat()
            decision.reasons.append(
                f"held back: retraining was started at {last}; cooldown of "
                f"{config.cooldown_hours:g} h lasts until {until.isoformat()}"
            )
            return decision
    decision.retrain = True
    write_state(
        path,
        {
            "last_triggered_at": now.isoformat(),
            "signals": decision.signals,
            "champion_version": decision.champion_version,
        },
    )
    return decision
