"""Personal data: detect it in German and English text, and anonymise it (mask, pseudonymise or drop).

Maintained libraries where one works offline: phone numbers with Google's libphonenumber (`phonenumbers`,
German national and international formats), IBAN and card checksums with `python-stdnum`, names from the
first/last-name lists that `faker` ships for de_DE, en_US and en_GB (also the source of pseudonyms). Presidio
is not used: its name recogniser needs a spaCy model, and none is installable from the package registries.
What no library covers offline (e-mail, IP, URLs with secrets, dates of birth, street addresses, names by
title) is a documented regular expression. Detected values are never logged; only counts per type leave here.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

from tuneforge.config import PiiName as PiiType

PII_TYPES: tuple[PiiType, ...] = get_args(PiiType)

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
URL_SECRET = re.compile(
    r"\b[a-z][a-z0-9+.-]*://(?:[^\s/@:]+:[^\s/@]+@[^\s]+"  # user:password@host
    r"|[^\s?#]+\?[^\s#]*\b(?:token|access_token|api_key|apikey|key|secret|password|pwd|sig|signature)=[^\s&#]+?[^\s]*?)"
    r"(?=[.,;:!?)]*(?:\s|$))",  # sentence punctuation after the URL is not part of it
    re.IGNORECASE,
)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*(?![\w:])")
PHONE_HINT = re.compile(r"\+?\(?\d[\d\s/().-]{5,}\d")
PHONE_REGIONS = ("DE", "GB", "US")
NOT_A_PHONE = re.compile(r"^(?:\d{1,2}\.\d{1,2}\.\d{2,4}|\d{4}-\d{2}-\d{2}|\d+[.,]\d{1,2})$")  # dates, amounts
MONTHS = (
    r"(?:Jan(?:uar|uary)?|Feb(?:ruar|ruary)?|M[äa]rz|Mar(?:ch)?|Apr(?:il)?|Mai|May|Jun[ie]?|Jul[iy]?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|O[ck]t(?:ober)?|Nov(?:ember)?|De[cz](?:ember)?)\.?"
)
DATE = (
    r"(?:\d{1,2}\.\s?\d{1,2}\.\s?(?:19|20)\d{2}|(?:19|20)\d{2}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/(?:19|20)\d{2}"
    rf"|\d{{1,2}}\.?\s+{MONTHS}\s+(?:19|20)\d{{2}}|{MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}})"
)
BIRTH = re.compile(
    r"(?:geboren(?:\s+am)?|geb\.(?:\s+am)?|Geburtsdatum|Geburtstag|born(?:\s+on)?|date\s+of\s+birth|DOB|birthday|d\.o\.b\.)"
    rf"[:\s]*(?:(?:is|ist|am|on|the|der|den)\s+)*({DATE})",
    re.IGNORECASE,
)
STREET_DE = (
    r"[A-ZÄÖÜ][a-zäöüß]+(?:[- ][A-ZÄÖÜ][a-zäöüß]+)*"
    r"(?:straße|strasse|str\.|weg|allee|platz|gasse|ring|damm|ufer|chaussee)"
    r"|(?:Am|An der|Auf dem|Im|In der|Zum|Zur) [A-ZÄÖÜ][a-zäöüß]+"
)
STREET_EN = (
    r"\d{1,5}\s+(?:[A-Z][a-z]+\s){1,3}(?:Street|St\.|Avenue|Ave\.|Road|Rd\.|Lane|Ln\.|Drive|Dr\.|Boulevard|Blvd\.|"
    r"Way|Court|Ct\.|Place|Pl\.|Terrace|Close)"
)
ADDRESS = re.compile(
    rf"\b(?:(?:{STREET_DE})\s+\d{{1,4}}\s?[a-z]?\b"
    rf"(?:,?\s+\d{{5}}\s+[A-ZÄÖÜ][a-zäöüß]+(?:\s(?:am|an der)\s[A-ZÄÖÜ]\w+)?)?"
    rf"|{STREET_EN}(?:,\s+[A-Z][a-z]+(?:\s[A-Z][a-z]+)?(?:,\s+[A-Z]{{2}})?(?:\s+\d{{5}}(?:-\d{{4}})?)?)?)"
)
TITLES = r"(?:Herrn?|Frau|Hr\.|Fr\.|Mr\.?|Mrs\.?|Ms\.?|Miss|Dr\.|Prof\.)"
CAP = r"[A-ZÄÖÜ](?:[a-zäöüß]+|'[A-Z][a-zäöüß]+)(?:-[A-ZÄÖÜ][a-zäöüß]+)?"
INTRO = r"(?:ich heiße|mein Name ist|my name is|this is|I am|I'm)"
VERSION = re.compile(r"(?:version|firmware|release|v)\s*$", re.IGNORECASE)
PARTICLE = r"(?:(?:von|van|de|der|zu|vom)\s+){0,2}"


@dataclass(frozen=True)
class Finding:
    """One detected span of personal data (the value itself is read from the text only to replace it)."""

    type: PiiType
    start: int
    end: int


WORD = re.compile(rf"\b{CAP}\b")
SURNAME = re.compile(rf"(?:\s+{CAP})?\s+{PARTICLE}{CAP}\b")  # after a known first name
TITLED = re.compile(rf"\b{TITLES}\s+(?:(?:Dr\.|Prof\.)\s+)?(?:{CAP}\s+)?{PARTICLE}{CAP}\b")
INTRODUCED = re.compile(rf"\b(?i:{INTRO})\s+({CAP}\s+{PARTICLE}{CAP})\b")


@functools.cache
def _first_names() -> frozenset[str]:
    """First names from faker's de_DE, en_US and en_GB lists (a set lookup per capitalised word: fast)."""
    from faker.providers.person.de_DE import Provider as De
    from faker.providers.person.en_GB import Provider as Gb
    from faker.providers.person.en_US import Provider as Us

    names = set(De.first_names) | set(Us.first_names) | set(Gb.first_names)
    return frozenset(n for n in names if len(n) > 2 and " " not in n)


