"""Personal data found by maintained validators: phonenumbers (Google's libphonenumber) and python-stdnum.

Phones: `phonenumbers.PhoneNumberMatcher` at leniency VALID (the number is a real, assigned range for
its region), in international format (`+` prefix) anywhere and in the national formats of the
regions in `PHONE_REGIONS` (default US). A match written as one bare digit run (no `+`, no
separator, no bracket) counts only right after a phone word ("call 4155552671"): an order number
is also a digit run, and a date next to it must not make it a phone.

Identifiers (python-stdnum validators, so check digits and assigned ranges are checked):
  - IBAN (`stdnum.iban`: country length and structure, mod-97 check), grouped or not, any case;
  - US SSN (`stdnum.us.ssn`: area/group/serial rules, advertising numbers refused) written
    `123-45-6789` / `123 45 6789` anywhere, or nine bare digits right after an SSN word;
  - EU national identifiers whose shape is distinctive in chat text, anywhere: Spanish DNI/NIE
    (`stdnum.es.dni`, `stdnum.es.nie`: 8 digits + check letter), Italian codice fiscale
    (`stdnum.it.codicefiscale`, 16 characters with a check letter);
  - EU national identifiers that are bare digit runs, only right after an identifier word
    ("BSN", "PESEL", "Steuer-ID", "NIR", "national id", ...): Dutch BSN (`nl.bsn`), Polish PESEL
    (`pl.pesel`), German tax id (`de.idnr`), French NIR (`fr.nir`), Belgian national number
    (`be.nn`). A bare 9-11 digit run with a valid check digit is too common (1 in 10 or 11 random
    numbers pass) to redact without the word.
"""

from __future__ import annotations

import re

import phonenumbers
from stdnum import iban as _iban
from stdnum.be import nn as _be_nn
from stdnum.de import idnr as _de_idnr
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.fr import nir as _fr_nir
from stdnum.it import codicefiscale as _it_cf
from stdnum.nl import bsn as _nl_bsn
from stdnum.pl import pesel as _pl_pesel
from stdnum.us import ssn as _us_ssn

from features.redact.patterns import PHONE_CONTEXT, R_CONTEXT, R_LOOSE, Span

PHONE_REGIONS: tuple[str, ...] = ("US",)  # national formats read for these regions; + numbers anywhere

_PHONE_SEPARATOR = re.compile(r"[\s().+-]")
_BARE_RUN = re.compile(r"\d+")
IDD_00 = re.compile(r"(?<![\w+.-])00[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def find_phones_validated(text: str, out: list[Span], regions: tuple[str, ...] = PHONE_REGIONS) -> None:
    seen: set[tuple[int, int]] = set()
    for region in (None, *regions):  # None: only numbers in international format
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            key = (m.start, m.end)
            if key in seen:
                continue
            seen.add(key)
            raw = m.raw_string
            if _DOTTED_QUAD.fullmatch(raw):
                continue  # an IPv4 address (find_ips decides), not a phone
            if _BARE_RUN.fullmatch(raw) and not PHONE_CONTEXT.search(text, max(0, m.start - 24), m.start):
                continue  # a bare digit run: an order or account number unless a phone word says so
            before = text[m.start - 1] if m.start else ""
            if before and (
                before.isalnum()
                or before in "_/"
                or (before in "-." and m.start >= 2 and text[m.start - 2].isalnum())
            ):
                continue  # part of a longer id: ORD-2024-000123
            if m.end < len(text) and (text[m.end].isalnum() or text[m.end] == "_"):
                continue
            out.append(Span(m.start, m.end, "phone", R_LOOSE))
    if "00" in text:  # the 00 international prefix (Europe and most of the world; the US dials 011)
        for m in IDD_00.finditer(text):
            raw = m.group(0).rstrip(" .-")
            while raw:
                try:
                    ok = phonenumbers.is_valid_number(phonenumbers.parse("+" + raw[2:]))
                except phonenumbers.NumberParseException:
                    ok = False
                if ok:
                    out.append(Span(m.start(), m.start() + len(raw), "phone", R_LOOSE))
                    break
                cut = max(raw.rfind(" "), raw.rfind("-"), raw.rfind("."))
                raw = raw[:cut] if cut > 2 else ""


IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")
IBAN_GATE = re.compile(r"[A-Za-z]{2}\d{2}")
SSN = re.compile(r"(?<![\w.-])\d{3}([- ])\d{2}\1\d{4}(?![\w]|[.-]\d)")
SSN_BARE = re.compile(r"(?<![\w.-])\d{9}(?![\w]|[.-]\d)")
SSN_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:ssn|social security(?: number| no\.?| #)?|ss#)\W{0,12}(?:is|:|#)?\W{0,3}$"
)
ES_ID = re.compile(r"(?<![A-Za-z0-9])[XYZxyz]?\d{7,8}[- ]?[A-Za-z](?![A-Za-z0-9])")
IT_CF = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{6}[0-9LMNPQRSTUVlmnpqrstuv]{2}[A-Za-z][0-9LMNPQRSTUVlmnpqrstuv]{2}"
    r"[A-Za-z][0-9LMNPQRSTUVlmnpqrstuv]{3}[A-Za-z](?![A-Za-z0-9])"
)
_CF_GATE = re.compile(r"[A-Za-z]{6}\d\d[A-Za-z]")
NATIONAL_DIGITS = re.compile(r"(?<![\w.-])\d[\d .-]{7,20}\d(?![\w]|[.-]\d)")
NATIONAL_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:bsn|burgerservicenummer|pesel|steuer-?id|steuerliche identifikationsnummer|idnr"
    r"|nir|num[ée]ro de s[ée]curit[ée] sociale|insee|rijksregisternummer|num[ée]ro national|national id"
    r"|national identification number|national number|personal id(?:entity)? number|citizen (?:service )?number"
    r"|id number|tax id)\W{0,12}(?:is|:|#|no\.?)?\W{0,3}$"
)
_NATIONAL_VALIDATORS = (_nl_bsn, _pl_pesel, _de_idnr, _fr_nir, _be_nn)


