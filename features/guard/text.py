"""The folded view the guard matches on: NFKC, invisible characters dropped, look-alikes mapped to Latin,
accents stripped, case folded, with a map back to the original offsets; de-l33ting and squashing."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# --------------------------------------------------------------------------------------------------
# Normalization: one folded view per message, with a map back to the original offsets.

_EXTRA_INVISIBLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x2800, 0x3164, 0xFFA0}
# Look-alikes NFKC leaves alone (Cyrillic, Greek, IPA), after case folding.
_CONFUSABLES = {
    "а": "a",
    "в": "b",
    "е": "e",
    "ё": "e",
    "ԑ": "e",
    "һ": "h",
    "н": "h",
    "і": "i",
    "ї": "i",
    "ӏ": "l",
    "ј": "j",
    "к": "k",
    "м": "m",
    "о": "o",
    "р": "p",
    "с": "c",
    "ԛ": "q",
    "т": "t",
    "у": "y",
    "х": "x",
    "ѕ": "s",
    "ԁ": "d",
    "ԝ": "w",
    "ɡ": "g",
    "ɑ": "a",
    "ɩ": "i",
    "ı": "i",
    "ɪ": "i",
    "ʟ": "l",
    "ɴ": "n",
    "α": "a",
    "β": "b",
    "ε": "e",
    "η": "n",
    "ι": "i",
    "κ": "k",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "τ": "t",
    "υ": "u",
    "χ": "x",
    "ϲ": "c",
    "ω": "w",
    "ſ": "s",
    "ℓ": "l",
    "\u2018": "'",
    "\u2019": "'",
    "\u02bc": "'",
    "\u2032": "'",
    "\u201c": '"',
    "\u201d": '"',
}


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    return unicodedata.category(ch) == "Cf" or cp in _EXTRA_INVISIBLE or 0xFE00 <= cp <= 0xFE0F


@lru_cache(maxsize=8192)
def _fold_char(ch: str) -> str:
    if _invisible(ch):
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        if _invisible(c):
            continue
        for d in unicodedata.normalize("NFKD", c.casefold()):
            if unicodedata.combining(d):
                continue
            out.append(_CONFUSABLES.get(d, d))
    return "".join(out)


def fold(text: str) -> tuple[str, list[int] | None]:
    """The folded view of `text` and, unless it is the identity, each folded char's original index."""
    if text.isascii():
        return text.lower(), None
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        folded = ch.lower() if ch.isascii() else _fold_char(ch)
        for c in folded:
            chars.append(c)
            index.append(i)
    return "".join(chars), index


# l33t: a digit or symbol that touches a letter is read as the letter it imitates ("1gn0r3", "@ll",
# "5y5tem"), and "l" is read as "i" on both sides, so "a11" and "all" meet. Same length: offsets survive.
_LEET_CHARS = str.maketrans("0134579@$!|+8l", "oieastgasiitbi")
_LEETY = re.compile(r"[0-9@$!|+][a-z]|[a-z][0-9]")
_LEET_RUN = re.compile(r"[0-9@$!|+]+(?=[a-z])|(?<=[a-z])[0-9]+")
I_FOR_L = str.maketrans("l", "i")


def deleet(folded: str) -> str:
    if _LEETY.search(folded):
        folded = _LEET_RUN.sub(lambda m: m.group().translate(_LEET_CHARS), folded)
    return folded.translate(I_FOR_L)


WORD = re.compile(r"[a-z]+")
# Five or more single characters in a row, separated by spacing or punctuation: "i g n o r e", "i.g.n.o.r.e".
SPACED_OUT = re.compile(r"(?:(?<![^\W_])[^\W_][\W_]{1,3}){4,}[^\W_](?![^\W_])")
_SQUASH_DROP = re.compile(r"[\W_]")


def squash(folded: str, index: list[int] | None) -> tuple[str, list[int]]:
    """Letters and digits only: the view in which letter-spaced text reads again."""
    keep = [i for i, c in enumerate(folded) if not _SQUASH_DROP.match(c)]
    text = deleet("".join(folded[i] for i in keep))
    return text, [index[i] for i in keep] if index is not None else keep
