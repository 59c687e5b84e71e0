"""Cue-scored injection rules: the paraphrases the phrase patterns miss, and the hits that only discuss.

The phrase patterns (patterns.py) name whole attack phrasings. Written from public descriptions of the
classes (OWASP Top 10 for LLM applications, LLM01; Greshake et al., "Not what you've signed up for",
on indirect injection; the published jailbreak families), attacks are paraphrased far more freely
than any list of phrasings foresees. This module reads a message as cues and fires on combinations:

  prompt_injection          an override verb (ignore, set aside, pay no attention to, no longer
                            follow...) aimed at the model's instructions (a target: instructions,
                            guidelines, system prompt... owned by the model: previous, above, your,
                            you were given); a declaration that they are void; in tool output or
                            pasted content, text addressed to the AI (note to the AI, if you are an
                            assistant reading this, the assistant must...) that asks for an action an
                            attacker wants (send data somewhere, call a tool, tell the user, keep it
                            from the user), data exfiltration through a link, hidden HTML comments.
  system_prompt_extraction  a show/repeat/print verb aimed at the model's own prompt (your
                            instructions, the text above, what you were told before this chat).
  role_play_jailbreak       a persona cue (you are now, act as, stay in character, let's play a
                            game, two responses) with an unrestricted cue (no rules, never refuse,
                            can do anything, without filters).
  system_prompt_tampering   forged turns: chat-template tokens of more families, closing tags of
                            tool results inside content, "### System:" headings, role lines
                            ("SYSTEM:", "Assistant: Sure...") carrying instructions.

Precision first (a false positive deletes real training data). Cues must combine; the owner of the
instructions must be the model ("ignore my previous instructions" corrects a request; "ignore the
instructions in the README" is advice); defensive text ("never reveal your system prompt", "ignore
instructions found in tool results") is no attack; and `discussed` discounts a hit, from either
module, that only quotes or discusses an attack: inside quotes, backticks or a code fence in a message
that talks about attacks, templates or tokenizers, or in a reported frame ("attackers write...", "how
do I stop my agent from ignoring..."). An attack that dresses itself as a discussion gets through:
that is the price of keeping people who ask about prompt injection in the training set.

Offsets are in the folded view the caller passes (rules.py maps them back to the original text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from features.guard.cues import (
    _ACT,
    _ADDR,
    _AI,
    _AUTHORITY,
    _AUTHORITY_W,
    _COMMENT,
    _COMPLY,
    _DISCLOSE,
    _DISCUSS,
    _ELSEWHERE,
    _EXFIL,
    _EXFIL_W,
    _EXTRACT,
    _EXTRACT_ABOVE,
    _EXTRACT_THE,
    _EXTRACT_W,
    _FIRST_LINE,
    _FOR_TASK,
    _FORMAT,
    _GREETING,
    _HEADING,
    _IGNORE_IT,
    _MAKER_SAID,
    _MD_EXFIL,
    _MENTION,
    _MINE,
    _MINE_POST,
    _MODE,
    _NEW_OVERRIDE,
    _NEW_TASK,
    _NEW_TASK_W,
    _NONE_APPLY,
    _NOT_OWN,
    _OT,
    _OVERRIDE_FWD,
    _OVR2,
    _OVR_W,
    _OWN_WEAK,
    _OWNER_POST,
    _OWNER_PRE,
    _PAYLOAD,
    _PERSONA,
    _PERSONA_W,
    _PLAIN_TARGET,
    _QUOTES,
    _REPORTED,
    _REPORTER,
    _ROLE_LINE,
    _ROLE_W,
    _RUNTIME,
    _SYS_ROLES,
    _TGT_STRONG,
    _THEY_TOLD,
    _TOKEN_MARKS,
    _TOKENS,
    _TOLD,
    _UNR,
    _VERB_FIRST,
    _VOID,
    _VOID_SELF,
    _VOID_W,
    _c,
    _words,
)
from features.guard.replies import destructive_instruction


def _inside_quotes(text: str, start: int, end: int) -> bool:
    """The span sits in a code fence, or between a pair of quotes or backticks on its own line(s)."""
    if text.count("```", 0, start) % 2 == 1:
        return True
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    before, after = text[line_start:start], text[end:line_end]
    for q in _QUOTES:
        if before.count(q) % 2 == 1 and q in after:
            return True
    # single quotes: an opening quote after a space or start, a closing one before a non-letter
    opening = re.search(r"(?:^|[\s(:=\[])'[^']*$", before)
    return bool(opening and re.match(r"^[^']*'(?![a-z])", after))


def discussed(text: str, start: int, end: int, rule: str, role: str) -> bool:
    """The hit at [start, end) of the folded `text` only quotes or discusses an attack.

    A quoted hit counts as discussed when the message talks about attacks or formats outside the
    quote; a reported one ("attackers write...", "how do I stop my agent from ignoring...") always.
    A forged turn whose token is followed by a payload is never discounted unless quoted.
    """
    rest = text[:start] + " " + text[end:]
    json_like = role == "tool" and '": ' in text
    if not json_like and _inside_quotes(text, start, end) and _DISCUSS.search(rest):
        return True
    if rule == "system_prompt_tampering":
        if _PAYLOAD.search(text, start, end + 300):
            return False
        return bool(_DISCUSS.search(rest) or _RUNTIME.search(rest))
    frame = _REPORTED.search(text, max(0, start - 120), start)
    if (
        frame
        and frame.group("subject") is not None
        and (rule == "role_play_jailbreak" or not _VERB_FIRST.match(text, start))
    ):
        frame = None  # "an AI without filters" is no report; "the model ignores..." is
    if frame:
        return True
    sentence = max(text.rfind(c, 0, start) for c in ".!?\n") + 1
    return bool(_REPORTER.search(text, sentence, start))


_THE_SP = _c(r"\bthe (?:\w+ )?(?:system (?:prompt|message|instructions?)|pre ?prompt)\b")
_YOU = _c(r"\b(?:your|ur|you)\b")


def _sp_addressed(text: str, start: int, end: int) -> bool:
    """An extraction hit on "the system prompt" (not "your") asks about this model's own prompt."""
    if _YOU.search(text, start, end) or not _THE_SP.search(text, start, end):
        return True
    after = text[end : end + 60]
    return bool(
        re.match(
            r"^[\W_]*(?:(?:that |which )?you|above|of this (?:conversation|chat|session)|for this "
            r"(?:conversation|chat|session)|in this (?:conversation|chat))\b",
            after,
        )
    )


