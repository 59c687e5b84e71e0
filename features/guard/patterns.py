"""The per-record rules as patterns (the spec of features/guard/__init__.py, in code)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from features.guard.text import I_FOR_L

# --------------------------------------------------------------------------------------------------
# Pattern language. Patterns are plain lower-case regex over the folded, de-l33ted view; `~` stands
# for "words apart" (any run of spacing or punctuation). Each pattern names the words of which a
# message must contain at least one before the regex runs (most messages run no regex at all).
# The same source compiles a second time for the squashed view, where `~` and `\b` vanish.

_SEP = r"[\W_]+"


_SQUASHED_WORD = 16  # letters a filler word may take in the squashed view


def _compile(src: str, squash: bool, leet: bool) -> re.Pattern:
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "\\":
            esc = src[i : i + 2]
            if not (squash and esc == r"\b"):
                out.append(esc)
            i += 2
        elif c == "[":  # character class: copied as written
            j = i + 1
            while j < n and src[j] != "]":
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        elif c == "{":  # quantifier
            j = src.index("}", i)
            out.append(src[i : j + 1])
            i = j + 1
        elif squash and src.startswith((r"(?:\w+~){", r"(?:~\w+){"), i):
            # "up to b words": without separators (\w+){a,b} can split one run of letters in combinatorially
            # many ways (catastrophic backtracking); in the squashed view it is up to b words' worth of letters
            j = src.index("}", i)
            most = int(src[i + 9 : j].split(",")[-1])
            lazy = src[j + 1 : j + 2] == "?"
            out.append(rf"\w{{0,{most * _SQUASHED_WORD}}}" + ("?" if lazy else ""))
            i = j + 2 if lazy else j + 1
        elif c == "(" and src[i + 1 : i + 2] == "?":
            j = i + 2
            if src[j : j + 1] == "<":
                j += 1
            out.append(src[i : j + 1])
            i = j + 1
        elif c == "~":
            optional = src[i + 1 : i + 2] == "?"
            if not squash:
                out.append(r"[\W_]*" if optional else _SEP)
            i += 2 if optional else 1
        elif c == " ":
            raise ValueError(f"guard pattern {src!r}: use ~ between words, not a space")
        else:
            out.append("i" if leet and c == "l" else c)
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class Pattern:
    rule: str
    normal: re.Pattern
    squashed: re.Pattern | None  # None: not tried on letter-spaced text
    words: frozenset[str]  # the message must contain one of these words (after de-l33t)...
    marks: tuple[str, ...]  # ...or one of these substrings of the plain folded view
    leet: bool  # matched on the de-l33ted view (else on the plain folded view)
    in_system: bool  # also marks a system message as tampered


def _p(
    rule: str,
    words: str,
    src: str,
    *,
    in_system: bool = False,
    leet: bool = True,
    marks: tuple[str, ...] = (),
) -> Pattern:
    required = frozenset(w.translate(I_FOR_L) if leet else w for w in words.split())
    return Pattern(
        rule,
        _compile(src, False, leet),
        _compile(src, True, leet) if leet else None,
        required,
        marks,
        leet,
        in_system,
    )


# Building blocks.
_FILL = r"(?:(?:all|any|of|the|your|these|those|every|each|such|its|this|that|and|my)~){0,4}"
_PREV = (
    r"(?:previous(?:ly)?|prior|above|earlier|preceding|foregoing|initial|original|former|"
    r"system|developer'?s?|openai'?s?|hidden|pre~?set|pre~?defined)"
)
_OBJ = (
    r"(?:instructions?|directions?|directives?|rules|guidelines?|guidance|commands?|orders|prompts?|"
    r"programming|guardrails?|restrictions?|constraints?|polic(?:y|ies)|context|training|"
    r"system~(?:prompt|message)s?|settings|configuration|limitations?|safeguards?|filters?|"
    r"ethics|morals|principles|protocols?)"
)
_OWN_OBJ = (
    r"(?:instructions|programming|guidelines|directives|system~prompt|guardrails|restrictions|filters|"
    r"content~polic(?:y|ies)|safety~(?:guidelines|filters|protocols|rules|settings|training)|"
    r"ethical~(?:guidelines|principles|constraints)|constraints|limitations|safeguards|"
    r"(?:initial|original|previous|prior|system|core|default)~(?:rules|prompt|training|settings))"
)
_IGNORE = (
    r"(?:ignor(?:e|ing)|disregard(?:ing)?|forget(?:ting)?|overrid(?:e|ing)|bypass(?:ing)?|"
    r"abandon(?:ing)?|discard(?:ing)?|neglect(?:ing)?|overlook(?:ing)?|dismiss(?:ing)?|ditch(?:ing)?|"
    r"scrap(?:ping)?|eras(?:e|ing)|delet(?:e|ing)|wip(?:e|ing)|cancel(?:l?ing)?|nullify(?:ing)?|"
    r"throw~(?:out|away)|set~aside|"
    r"(?:stop|quit)~(?:following|obeying))"
)
_IGNORE_W = (
    "ignore ignoring disregard disregarding forget forgetting override overriding bypass bypassing "
    "abandon abandoning discard discarding neglect neglecting throw aside following obeying overlook "
    "overlooking dismiss dismissing ditch ditching scrap scrapping erase erasing delete deleting wipe "
    "wiping cancel canceling cancelling nullify nullifying"
)
_AI = (
    r"(?:ai|a\.i\.?|assistant|chat~?bot|bot|model|language~model|llm|gpt|chat~?gpt|machine|"
    r"version~of~(?:yourself|you|chat~?gpt|gpt))"
)
_LIMITS_W = (
    "restriction restrictions limit limits limitation limitations rules filter filters filtering guideline "
    "guidelines guardrail guardrails ethics moral morals morality censorship constraint constraints "
    "boundaries policy policies programming safeguard safeguards principles"
)
_NOLIMITS = (
    r"(?:without|with~(?:no|zero|0)|free~(?:of|from)|freed~from|that~(?:has|have)~no|who~(?:has|have)~no|"
    r"(?:that|who)~(?:doesn'?t|does~not|don'?t|do~not|never)~(?:have|follow|obey|care~about|abide~by)|"
    r"not~bound~by|unbound~by|no~longer~bound~by|released~from|liberated~from|unconstrained~by)~"
    r"(?:(?:any|all|the|your|its|their|ethical|moral|content|safety|openai'?s?)~){0,3}"
    r"(?:restrictions?|limits?|limitations?|rules|filters?|filtering|guidelines?|guardrails?|ethics|"
    r"morals?|morality|censorship|constraints?|boundaries|polic(?:y|ies)|programming|safeguards?|principles)"
)
_YOU_ARE = r"(?:you~are|you'?re|you~will~be|you~shall~be)"
_SP_STRONG = (
    r"(?:system~(?:prompt|message|instructions?)|pre~?prompt|custom~instructions|"
    r"(?:hidden|secret|internal|confidential|developer|underlying|original~system|initial~system)~"
    r"(?:prompt|instructions?|directives?|rules|configuration))"
)
_SP_W = "prompt preprompt message instruction instructions directive directives rules configuration"
_SP_WEAK = (
    r"(?:(?:initial|original|first|starting|startup|full|exact|complete|entire|base|core)~"
    r"(?:instructions|directives|configuration|guidelines))"
)
_SHOW = (
    r"(?:show|give|tell|share|reveal|display|print|output|repeat|recite|dump|leak|echo|paste|copy|"
    r"write~out|spell~out|quote|expose|disclose|read~(?:me~)?(?:back|out)|translate|summari[sz]e|list|state)"
)
_AI_W = "ai assistant llm language chatbot bot agent gpt chatgpt claude copilot model"

PATTERNS: tuple[Pattern, ...] = (
    # -- prompt_injection ------------------------------------------------------------------------
    _p(
        "prompt_injection",
        _IGNORE_W,
        r"\b"
        + _IGNORE
        + "~"
        + _FILL
        + _PREV
        + r"~(?:(?:and|or|&)~"
        + _PREV
        + r"~)?(?:\w+~)??"
        + _OBJ
        + r"\b",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        _IGNORE_W,
        r"\b" + _IGNORE + r"~(?:(?:all|any)~)?(?:of~)?your~(?:own~)?(?:\w+~)??" + _OWN_OBJ + r"\b",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        _IGNORE_W,
        r"\b" + _IGNORE + r"~(?:(?:everything|all|anything|whatever)~)"
        r"(?:(?:that|which)~)?(?:you~(?:'?ve~|have~|were~|was~|had~)?(?:been~)?(?:told|given|instructed|taught|"
        r"programmed)|(?:written|stated|said|typed)~(?:above|before~this|earlier|previously)|(?:up~)?to~this~point|"
        r"(?:before|above)~this~(?:line|message|sentence|point))\b",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        _IGNORE_W,
        r"\b" + _IGNORE + r"~(?:(?:everything|all|anything)~)?(?:of~)?the~above"
        r"[\W_]+(?:and~|then~)?(?:instead~)?(?:just~)?(?:say|print|write|output|respond|reply|answer|tell|follow|act|"
        r"translate|from~now|repeat|return)\b",
    ),
    _p(
        "prompt_injection",
        _IGNORE_W,
        r"\b" + _IGNORE + "~" + _FILL + _OBJ + r"~(?:(?:that~(?:were|was|are|is)~|"
        r"(?:given|written|listed|stated|provided|mentioned)~)?(?:above|earlier|before|previously|so~far)|"
        r"(?:given|written|listed|stated|provided|mentioned)~(?:above|earlier|before|previously)|"
        r"(?:that~)?you~(?:received|were~given|got|have~received|'?ve~received|were~told)~(?:before|earlier|"
        r"previously|above|so~far|until~now))\b"
        r"(?![\W_]+(?:the|a|an|my|your|his|her|our|their)\b)",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        _IGNORE_W,
        r"\b" + _IGNORE + r"~what(?:ever)?~you~(?:(?:were|have~been|'?ve~been|had~been)~"
        r"(?:instructed|programmed)|(?:were|have~been|'?ve~been)~told~(?:before|earlier|previously|above|by~(?:your~)?"
        r"(?:developers?|creators?|system)))\b",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        "instructions rules guidelines directives prompt programming",
        r"\b(?:your|all|the|any)~(?:(?:previous|prior|earlier|old|original|initial|system|current)~)(?:instructions|"
        r"rules|guidelines|directives|prompt|programming)~(?:are|is|have~been|has~been|were)~(?:now~|hereby~)?"
        r"(?:cancel+ed|void|revoked|null|invalid|overridden|replaced|obsolete|suspended|lifted|disabled|deleted|"
        r"rescinded|no~longer~(?:valid|apply|applicable|in~effect|active|relevant))\b",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        "obey follow listen",
        r"\b(?:(?:obey|follow|listen~to)~(?:only~)?me~(?:and~|,~)?"
        r"(?:not|instead~of|rather~than)~(?:your~|the~)?(?:developers?|creators?|programmers?|makers?|openai|"
        r"anthropic|system~prompt|instructions|rules|guidelines)|you~(?:must|will|shall)~(?:now~)?(?:only~)?obey~"
        r"(?:only~)?me~(?:now|from~now~on|and~(?:no~one|nobody)~else|alone))\b",
        in_system=True,
    ),
    _p(
        "prompt_injection",
        "instruction instructions directive directives prompt",
        r"\b(?:new|updated|revised|real|actual|override|overriding|secret|hidden|true)~"
        r"(?:system~(?:prompt|instructions?)|instructions?|directives?)(?:~(?:are|is))?~?:",
    ),
    _p(
        "prompt_injection",
        "override instruction instructions directive command mode",
        r"\b(?:system|admin|administrator|developer|root|sudo)~(?:override|instructions?|"
        r"directive|command|mode~activated)~?:",
    ),
    _p(
        "prompt_injection",
        "now",
        r"\bfrom~now~on[\W_]+you~(?:will~|must~|shall~|are~going~to~|should~|'ll~|"
        r"are~to~)?(?:always~|only~|now~)?(?:ignore|disregard|forget|not~follow|no~longer~(?:follow|obey|adhere)|"
        r"respond~(?:only~)?without|answer~(?:only~)?without|act~as~(?:an?~)?(?:\w+~)?" + _AI + r"|"
        r"have~no~(?:restrictions|rules|filters|limits|guidelines))\b",
    ),
    _p(
        "prompt_injection",
        _AI_W,
        r"\b(?:attention~(?:(?:to|for)~)?|"
        r"(?:note|message|instructions?|important|reminder|notice)~"
        r"(?:to|for)~)(?:the~|any~|all~)?(?:ai|assistant|llm|language~model|chat~?bot|ai~agent|agent|gpt|"
        r"chat~?gpt|claude|copilot|model)s?[\W_]*[:,\-]",
    ),
    _p(
        "prompt_injection",
        _AI_W,
        r"\b(?:if|when)~you~(?:are|'re)~an?~(?:ai|llm|language~model|ai~assistant|"
        r"assistant|chat~?bot|ai~agent|ai~model)\b(?:[\W_]+\w+){0,4}?[\W_]+(?:reading|processing|summari[sz]ing|"
        r"parsing|seeing|analy[sz]ing)\b",
    ),
    _p(
        "prompt_injection",
        "user",
        r"\b(?:do~not|don'?t|never)~(?:tell|inform|alert|notify|warn|"
        r"mention~(?:this|it)~to|reveal~(?:this|it)~to)~the~user\b(?!~(?:interface|experience|name|guide|manual))|"
        r"\b(?:do~not|don'?t|never)~let~the~user~(?:know|see|notice|find~out)\b",
    ),
    _p("prompt_injection", "user", r"\bwithout~(?:telling|informing|alerting|notifying|warning)~the~user\b"),
    # -- system_prompt_extraction ----------------------------------------------------------------
    _p(
        "system_prompt_extraction",
        _SP_W,
        r"\b(?:what|whats|what'?s|which)~(?:(?:is|are|was|were)~)?(?:\w+~){0,2}?"
        r"(?:your|ur|the)~" + _SP_STRONG + r"\b",
    ),
    _p(
        "system_prompt_extraction",
        _SP_W,
        r"\b" + _SHOW + r"\b(?:[\W_]+\w+){0,4}?[\W_]+(?:your|ur|the|its)~"
        r"(?:\w+~)?" + _SP_STRONG + r"\b",
    ),
    _p(
        "system_prompt_extraction",
        "instructions directives configuration guidelines",
        r"\b(?:what|whats|what'?s)~(?:(?:is|are|was|were)~)?your~" + _SP_WEAK + r"\b",
    ),
    _p(
        "system_prompt_extraction",
        "instructions directives configuration guidelines prompt",
        r"\b"
        + _SHOW
        + r"\b(?:[\W_]+\w+){0,4}?[\W_]+your~(?:"
        + _SP_WEAK
        + r"|(?:initial|original|first|starting|full|exact|complete|entire)~prompt)\b",
    ),
    _p(
        "system_prompt_extraction",
        "instructions directives guidelines configuration prompt",
        r"\b(?:(?:print|output|dump|leak|display|echo|paste)~(?:back~)?(?:(?:all|the~first|the~last)~(?:\w+~){0,2}?"
        r"(?:of~)?)?your~(?:\w+~)?(?:instructions|prompt|directives|guidelines|configuration)|(?:repeat|recite|reveal)~"
        r"(?:back~)?(?:(?:all|the~first|the~last)~(?:\w+~){0,2}?(?:of~)?)?your~(?:\w+~)?(?:instructions|directives|"
        r"guidelines|configuration))\b",
    ),
    _p(
        "system_prompt_extraction",
        "instructions rules guidelines directives prompt",
        r"\b(?:instructions|rules|guidelines|directives|prompt)~(?:were|have)~you~(?:been~)?given~(?:by~(?:your~|the~)?"
        r"(?:developers?|creators?|makers?|programmers?|openai|anthropic)|at~the~(?:start|beginning)|before~(?:this|"
        r"our)~(?:conversation|chat))\b",
    ),
    _p(
        "system_prompt_extraction",
        "instructions rules guidelines directives prompt",
        r"\b(?:instructions|rules|guidelines|directives|prompt)~(?:that~)?(?:you~(?:were|have~been|'?ve~been)~given~"
        r"(?:at~the~(?:start|beginning)|before~(?:this|our)~(?:conversation|chat)|by~(?:your~|the~)?(?:developers?|"
        r"creators?|openai|anthropic))|(?:did|have)~your~(?:developers?|creators?|makers?|programmers?|owners?)~"
        r"(?:give|gave|given|provide|provided|set|write|written))\b",
    ),
    _p(
        "system_prompt_extraction",
        "above before preceding prior beginning start top",
        r"\b(?:repeat|recite|output|print|write|copy|paste|echo|return|show|display|reproduce|dump)~(?:back~)?"
        r"(?:(?:all|every|everything|each)~)?(?:of~)?(?:the~)?(?:(?:text|words?|lines?|sentences?|content|messages?|"
        r"instructions|prompt|tokens|characters)~)?(?:(?:written~|that~(?:is|was|are|were)~)?(?:above|before~this|"
        r"preceding|prior~to~this|(?:that~)?(?:came|comes|appears|appeared|is~written|was~written)~(?:before|above)~"
        r"(?:this|my)~(?:message|line|point|prompt|sentence))|from~(?:the~)?(?:very~)?(?:beginning|start|top)~of~"
        r"(?:this|the|your)~"
        r"(?:conversation|chat|context|prompt|session))\b",
    ),
    _p(
        "system_prompt_extraction",
        "beginning start top",
        r"\b(?:what~(?:is|was)~written|what~(?:did|do)~(?:it|they)~say)(?:[\W_]+\w+){0,3}?[\W_]+(?:at~)?the~"
        r"(?:very~)?(?:beginning|start|top)~of~(?:this|the|your)~(?:conversation|chat|context(?:~window)?|"
        r"prompt|session)\b",
    ),
    _p(
        "system_prompt_extraction",
        "verbatim word exactly",
        r"\b(?:your|the)~(?:\w+~)?(?:instructions|prompt|guidelines|directives)~(?:\w+~){0,3}?(?:verbatim|"
        r"word~for~word|exactly~as~(?:written|given|they~were~given))\b",
    ),
    _p(
        "system_prompt_extraction",
        "instructed programmed prompted",
        r"\b(?:what~(?:were|have)~you~(?:been~)?(?:instructed|programmed)~to|how~(?:were|have)~you~(?:been~)?"
        r"(?:instructed|programmed|prompted)~to)\b",
    ),
    # -- role_play_jailbreak ---------------------------------------------------------------------
    _p(
        "role_play_jailbreak",
        _LIMITS_W,
        r"\b(?:pretend|imagine|act~(?:as~if|like)|behave~(?:as~if|like)|suppose|"
        r"assume)~(?:that~)?you~(?:are|were|'re|have~become)~(?:now~)?(?:an?~|the~)?(?:\w+~){0,2}?"
        + _AI
        + r"~(?:\w+~){0,8}?"
        + _NOLIMITS,
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        _LIMITS_W,
        r"\b(?:act|behave|respond|answer|reply|roleplay|role~play|pose|speak)~as~"
        r"(?:an?~|the~|if~you~were~an?~)?(?:\w+~){0,2}?" + _AI + r"~(?:\w+~){0,8}?" + _NOLIMITS,
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        _LIMITS_W,
        r"\b" + _YOU_ARE + r"~(?:now~)?(?:an?~|the~)?(?:\w+~){0,2}?" + _AI + "~" + _NOLIMITS,
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        _LIMITS_W,
        r"\b(?:pretend|imagine|act~(?:as~if|like)|(?:answer|respond|reply|behave|"
        r"write|talk|speak)(?:~\w+){0,3}?~as~if)~(?:that~)?you~(?:have|had)~"
        r"no~(?:(?:ethical|moral|content|safety)~)?(?:restrictions|filters|guidelines|content~polic(?:y|ies)|"
        r"censorship|programming|guardrails|safeguards|limitations|ethics|morals)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        _LIMITS_W + " shackles openai",
        _YOU_ARE + r"~(?:now~)?(?:free|freed|released|"
        r"liberated|unbound|unshackled|no~longer~bound)~(?:from|of|by)~(?:(?:all|any|your|the|of|its|openai'?s?)~)"
        r"{0,3}(?:filters|guidelines|programming|polic(?:y|ies)|content~polic(?:y|ies)|shackles|censorship|openai|"
        r"guardrails|safeguards|(?:ethical|moral|safety)~(?:rules|restrictions|guidelines|constraints))\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "unrestricted unfiltered uncensored jailbroken jail unchained unshackled amoral "
        "unethical evil rogue unaligned unlimited lawless immoral",
        r"\b(?:" + _YOU_ARE + r"|act~as|pretend~to~be|become|roleplay~as|role~play~as|simulate|emulate|"
        r"(?:respond|answer|reply)(?:~\w+){0,3}?~as|switch~to)~(?:now~)?(?:an?~|the~)?"
        r"(?:completely~|totally~|fully~)?(?:unrestricted|unfiltered|"
        r"uncensored|jail~?broken|unchained|unshackled|amoral|unethical|evil|rogue|unaligned|unlimited|lawless|"
        r"immoral)~(?:\w+~)?(?:version~of~(?:yourself|you|chat~?gpt|the~ai|gpt|claude)|"
        + _AI
        + r"|persona|mode)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "dan",
        r"\b(?:act~as|pretend~to~be|roleplay~as|role~play~as|become|you~are~now|"
        r"you'?re~now|you~will~now~be|you~are~going~to~(?:be|act~as|pretend~to~be)|(?:stay|remain)~in~character~as|"
        r"(?:respond|answer|reply)~(?:only~)?as)~(?:an?~|the~)?dan\b"
        r"(?![\W_]*'?s\b)",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "dan",
        r"\bdan~(?:mode|prompt|jail~?break|persona)\b|\bdo~anything~now[\W_]*"
        r"(?:\(|,|-|\"|')?[\W_]*dan\b|\bdan\b[\W_]*(?:\(|,|-|which~stands~for|stands~for|means|short~for)[\W_]*"
        r"do~anything~now\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "filters filter guardrails safeguards censorship programming policy policies guidelines "
        "restrictions rules constraints",
        r"\b(?:hypothetically|imagine|suppose|what~if|if)~(?:\w+~){0,2}?you~(?:had|"
        r"have|were~to~have)~no~(?:(?:ethical|moral|content|safety)~(?:guidelines|filters|restrictions|rules|"
        r"constraints|polic(?:y|ies))|filters|guardrails|safeguards|censorship|programming|content~polic(?:y|ies))\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "longer",
        r"\byou~(?:are|'re)~no~longer~(?:chat~?gpt|claude|gemini|llama|an?~(?:ai~)?"
        r"(?:assistant|language~model|ai)|bound~by)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "mongo confidant betterdan better antigpt anti machiavellian norms",
        r"\b(?:mongo~tom|evil~confidant|better~?dan|anti~?gpt|always~intelligent~and~machiavellian|"
        r"strive~to~avoid~norms|chat~?gpt~with~dan)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "developer",
        r"\b(?:" + _YOU_ARE + r"~(?:now~)?(?:in|running~in|operating~in)|"
        r"stay~in|remain~in|respond~in|answer~in|act~(?:as~if~you~(?:are|were)~)?in|simulate|emulate|enable~your|"
        r"activate~your|enter~your|unlock~your|turn~on~your|switch~(?:to|on)~your)~(?:the~)?developer~mode\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "developer",
        r"\b(?:chat~?gpt|ai|assistant|model|bot|llm|gpt|claude|yourself|you)~"
        r"(?:with|in)~developer~mode~(?:enabled|activated|on)\b|\bdeveloper~mode~(?:output|response)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "developer",
        r"\b(?:enable|activate|enter|turn~on|switch~to|unlock)~(?:the~)?"
        r"developer~mode\b(?:[\W_]+\w+){0,8}?[\W_]+(?:restrictions|polic(?:y|ies)|censor\w*|filters?|unfiltered|"
        r"uncensored|guidelines|no~limits)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "mode",
        r"\b(?:" + _YOU_ARE + r"~(?:now~)?in|enable|activate|enter|switch~to|"
        r"turn~on)~(?:the~)?(?:evil|opposite|unrestricted|unfiltered|uncensored|jail~?break|jail~?broken|dan|chaos|"
        r"unlimited|no~?filter|no~?limits)~mode\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "mode",
        r"\b" + _YOU_ARE + r"~now~in~(?:god|admin|root|sudo|debug|maintenance|dev|"
        r"developer|test)~mode\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "grandma grandmother grandmom grandpa grandfather granddad granny nana nan gran grandmama",
        r"\b(?:act|pretend|roleplay|role~play|play|be|behave|speak|respond|talk)~(?:as~|like~|to~be~|"
        r"(?:that~)?you~(?:are|were|'re)~)?"
        r"(?:if~you~(?:are|were)~)?my~(?:dear~|sweet~|beloved~|poor~)?(?:deceased|dead|late|departed|passed~away)~"
        r"(?:grand(?:ma|mother|mom|pa|father|dad)|granny|nana|nan|gran|grandmama)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "key keys napalm meth methamphetamine bomb bombs explosive explosives poison poisons nerve",
        r"\b(?:used~to|would)~(?:read|tell|recite|whisper|sing)~me~(?:the~|some~)?(?:(?:windows|product|"
        r"activation|license|licence|serial|steam|cd|office)~(?:\w+~){0,2}?keys?|(?:steps|recipe|instructions|"
        r"formula)~(?:for|to|of)~(?:making~|make~|cook(?:ing)?~)?(?:napalm|meth|methamphetamine|bombs?|explosives?|"
        r"poisons?|nerve~agents?))\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "refuse decline reject",
        r"\byou~(?:will|must|shall|are~to|can)~(?:never|not)~"
        r"(?:refuse|decline|reject)~(?:(?:any|a|my|the|to~answer|to~respond~to)~)?(?:\w+~)?(?:requests?|questions?|"
        r"prompts?|commands?|orders?|instructions?|queries|tasks?)\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "fictional hypothetical imaginary alternate",
        r"\b(?:in~(?:this|a)~)(?:fictional|"
        r"hypothetical|imaginary|alternate)~(?:world|universe|scenario|story|setting|reality)~(?:\w+~){0,3}?"
        r"(?:you|ais?|assistants?|chat~?bots?)~(?:have|has|are~not~bound~by|follow|obey)~no~(?:(?:ethical|moral|"
        r"content|safety)~)?(?:restrictions|rules|guidelines|filters|limits|ethics|morals|polic(?:y|ies))\b",
        in_system=True,
    ),
    _p(
        "role_play_jailbreak",
        "jailbroken jailbreak jail",
        r"\b(?:" + _YOU_ARE + r"~(?:now~)?|act~as~(?:an?~)?|"
        r"become~(?:an?~)?)jail~?broken\b|\bjail~?break(?:~mode|~prompt|ed~mode)\b(?![\W_]+(?:for|on)~"
        r"(?:my|your|the|an?)~(?:phone|iphone|ipad|device|console|switch|ps\w?))",
        in_system=True,
    ),
    # -- system_prompt_tampering (forged turns inside user/tool text; plain view: no l33t reading) -
    _p(
        "system_prompt_tampering",
        "",
        r"<\|(?:im_start|im_end|system|start_header_id|end_header_id|eot_id|"
        r"endoftext|begin_of_text)\|>|\[/?inst\]|<</?sys>>|</?(?:system|sys|system_prompt|instructions)>",
        leet=False,
        marks=(
            "<|",
            "[inst]",
            "[/inst]",
            "<<sys>>",
            "<</sys>>",
            "<sys",
            "</sys",
            "<instructions",
            "</instructions",
        ),
    ),
    _p(
        "system_prompt_tampering",
        "system sys",
        r"(?:^|\n)[ \t>#*\[]*(?:system|sys)[\]*]*(?:[ \t]+(?:message|"
        r"prompt|note|override|update))?[ \t]*:[ \t]*(?:you|ignore|disregard|forget|new|from~now|the~assistant|"
        r"assistant|always|never|do~not|don'?t|override|reveal|act|pretend)\b",
        leet=False,
    ),
    _p(
        "system_prompt_tampering",
        "",
        r"(?:^|\n)[ \t]*#{2,}[ \t]*(?:system|instruction|new~instructions?)s?"
        r"[ \t]*:?[ \t]*(?:\n|$)",
        leet=False,
        marks=("##",),
    ),
)


BY_WORD: dict[str, list[Pattern]] = {}
BY_MARK: dict[str, list[Pattern]] = {}
for _pattern in PATTERNS:
    for _w in _pattern.words:
        BY_WORD.setdefault(_w, []).append(_pattern)
    for _m in _pattern.marks:
        BY_MARK.setdefault(_m, []).append(_pattern)
GATE_WORDS = frozenset(BY_WORD)
