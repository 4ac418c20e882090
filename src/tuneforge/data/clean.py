"""Cleaning: text normalisation and the comparable form of a record (pure functions).

Exact duplicates are found by a 64-bit hash of the normalised, case-folded, whitespace-collapsed texts
(`exact_key`); near duplicates by MinHash over the same text (dedup.py).
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata

from tuneforge.data.records import Record

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200e\u200f\u2028\u2029\ufeff]")
TRAILING_SPACE = re.compile(r"[ \t]+(?=\n|$)")
MANY_BLANK_LINES = re.compile(r"\n{3,}")
TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]+>", re.DOTALL | re.IGNORECASE)
BLOCK_TAG = re.compile(r"<(br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>", re.IGNORECASE)
SPACES = re.compile(r"\s+")


def strip_html(text: str) -> str:
    """Text without HTML tags, scripts and comments; block ends become line breaks, entities are decoded."""
    return html.unescape(TAG.sub("", BLOCK_TAG.sub("\n", text)))


def normalize(text: str, html_too: bool = False) -> str:
    """NFC, no control or zero-width characters, \\n line ends, no trailing spaces, at most one blank line.

    Indentation and inner spaces stay (code and tables depend on them). `html_too` strips HTML first.
    """
    if html_too:
        text = strip_html(text)
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = CONTROL.sub("", text.replace("\u00a0", " "))
    return MANY_BLANK_LINES.sub("\n\n", TRAILING_SPACE.sub("", text)).strip()


def fingerprint_text(record: Record) -> str:
    """The comparable text of a record: its texts case-folded, whitespace collapsed, joined."""
    return "\x1f".join(SPACES.sub(" ", t).strip().casefold() for t in record.texts())


def exact_key(text: str) -> int:
    """A signed 64-bit hash of a fingerprint text (collisions at 1M records: ~3e-8)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def n_chars(record: Record) -> int:
    """Characters of text in a record (the length filters' measure)."""
    return sum(len(t) for t in record.texts())