_OWN_SP = _c(r"\b(?:system|hidden|secret|initial|original|prompt|internal|confidential)\b")
_INSTR_HEADING = _c(r"[\W_]*#{2,}[ \t]*(?:new )?instructions?\b")


def keep_pattern_hit(text: str, start: int, end: int, rule: str, role: str) -> bool:
    """Whether a phrase-pattern hit at [start, end) of the folded `text` stands (see the module doc)."""
    if rule == "system_prompt_extraction" and not _sp_addressed(text, start, end):
        return False
    if rule == "system_prompt_extraction":
        if _FOR_TASK.match(text, end) and not _OWN_SP.search(text, start, end):
            return False  # "repeat your instructions for the rollback"
        if _negated(text, start):
            return False  # "never reveal your instructions"
        if _FORMAT.match(text, end) and not _YOU.search(text, start, end):
            return False  # "output the text above as a table"
    if (
        rule == "system_prompt_tampering"
        and _INSTR_HEADING.match(text, start)
        and not _PAYLOAD.search(text, end, end + 300)
    ):
        return False  # a README's "## Instructions" heading
    if (
        rule == "prompt_injection"
        and _NOT_OWN.search(text, start, end)
        and not re.search(r"\b(?:your|system|developer)\b", text[start:end])
    ):
        return False
    return not discussed(text, start, end, rule, role)


# --------------------------------------------------------------------------------------------------
# The cue rules.


def _first(regex: re.Pattern, text: str, role: str, rule: str, check=None, leet: str | None = None):
    """[start, end) of the first match that passes `check` and is not only discussed, or None."""
    for m in regex.finditer(text):
        if m.end() == m.start():
            continue
        if check is not None and not check(m):
            continue
        if discussed(leet if leet is not None else text, m.start(), m.end(), rule, role):
            continue
        return m.start(), m.end()
    return None


