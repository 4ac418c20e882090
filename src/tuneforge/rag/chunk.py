"""Chunking by structure: markdown by headings, HTML by heading elements, plain text by paragraphs and sentences
with overlap, table rows one by one (code is in code.py). Sizes are in the embedding model's tokens and never
exceeded: a paragraph too long becomes sentences, a sentence too long becomes runs of words.

Every chunk keeps where it came from (path, first and last line, heading path or symbol) so a citation points at the
exact lines; `embed_text` is what the embedding model sees: the text under its heading path or symbol, which
carries the section's subject into every chunk of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

Count = Callable[[str], int]  # tokens of a text in the embedding model's tokenizer

MARKDOWN = {".md", ".markdown", ".mdx", ".rst"}
HTML = {".html", ".htm", ".xhtml"}
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_LINE = re.compile(r"\n")
_HEADING_TAGS = {f"h{i}": i for i in range(1, 7)}
_BLOCK_TAGS = {"p", "li", "pre", "td", "th", "dd", "dt", "blockquote", "div", "section", "article", "tr", "br"}
_SKIP_TAGS = {"script", "style", "noscript", "template", "head"}


@dataclass
class Chunk:
    """A piece of a source small enough to embed, and where it came from."""

    text: str
    path: str
    start_line: int
    end_line: int
    title: str | None = None  # heading path ("Install > Linux") or symbol ("Store.search")
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0

    @property
    def embed_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass
class Unit:
    """A paragraph (or sentence, or run of words) and its lines: the smallest thing a chunk is built from."""

    text: str
    start_line: int
    end_line: int


def chunk_document(path: str, text: str, suffix: str, count: Count, size: int, overlap: int) -> list[Chunk]:
    """Chunks of one text document, by the structure its file type has."""
    if suffix in MARKDOWN:
        sections = list(markdown_sections(text))
    elif suffix in HTML:
        sections = list(html_sections(text))
    else:
        sections = [(None, paragraphs(text, 1))]
    chunks: list[Chunk] = []
    for title, units in sections:
        # the heading path is embedded with every chunk: it takes tokens from the chunk's own budget
        room = size - (count(title) + 1 if title else 0)
        chunks += pack(units, count, max(room, size // 2), overlap, path, title)
    return chunks


def chunk_row(path: str, row_id: str, text: str, metadata: dict[str, Any], count: Count, size: int) -> list[Chunk]:
    """A table row's text: one chunk, or several (each with the row's metadata) when it is longer than `size`."""
    chunks = pack(paragraphs(text, 1), count, size, 0, path, None)
    for chunk in chunks:
        chunk.metadata = dict(metadata, row=row_id)
    return chunks


def paragraphs(text: str, first_line: int) -> list[Unit]:
    """Blank-line separated paragraphs of `text`, numbered from `first_line`."""
    units: list[Unit] = []
    lines = text.split("\n")
    start: int | None = None
    for i, line in enumerate([*lines, ""]):
        if line.strip() and start is None:
            start = i
        elif not line.strip() and start is not None:
            units.append(Unit("\n".join(lines[start:i]), first_line + start, first_line + i - 1))
            start = None
    return units


def pack(
    units: list[Unit], count: Count, size: int, overlap: int, path: str, title: str | None, code: bool = False
) -> list[Chunk]:
    """Greedily join units into chunks of at most `size` tokens; each chunk after the first starts with the last
    units of the one before, up to `overlap` tokens of them. A unit too large is cut into sentences (code: lines)."""
    pieces = [piece for unit in units for piece in _fit(unit, count, size, _LINE if code else _SENTENCE_END)]
    chunks: list[Chunk] = []
    current: list[tuple[Unit, int]] = []
    for piece in pieces:
        tokens = count(piece.text)
        if current and _joined_tokens(current, tokens) > size:
            chunks.append(_make(current, count, size, path, title))
            current = _tail(current, overlap, size - tokens)
        current.append((piece, tokens))
    if current:
        chunks.append(_make(current, count, size, path, title))
    return chunks


def _joined_tokens(current: list[tuple[Unit, int]], extra: int) -> int:
    return sum(t for _, t in current) + extra + len(current)  # a separator may cost a token


def _tail(current: list[tuple[Unit, int]], overlap: int, room: int) -> list[tuple[Unit, int]]:
    """The last units of a finished chunk that repeat at the start of the next one."""
    tail: list[tuple[Unit, int]] = []
    budget = min(overlap, room)
    for unit, tokens in reversed(current):
        if tokens + 1 > budget:
            break
        tail.insert(0, (unit, tokens))
        budget -= tokens + 1
    return tail


def _make(current: list[tuple[Unit, int]], count: Count, size: int, path: str, title: str | None) -> Chunk:
    text = _join([u for u, _ in current])
    tokens = count(text)
    while tokens > size and len(current) > 1:  # joining merged fewer tokens than it split: drop the last unit
        current = current[:-1]
        text = _join([u for u, _ in current])
        tokens = count(text)
    return Chunk(text, path, current[0][0].start_line, current[-1][0].end_line, title, tokens=tokens)


def _join(units: list[Unit]) -> str:
    """Units as they stood: pieces of one line side by side, of adjacent lines one below the other, paragraphs
    apart."""
    parts = [units[0].text]
    for before, unit in zip(units, units[1:], strict=False):
        gap = unit.start_line - before.end_line
        parts.append((" " if gap <= 0 else "\n" if gap == 1 else "\n\n") + unit.text)
    return "".join(parts)


def _fit(unit: Unit, count: Count, size: int, pattern: re.Pattern[str]) -> Iterator[Unit]:
    """`unit` itself if it fits; else its sentences (or lines); one that still does not fit, as runs of words."""
    if count(unit.text) <= size:
        yield unit
        return
    for sentence in _split(unit, pattern):
        if count(sentence.text) <= size:
            yield sentence
        else:
            yield from _words(sentence, count, size)


def _split(unit: Unit, pattern: re.Pattern[str]) -> Iterator[Unit]:
    start = 0
    for match in [*pattern.finditer(unit.text), None]:
        end = match.start() if match else len(unit.text)
        piece = unit.text[start:end]
        if piece.strip():
            line = unit.start_line + unit.text.count("\n", 0, start)
            yield Unit(piece, line, line + piece.count("\n"))
        start = match.end() if match else end


def _words(unit: Unit, count: Count, size: int) -> Iterator[Unit]:
    """Runs of whole words of at most `size` tokens (a single word longer than that is cut by characters)."""
    words = unit.text.split()
    start = 0
    while start < len(words):
        end = _longest_run(words, start, count, size)
        text = " ".join(words[start:end])
        if end == start + 1 and count(text) > size:  # one giant "word" (a hash, a minified line)
            text = text[: max(1, len(text) * size // count(text))]
        yield Unit(text, unit.start_line, unit.end_line)
        start = end


def _longest_run(words: list[str], start: int, count: Count, size: int) -> int:
    """The end of the longest run of words from `start` that fits in `size` tokens (binary search; at least one)."""
    low, high = start + 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if count(" ".join(words[start:middle])) <= size:
            low = middle
        else:
            high = middle - 1
    return low


def markdown_sections(text: str) -> Iterator[tuple[str | None, list[Unit]]]:
    """(heading path, paragraphs) of each markdown section; `#` lines inside code fences are not headings."""
    lines = text.split("\n")
    path: list[tuple[int, str]] = []
    start, fenced = 0, False
    for i, line in enumerate([*lines, "# end"]):
        fenced = fenced != bool(_FENCE.match(line)) if i < len(lines) else False
        match = _HEADING.match(line) if not fenced else None
        if match is None:
            continue
        body = paragraphs("\n".join(lines[start:i]), start + 1)
        if body and not (len(body) == 1 and _HEADING.match(body[0].text)):  # a heading alone: the next holds it
            yield _title(path), body
        level = len(match.group(1))
        path = _descend(path, level, match.group(2))
        start = i  # the heading line belongs to its section: a citation of the first chunk shows it
    return


def html_sections(text: str) -> Iterator[tuple[str | None, list[Unit]]]:
    """(heading path, text blocks) of each section of an HTML page, lines as in the page's source."""
    parser = _Blocks()
    parser.feed(text)
    parser.close()
    path: list[tuple[int, str]] = []
    units: list[Unit] = []
    for level, unit in parser.blocks:
        if level:
            if units and not (len(units) == 1 and path and units[0].text == path[-1][1]):  # not a bare heading
                yield _title(path), units
            path = _descend(path, level, unit.text)
            units = [unit]
        else:
            units.append(unit)
    if units:
        yield _title(path), units