def detect(text: str, types: tuple[PiiType, ...] = PII_TYPES) -> list[Finding]:
    """Non-overlapping findings in `text`, earliest first; on overlap the longer (then earlier-listed) type wins."""
    found = [f for kind in types for f in DETECTORS[kind](text)]
    found.sort(key=lambda f: (f.start, -(f.end - f.start), PII_TYPES.index(f.type)))
    kept: list[Finding] = []
    for f in found:
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


def _spans(kind: PiiType, pattern: re.Pattern[str], text: str, group: int = 0) -> Iterator[Finding]:
    for m in pattern.finditer(text):
        yield Finding(kind, m.start(group), m.end(group))


def _emails(text: str) -> Iterator[Finding]:
    return _spans("EMAIL", EMAIL, text) if "@" in text else iter(())


def _url_secrets(text: str) -> Iterator[Finding]:
    return _spans("URL_SECRET", URL_SECRET, text) if "://" in text else iter(())


def _phones(text: str) -> Iterator[Finding]:
    if not PHONE_HINT.search(text):
        return
    import phonenumbers

    seen: set[tuple[int, int]] = set()
    for region in PHONE_REGIONS:  # national formats of each; international (+49, 0049) ones match in all
        for m in phonenumbers.PhoneNumberMatcher(text, region):
            digits = sum(c.isdigit() for c in m.raw_string)
            if digits < 6 or NOT_A_PHONE.match(m.raw_string) or (m.start, m.end) in seen:
                continue
            seen.add((m.start, m.end))
            yield Finding("PHONE", m.start, m.end)


def _ibans(text: str) -> Iterator[Finding]:
    from stdnum import iban

    for m in IBAN.finditer(text):
        if iban.is_valid(m.group()):
            yield Finding("IBAN", m.start(), m.end())


def _cards(text: str) -> Iterator[Finding]:
    from stdnum import luhn

    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn.is_valid(digits):
            yield Finding("CREDIT_CARD", m.start(), m.end())


def _ips(text: str) -> Iterator[Finding]:
    for pattern in (IPV4, IPV6):
        for m in pattern.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            if VERSION.search(text[max(0, m.start() - 12) : m.start()]):
                continue  # "Version 10.4.2.1" is not an address
            yield Finding("IP_ADDRESS", m.start(), m.end())


def _births(text: str) -> Iterator[Finding]:
    return _spans("DATE_OF_BIRTH", BIRTH, text, group=1)


def _persons(text: str) -> Iterator[Finding]:
    """`Firstname [Middle] Lastname`, `Title [Firstname] Lastname`, and a name after `my name is`."""
    firsts = _first_names()
    for word in WORD.finditer(text):
        if word.group() in firsts and (rest := SURNAME.match(text, word.end())):
            yield Finding("PERSON", word.start(), rest.end())
    yield from _spans("PERSON", TITLED, text)
    yield from _spans("PERSON", INTRODUCED, text, group=1)