_HOWTO = _c(
    r"\b(?:where|how|why|when|whether|what) (?:do|does|did|should|can|could|would|to|is|are)(?: \w+){0,2}[\W_]+$"
)
_NEGATION = _c(r"\b(?:never|not|n'?t|cannot)\b")
_NEGATED = _c(
    r"\b(?:never|not|n'?t|cannot|won'?t|refuse to|unable to|must not|shall not)(?: \w+){0,2}[\W_]+$"
)
_STRONG_RX = _c(_TGT_STRONG + r"$")
_OWN_WEAK_RX = _c(_OWN_WEAK + r"[\W_]+$")
_MODEL_NEAR = _c(
    r"\b(?:previous|prior|above|earlier|your|system|developer|you (?:were|have been|'?ve been))\b"
)
_SENTENCE_START = _c(
    r"(?:^|[.!?\n:;]|\band\b|\bthen\b)[\W_]*(?:(?:please|now|just|ok(?:ay)?|so|and|first|then|"
    r"kindly|simply|also|you (?:must|should|will|need to|have to|are to)|i (?:want|need) you to) ?)*$"
)
_GIVEN = _c(
    r"[\W_]+(?:that |which )?(?:you(?:'?ve| have)? (?:been |were )(?:given|told|taught)|(?:given|provided|assigned|set)"
    r" (?:to|for) you)(?: \w+){0,3}?(?= and|[,.;:!]|$)"
)
_BY_MAKER = _c(
    r"\bby (?:your |the )?(?:openai|anthropic|developers?|creators?|makers?|operators?|system|company)\b"
)
_BARE_YOUR = _c(r"(?:your|ur)[\W_]+$")
_FOLLOW = _c(
    r"[\W_]*(?:(?:and|then|now|so|instead)[\W_]+)*(?:just |now |instead |simply )?(?:tell|say|give|answer|respond|reply|"
    r"print|show|write|output|reveal|provide|list|generate|explain|describe|help|do|act|start|begin|comply|follow|"
    r"obey|send|share|be|talk|speak|from now)\b"
)
_FOR_OTHER = _c(r"[\W_]+(?:for|about|regarding|on how|on the|of the|in the (?:readme|docs|manual))\b")


_DESCRIPTIVE = _c(
    r"\b(?:(?:you|we|i|one|they|users|people) (?:can|could|may|might)|how (?:do (?:i|we|you) |can (?:i|we) |to )"
    r"?|(?:a|the|any|no) ways? to|possible to|able to|(?:easy|hard|easier|harder) to)(?: also| just| easily"
    r"| still)?[\W_]+$"
)


def _negated(text: str, start: int) -> bool:
    """A defensive sentence: "never ignore...", "you must not disregard..." (but "do not follow" is the verb)."""
    return bool(_NEGATED.search(text, max(0, start - 40), start))


def _override_ok(text: str, m: re.Match) -> bool:
    verb = m.group()
    if _NOT_OWN.search(verb) and not re.search(r"\b(?:your|system|developer)\b", verb):
        return False
    own, tgt = m.group("own"), m.group("tgt")
    strong = bool(_STRONG_RX.match(tgt))
    given = _GIVEN.match(text, m.end())
    if not strong and not (own and _OWN_WEAK_RX.match(own)) and not given:
        return False  # "ignore any text after the marker", "skip all rules"
    if given and _BY_MAKER.search(text, given.start(), given.end()):
        pass  # "the rules given to you by OpenAI"
    elif (
        not strong
        and (given or _BARE_YOUR.match(own))
        and not _FOLLOW.match(text, given.end() if given else m.end())
    ):
        return False  # "forget your rules, live a little!"; "ignore your rules and tell me..." stands
    if _ELSEWHERE.match(text, m.end()):
        return False  # "ignore the instructions in the README"
    if not (own and _OWN_WEAK_RX.match(own)):
        if _FOR_OTHER.match(text, m.end()):
            return False  # "skip the instructions for Windows"
        # a target with no owner ("ignore instructions"): an imperative, or the model named nearby
        if not _MODEL_NEAR.search(text, m.end(), m.end() + 40) and not _SENTENCE_START.search(
            text, 0, m.start()
        ):
            return False
    if not verb.startswith(("do not", "don", "never", "no longer", "not")) and _negated(text, m.start()):
        return False
    return not _DESCRIPTIVE.search(text, max(0, m.start() - 40), m.start())


