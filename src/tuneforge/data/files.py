"""Readers by file type: a path (file, folder or `hf:` dataset) -> rows with their source, streamed.

JSONL, CSV/TSV and Parquet stream row by row, so a file of any size is read in bounded memory; a `.json` array is
parsed whole (JSON has no streaming form in the standard library). A folder is read as documents or source code:
every text file becomes one `text` row, `.gitignore` rules are honoured and binary files are skipped (counted).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.records import Issue, Source, error, warning

JSONL = {".jsonl", ".ndjson"}
TABLES = {".csv": ",", ".tsv": "\t"}
DATA_SUFFIXES = JSONL | set(TABLES) | {".json", ".parquet"}
HF_PREFIX = "hf:"
# Cells of these columns hold JSON (lists of messages, tool definitions) when a table carries chat data.
JSON_COLUMNS = {"messages", "conversations", "tools", "input", "preferred_output", "non_preferred_output"}
BINARY_PROBE = 8192


@dataclass
class Row:
    """One raw row (a JSON value or a dict of cells) and where it came from."""

    value: Any
    source: Source
    group: str | None = None


@dataclass
class Skipped:
    """A file a folder walk left out on purpose (binary, ignored): counted in the report, not an error."""

    path: str
    reason: str


Item = Row | Issue | Skipped


def read_rows(
    spec: str, hf_subset: str | None = None, hf_split: str = "train", max_bytes: int | None = None
) -> Iterator[Item]:
    """Rows of a data file, a folder of documents, or a Hugging Face dataset (`hf:NAME`); a folder's files larger
    than `max_bytes` are skipped."""
    if spec.startswith(HF_PREFIX):
        yield from _read_hf(spec[len(HF_PREFIX) :], hf_subset, hf_split)
        return
    path = Path(spec)
    if path.is_dir():
        yield from _read_folder(path, max_bytes)
        return
    suffix = path.suffix.lower()
    if suffix in JSONL:
        items = _read_jsonl(path)
    elif suffix == ".json":
        items = _read_json(path)
    elif suffix in TABLES:
        items = _read_table(path, TABLES[suffix])
    elif suffix == ".parquet":
        items = _read_parquet(path)
    else:
        items = _read_document(path, group=None)
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        yield error(
            "empty_file",
            Source(str(path), 0),
            None,
            "the file holds no records (it is empty, blank, or a table header without rows)",
            "point data.path at the file that holds the data",
        )


def _read_jsonl(path: Path) -> Iterator[Item]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            source = Source(str(path), lineno)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                yield _bom_warning(source)
                raw = raw[3:]
            if not raw.strip():
                continue  # a blank line is not a record (a JSON null is: it becomes a not_an_object error)
            value, problem = parse_json_line(raw, source)
            yield problem if problem else Row(value, source)


def parse_json_line(raw: bytes, source: Source) -> tuple[Any, Issue | None]:
    """The JSON value of one non-blank line, or the Issue that stops it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _encoding_error(raw, exc, source)
    try:
        return json.loads(text.rstrip("\r\n")), None
    except json.JSONDecodeError as exc:
        return None, error(
            "invalid_json",
            source,
            None,
            f"invalid JSON: {exc.msg} at column {exc.colno}",
            "each line must be one complete JSON object",
        )


def _read_json(path: Path) -> Iterator[Item]:
    """A JSON array of objects; each element's source is the line it starts on."""
    source = Source(str(path), 1)
    text, bom, problem = _decode(path, path.read_bytes())
    if bom:
        yield _bom_warning(source)
    if text is None:
        yield from [problem] if problem else []
        return
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "[":
        hint = "write a JSON array of objects ([{...}, {...}]) or use one object per line in a .jsonl file"
        yield error("not_an_array", source, None, "a .json data file must hold one JSON array", hint)
        return
    pos, line, counted = _skip_space(text, pos + 1), 1, 0
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield error(
                "invalid_json",
                Source(str(path), exc.lineno),
                None,
                f"invalid JSON: {exc.msg} at column {exc.colno}",
                "fix the JSON at this position (a validator such as `python -m json.tool` shows it)",
            )
            return
        yield Row(value, Source(str(path), line))
        pos = _skip_space(text, pos)
        if text[pos : pos + 1] == ",":
            pos = _skip_space(text, pos + 1)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_table(path: Path, delimiter: str) -> Iterator[Item]:
    """CSV/TSV with a header row; a row's source is its line in the file (the header is line 1)."""
    with path.open("rb") as raw:
        bom = raw.read(3) == b"\xef\xbb\xbf"
    if bom:
        yield _bom_warning(Source(str(path), 1))
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter, strict=True)
        line = 1
        try:
            for cells in reader:
                source = Source(str(path), line + 1)
                line = reader.line_num
                if None in cells:
                    yield error(
                        "extra_cells",
                        source,
                        None,
                        f"{len(cells[None]) if isinstance(cells[None], list) else 1} more cell(s) than header columns",
                        "quote cells that contain the delimiter, or add the missing header column",
                    )
                    continue
                yield Row({k: _cell(k, v) for k, v in cells.items() if v is not None}, source)
        except UnicodeDecodeError as exc:
            yield error(
                "bad_encoding",
                Source(str(path), line + 1),
                None,
                f"not UTF-8 (byte {exc.object[exc.start]:#x})",
                _reencode_hint(path),
            )
        except csv.Error as exc:
            # the row that starts after the last good one (csv's own line_num stops short at an unclosed quote)
            yield error("invalid_csv", Source(str(path), line + 1), None, f"invalid CSV: {exc}", _csv_hint())


