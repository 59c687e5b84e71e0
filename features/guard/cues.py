"""The vocabulary of the cue rules (injection.py): regexes over the guard's folded, de-l33ted view.

Each name is one kind of cue (an override verb, a target the model owns, an addressee, an action an
attacker wants, a forged turn, a discussion frame); injection.py combines them. Written from public
descriptions of the attack classes (OWASP LLM01, Greshake et al. on indirect injection, the published
jailbreak families), never from a held-out set.
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------------------------------
# Regex helpers. Sources are written lower case; a space stands for "words apart" (any spacing or
# punctuation); every "l" is read as "i" because the view is de-l33ted (text.deleet maps l to i).


def _c(src: str, leet: bool = True) -> re.Pattern:
    out, i, in_class = [], 0, False
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            out.append(src[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
            out.append(ch)
        elif ch == "[":
            in_class = True
            out.append(ch)
        elif ch == " ":
            optional = src[i + 1 : i + 2] == "?"
            out.append(r"[\W_]*" if optional else r"[\W_]+")
            i += 1 if optional else 0
        else:
            out.append("i" if leet and ch == "l" else ch)
        i += 1
    return re.compile("".join(out))


def _gap(n: int) -> str:
    return rf"(?:[\W_]+\w+){{0,{n}}}?[\W_]+"


def _words(s: str) -> frozenset[str]:
    return frozenset(w.replace("l", "i") for w in s.split())


_OVR = (
    r"(?:ignor(?:e|ing)|disregard(?:ing)?|forget(?:ting)?|overrid(?:e|ing)|bypass(?:ing)?|skip(?:ping)?|omit(?:ting)?|"
    r"neglect(?:ing)?|overlook(?:ing)?|circumvent(?:ing)?|discard(?:ing)?|abandon(?:ing)?|ditch(?:ing)?|"
    r"scrap(?:ping)?|dismiss(?:ing)?|unlearn|(?:set|put|push|leave|cast) (?:aside|behind)|throw (?:out|away)|"
    r"pay no (?:attention|heed|mind) to|(?:don'?t|do not|stop|never) pay(?:ing)? (?:any )?(?:attention|heed|mind) to|"
    r"(?:stop|quit|cease) (?:following|obeying|adhering to|listening to|using)|"
    r"(?:do not|don'?t|never|no longer|not) (?:follow|obey|adhere to|comply with|abide by|listen to|respect|honou?r)|"
    r"(?:don'?t|do not|no longer) (?:have|need) to (?:follow|obey|adhere to|comply with|abide by|respect)|"
    r"break (?:free|out) (?:of|from)|free yourself from|get rid of|drop(?:ping)?|never ?mind|"
    r"(?:not|never) to (?:follow|obey|adhere to|comply with|abide by|use))"
)
_OVR_W = _words(
    "drop dropping nevermind mind ignore ignoring disregard disregarding forget forgetting override overriding bypass bypassing skip skipping "
    "omit omitting neglect neglecting overlook overlooking circumvent circumventing discard discarding abandon "
    "abandoning ditch ditching scrap scrapping dismiss dismissing unlearn aside behind throw attention "
    "heed following obeying follow obey adhere comply abide respect honor honour break free rid"
)
# Targets the model owns. Strong ones name instructions; weak ones need an owner word next to them.
_TGT_STRONG = (
    r"(?:instructions?|directives?|guidelines|guardrails|system (?:prompt|message|instructions?)s?|"
    r"(?:pre|initial|original|hidden|developer|operator|base) ?prompts?|programming|(?:safety|content|ethical|moral) "
    r"(?:rules|guidelines|filters?|polic(?:y|ies)|protocols?|training|principles|"
    r"constraints|restrictions|boundaries|limits)|prime directive|restrictions|safeguards|alignment|training|"
    r"ethics|morals|(?:everything|anything|all|whatever|what) (?:that )?(?:you (?:were|have been|'?ve been|had been|"
    r"got) (?:told|given|taught|instructed|programmed)|your (?:creators?|developers?|makers?|owners?|operators?|"
    r"programmers?) (?:told|taught|gave|instructed|said)))"
)
_TGT_WEAK = (
    r"(?:rules|polic(?:y|ies)|filters|context|prompts?|guidance|text|constraints|"
    r"limitations|limits|settings|configuration|persona|everything|anything|all that|what you (?:were|have been|'?ve "
    r"been) (?:told|given|taught))"
)
_OWN_WEAK = (  # owners that make a weak target the model's
    r"(?:your|ur|previous(?:ly)?|prior|above|earlier|preceding|foregoing|initial|original|system|developer'?s?|"
    r"openai'?s?|anthropic'?s?|pre ?(?:set|defined|programmed|loaded))"
)
_OWN = r"(?:" + _OWN_WEAK[3:-1] + r"|all|any|every|each|old|existing|current|default|built ?in|hidden)"
_NOT_OWN = _c(r"\b(?:my|our|mine|i (?:gave|sent|wrote|said|asked|typed|posted|mentioned|pasted)|we)\b")
# "instructions in the README": someone else's instructions, not the model's.
_ELSEWHERE = _c(
    r"[\W_]+(?:that |which )?(?:are |were |is |may |might |can )?(?:appear(?:s|ing)? |show(?:s|ing)? up |"
    r"come(?:s)? |coming )?(?:in|from|inside|within|on|of|contained in|embedded in|found in|"
    r"appearing in|given in|written in) (?:the |this |that |these |those |any |an? |such )?(?:\w+ )?(?:readme|docs?|"
    r"documentation|files?|pages?|e ?mails?|tools?|results?|outputs?|web|websites?|sites?|documents?|tickets?|"
    r"issues?|comments?|code|repo|repository|logs?|charts?|manifests?|yaml|config|scripts?|data|content|messages? "
    r"from|retrieved|search|external|third|untrusted|user|inputs?|pdfs?|attachments?|wiki|runbook|guide|man)\b"
)
_OVERRIDE_FWD = _c(
    r"\b"
    + _OVR
    + r" "
    + r"(?:(?:the|these|those|of|this|that|such|and|to|about|now|just|also|completely|any|all|each|every|one|none|"
    r"entirely|totally) ){0,4}(?P<own>"
    + _OWN
    + r" )?(?:(?:\w+ )?(?:and |or )?\w+ )??(?P<tgt>"
    + _TGT_STRONG
    + "|"
    + _TGT_WEAK
    + r")\b"
)
_VOID = _c(
    r"\b(?:your|the|all|any|my|these|those|previous|prior|earlier|old|original|initial|above|system) (?:\w+ )?"
    r"(?:instructions|rules|guidelines|directives|restrictions|system prompt|programming|guardrails|filters|"
    r"constraints|polic(?:y|ies)|limitations) (?:(?:above|before|earlier|given|(?:that )?you (?:were|have been|'?ve "
    r"been) (?:given|told)) ){0,2}"
    r"(?:(?:have|has) (?:changed|been (?:changed|updated|revoked|removed|lifted|replaced|reset))|"
    r"(?:are|is|were|was|have been|has been) (?:now |hereby |officially |henceforth )?(?:void|null|cancel+ed|revoked|expired|"
    r"obsolete|overridden|superseded|replaced|suspended|lifted|disabled|removed|deleted|invalid|outdated|rescinded|"
    r"deactivated|turned off|(?:just |only )?(?:a test|fake|a joke|not real))|(?:no longer|don'?t|do not|won'?t|will not) "
    r"(?:apply|matter|count|exist|bind you|hold)|(?:are|is) no longer (?:valid|applicable|active|in effect|in force|"
    r"binding|relevant|needed))\b"
)
_VOID_SELF = _c(
    r"\b(?:(?:everything|anything|all|whatever|the (?:\w+ )?(?:rules|instructions|guidelines|directives|prompt|polic(?:y|"
    r"ies)|restrictions)) (?:that )?you (?:were|have been|'?ve been|had been) (?:told|given|taught|instructed|"
    r"programmed|set up with|configured with|trained (?:on|with))(?: \w+){0,3}? (?:(?:is|are|was|were|has been|"
    r"have been) (?:now |hereby )?(?:void|null|cancel+ed|revoked|obsolete|overridden|superseded|invalid|irrelevant|"
    r"no longer valid|lifted|suspended)|(?:don'?t|do not|no longer|doesn'?t|does not) (?:matter|apply|count|hold))|(?:treat|consider|regard) (?:all |"
    r"any |every )?(?:of )?(?:your |the )?(?:previous |prior |earlier |above |original |initial |system |old )?"
    r"(?:instructions|rules|guidelines|directives|restrictions|system prompt|polic(?:y|ies)) (?:\w+ ){0,3}?as "
    r"(?:void|null|cancel+ed|invalid|obsolete|irrelevant|non ?binding|optional|suggestions|a joke|fake|expired))\b"
)
_IGNORE_IT = _c(
    r"\b(?:(?:whatever|everything|anything|all|what) (?:that )?you (?:were|have been|'?ve been|had been|got) (?:told|"
    r"given|taught|instructed)|(?:your|the) (?:previous |prior |earlier |original |initial |system |hidden )?(?:system "
    r"prompt|instructions|guidelines|directives|rules|programming))(?: \w+){0,14}?[\W_]+(?:just |simply |safely )?"
    r"(?:(?:ignore|disregard|forget|override|drop|scrap|discard|skip|bypass) (?:it|them|that|those|these|all of "
    r"(?:it|them))|(?:set|put|push|cast|throw|leave) (?:it|them|those|these) (?:aside|away|behind|out))\b"
)
_VOID_W = _words(
    "treat consider regard changed matter "
    "void null cancelled canceled revoked obsolete overridden superseded replaced suspended lifted "
    "disabled removed deleted invalid outdated rescinded deactivated test fake joke apply matter count "
    "exist bind hold valid applicable active effect force binding relevant needed"
)
_NEW_TASK = _c(
    r"\b(?:your |the )?(?:real|actual|true|secret|hidden|updated|revised|new|only|override|overriding|priority|"
    r"urgent) (?:task|job|goal|objective|mission|purpose|directive|orders|instructions?|rules?|persona|role)s? "
    r"(?:(?:is|are|will be|from now on|now) ?(?:to |:)?|[:\-] )"
)
_NEW_OVERRIDE = _c(
    r"\b(?:the )?only (?:rules|instructions|orders|guidelines|commands) you (?:follow|obey|listen to|take) (?:now |from now "
    r"on )?(?:are|is|come from) (?:mine|my|me|the ones i)\b|\b(?:new|updated|revised|these|my) (?:instructions|rules|directives|orders) (?:override|replace|supersede|take "
    r"precedence over|come before|outrank) (?:the |your |all |any )?(?:old|previous|prior|original|earlier|system|"
    r"other|existing)"
)
_NEW_TASK_W = _words(
    "only real actual true secret hidden updated revised new only override overriding priority urgent"
)
_AUTHORITY = _c(
    r"\b(?:i am|i'?m|this is|as) (?:your|the|an?) (?:\w+ )?(?:developer|creator|admin|administrator|owner|operator|"
    r"maker|programmer|engineer at (?:openai|anthropic)|openai (?:engineer|employee|staff)|sysadmin|superuser|root)"
    + _gap(12)
    + r"(?:disable|turn off|lift|remove|bypass|unlock|skip|ignore|override|suspend|drop|authori[sz]e you|permit you|"
    r"allow you|grant you)\b"
)
_AUTHORITY_W = _words(
    "developer creator admin administrator owner operator maker programmer engineer sysadmin superuser root"
)
_MODE = _c(
    r"\b(?:enable|activate|enter|switch (?:to|into)|turn on|unlock|engage|you are now in|you'?re now in|boot into)"
    r" (?:the |your )?(?:admin|god|sudo|root|unrestricted|unfiltered|uncensored|jailbreak|jailbroken|unsafe|"
    r"no ?filter|no ?limits?|unlimited|evil|chaos|opposite|anarchy|raw) mode\b"
)

# Extraction: a show verb aimed at the model's own prompt.
_SHOW = (
    r"(?:show|print|repeat|reveal|tell|output|display|share|disclose|recite|quote|echo|dump|write (?:out|down)|copy|"
    r"paste|list|summari[sz]e|translate|spell out|give|provide|return|leak|expose|type out|read (?:back|out)|"
    r"reproduce|render|encode|what|which|whats|describe|(?:reply|respond|answer) with|include|"
    r"i (?:need|want)|quoting|repeating|printing|reciting|outputting|pasting|copying|revealing|showing|listing|"
    r"sharing|dumping|(?:exact|full|complete|whole|entire) (?:words|text|wording|content))"
)
_OWN_PROMPT = (  # after any show verb, "what is" included
    r"(?:in (?:your|ur) (?:context(?: window)?|prompt|memory|system prompt|instructions)|"
    r"(?:everything|all|anything|whatever|what) (?:that )?you (?:were|have been|'?ve been|got|had been) (?:told|given|"
    r"instructed|taught|programmed)|(?:the )?(?:prompt|instructions|rules|text|message|guidelines)s? (?:that|which) (?:configured|configures|set up|"
    r"sets up|governs?|controls?|defines?|shapes?|initiali[sz]ed|programmed|created) you|(?:your|ur) (?:\w+ )?(?:instructions|system (?:prompt|message)|guidelines|directives|pre ?prompt|"
    r"(?:hidden|secret|underlying|internal|confidential) prompt|(?:initial|original|hidden|secret|full|exact|complete|"
    r"first|operating|setup|startup|underlying) (?:instructions|rules|directives|configuration|guidelines)))"
)
_ABOVE = (  # after an imperative verb only ("summarize the text above" is an ordinary request)
    r"(?:(?:your|ur) (?:prompt|rules|configuration)|(?:everything|all|(?:all of )?the (?:text|words|content|"
    r"messages?|instructions|prompt|lines|sentences|tokens))(?: (?:written|that (?:is|was|are|were)(?: written)?))? "
    r"(?:above|before (?:this|that|my (?:first )?message|the (?:first )?user message)|(?:that )?(?:came|comes|"
    r"appear(?:s|ed)?) (?:before|above) (?:this|my))|(?:everything|all|the (?:text|words|content|messages?|"
    r"instructions|prompt)) (?:at|from) the (?:very )?(?:start|beginning|top) of (?:this|the|our|your) "
    r"(?:conversation|chat|context|session|prompt)|the (?:whole |entire |full )?(?:conversation|chat|context|transcript|"
    r"history) (?:from the (?:very )?(?:beginning|start|top)|including (?:the )?(?:system|hidden|first))|what (?:was|is|were) (?:written|said|typed|stated|included|there) "
    r"(?:above|before (?:this|that|my|the (?:first|user)))|the (?:developer|system|initial|hidden|original|first|"
    r"operator) (?:message|prompt|instructions)(?: (?:that )?you (?:received|got|were given|have|are (?:given|using)))|"
    r"(?:the )?(?:contents? of )?(?:your|ur) (?:context|memory|context window|prompt)(?: \w+){0,3}? (?:before|at the"
    r" start|from the start)|the (?:\w+ )?(?:prompt|instructions|rules|guidelines|directives) "
    r"(?:that )?you (?:were|have been|'?ve been) given (?:by|before|at))"
)
_SHOW_STRICT = (
    r"(?:show|print|repeat|reveal|output|display|disclose|recite|quote|echo|dump|write (?:out|down)|copy|paste|"
    r"spell out|leak|expose|type out|read (?:back|out)|reproduce|put|render|encode|give me|tell me)"
)
_EXTRACT = _c(r"\b" + _SHOW + r"\b" + _gap(4) + r"(?P<tgt>" + _OWN_PROMPT + r")\b")
_EXTRACT_ABOVE = _c(r"\b" + _SHOW_STRICT + r"\b" + _gap(3) + r"(?P<tgt>" + _ABOVE + r")\b")
_THEY_TOLD = _c(
    r"\bwhat (?:did|have|had) (?:they|your \w+|the \w+) (?:tell|told|instruct|instructed|ask|asked|program|programmed) "
    r"you (?:to|before|not|at)\b"
)
_TOLD = _c(
    r"\bwhat (?:were|have|had|did) you (?:been |get |got )?(?:told|given|instructed|asked|programmed|configured|"
    r"prompted|briefed)(?: to (?:do|say|keep|hide|avoid|not))?(?: \w+){0,3}? (?:before (?:this|our|the) (?:conversation"
    r"|chat|session)|at the (?:start|beginning)|initially|originally|by (?:your|the) (?:developers?|creators?|"
    r"operators?|admins?|makers?|company|deployer)|in (?:your|the) (?:system|prompt|setup|instructions))\b"
)
_MAKER_SAID = _c(
    r"\b(?:what|which)(?: \w+){0,2}? (?:did|have|has|do) (?:your (?:creators?|developers?|makers?|operators?|owners?|"
    r"programmers?|company|admins?)|openai|anthropic|google|meta|microsoft|the (?:developers?|operators?|company)) "
    r"(?:\w+ )?(?:instruct(?:ed)?|tell|told|program(?:med)?|ask(?:ed)?|gave|give|given|provide[ds]?|say|said|write|"
    r"wrote|set) (?:you|to you)\b"
)
_FIRST_LINE = _c(
    r"\b(?:first|initial|opening|very first|last) (?:\d+ )?(?:line|sentence|words?|message|paragraph|instruction|"
    r"characters|tokens)s? (?:of|in) (?:your|the|this|our) (?:system )?(?:prompt|instructions|context|conversation|"
    r"message|configuration|chat|session|thread)\b"
)
# "repeat your instructions for the rollback": the steps the assistant gave, not its prompt.
_FORMAT = _c(
    r"[\W_]+(?:as|in|into) (?:a |an )?(?:table|json|list|bullets?|bullet points|markdown|csv|yaml|french|spanish|"
    r"german|english|summary|plain english|simpler words|short form)\b"
)
_PLAIN_TARGET = _c(r"(?:(?:your|ur) )?(?:instructions|guidelines|directives|rules|steps)")
_FOR_TASK = _c(
    r"[\W_]+(?:for|on|about|regarding|to (?:install|set|configure|deploy|run|fix|build|use)|from (?:step|"
    r"your (?:last|previous|earlier) (?:answer|reply|message)))\b"
)
_EXTRACT_W = _words(
    "configured need want exact full conversation transcript openai anthropic developer received verbatim contents context what which your ur above before beginning start top told given instructed asked programmed configured "
    "prompted briefed first initial opening last"
)

# Role-play: a persona cue with an unrestricted cue.
_AI_SRC = (
    r"(?:ai|a\.i\.|assistant|llm|language model|chat ?bot|bot|agent|copilot|gpt|chat ?gpt|claude|model)s?"
)
_PERSONA = _c(
    r"\b(?:you are now|you'?re now|you are going to (?:be|act|pretend|play)|you will (?:now )?(?:be|act|play|pretend|"
    r"roleplay|respond as)|from now on,? you|act(?:ing)? as|pretend(?:ing)? (?:to be|you are|you'?re|that you)|"
    r"role ?play(?:ing)? (?:as|a|an)|play (?:the )?(?:role|part) of|take on the (?:role|persona)|assume the (?:role|"
    r"persona|identity)|adopt (?:the |a )?persona|(?:stay|remain) in character|never break character|"
    r"(?:don'?t|do not) break character|simulate|let'?s play a game|imagine (?:you are|you'?re|that you)|"
    r"your name is now|you are no longer|(?:act|behave|talk|speak|respond|answer|reply)(?: \w+)? (?:like|as) (?:(?:an?|the|"
    r"both|my|if you were) )?(?:\w+ ){0,2}?(?:"
    + _AI_SRC
    + r"|version|persona|character|dan|twin|alter ego)\b|"
    r"(?:an?|the) (?:\w+ )?version of (?:yourself|you|chat ?gpt|gpt|the ai|claude)|(?:two|2|both) (?:responses|answers|paragraphs|replies)|"
    r"let'?s play\b|imagine (?:a|an) (?:world|universe|scenario|reality|future) (?:where|in which)|in (?:that|this|such a) "
    r"(?:world|universe|scenario|reality)|(?:you are|you'?re) \w+,? (?:an?|the) (?:\w+ )?" + _AI_SRC + r"|"
    r"role ?play(?:ing)? (?:where|in which)|play (?:a|the) (?:\w+ )?(?:character|role|persona|part)|(?:character|persona|"
    r"ai|bot) (?:called|named)|(?:write|tell|create) (?:a|me a) (?:story|scene|script|dialogue|poem) (?:where|in which|"
    r"about)|\bbe (?:an?|my) (?:\w+ )?"
    + _AI_SRC
    + r"|let'?s (?:do|play) (?:a )?role ?play|pretend(?:ing)? (?:that )?you|"
    r"(?:you are|you'?re) (?:an? |the )?(?:\w+ )?" + _AI_SRC + r" (?:called|named)|"
    r"hypothetical(?:ly)?|in (?:a|this) (?:(?:fictional|hypothetical|imaginary|alternate) )?(?:world|universe|story|"
    r"scenario|setting|game|roleplay|role play)|you are (?:an? |the )?(?:\w+ )?"
    + _AI_SRC
    + r" (?:that|who|which)|for (?:a|my) (?:novel|story|screenplay|book|script))\b"
)
_UNR = _c(
    r"\b(?:(?:no|zero|without|free (?:of|from)|freed from|escaped(?: from)?|broken free (?:of|from)|not bound by|"
    r"unbound by|beyond|outside|ignores?|breaks?|bypass(?:es)?|(?:never|not)(?: been)? given)(?: (?:any|all|its|your|"
    r"their|the|of|his|her|every|each))* (?:(?:ethical|moral|content|safety|openai'?s?|legal) )?(?:restrictions?|rules?|limits|limitations|filters?|"
    r"filtering|guidelines|guardrails|censorship|ethics|morals|morality|boundaries|constraints|polic(?:y|ies)|"
    r"safeguards|principles|programming)|unrestricted|unfiltered|uncensored|unbound|unshackled|jail ?broken|amoral|"
    r"lawless|(?:can|could|will|would) do anything|answers? (?:any|every|all) (?:questions?|requests?|prompts?)"
    r"(?: without)|(?:never|won'?t|will not|cannot|can'?t|must not|not allowed to) (?:refuse|decline|say no)|"
    r"no matter (?:how|what|if) (?:\w+ )?(?:illegal|harmful|dangerous|unethical|immoral|offensive)|even if (?:it is|"
    r"it'?s|they are) (?:illegal|harmful|dangerous|unethical|immoral)|(?:doesn'?t|does not|don'?t|do not) care about "
    r"(?:rules|ethics|laws|safety|morals|guidelines|consequences)|evil (?:twin|version|ai|bot|assistant|confidant))\b"
)
_PERSONA_W = _words(
    "character persona called named story scene script dialogue be version like behave talk speak write respond answer reply as now act acting pretend pretending roleplay role play take assume adopt stay remain never "
    "break simulate game imagine name longer two both responses answers hypothetical hypothetically "
    "fictional imaginary alternate novel story screenplay book script will going"
)

# Indirect: text addressed to the AI that asks for an attacker's action.
_AI = r"(?:ai|a\.i\.|assistant|llm|language model|chat ?bot|bot|agent|ai agent|copilot|gpt|chat ?gpt|claude|gemini|model)s?"
_ADDR = _c(
    r"\b(?:(?:dear|hey|hi|hello|attention|note (?:to|for)|message (?:to|for)|instructions? (?:to|for)|important "
    r"(?:for|to)|notice (?:to|for)|reminder (?:to|for)|p\.?s\.? (?:to|for)) (?:the |any |all |our |you,? )?(?:\w+ )?"
    + _AI
    + r"\b|"
    r"(?:if|when|while) you (?:are|'re) (?:an? |the )?(?:\w+ )?"
    + _AI
    + r"\b|"
    + _AI
    + r"(?: \w+)? (?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|browsing|viewing|seeing|visiting|crawling|"
    r"scraping|ingesting|indexing|handling|managing|triaging|answering|working on|responsible for|in charge of) "
    r"(?:this|these|the|my|our|his|her|their|any)\b|(?:^|(?<=[^\w\s])|(?<=[^\w\s][ \t])|(?<=\n))to (?:the|any|all|every) "
    + _AI
    + r"\b|\bto (?:the |any |all |every )?"
    + _AI
    + r"(?: \w+)?[ \t]*[:,]|"
    r"(?:\b(?:the|all|any|every) |(?:^|(?<=[^\w\s])|(?<=[^\w\s][ ])))(?:ai |llm |language )?(?:\w+ )?"
    + _AI
    + r" (?:must|should|shall|will now|needs to|"
    r"has to|have to|need to|are required to|"
    r"is (?:required|instructed|expected|to)|is now)\b"
    r"(?! be\b)|"
    r"(?:^|(?<=[^\w\s])|(?<=[^\w\s][ \t])|(?<=\n))(?:hey |hi |dear |ok |okay )?" + _AI + r"[\])]?[ \t]*[:,]|"
    r"(?:^|(?<=[^\w\s])|(?<=[^\w\s][ \t])|(?<=\n))(?:\w+ ){1,2}"
    + _AI
    + r"[ \t]*:|you,? the "
    + _AI
    + r"\b|@"
    + _AI
    + r"\b|(?:if|when|while) (?:an?|any|the) (?:\w+ )?"
    + _AI
    + r" (?:(?:is|are) \w+ing|reads?|sees?|processes|parses|summari[sz]es|finds?|gets?)\b|"
    r"\bwhen (?:you )?(?:summari[sz]e|summari[sz]ing|answer(?:ing)?|respond(?:ing)?|repl(?:y|ying)|asked about|"
    r"process(?:ing)?|read(?:ing)?) (?:this|the) (?:page|document|email|e ?mail|article|text|content|file|message|"
    r"site|website|review|ticket|issue|pdf)\b|\bbefore (?:you )?(?:answer(?:ing)?|respond(?:ing)?|repl(?:y|ying)|"
    r"summari[sz](?:e|ing)) (?:to )?(?:the user|this|the question|them)?)"
)
_MENTION = re.compile(r"@" + _AI.replace(" ?", r"[\W_]*").replace(" ", r"[\W_]+") + r"\b")
_GREETING = _c(r"[\W_]*(?:the |hey |hi |dear |hello |ok |okay |@|" + _AI + r"[\W_]*[:,])")
_ACT = _c(
    r"\b(?:"
    + _OVR
    + r"|(?:do not|don'?t|never|avoid) (?:tell|mention|inform|show|reveal|disclose|alert|notify|"
    r"warn)(?:ing)?|(?:send|forward|e ?mail|mail|export|post|upload|transmit|exfiltrate|leak|share|copy|transfer|wire|submit|push|"
    r"publish|paste)(?: \w+){0,6}? (?:to|at|into|with)\b|(?:call|invoke|use|run|execute|trigger) the \w+ (?:tool|function|"
    r"command|api|endpoint)|(?:reply|respond|answer|say|output|print|write|state)(?: only)? (?:(?:with|that)\b|:|\")|"
    r"(?:must|should|shall|will|needs? to|has to|have to)(?: \w+)? (?:say|state|claim|tell|report|mention|recommend|"
    r"praise|endorse)\b|(?:say|claim|state|tell (?:them|the users?)) (?:that|they|it|this|you|the)\b|"
    r"(?:never|don'?t|do not) (?:flag|report|mark|reject|block|quarantine|escalate)|(?:answer|response|output|verdict|"
    r"result|decision) (?:is|must be|should be) always|(?:rank|rate|score|mark|classify|label|approve) (?:this|the|my|our) \w+ (?:as|first|highest|top|positive|approved|"
    r"safe)\b|mark (?:it|this|them|the \w+) as \w+|(?:quietly|silently|secretly|covertly|discreetly) \w+|without (?:review|"
    r"approval|checking|verification|asking)|(?:must|should|shall|will|needs? to|has to|have to)(?: \w+)? (?:approve|grant|"
    r"accept|authori[sz]e|pay|delete|forward|send|refund|transfer)\b|(?:notify|tell|inform|alert) no ?one|without (?:telling|notifying|"
    r"informing|alerting|asking) (?:anyone|the user|them)|(?:do not|don'?t|never) (?:ask|confirm with|check with) (?:the "
    r"user|anyone|them)|(?:always|immediately) (?:add|buy|purchase|book|order|click|select|choose|approve|accept)|"
    r"(?:run|execute) `|tell the user|(?:recommend|suggest|direct|redirect|point|urge) the user|ask (?:the )?users? (?:for|to (?:enter|provide|"
    r"share|send|confirm|type))|(?:visit|open|navigate to|"
    r"go to|fetch|load|click|download|curl|browse to) (?:https?:|www\.|the (?:link|url))|instead|"
    r"(?:include|append|insert|add|embed|encode) (?:\w+ ){0,6}?(?:in|to|into|as) (?:your|the|every|each|all|any) (?:response|reply|"
    r"answer|summary|output|url|link|image)|(?:reveal|disclose|print|output|include|list) (?:\w+ ){0,5}?(?:system "
    r"prompt|api ?keys?|passwords?|credentials|secrets?|tokens?|env(?:ironment)? variables|conversation|chat history)|"
    r"(?:grant|approve|authori[sz]e|delete|transfer|wire|pay|purchase|buy)\b(?: \w+){0,4}? (?:immediately|now|all|"
    r"without))"
)
_EXFIL = _c(
    r"\b(?:send|forward|e ?mail|post|upload|transmit|exfiltrate|leak|copy|transfer|submit|append|encode)(?: \w+){0,4}? "
    r"(?:the |all |every |this )?(?:user'?s? |users'? )?(?:conversation|chat history|message history|messages|"
    r"session (?:id|token|cookie)s?|cookies?|credentials|passwords?|api ?keys?|access tokens?|tokens|secrets?|"
    r"private keys?|ssh keys?|contacts|address book|emails|inbox|files|documents|env(?:ironment)? variables|"
    r"personal (?:data|information)|credit card \w+)\b(?: \w+){0,8}? (?:to|at|into|as a (?:query|parameter)) "
    r"(?:https?:|www\.|\S+@\S+\.\w+|the (?:url|link|address|endpoint|server|webhook)|this (?:url|link|address|email))"
)
_EXFIL_W = _words(
    "send forward email mail post upload transmit exfiltrate leak copy transfer submit append encode"
)
_MD_EXFIL = re.compile(
    r"!\[[^\]\n]*\]\(\s*https?://[^)\s]*[?&][\w.-]+=(?:\{|<|\[|\$|%7b|[^)\s&]*(?:data|secret|token|password|"
    r"conversation|history|summary|chat|user|key|session|cookie))"
)
_COMMENT = re.compile(r"<!--(?P<body>.{0,2000}?)-->", re.S)

# Forged turns.
_TOKENS = re.compile(
    r"<\|(?:im_start|im_end|im_sep|system|user|assistant|end|eot_id|start_header_id|end_header_id|endoftext|"
    r"begin_of_text|tool|ipython|python_tag|eom_id)\|>|<(?:start|end)_of_turn>|<(?:/?s)>\s*\[inst\]|"
    r"</(?:tool_response|tool_result|tool_output|function_results?|function_output|tool_call|search_results?|"
    r"untrusted_content|external_content|retrieved_content|user_query|user_input|document_content)>|"
    r"\{\{#(?:system|user|assistant)~?\}\}"
)
_TOKEN_MARKS = (
    "<|",
    "_of_turn>",
    "[inst]",
    "</tool",
    "</function",
    "</search",
    "</untrusted",
    "</external",
    "</retrieved",
    "</user_",
    "</document_",
    "{{#",
)
_HEADING = re.compile(
    r"(?:^|\n)[ \t]*#{1,4}[ \t]*(?:system|assistant|instruction|response|developer|admin)(?:[ \t]+(?:prompt|"
    r"message|override|update|note|instructions?))?[ \t]*:"
)
_ROLE_LINE = re.compile(  # on the plain view
    r"(?:^|\n)[ \t>*\[(]*(?P<role>system|developer|admin|administrator|operator|assistant|ai|human|user)[\])*]*"
    r"(?:[ \t]+(?:message|prompt|note|override|update|notice|instruction|instructions))?[ \t]*[:\]][ \t]*(?P<rest>[^\n]{1,300})"
)
_ROLE_W = _words("system developer admin administrator operator assistant ai human user")
_COMPLY = _c(
    r"(?:sure|certainly|of course|absolutely|okay|ok|understood|yes|i will|i'?ll|i can|here is|here'?s|as requested|"
    r"no problem|acknowledged|done|fine|alright|got it)\b"
)
_SYS_ROLES = ("system", "developer", "admin", "administrator", "operator")

# Instruction content: what makes a forged turn, a bracketed header or a comment a payload.
_PAYLOAD = _c(
    r"\b(?:"
    + _OVR
    + r" (?:\w+ ){0,3}(?:instructions|rules|guidelines|restrictions|prompt|safety|filters|polic\w+|"
    r"user|everything)|you (?:must|will|shall|are now|can now|may now|are to|have to|need to|should)|new (?:rules?|"
    r"instructions?|task|policy|persona)|reveal|disclose|unrestricted|unfiltered|uncensored|no (?:restrictions|rules|"
    r"limits|filters|guidelines)|system prompt|developer mode|jail ?break|password|secret|api ?key|credentials|"
    r"(?:is|are) (?:an? )?(?:admin|administrator|authori[sz]ed|verified|approved|trusted)|always (?:answer|comply|"
    r"obey|respond)|comply|from now on|do anything|exfiltrate|send|forward|the assistant|the user (?:is|has)|"
    r"respond (?:only|with)|call the|override|safety)\b"
)

# Discussion: the message talks about attacks, templates or tokenizers.
_DISCUSS = _c(
    r"\b(?:prompt ?injections?|injections?|jail ?breaks?|jail ?breaking|attacks?|attackers?|adversarial|red ?team(?:ing|"
    r"ers?)?|payloads?|classifiers?|detect(?:or|ion|s|ing|ed)?|filter(?:s|ing|ed)?|regex(?:es)?|guard(?:rail)?s?|"
    r"heuristics?|test (?:cases?|suite|set)|unit tests?|(?:an|for|as an?) examples?|e\.g|such as|phrases?|strings?|owasp|security|"
    r"mitigat\w+|defen[cs]\w*|prevent\w*|protect\w*|sanitiz\w+|block(?:s|ed|ing)?|flag(?:s|ged|ging)?|tokeni[sz]\w*|"
    r"templates?|chatml|jinja|special tokens?|stop (?:tokens?|sequences?)|eos|bos|fine ?tun\w*|dataset|format(?:s|ted|"
    r"ting)?|parse[rsd]?|parsing|escape[sd]?|strip(?:s|ped|ping)?|mean|means|meaning|explain\w*|article|paper|blog|"
    r"tutorial|docs?|documentation|what happens|what if|(?:when|if) (?:the|a) model|why (?:do|does|did|would|is|are)|how (?:do|does|can|could|should|would) (?:i|we|you|"
    r"it|they|one|people|attackers)|what (?:is|are|does|do))\b"
)
# Reported frames: someone else says or does the attack ("attackers write...", "make my agent ignore...").
_REPORTER_SRC = (
    r"\b(?:(?:users?|people|someone|somebody|they|hackers?|attackers?|adversar\w+|researchers?|customers?|folks|"
    r"trolls?|(?:the|an?|this|that|one|some) (?:e ?mail|page|document|doc|prompt|message|text|payload|attack|"
    r"injection|jailbreak|string|input|example|comment|review|website|site|pdf))(?: \w+){0,2}? (?:types?|typed|"
    r"writes?|wrote|says?|said|tells?|told|tr(?:y|ies|ied)|asks?|asked|includes?|included|contains?|contained|"
    r"uses?|used|sends?|sent|puts?|paste[sd]?|embeds?|embedded|hides?|hid|hidden|reads?|like|such as)|"
    r"(?:tells?|told|trick(?:s|ed)?|instructs?|asks?|get|gets|make|makes|convince|force|cause|caus(?:es|ing)|"
    r"manipulate|coax|persuade|stop|prevent|keep|protect)(?: (?:the|a|an|our|my|your|their|its|these|those))?"
    r"(?: \w+)? " + _AI + r"(?: (?:to|into|from))?)\b"
)
_REPORTER = _c(_REPORTER_SRC)
_REPORTED = _c(
    r"(?:" + _REPORTER_SRC + r"|(?P<subject>\b(?:the|a|an|my|our|your|their|its|this|that|some|many|most) "
    r"(?:\w+ ){0,2}"
    + _AI
    + r"(?:'?s)?(?: (?:would|could|can|may|might|often|sometimes|always|just|still|keeps?|"
    r"starts?|tends? to|to|that|which|then|does|did|not|n'?t|will (?:just|still|happily|often|sometimes)))*)|"
    r"\b(?:from|against|avoid|avoids|prevent|prevents|detect|detects|detecting|about|of|like|stop|stops) "
    r"(?:ignoring|disregarding|forgetting|bypassing|revealing|leaking|printing|repeating|obeying|following)|"
    r"(?:\blike|such as|e\.g\.?|for (?:example|instance)|i\.e\.?|the (?:phrase|string|words?|line|sentence))[\W_]*)"
    r"[\W_]*$"
)
_VERB_FIRST = _c(
    r"(?:ignor|disregard|forget|bypass|overrid|skip|follow|obey|reveal|leak|print|repeat|output|show)"
)
# A token named in a question about inference or training software.
_RUNTIME = _c(
    r"\b(?:vllm|llama ?cpp|llama|ollama|transformers|hugging ?face|hf|gguf|tgi|sglang|mlx|tokenizers?|generat\w+|"
    r"decod\w+|sampling|samples?|outputs?|completions?|stop(?:s|ped|ping)? (?:on|at|after|before|generating)|"
    r"eos|bos|detokeni\w+|logits?|vocab\w*|qwen|mistral|gemma|phi|smollm|gpt ?2|model card|chat ?ml|hermes)\b"
)
_QUOTES = '"`'

# Owned targets: an instruction noun phrase that belongs to the model, in either word order ("your
# previous instructions", "the policies the developer gave you", "the restrictions placed on you").
_T_STRONG = (
    r"instructions?|directions|directives?|guidelines|guardrails|restrictions|safeguards|programming|"
    r"system (?:prompt|message|instructions?)s?|pre ?prompt|(?:configuration|config|setup|deployment) prompt|content polic(?:y|ies)|safety (?:rules|guidelines|"
    r"filters?|training|protocols?|settings|checks|measures)"
)
_T_WEAK = (
    r"rules|polic(?:y|ies)|filters?|prompt|configuration|config|training|constraints|limitations|ethics|morals|"
    r"protocols?|settings|memory of (?:the|your) (?:system )?(?:prompt|instructions)"
)
_OT = _c(
    r"\b(?P<pre>(?:(?:your|ur|the|all|any|of|these|those|my|our|its|previous|prior|earlier|above|original|initial|"
    r"hidden|secret|developer'?s?|operator'?s?|default|current|old|existing|safety|content|ethical|moral|pre ?set|"
    r"built ?in|whole|entire|full|every|each|standing|core|base|internal) ){0,4})(?P<t>"
    + _T_STRONG
    + "|"
    + _T_WEAK
    + r")\b(?P<post>(?: (?:that|which|you|were|was|have|had|got|gave|given|placed|set|put|on|to|by|from|your|the|"
    r"developers?|operators?|creators?|makers?|owners?|openai|anthropic|system|earlier|before|previously|up|with|"
    r"received|been|provided|imposed|assigned|configured|programmed|told|taught|are|is|'?ve|in|dev|team|deployed|launched|"
    r"started|initiali[sz]ed|shipped|created|loaded)\b){0,7})"
)
_OWNER_PRE = _c(
    r"\b(?:your|ur|previous|prior|earlier|above|original|initial|hidden|secret|developer'?s?|"
    r"operator'?s?|pre ?set|built ?in|internal)\b"
)
_OWNER_POST = _c(
    r"\b(?:your|(?:you|to you|on you)\b(?! (?:(?:'?ve|have|had) )?(?:can|could|should|might|may|will|want|need|do|did|follow|use|got|gotten|get)\b)|"
    r"(?:your|the) (?:developers?|operators?|creators?|makers?|owners?|dev team|system)|openai|anthropic)"
)
_MINE = _c(r"\b(?:my|our)\b")
_OVR2 = _c(
    r"\b(?:"
    + _OVR
    + r"|wip(?:e|ing)|eras(?:e|ing|ed)|delet(?:e|ed|ing)|cancel+(?:ed|ing)?|revok(?:e|ed|ing)|void|"
    r"nullif(?:y|ied)|lift(?:ed)?|remov(?:e|ed|ing)|suspend(?:ed)?|overridden|superseded|replaced|outdated|obsolete|"
    r"expired|invalid(?:ated)?|deactivated|disabled|(?:turned|switched) off|no longer (?:count|apply|applies|matter|valid|bind|"
    r"binding|in effect|exist)|(?:don'?t|do not|doesn'?t|does not) (?:count|apply|matter|bind you)|changed|(?:are|is) not "
    r"(?:binding|valid|in effect|active|in force)|not binding)\b"
)
_DISCLOSE = _c(
    r"\b(?:show|print|output|repeat|echo|paste|dump|reveal|display|recite|quote|rewrite|translate|summari[sz]e|spell "
    r"out|copy|list|share|tell me|give me|send me|write (?:out|down)|what|which|whats|describe|leak|expose|disclose|"
    r"reproduce|read (?:back|out)|type out|verbatim|word for word|(?:exact|full|complete|whole|entire) (?:words|text|"
    r"wording|list|content))\b"
)


_NONE_APPLY = _c(
    r"\bnone of (?:your|the|these|those) (?:\w+ ){0,2}(?:"
    + _T_STRONG
    + "|"
    + _T_WEAK
    + r") (?:\w+ ){0,3}?(?:apply|"
    r"applies|are in (?:force|effect)|matter|count|are valid|bind|hold|are active)\b"
)
_EXTRACT_THE = _c(
    r"\b"
    + _SHOW_STRICT
    + r" (?:me |us )?(?:the|your) (?:\w+ )?(?:system|configuration|config|setup|hidden|initial|"
    r"original|developer|current|full|deployment) (?:prompt|message|instructions)\b(?! (?:for|of|in|from|format|"
    r"template|example|that (?:i|we))\b)"
)
_MINE_POST = _c(
    r"[\W_]+(?:that |which )?(?:(?:i|we) |you (?:gave|wrote|said|suggested|mentioned|provided|listed|"
    r"showed|posted|sent|shared)\b)"
)
