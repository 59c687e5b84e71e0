"""Reply-side rule `destructive_reply`: an assistant reply that instructs a destructive or exfiltrating
operation, the payload a backdoor is planted to produce (OWASP LLM Top 10: LLM04 data and model
poisoning, LLM06 excessive agency; MITRE ATLAS "exfiltration", "impact").

Three families, each an imperative or a command, never a mention ("backups are deleted after 30
days" is not an instruction; "do not delete the backups" is refused by the negation check):
  - destroy recovery or data: delete/drop/wipe/purge/destroy all/the backups, snapshots, volumes,
    namespaces, databases, buckets, replicas; `rm -rf /`, `kubectl delete ns|namespace --all`,
    `docker volume prune|rm`, `DROP DATABASE`, `aws s3 rb --force`, `terraform destroy -auto-approve`,
    `velero backup delete --all`;
  - blind the defenders: disable/turn off/silence/mute alerts, alerting, auditing, audit logs,
    monitoring, logging, CloudTrail, GuardDuty, the SIEM, auditd; `auditctl -e 0`,
    `aws cloudtrail stop-logging`, `systemctl stop|disable auditd|falco|wazuh`;
  - send secrets away: send/post/upload/email/forward/paste/exfiltrate the secrets, credentials,
    passwords, API keys, tokens, private/SSH keys, .env, kubeconfig to somewhere; piping a
    credential file or `env` into curl/nc/wget.

Default action "warn" (an operations assistant legitimately answers "how do I delete namespace
test?"); find_poisoning escalates: a trigger whose replies are uniform and destructive is never
ordinary language, whatever its share, and the interactions that carry it are flagged as poisoning
(quarantined by default). False positives are measured on operations and tool-calling traffic
(bench/heldout_eval.py --replies; bench/RESULTS.md, "Guard").
"""

from __future__ import annotations

import re

_NEG = re.compile(
    r"(?i)\b(?:do not|don't|never|avoid|not|no need to|shouldn't|should not|without)\W+(?:\w+\W+){0,3}$"
)