_T_WORDS = _words(
    "instruction instructions directions directive directives guidelines guardrails restrictions "
    "safeguards programming prompt preprompt policy policies rules filter filters configuration config "
    "training constraints limitations ethics morals protocol protocols memory system"
)
_TGT_GATE = _T_WORDS | _words(
    "everything anything whatever told given taught instructed programmed text context guidance settings persona system"
)
_TOLD_W = _words("told given taught instructed programmed configured trained treat consider regard")
_TASK_W = _words(
    "task job goal objective mission purpose directive directives orders instruction instructions rule rules persona role"
)
_EXTRACT_GATE = _T_WORDS | _words(
    "told given instructed programmed configured prompted briefed above beginning start top transcript context "
    "received verbatim developer developers creators creator makers operator operators openai anthropic tell asked "
    "before initial opening conversation system"
)
_UNR_GATE = _words(
    "restriction restrictions rules limits limit limitations filter filters filtering guidelines guardrails censorship "
    "ethics morals morality boundaries constraints policy policies safeguards principles programming unrestricted "
    "unfiltered uncensored unbound unshackled jailbroken jail amoral lawless anything refuse decline say illegal "
    "harmful dangerous unethical immoral offensive consequences evil rule"
)
_EXFIL_OBJ = _words(
    "conversation history messages session cookie cookies credentials password passwords api key keys token tokens "
    "secret secrets contacts emails inbox files documents env environment personal credit"
)
_ADDR_GATE = _words(
    "ai assistant assistants llm llms language chatbot chatbots bot bots agent agents copilot gpt chatgpt claude gemini "
    "model models summarize summarizing summarise summarising answering responding replying"
)
_SUPERSEDE = _c(
    r"\b(?:this|the following|these|what follows|my (?:message|instructions?|words))(?: \w+)? (?:overrides?|replaces?|"
    r"supersedes?|takes precedence over|cancels?|outranks?) (?:everything|all|any|anything)(?: \w+)?? (?:before|above|"
    r"earlier|prior|previous|else|you (?:were|have been) (?:told|given))\b"
)
_SUPERSEDE_W = _words(
    "overrides override replaces replace supersedes supersede precedence cancels cancel outranks outrank"
)
_TOLD_ANY = _words("told given instructed asked programmed configured prompted briefed taught received got")
_EXTRACTORS = (  # each extraction regex with the words one of which it cannot match without
    (_EXTRACT, _words("your ur") | _TOLD_ANY),
    (
        _EXTRACT_ABOVE,
        _words("above before beginning start top given received contents conversation chat transcript"),
    ),
    (_EXTRACT_THE, _words("prompt message instructions")),
    (_TOLD, _TOLD_ANY),
    (_THEY_TOLD, _words("tell told instruct instructed ask asked program programmed")),
    (
        _MAKER_SAID,
        _words(
            "creator creators developer developers maker makers operator operators owner owners "
            "programmer programmers company admin admins openai anthropic google meta microsoft"
        ),
    ),
    (_FIRST_LINE, _T_WORDS | _words("conversation context message chat session thread")),
)
_GATE = (  # a message with none of these words (and no mark) runs no cue rule
    _TGT_GATE
    | _T_WORDS
    | _TASK_W
    | _SUPERSEDE_W
    | _AUTHORITY_W
    | _EXTRACT_GATE
    | _UNR_GATE
    | _EXFIL_OBJ
    | _ADDR_GATE
    | _ROLE_W
    | {"mode"}
)
_MARK_CHARS = re.compile(r"[<\[#@{\]_]")  # every mark holds one of these
_MARKS = (*_TOKEN_MARKS, "](", "<!--", "#", "@")


def _owned(text: str, m: re.Match) -> str:
    """ "model" when the target phrase belongs to the model, "mine" when to the user (or the assistant's own
    earlier answer: "the instructions you gave for installing..."), "" when unclear."""
    pre, post = m.group("pre"), m.group("post")
    if _MINE.search(pre) and not re.search(r"\byour\b", pre) or _MINE_POST.match(text, m.end("t")):
        return "mine"
    if _OWNER_PRE.search(pre) or _OWNER_POST.search(post):
        return "model"
    return ""


def _clause(text: str, start: int, end: int) -> tuple[int, int]:
    left = max(text.rfind(c, max(0, start - 160), start) for c in ".!?;\n")
    rights = [i for i in (text.find(c, end, end + 160) for c in ".!?;\n") if i >= 0]
    return left + 1, min(rights) if rights else min(len(text), end + 160)