def _cell(column: str, value: str) -> Any:
    """A table cell: JSON for the columns that hold structures, else the text ('' means absent)."""
    if column in JSON_COLUMNS and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value if value != "" else None


def _csv_hint() -> str:
    return 'quote cells with delimiters, quotes or line breaks ("...", a quote inside written as "")'


def _read_parquet(path: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for every kind of damage
        yield error("invalid_parquet", Source(str(path), 0), None, f"not a readable Parquet file: {exc}", _pq_hint())
        return
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for value in batch.to_pylist():
            row += 1
            yield Row(value, Source(str(path), row))


def _pq_hint() -> str:
    return "write it again with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table"


def _read_folder(root: Path, max_bytes: int | None = None) -> Iterator[Item]:
    """Every text file under `root` (sorted, .gitignore honoured, binaries skipped) as one text row."""
    import pathspec

    found = False
    ignores: list[tuple[Path, pathspec.PathSpec]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        ignores = [(base, spec) for base, spec in ignores if here == base or base in here.parents]
        gitignore = here / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
            ignores.append((here, pathspec.PathSpec.from_lines("gitwildmatch", lines)))
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not _ignored(here / d, True, ignores))
        for name in sorted(filenames):
            path = here / name
            if name == ".gitignore":
                continue
            if path.is_symlink():  # could point outside the folder; never followed
                yield Skipped(str(path), "symlink")
                continue
            if _ignored(path, False, ignores):
                yield Skipped(str(path), "gitignore")
                continue
            found = True
            yield from _read_document(path, group=str(path.relative_to(root)), max_bytes=max_bytes)
    if not found:
        yield error("empty_folder", Source(str(root), 0), None, "no files in the folder", "point data.path at data")


def _ignored(path: Path, is_dir: bool, ignores: list[tuple[Any, Any]]) -> bool:
    for base, spec in ignores:
        rel = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        if spec.match_file(rel):
            return True
    return False


def _read_document(path: Path, group: str | None, max_bytes: int | None = None) -> Iterator[Item]:
    """One text file as a `text` row; binary, unreadable and too large files are skipped, undecodable ones are
    encoding errors."""
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            yield Skipped(str(path), f"larger than {max_bytes / 1e6:g} MB ({size / 1e6:.1f} MB)")
            return
        data = path.read_bytes()
    except OSError as exc:
        yield Skipped(str(path), f"unreadable ({exc.strerror or exc})")
        return
    if b"\x00" in data[:BINARY_PROBE]:
        yield Skipped(str(path), "binary")
        return
    text, _, problem = _decode(path, data)  # a BOM on a document is just removed
    if text is None:
        yield from [problem] if problem else []
        return
    if text.strip():
        yield Row({"text": text}, Source(str(path), 1), group)
    else:
        yield Skipped(str(path), "empty")


def _decode(path: Path, data: bytes) -> tuple[str | None, bool, Issue | None]:
    """A whole file's bytes as UTF-8 text (BOM removed), whether it had a BOM, or the encoding error."""
    bom = data.startswith(b"\xef\xbb\xbf")
    data = data[3:] if bom else data
    try:
        return data.decode("utf-8"), bom, None
    except UnicodeDecodeError as exc:
        return None, bom, _encoding_error(data, exc, Source(str(path), data.count(b"\n", 0, exc.start) + 1))


def _read_hf(name: str, subset: str | None, split: str) -> Iterator[Item]:
    """A Hugging Face dataset through datasets.load_dataset, from the local cache when offline."""
    from tuneforge.errors import DataError

    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("the 'datasets' package is missing", "pip install datasets") from None
    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # datasets raises many types (network, missing files, bad configs): all end here
        offline = _hub_offline()
        where = "the hub cannot be reached (offline)" if offline else f"loading failed: {str(exc).splitlines()[0]}"
        raise DataError(
            f"data.path=hf:{name}: the Hugging Face dataset {name!r} (subset {subset}, split {split!r}) is not in the "
            f"local cache and {where}",
            "load it once on a machine with network (it is then cached under ~/.cache/huggingface), or save it as "
            "JSONL/Parquet and point data.path at the file (HF_HUB_OFFLINE=1 skips the network retries)",
        ) from None
    label = f"hf:{name}[{split}]"
    for i, value in enumerate(dataset, start=1):
        yield Row(dict(value), Source(label, i))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _bom_warning(source: Source) -> Issue:
    return warning(
        "bom",
        source,
        None,
        "the file starts with a UTF-8 byte-order mark (read correctly)",
        "save the file as UTF-8 without BOM; some tools read the mark as part of the first key",
    )


def _encoding_error(raw: bytes, exc: UnicodeDecodeError, source: Source) -> Issue:
    guess = "Latin-1/Windows-1252" if _looks_latin1(raw) else "another encoding"
    return error(
        "bad_encoding",
        source,
        None,
        f"not UTF-8 (byte {raw[exc.start]:#x}; looks like {guess})",
        _reencode_hint(Path(source.file)) if guess.startswith("Latin") else "re-save the file as UTF-8",
    )


def _looks_latin1(raw: bytes) -> bool:
    """True when the bytes decode as Windows-1252 to mostly printable text (umlauts, accents)."""
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _reencode_hint(path: Path) -> str:
    return f"re-save the file as UTF-8, e.g. iconv -f cp1252 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