def find_iban(text: str, out: list[Span]) -> None:
    for m in IBAN.finditer(text):
        raw = m.group(0)
        # A trailing word after a grouped IBAN may have joined it: shorten group by group until valid.
        while raw:
            if _iban.is_valid(raw.upper()):
                out.append(Span(m.start(), m.start() + len(raw), "iban", R_CONTEXT))
                break
            cut = raw.rfind(" ")
            if cut < 0:
                break
            raw = raw[:cut]


_SEVEN = re.compile(r"\d{7}")
_SSN_SHAPE = re.compile(r"\d{3}[- ]\d{2}[- ]\d{4}")
NATIONAL_GATE = re.compile(
    r"bsn|burgerservice|pesel|steuer|idnr|nir|insee|s[ée]curit[ée] sociale|rijksregister|national|personal id"
    r"|citizen|id number|tax id"
)


def find_national_ids(text: str, low: str, out: list[Span]) -> None:
    """`low`: the lower-cased text; each identifier runs only behind its own cheap test."""
    if _SSN_SHAPE.search(text):
        for m in SSN.finditer(text):
            if _us_ssn.is_valid(m.group(0).replace(" ", "-")):  # stdnum reads only dashes
                out.append(Span(m.start(), m.end(), "national_id", R_CONTEXT))
    seven = _SEVEN.search(text) is not None
    if seven and ("ssn" in low or "social security" in low or "ss#" in low):
        for m in SSN_BARE.finditer(text):
            if SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()) and _us_ssn.is_valid(m.group(0)):
                out.append(Span(m.start(), m.end(), "national_id", R_CONTEXT))
    if seven:
        for m in ES_ID.finditer(text):
            v = m.group(0).upper()
            mod = _es_nie if v[0] in "XYZ" else _es_dni
            if mod.is_valid(v):
                out.append(Span(m.start(), m.end(), "national_id", R_CONTEXT))
    if NATIONAL_GATE.search(low):
        for m in NATIONAL_DIGITS.finditer(text):
            if not NATIONAL_CONTEXT.search(text, max(0, m.start() - 48), m.start()):
                continue
            v = m.group(0)
            if any(mod.is_valid(v) for mod in _NATIONAL_VALIDATORS):
                out.append(Span(m.start(), m.end(), "national_id", R_CONTEXT))


def find_codice_fiscale(text: str, out: list[Span]) -> None:
    """Italian codice fiscale (no 7-digit run: not behind the digit-run gate of the others)."""
    if len(text) >= 16 and _CF_GATE.search(text):
        for m in IT_CF.finditer(text):
            if _it_cf.is_valid(m.group(0).upper()):
                out.append(Span(m.start(), m.end(), "national_id", R_CONTEXT))