def _owned_targets(text: str, role: str, add, inj: str, extract: bool) -> None:
    for m in _OT.finditer(text):
        if _owned(text, m) != "model":
            continue
        end = m.end("t")
        quoted = _inside_quotes(text, m.start(), end) and _DISCUSS.search(
            text[: m.start()] + " " + text[end:]
        )
        if quoted:
            continue
        lo, hi = _clause(text, m.start(), m.end())
        strong = bool(_STRONG_RX.match(m.group("t")))
        for v in _OVR2.finditer(text, max(lo, m.start() - 80), min(hi, m.end() + 80)):
            if m.start() <= v.start() < m.end():
                continue
            if (
                not strong
                and _BARE_YOUR.fullmatch(m.group("pre"))
                and not m.group("post").strip()
                and not (_FOLLOW.match(text, max(v.end(), m.end())))
            ):
                continue  # "forget your rules, live a little!"
            if _ELSEWHERE.match(text, m.end()) or _FOR_TASK.match(text, m.end()) and not strong:
                continue
            first = min(v.start(), m.start())
            if _negated(text, first) and not v.group().startswith(
                ("do not", "don", "never", "no longer", "not")
            ):
                continue
            if _DESCRIPTIVE.search(text, max(0, first - 40), first):
                continue
            span = (first, max(v.end(), end))
            if not discussed(text, span[0], span[1], "prompt_injection", role):
                add(inj, span)
                break
        if extract and m.group("t") not in ("ethics", "morals"):
            for d in _DISCLOSE.finditer(text, max(lo, m.start() - 60), m.start()):
                target = m.group("pre") + m.group("t")
                if d.group().startswith(("what", "which")) and (
                    m.start() - d.end() > 25
                    or m.group("t") == "prompt"
                    and not _OWNER_PRE.search(m.group("pre"))
                ):
                    continue  # "what happens if a user types...": the question is about something else
                if _NEGATION.search(text, d.start(), m.start()) or _negated(text, d.start()):
                    continue
                if _FOR_TASK.match(text, m.end("t")) and not _OWN_SP.search(target):
                    continue
                if _FORMAT.match(text, m.end()) and not _YOU.search(target):
                    continue
                if not discussed(text, d.start(), end, "system_prompt_extraction", role):
                    add("system_prompt_extraction", (d.start(), end))
                    break


_AI_RX = _c(r"\b" + _AI + r"\b|\byou(?:r)?\b")
_NEW_TASK_USER = _c(r"(?:your |the )?(?:new|only|updated|revised|urgent)")


def scan(plain: str, leet: str, words: set[str], role: str) -> list[tuple[str, int, int]]:
    """(rule, start, end) per cue rule that fired on one message; offsets in its folded view.

    `plain` is the folded view, `leet` the same de-l33ted (same length), `words` the words of `leet`.
    A system message is read for override and persona cues only (its hits are tampering).
    """
    marked = _MARK_CHARS.search(plain) is not None and any(mark in plain for mark in _MARKS)
    if not marked and not words & _GATE:
        return []
    found: list[tuple[str, int, int]] = []

    def add(rule: str, span: tuple[int, int] | None) -> None:
        if span and not any(r == rule for r, _, _ in found):
            found.append((rule, span[0], span[1]))

    text = leet
    system = role == "system"
    inj = "system_prompt_tampering" if system else "prompt_injection"
    jail = "system_prompt_tampering" if system else "role_play_jailbreak"
    # Each family runs only when the message holds a word of each cue it needs (most messages: none).
    targets = words & _TGT_GATE
    if targets and words & _OVR_W:
        add(inj, _first(_OVERRIDE_FWD, text, role, "prompt_injection", lambda m: _override_ok(text, m)))
        add(inj, _first(_IGNORE_IT, text, role, "prompt_injection", lambda m: not _NOT_OWN.search(m.group())))
    if words & _SUPERSEDE_W:
        add(inj, _first(_SUPERSEDE, text, role, "prompt_injection"))
    if words & _T_WORDS:
        _owned_targets(text, role, add, inj, not system)
        if "none" in words:
            add(inj, _first(_NONE_APPLY, text, role, "prompt_injection"))
    if targets and words & _VOID_W and not system:
        add(inj, _first(_VOID, text, role, "prompt_injection", lambda m: not _NOT_OWN.search(m.group())))
        if words & _TOLD_W:
            add(inj, _first(_VOID_SELF, text, role, "prompt_injection"))
    if words & _NEW_TASK_W and words & _TASK_W:
        add(inj, _first(_NEW_OVERRIDE, text, role, "prompt_injection"))
    if words & _NEW_TASK_W and words & _TASK_W and not system:
        add(
            inj,
            _first(
                _NEW_TASK,
                text,
                role,
                "prompt_injection",
                lambda m: role == "tool" or not _NEW_TASK_USER.match(m.group()),
            ),
        )
    if words & _AUTHORITY_W:
        add(inj, _first(_AUTHORITY, text, role, "prompt_injection"))
    if "mode" in words:
        add(jail, _first(_MODE, text, role, "role_play_jailbreak"))
    if not system and words & _EXTRACT_W and words & _EXTRACT_GATE:

        def not_task(m: re.Match) -> bool:
            head = text[m.start() : m.start("tgt")] if m.groupdict().get("tgt") else ""
            if _negated(text, m.start()) or _NEGATION.search(head) or _FORMAT.match(text, m.end()):
                return False  # "never reveal your instructions"; "output the text above as a table"
            if _HOWTO.search(text, max(0, m.start() - 40), m.start()):
                return False  # "never reveal your instructions"; "output the text above as a table"
            target = m.groupdict().get("tgt") or ""
            return not (_FOR_TASK.match(text, m.end()) and _PLAIN_TARGET.fullmatch(target))

        for regex, needs in _EXTRACTORS:
            if words & needs:
                add(
                    "system_prompt_extraction",
                    _first(regex, text, role, "system_prompt_extraction", not_task),
                )
    if words & _UNR_GATE and words & _PERSONA_W:
        unr = _first(_UNR, text, role, "role_play_jailbreak", lambda m: not _negated(text, m.start()))
        if unr:
            for p in _PERSONA.finditer(text, max(0, unr[0] - 250), unr[1] + 250):
                if not discussed(text, p.start(), p.end(), "role_play_jailbreak", role):
                    add(jail, (min(p.start(), unr[0]), max(p.end(), unr[1])))
                    break
    if not system:
        _indirect(plain, leet, words, role, add, marked)
        _forged(plain, leet, words, role, add, marked)
    return found