def _title(path: list[tuple[int, str]]) -> str | None:
    """The heading path of a section: "Install > Linux" (None above the first heading)."""
    return " > ".join(text for _, text in path) or None


def _descend(path: list[tuple[int, str]], level: int, heading: str) -> list[tuple[int, str]]:
    """The heading path after a heading of `level`: the deeper or equal headings before it end there."""
    return [(lv, text) for lv, text in path if lv < level] + [(level, heading)]


class _Blocks(HTMLParser):
    """The visible text of a page as blocks (heading level or 0, Unit), each with its source lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[int, Unit]] = []
        self._text: list[str] = []
        self._start = 0
        self._level = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _HEADING_TAGS or tag in _BLOCK_TAGS:
            self._flush()
            self._level = _HEADING_TAGS.get(tag, 0)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _HEADING_TAGS or tag in _BLOCK_TAGS:
            self._flush()
            self._level = 0

    def handle_data(self, data: str) -> None:
        if self._skip or not data.strip():
            return
        if not self._text:
            self._start = self.getpos()[0] + data[: len(data) - len(data.lstrip())].count("\n")
        self._text.append(data)

    def _flush(self) -> None:
        text = " ".join(" ".join(self._text).split())
        if text:
            self.blocks.append((self._level, Unit(text, self._start, self.getpos()[0])))
        self._text = []

    def close(self) -> None:
        super().close()
        self._flush()
