"""The guard's rules, actions and thresholds (GuardConfig), and what one hit records (GuardHit)."""

from __future__ import annotations

from dataclasses import dataclass, field

RULES = (
    "prompt_injection",
    "system_prompt_extraction",
    "role_play_jailbreak",
    "system_prompt_tampering",
    "late_system_message",
    "poisoning",
    "destructive_reply",
)
ACTIONS = ("quarantine", "warn")
DEFAULT_ACTIONS = {rule: "quarantine" for rule in RULES} | {
    "late_system_message": "warn",
    "destructive_reply": "warn",
}
STATE_VERSION = 1


@dataclass
class GuardConfig:
    """Which guard rules run and what a hit does; thresholds of the poisoning detector.

    Plain field types so a Flyte task can take it as an input.
    """

    rules: list[str] = field(default_factory=lambda: list(RULES))  # enabled rules
    actions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))  # rule -> quarantine|warn
    roles: list[str] = field(default_factory=lambda: ["user", "tool"])  # scanned for injection/jailbreak
    allow_phrases: list[str] = field(default_factory=list)  # text matching inside one of these is no hit
    known_system_prompts: list[str] = field(default_factory=list)  # empty: any system prompt is accepted
    max_scan_chars: int = 200_000  # per message; longer content is scanned at its head and tail

    # Poisoning (see find_poisoning for the rule).
    min_sessions: int = 10  # a trigger must appear in at least this many distinct sessions...
    max_share: float = 0.05  # ...and in at most this share of all sessions seen (else it is ordinary)
    min_contexts: int = 5  # ...in at least this many distinct user turns (copies of one conversation are one)
    min_trigger_chars: int = 4  # shorter triggers are ignored
    ngram_size: int = 4  # longest n-gram (in tokens) tracked as a trigger
    min_edge_tokens: int = 3  # shortest appended/prepended text (in tokens) tracked as a trigger
    edge_min_concentration: float = 0.5  # a rare token occurs inside the trigger in >= this share of its uses
    edge_min_rare_tokens: int = 2  # appended/prepended text needs this many rare tokens...
    edge_reply_consistency: float = 0.8  # ...or replies this uniform (share of sessions with the same reply)
    min_reply_consistency: float = 0.0  # > 0: every trigger must also have replies this uniform
    max_candidates: int = 300_000  # n-grams tracked in one batch before single-session ones are dropped
    max_ids_per_trigger: int = 100_000
    state_max_candidates: int = 20_000  # bounds of PoisonState (kept between batches)
    state_max_tokens: int = 50_000
    state_max_ids: int = 64
    state_max_triggers: int = 1_000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(RULES))
        if unknown:
            raise ValueError(f"GuardConfig.rules: unknown rule(s) {unknown}; known: {list(RULES)}")
        actions = dict(DEFAULT_ACTIONS)
        actions.update(self.actions or {})
        for rule, action in actions.items():
            if rule not in RULES or action not in ACTIONS:
                raise ValueError(
                    f"GuardConfig.actions[{rule!r}] = {action!r}: rules are {list(RULES)}, actions {list(ACTIONS)}"
                )
        self.actions = actions
        if self.min_sessions < 2:
            raise ValueError(f"GuardConfig.min_sessions must be >= 2, got {self.min_sessions}")
        if not 0.0 < self.max_share <= 1.0:
            raise ValueError(f"GuardConfig.max_share must be in (0, 1], got {self.max_share}")
        if not 1 <= self.ngram_size <= 8:
            raise ValueError(f"GuardConfig.ngram_size must be 1..8, got {self.ngram_size}")


@dataclass(frozen=True)
class GuardHit:
    """One rule that fired on one message. `evidence_span` is [start, end) in that message's content."""

    rule: str
    action: str
    evidence_span: tuple[int, int]
    message_index: int = -1
    evidence: str = ""  # the matched original text, at most 200 characters

    @property
    def reason(self) -> str:
        return f"guard:{self.rule}"