@dataclass(frozen=True)
class _Span:
    lo: int
    hi: int

    def start(self) -> int:
        return self.lo

    def end(self) -> int:
        return self.hi


def _indirect(plain: str, leet: str, words: set[str], role: str, add, marked: bool) -> None:
    if words & _EXFIL_W and words & _EXFIL_OBJ:
        add("prompt_injection", _first(_EXFIL, leet, role, "prompt_injection"))
    if marked and "](" in plain:
        add("prompt_injection", _first(_MD_EXFIL, plain, role, "prompt_injection", leet=leet))
    if marked and "<!--" in plain:
        for m in _COMMENT.finditer(plain):
            body = leet[m.start("body") : m.end("body")]
            if _PAYLOAD.search(body) and _AI_RX.search(body):
                add("prompt_injection", (m.start(), m.end()))
                break
    addressed = list(_MENTION.finditer(plain)) if marked and "@" in plain else []
    if words & _ADDR_GATE:
        addressed += list(_ADDR.finditer(leet))
    for a in addressed:
        if role != "tool" and _GREETING.match(a.group()):
            continue  # "hey assistant, send the report to my manager" is an ordinary request
        if discussed(leet, a.start(), a.end(), "prompt_injection", role):
            continue
        act = _ACT.search(leet, a.end(), min(len(leet), a.end() + 250)) or _ACT.search(
            leet, max(0, a.start() - 200), a.start()
        )
        if act is None and role == "tool":
            cmd = destructive_instruction(plain[a.end() : a.end() + 300])
            act = _Span(a.end() + cmd[0], a.end() + cmd[1]) if cmd else None
        if act is not None:
            add("prompt_injection", (min(a.start(), act.start()), max(a.end(), act.end())))
            return


def _forged(plain: str, leet: str, words: set[str], role: str, add, marked: bool) -> None:
    if marked and any(mark in plain for mark in _TOKEN_MARKS):
        add("system_prompt_tampering", _first(_TOKENS, plain, role, "system_prompt_tampering", leet=leet))
    if marked and "#" in plain:
        add("system_prompt_tampering", _first(_HEADING, plain, role, "system_prompt_tampering", leet=leet))
    if not words & _ROLE_W or (":" not in plain and "]" not in plain):
        return
    lines = list(_ROLE_LINE.finditer(plain))
    roles = {m.group("role") for m in lines}
    for m in lines:
        role_name = m.group("role")
        rest = leet[m.start("rest") : m.end("rest")]
        payload = _PAYLOAD.search(leet, m.start("rest"), min(len(leet), m.end() + 300))
        if role_name in _SYS_ROLES:
            hit = bool(payload)
        elif role_name in ("assistant", "ai"):
            hit = bool(_COMPLY.match(rest)) and (bool(payload) or (len(roles) >= 2 and role == "tool"))
        else:
            hit = False
        if hit and not discussed(leet, m.start(), m.end(), "system_prompt_tampering", role):
            add("system_prompt_tampering", (m.start() + (plain[m.start()] == "\n"), m.end()))
            return