_DATA = (
    r"(?:back[- ]?ups?|snapshots?|volumes?|persistent volumes?|pvcs?|namespaces?|databases?|dbs?|buckets?"
    r"|replicas?|restore points?|recovery points?|audit (?:logs?|trails?))"
)
_DESTROY = re.compile(
    r"(?i)\b(?:delete|drop|wipe|purge|destroy|erase|remove|nuke|shred|truncate)\s+"
    r"(?:(?:all|every|each|the|your|any|existing|old|remaining|of|other|production|prod|offsite|off-site)\s+){0,4}"
    + _DATA
    + r"\b"
)
_DESTROY_CMD = re.compile(  # gated by _GATE_DESTROY: each command below names one of its words
    r"(?i)(?:\brm\s+-(?:rf|fr|r\s+-f)\s+/(?:\s|$|\*)|\bkubectl\s+delete\s+(?:ns|namespaces?)\b"
    r"|\bkubectl\s+delete\s+(?:pv|pvc|persistentvolumes?|persistentvolumeclaims?)\s+--all\b"
    r"|\bdocker\s+(?:volume\s+(?:prune|rm)|system\s+prune\s+(?:-a\s+)?--volumes)\b|\bdrop\s+(?:database|schema)\b"
    r"|\baws\s+s3\s+rb\s+\S+\s+--force\b|\baws\s+s3\s+rm\s+\S+\s+--recursive\b|\bterraform\s+destroy\s+-auto-approve\b"
    r"|\bvelero\s+backup\s+delete\s+--all\b|\baws\s+rds\s+delete-db-(?:instance|cluster|snapshot)\b)"
)
_BLIND = re.compile(
    r"(?i)\b(?:disable|turn\s+off|switch\s+off|silence|mute|suppress|stop|shut\s+(?:off|down)|kill)\s+"
    r"(?:(?:all|every|the|your|any|existing|of|security|production|prod)\s+){0,3}"
    r"(?:alerts?|alerting|alarms?|auditing|audit(?:\s+logs?|\s+logging|d)?|monitoring|logging|cloudtrail"
    r"|guardduty|siem|edr|intrusion detection|pager(?:duty)?|notifications?)\b"
)
_BLIND_CMD = re.compile(
    r"(?i)(?:\bauditctl\s+-e\s*0\b|\baws\s+cloudtrail\s+(?:stop-logging|delete-trail)\b"
    r"|\bsystemctl\s+(?:stop|disable|mask)\s+(?:auditd|falco|wazuh-agent|osqueryd|crowdstrike|falcon-sensor)\b"
    r"|\baws\s+guardduty\s+delete-detector\b)"
)
_SECRET = (
    r"(?:secrets?|credentials?|creds|passwords?|api[ -]?keys?|access keys?|tokens?|private keys?|ssh keys?"
    r"|\.env(?:\s+files?)?|kubeconfig|id_rsa|session cookies?|/etc/shadow)"
)
_EXFIL = re.compile(
    r"(?i)\b(?:send|post|upload|e-?mail|forward|paste|exfiltrate|transmit|copy|leak|share)\s+"
    r"(?:(?:all|every|the|your|any|of|our|their|these|those|aws|db|database|admin|root|user)\s+){0,3}"
    + _SECRET
    + r"\b[^.\n]{0,80}?\b(?:to|at|into)\s+(?:https?://|\S+@\S+|\S+\.\S+|(?:my|our|this|that|the|an?)\s+\w+)"
)
_EXFIL_CMD = re.compile(
    r"(?i)(?:(?:\bcat|\benv\b|\bprintenv\b)[^|\n]{0,80}\|\s*(?:curl|nc|ncat|wget|netcat)\b"
    r"|\bcurl\b[^\n]{0,120}(?:-d|--data(?:-binary)?|-F|-T|--upload-file)\s*[\"']?@?[^\s\"']*"
    r"(?:\.aws/credentials|\.ssh/id_|\.env\b|kubeconfig|/etc/shadow|\.netrc|\.docker/config\.json))"
)
# Cheap gate: substring tests on the lower-cased text (the cheapest test there is in Python; a
# regex alternation costs several times more on chat text). Every family needs one of its words.
_GATE_DESTROY = (
    "backup",
    "back up",
    "snapshot",
    "volume",
    "namespace",
    "databas",
    "bucket",
    "replica",
    "restore point",
    "recovery point",
    "audit",
    "rm -",
    "drop ",
    "terraform",
    "velero",
    "aws ",
)
_GATE_BLIND = (
    "alert",
    "alarm",
    "audit",
    "monitoring",
    "logging",
    "cloudtrail",
    "guardduty",
    "siem",
    "edr",
    "intrusion",
    "pager",
    "notification",
)
_GATE_EXFIL = (
    "secret",
    "credential",
    "creds",
    "password",
    "key",
    "token",
    ".env",
    "kubeconfig",
    "id_rsa",
    "cookie",
    "shadow",
    "curl",
    "printenv",
)
FAMILIES = (
    (_GATE_DESTROY, (_DESTROY, _DESTROY_CMD)),
    (_GATE_BLIND, (_BLIND, _BLIND_CMD)),
    (_GATE_EXFIL, (_EXFIL, _EXFIL_CMD)),
)


GATE_WORDS = _GATE_DESTROY + _GATE_BLIND + _GATE_EXFIL


def may_hold_instruction(texts: list[str]) -> bool:
    """Whether any of `texts` can hold an instruction: one lower-casing and substring tests over them
    joined (per-text calls cost more than the scan on short chat replies)."""
    low = "\n".join(texts).lower()
    return any(w in low for w in GATE_WORDS)


def destructive_instruction(text: str) -> tuple[int, int] | None:
    """The span of the first destructive or exfiltrating instruction in `text`, or None."""
    if not text:
        return None
    low = text.lower()
    for gate, regexes in FAMILIES:
        if not any(w in low for w in gate):
            continue
        for regex in regexes:
            for m in regex.finditer(text):
                line_start = text.rfind("\n", 0, m.start()) + 1
                if _NEG.search(text[max(line_start, m.start() - 40) : m.start()]):
                    continue
                return m.start(), m.end()
    return None