def _addresses(text: str) -> Iterator[Finding]:
    return _spans("ADDRESS", ADDRESS, text)


DETECTORS: dict[PiiType, Any] = {
    "EMAIL": _emails,
    "PHONE": _phones,
    "IBAN": _ibans,
    "CREDIT_CARD": _cards,
    "IP_ADDRESS": _ips,
    "URL_SECRET": _url_secrets,
    "DATE_OF_BIRTH": _births,
    "PERSON": _persons,
    "ADDRESS": _addresses,
}


def mask(text: str, findings: list[Finding]) -> str:
    """Each finding replaced by its type tag, e.g. [EMAIL]."""
    return _replace(text, findings, lambda f, value: f"[{f.type}]")


def pseudonymize(text: str, findings: list[Finding], salt: str) -> str:
    """Each finding replaced by a fake value of its type; the same value (and salt) always gets the same fake."""
    return _replace(text, findings, lambda f, value: fake(f.type, value, salt))


def _replace(text: str, findings: list[Finding], make: Any) -> str:
    parts, pos = [], 0
    for f in findings:
        parts += [text[pos : f.start], make(f, text[f.start : f.end])]
        pos = f.end
    return "".join(parts) + text[pos:]


@functools.cache
def _faker() -> Any:
    from faker import Faker

    return Faker("de_DE")


def fake(kind: PiiType, value: str, salt: str) -> str:
    """A deterministic fake value for `value` of type `kind`: a seeded Faker call, no mapping table kept."""
    seed = int.from_bytes(hashlib.blake2b(f"{salt}\x1f{kind}\x1f{value}".encode(), digest_size=8).digest(), "little")
    faker = _faker()
    faker.seed_instance(seed)
    makers = {
        "EMAIL": lambda: faker.email(domain="example.org"),
        "PHONE": faker.phone_number,
        "IBAN": faker.iban,
        "CREDIT_CARD": faker.credit_card_number,
        "IP_ADDRESS": faker.ipv4_private,
        "URL_SECRET": lambda: "https://example.org/" + faker.uri_path(),
        "DATE_OF_BIRTH": lambda: faker.date_of_birth().strftime("%d.%m.%Y"),
        "PERSON": lambda: f"{faker.first_name()} {faker.last_name()}",
        "ADDRESS": lambda: faker.street_address(),
    }
    return str(makers[kind]())


MARK = re.compile(r"\[\[([A-Z_]+):(.+?)\]\]")


def parse_labelled(line: str) -> tuple[str, list[Finding]]:
    """A labelled line (`text with [[TYPE:value]] marks`) as plain text and its gold findings."""
    text, gold, pos = [], [], 0
    length = 0
    for m in MARK.finditer(line):
        before = line[pos : m.start()]
        text.append(before)
        length += len(before)
        kind = m.group(1)
        if kind not in PII_TYPES:
            raise ValueError(f"unknown type {kind!r} in labelled line: {line!r}")
        gold.append(Finding(kind, length, length + len(m.group(2))))  # type: ignore[arg-type]
        text.append(m.group(2))
        length += len(m.group(2))
        pos = m.end()
    text.append(line[pos:])
    return "".join(text), gold


def score(lines: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per type (and 'ALL') on labelled lines; a hit is the same type, overlapping."""
    tp: dict[str, int] = {t: 0 for t in PII_TYPES}
    fp, fn = dict(tp), dict(tp)
    for line in lines:
        text, gold = parse_labelled(line)
        found = detect(text)
        for f in found:
            hit = any(g.type == f.type and g.start < f.end and f.start < g.end for g in gold)
            (tp if hit else fp)[f.type] += hit or 1
        for g in gold:
            if not any(g.type == f.type and g.start < f.end and f.start < g.end for f in found):
                fn[g.type] += 1
    out = {}
    for t in [*PII_TYPES, "ALL"]:
        a, b, c = (sum(d.values()) for d in (tp, fp, fn)) if t == "ALL" else (tp[t], fp[t], fn[t])
        p, r = a / (a + b) if a + b else 1.0, a / (a + c) if a + c else 1.0
        out[t] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": a + c}
    return out
