"""Build labelled retrieval and document-QA evaluation sets from real, installed public text and code.

Nothing here is written by us: every document is a real man page, Python standard-library module or
JavaScript file installed from a package registry, and every query is derived mechanically from the
document that answers it.

Sets (each one is a folder ``OUT/<set>/`` with ``docs/``, ``queries.jsonl`` or ``qa.jsonl``,
``README.md`` and ``set.json``):

- ``man-de`` / ``man-en``: man pages rendered to UTF-8 text; query = the NAME section's one-line
  summary (removed from the written page), relevant = that page.
- ``code-py``: modules of the running Python's standard library; query = first sentence of a
  function's docstring, relevant = file + ``Class.method`` + line range of the ``def``.
- ``code-js``: lodash's per-function modules (Debian ``node-lodash``); query = first sentence of the
  JSDoc block above a function, relevant = file + function name + line range.
- ``qa-de`` / ``qa-en``: "which option of `cmd` does <description>?" questions from the man pages'
  option lists; answers = the option's short and long spellings; docs are ``../man-XX/docs``.

Run (Debian; needs ``man-db``, ``groff-base``, ``bsdextrautils`` for ``col``)::

    apt-get install -y manpages manpages-dev manpages-de node-lodash
    python3 bench/rag_sets.py --out bench/.cache/rag_sets           # all sets
    python3 bench/rag_sets.py --sets man-de,qa-de --out /tmp/sets   # a subset

The output is deterministic for the same installed package versions: inputs are sorted and all
sampling uses the fixed seed ``SEED``.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

SEED = 0
MAN_ROOT = Path("/usr/share/man")
LODASH_ROOT = Path("/usr/share/nodejs/lodash")
ALL_SETS = ("man-de", "man-en", "code-py", "code-js", "qa-de", "qa-en")
MAX_CODE_QUERIES = 1000
MAX_PY_FILES = 300
MAX_QA = 500
MAX_QA_PER_PAGE = 3
MAX_DESC_PAGES = 2
SUMMARY_DASH = re.compile(r"\s[-\u2010-\u2015\u2212]\s")
ABBREVIATIONS = (
    "e.g.",
    "i.e.",
    "etc.",
    "cf.",
    "vs.",
    "z.B.",
    "z. B.",
    "d.h.",
    "d. h.",
    "bzw.",
    "ggf.",
    "usw.",
    "vgl.",
    "ca.",
)
PAGE_TITLE = re.compile(r"\(\d\w*\)$")
OPTION_NAME = re.compile(r"[-+]{1,2}[A-Za-z0-9?@#][\w?@#+.-]*")
EN_WORDS = frozenset({"the", "of", "and", "to", "for", "from", "with", "is", "are", "on", "by", "or", "into", "this"})
DE_WORDS = frozenset(
    {"der", "die", "das", "und", "von", "für", "mit", "ein", "eine", "den", "dem", "des", "auf", "im", "zu"}
)
PY_SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "tkinter", "site-packages", "lib2to3", "turtledemo", "ensurepip", "encodings"}
)
INDEX_PAGES = frozenset({"man7/systemd.index.7.txt"})  # lists every systemd page's NAME summary
SYNOPSIS_HEADS = frozenset({"SYNOPSIS", "ÜBERSICHT"})
JS_SKIP_FILES = frozenset({"lodash.js", "lodash.core.js", "core.js", "fp.js"})
QA_TEMPLATES = {
    "de": "Welche Option von `{cmd}` bewirkt: {desc}?",
    "en": "Which option of `{cmd}` does the following: {desc}?",
}


@dataclass
class ManPage:
    """One rendered man page, with its NAME summary already removed from ``lines``."""

    rel: str  # path relative to docs/, e.g. "man1/ls.1.txt"
    cmd: str  # page name, e.g. "ls"
    lines: list[str]
    summary: str | None
    package: str = ""


@dataclass
class BuiltSet:
    """What was written for one set, for the summary printout and set.json."""

    name: str
    lang: str
    source: str
    n_docs: int
    n_queries: int
    corpus_bytes: int
    examples: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- small helpers


def die(msg: str) -> NoReturn:
    """Exit with a message that tells the user what to install."""
    sys.exit(f"rag_sets: {msg}")


def words(text: str) -> list[str]:
    return re.findall(r"\w[\w'-]*", text)


def norm(text: str) -> str:
    """Whitespace-collapsed, lower-cased text for verbatim-containment and duplicate checks."""
    return " ".join(text.split()).casefold()


def first_sentence(paragraph: str) -> str:
    """Text up to the first ``.``/``!``/``?`` that is followed by an upper-case word and ends no abbreviation."""
    text = " ".join(paragraph.split())
    for m in re.finditer(r"[.!?](?= [A-ZÄÖÜ])", text):
        head = text[: m.end()]
        if not head.endswith(ABBREVIATIONS):
            return head
    return text


def run(cmd: Sequence[str], stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(list(cmd), input=stdin, capture_output=True, env=env, check=False)
    return res.stdout.decode("utf-8", "replace")


def deb_version(pkg: str) -> str | None:
    out = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", pkg]).split()
    return out[1] if len(out) == 2 and out[0] == "ii" else None


def require_deb(pkg: str, why: str) -> str:
    version = deb_version(pkg)
    if version is None:
        die(f"Debian package {pkg} is missing ({why}); run: apt-get install -y {pkg}")
    return version


def deb_owners(paths: Sequence[Path]) -> dict[str, str]:
    """Map each file to the Debian package that ships it (``dpkg -S``, batched)."""
    owners: dict[str, str] = {}
    for i in range(0, len(paths), 200):
        for line in run(["dpkg", "-S", *map(str, paths[i : i + 200])]).splitlines():
            pkg, _, path = line.partition(": ")
            if path and "diversion" not in line:
                owners[path.strip()] = pkg.split(":")[0].split(",")[0].strip()
    return owners


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def finish_set(out: Path, built: BuiltSet, readme: str, extra: dict | None = None) -> BuiltSet:
    """Write README.md and set.json for a set whose docs and queries are already written."""
    (out / "README.md").write_text(readme.strip() + "\n", encoding="utf-8")
    meta: dict[str, object] = {"name": built.name, "lang": built.lang, "source": built.source}
    meta |= {"n_docs": built.n_docs, "n_queries": built.n_queries, **(extra or {})}
    (out / "set.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return built


def relevant(path: str, symbol: str | None = None, start: int | None = None, end: int | None = None) -> dict:
    return {"path": path, "symbol": symbol, "start_line": start, "end_line": end}


# ---------------------------------------------------------------- man pages: rendering and parsing


def is_so_stub(path: Path) -> bool:
    """True for pages that are only a ``.so other/page`` redirect."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        lines = [ln for ln in fh.read(4096).splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    return len(lines) <= 2 and any(ln.startswith(".so ") for ln in lines)


def render_man(path: Path) -> list[str]:
    """Render a man page source file to plain UTF-8 text lines (80 columns, no hyphenation/justification)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAN", "GROFF"))}
    env |= {"MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    raw = subprocess.run(
        ["man", "-E", "UTF-8", "--nh", "--nj", "-l", str(path)], capture_output=True, env=env, check=False
    ).stdout
    text = run(["col", "-bx"], stdin=raw)
    return [ln.rstrip() for ln in text.splitlines()]


def sections(lines: list[str]) -> list[tuple[str, int, int]]:
    """(heading, heading index, exclusive end index) of each section. Headings are unindented lines; the
    page header and footer (``LS(1)   User Commands   LS(1)``) are the first/last lines ending in ``(N)``."""
    nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
    if not nonblank:
        return []
    first, last = nonblank[0], nonblank[-1]
    begin = first + 1 if PAGE_TITLE.search(lines[first]) else first
    end = last if last > begin and PAGE_TITLE.search(lines[last]) else last + 1
    heads = [i for i in nonblank if begin <= i < end and not lines[i][0].isspace()]
    return [(lines[h].strip(), h, nxt) for h, nxt in zip(heads, heads[1:] + [end], strict=True)]


def split_name_section(lines: list[str]) -> tuple[list[str], str | None]:
    """Return the page with its NAME summary removed, and the summary (None if not parseable)."""
    secs = sections(lines)
    if not secs:
        return lines, None
    start, end = secs[0][1] + 1, secs[0][2]
    body = " ".join(ln.strip() for ln in lines[start:end] if ln.strip())
    parts = SUMMARY_DASH.split(body, maxsplit=1)
    if len(parts) != 2 or SUMMARY_DASH.search(parts[1]):
        return lines, None
    names, summary = parts[0].strip(), parts[1].strip()
    return [*lines[:start], "       " + names, "", *lines[end:]], summary


def load_page(src: Path, rel: str) -> ManPage | None:
    lines = render_man(src)
    if len(lines) < 5:
        return None
    lines, summary = split_name_section(lines)
    cmd = Path(rel).name.removesuffix(".txt").rsplit(".", 1)[0]  # "mkfs.minix.8.txt" -> "mkfs.minix"
    return ManPage(rel=rel, cmd=cmd, lines=lines, summary=summary)


def man_rel(src: Path, root: Path) -> str:
    """``/usr/share/man/de/man1/ls.1.gz`` -> ``man1/ls.1.txt``."""
    rel = src.relative_to(root).as_posix()
    return re.sub(r"(\.gz)?$", "", rel, count=1) + ".txt"


def render_pages(sources: dict[str, Path], jobs: int) -> list[ManPage]:
    """Render ``{rel: source file}`` in parallel; return the pages in sorted ``rel`` order."""
    rels = sorted(r for r in sources if r not in INDEX_PAGES)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pages = list(pool.map(lambda r: load_page(sources[r], r), rels))
    return [p for p in pages if p is not None]


def german_sources() -> dict[str, Path]:
    """All real (non-symlink, non-``.so``) German pages shipped by ``manpages-de``."""
    root = MAN_ROOT / "de"
    listed = run(["dpkg", "-L", "manpages-de"]).splitlines()
    files = sorted(Path(p) for p in listed if p.startswith(f"{root}/man") and re.search(r"\.\w+(\.gz)?$", p))
    files = [f for f in files if f.is_file() and not f.is_symlink() and not is_so_stub(f)]
    return {man_rel(f, root): f for f in files}


def english_sources(german: dict[str, Path]) -> dict[str, Path]:
    """The installed English original of each German page (same section and name), deduplicated."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for rel in sorted(german):
        src = german[rel].relative_to(MAN_ROOT / "de")
        cand = MAN_ROOT / src
        if not cand.exists():
            continue
        real = cand.resolve()
        if real in seen or is_so_stub(real):
            continue
        seen.add(real)
        found[man_rel(real, MAN_ROOT)] = real
    return found


# ---------------------------------------------------------------- man sets: retrieval queries


def looks_english(text: str) -> bool:
    toks = {w.casefold() for w in words(text)}
    return bool(toks & EN_WORDS) and not toks & DE_WORDS


def skip_reason(page: ManPage, lang: str, counts: Counter, corpus: str) -> str | None:
    """Why this page's NAME summary is no usable query, or None."""
    s = page.summary
    if not s:
        return "no single NAME summary"
    if len(words(s)) < 3:
        return "summary < 3 words"
    if counts[norm(s)] > 1:
        return "summary duplicated across pages"
    if lang == "de" and looks_english(s):
        return "summary still English"
    if norm(s) in corpus:
        return "summary verbatim in a written page"
    return None


def man_queries(pages: list[ManPage], lang: str) -> tuple[list[dict], Counter]:
    """One query per page: its NAME summary, if >= 3 words, unique, nowhere in the written pages, German for de."""
    counts = Counter(norm(p.summary) for p in pages if p.summary)
    corpus = "\n".join(norm("\n".join(p.lines)) for p in pages)
    skipped: Counter = Counter()
    rows = []
    for page in pages:
        reason = skip_reason(page, lang, counts, corpus)
        if reason:
            skipped[reason] += 1
            continue
        qid = f"{lang}-{page.rel.removesuffix('.txt').replace('/', '-')}"
        rows.append({"id": qid, "query": page.summary, "relevant": [relevant(page.rel)], "lang": lang})
    return rows, skipped


def write_docs(pages: list[ManPage], docs: Path) -> None:
    for page in pages:
        dest = docs / page.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n".join(page.lines) + "\n", encoding="utf-8")


def package_summary(pages: list[ManPage]) -> tuple[str, dict[str, dict]]:
    counts = Counter(p.package for p in pages)
    pkgs: dict[str, dict] = {
        pkg: {"version": deb_version(pkg) or "?", "n_docs": n} for pkg, n in sorted(counts.items())
    }
    top = sorted(pkgs.items(), key=lambda kv: (-kv[1]["n_docs"], kv[0]))
    shown = ", ".join(f"{k} {v['version']} ({v['n_docs']})" for k, v in top[:8])
    more = f", +{len(top) - 8} more packages" if len(top) > 8 else ""
    return f"Debian packages: {shown}{more}", pkgs


def build_man_set(out: Path, name: str, lang: str, pages: list[ManPage]) -> BuiltSet:
    target = fresh_dir(out / name)
    write_docs(pages, target / "docs")
    rows, skipped = man_queries(pages, lang)
    write_jsonl(target / "queries.jsonl", rows)
    source, pkgs = package_summary(pages)
    size = dir_bytes(target / "docs")
    built = BuiltSet(name, lang, source, len(pages), len(rows), size, rows[:: max(1, len(rows) // 3)][:3])
    why = "; ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "none"
    which = (
        "German pages of manpages-de (GPL-3+ translations)" if lang == "de" else "English originals of man-de's pages"
    )
    readme = f"""# {name}

Retrieval set of {len(pages)} man pages ({size / 1e6:.1f} MB of text): the {which}, from {source};
licences as in `/usr/share/doc/<package>/copyright`. Each page was rendered with
`MANWIDTH=80 man -E UTF-8 --nh --nj -l FILE | col -bx` into `docs/manN/NAME.N.txt` (systemd.index(7), which
lists every systemd page's summary, is left out). The {len(rows)} queries are the one-line summaries from
each page's NAME section (the text after " - "), which were removed from the written page; relevant = that
page. Pages without a usable summary got no query (skipped: {why}), so no query appears verbatim in `docs/`.
Built by `bench/rag_sets.py`.
"""
    return finish_set(target, built, readme, {"packages": pkgs, "skipped": dict(sorted(skipped.items()))})


# ---------------------------------------------------------------- QA sets from option lists


@dataclass
class OptionEntry:
    answers: list[str]
    desc: str
    start: int  # 1-based, inclusive
    end: int


def option_tag(line: str) -> tuple[str, str] | None:
    """Split an option item line into (tag, same-line description); None if it is no option item."""
    text = line.strip()
    if not re.match(r"--?[A-Za-z0-9?@#]", text):
        return None
    parts = re.split(r"\s{2,}", text, maxsplit=1)
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def option_names(tag: str) -> list[str]:
    """``-a, --all`` -> ``["-a", "--all"]``; ``--block-size=SIZE`` -> ``["--block-size"]``."""
    parts = [p.strip() for p in re.split(r",\s*|\s+\|\s+", tag)]
    found = [m.group(0).rstrip(".") for p in parts if (m := OPTION_NAME.match(p))]
    names = [n for n in found if not re.fullmatch(r"-[A-Z]{3,}", n)]  # placeholders like `head -NUM`
    order = {n: i for i, n in enumerate(names)}
    return sorted(dict.fromkeys(names), key=lambda n: (n.startswith("--"), order[n]))


def entry_extent(lines: list[str], i: int, indent: int) -> int:
    """Index of the last non-blank line of the item starting at line ``i`` (deeper-indented body)."""
    last = i
    for j in range(i + 1, len(lines)):
        if not lines[j].strip():
            continue
        if len(lines[j]) - len(lines[j].lstrip()) <= indent:
            break
        last = j
    return last


def first_paragraph(lines: list[str], start: int, end: int, same_line: str) -> str:
    para = [same_line] if same_line else []
    for ln in lines[start : end + 1]:
        if not ln.strip():
            if para:
                break
            continue
        para.append(ln.strip())
    return " ".join(para)


def option_entries(page: ManPage) -> list[OptionEntry]:
    """Option items (tag line, then a deeper-indented description) in all sections but NAME and SYNOPSIS."""
    lines, entries = page.lines, []
    for head, first, stop in sections(lines)[1:]:
        if head in SYNOPSIS_HEADS:
            continue
        for i in range(first + 1, stop):
            split = option_tag(lines[i])
            if split is None:
                continue
            indent = len(lines[i]) - len(lines[i].lstrip())
            end = min(entry_extent(lines, i, indent), stop - 1)
            names = option_names(split[0])
            if names and (end > i or split[1]):
                desc = first_sentence(first_paragraph(lines, i + 1, end, split[1]))
                entries.append(OptionEntry(names, desc, i + 1, end + 1))
    return entries


def usable_entries(page: ManPage) -> list[OptionEntry]:
    """Entries whose description is unique in the page, >= 5 words, and does not name the answer."""
    entries = option_entries(page)
    descs = Counter(norm(e.desc) for e in entries)
    names = Counter(n for e in entries for n in e.answers)
    return [
        e
        for e in entries
        if len(words(e.desc)) >= 5
        and descs[norm(e.desc)] == 1
        and all(names[n] == 1 for n in e.answers)
        and not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", e.desc) for n in e.answers)
    ]


def qa_rows(pages: list[ManPage], lang: str) -> list[dict]:
    """Up to MAX_QA questions, at most MAX_QA_PER_PAGE per page, sampled with a fixed seed; boilerplate
    descriptions shared by more than MAX_DESC_PAGES pages (``--help``, ``--version``) are left out."""
    rng = random.Random(SEED)
    per_page = {page.rel: usable_entries(page) for page in pages}
    spread = Counter(d for entries in per_page.values() for d in {norm(e.desc) for e in entries})
    pool: list[tuple[ManPage, OptionEntry]] = []
    for page in pages:
        entries = [e for e in per_page[page.rel] if spread[norm(e.desc)] <= MAX_DESC_PAGES]
        pool.extend((page, e) for e in rng.sample(entries, min(MAX_QA_PER_PAGE, len(entries))))
    picked = sorted(rng.sample(range(len(pool)), min(MAX_QA, len(pool))))
    rows = []
    for k in picked:
        page, e = pool[k]
        desc = e.desc.rstrip(" .:;")
        question = QA_TEMPLATES[lang].format(cmd=page.cmd, desc=desc)
        qid = f"qa-{lang}-{page.rel.removesuffix('.txt').replace('/', '-')}-L{e.start}"
        rel = relevant(page.rel, None, e.start, e.end)
        rows.append({"id": qid, "question": question, "answers": e.answers, "relevant": [rel], "lang": lang})
    return rows


def build_qa_set(out: Path, lang: str, pages: list[ManPage], man_set: BuiltSet) -> BuiltSet:
    name = f"qa-{lang}"
    target = fresh_dir(out / name)
    rows = qa_rows(pages, lang)
    write_jsonl(target / "qa.jsonl", rows)
    docs = f"../man-{lang}/docs"
    examples = rows[:: max(1, len(rows) // 3)][:3]
    built = BuiltSet(name, lang, man_set.source, man_set.n_docs, len(rows), man_set.corpus_bytes, examples)
    readme = f"""# {name}

Document-QA set of {len(rows)} questions over the {man_set.n_docs} man pages of `{docs}` (the `man-{lang}` set;
source: {man_set.source}). Each question quotes the first sentence of one option's description from a page's
option list ("{QA_TEMPLATES[lang]}"); `answers` holds the option's spellings, short form first
(e.g. `["-a", "--all"]`), for exact-match scoring; `relevant` gives the page and the 1-based line range of that
option item. Only options whose description is unique in the page, has >= 5 words and does not name the option
itself, and is not boilerplate shared by more than {MAX_DESC_PAGES} pages (like `--help`), were used;
at most {MAX_QA_PER_PAGE} per page, sampled with seed {SEED}. Built by `bench/rag_sets.py`.
"""
    return finish_set(target, built, readme, {"docs": docs})


# ---------------------------------------------------------------- code-py


def py_summary(node: ast.AST) -> str | None:
    doc = ast.get_docstring(node)  # type: ignore[arg-type]
    if not doc:
        return None
    summary = first_sentence(doc.split("\n\n", 1)[0])
    if len(words(summary)) < 4 or "->" in summary or ">>>" in summary or re.match(r"[\w.]+\(", summary):
        return None
    return summary


def py_functions(tree: ast.Module) -> list[tuple[str, int, int, str]]:
    """(qualified name, start line incl. decorators, end line, summary) of module-level functions and methods."""
    found = []
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                stack.append((f"{prefix}{child.name}.", child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and (summary := py_summary(child)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((prefix + child.name, start, child.end_lineno or child.lineno, summary))
    return sorted(found, key=lambda f: f[1])


def py_files(stdlib: Path) -> list[Path]:
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        skipped = set(rel.parts[:-1]) & PY_SKIP_DIRS or rel.name.startswith(("test_", "_sysconfigdata"))
        if not skipped and not rel.parts[0].startswith("config-"):
            files.append(path)
    return sorted(random.Random(SEED).sample(files, min(MAX_PY_FILES, len(files))))


def code_rows(items: list[tuple[str, str, int, int, str]], lang: str) -> list[dict]:
    """Queries from (path, symbol, start, end, summary) items: drop duplicated summaries, sample, sort."""
    counts = Counter(norm(it[4]) for it in items)
    unique = [it for it in items if counts[norm(it[4])] == 1]
    picked = sorted(random.Random(SEED).sample(range(len(unique)), min(MAX_CODE_QUERIES, len(unique))))
    rows = []
    for k in picked:
        path, symbol, start, end, summary = unique[k]
        qid = f"{lang}-{path.replace('/', '-')}-{symbol}"
        rows.append({"id": qid, "query": summary, "relevant": [relevant(path, symbol, start, end)], "lang": lang})
    return rows


def build_code_py(out: Path) -> BuiltSet:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    target = fresh_dir(out / "code-py")
    items: list[tuple[str, str, int, int, str]] = []
    for src in py_files(stdlib):
        rel = src.relative_to(stdlib).as_posix()
        dest = target / "docs" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        try:
            tree = ast.parse(src.read_bytes(), filename=str(src))
        except (SyntaxError, ValueError):
            continue
        items.extend((rel, *fn) for fn in py_functions(tree))
    rows = code_rows(items, "py")
    write_jsonl(target / "queries.jsonl", rows)
    n_docs, size = sum(1 for p in (target / "docs").rglob("*.py")), dir_bytes(target / "docs")
    source = f"CPython {sys.version.split()[0]} standard library ({stdlib}), PSF License"
    built = BuiltSet("code-py", "py", source, n_docs, len(rows), size, rows[:: max(1, len(rows) // 3)][:3])
    readme = f"""# code-py

Code-search set over {n_docs} modules ({size / 1e6:.1f} MB) of the {source}: {MAX_PY_FILES} files sampled
with seed {SEED} from the stdlib without tests, idlelib/, tkinter/, lib2to3/, turtledemo/, ensurepip/,
site-packages/ and the generated encodings/ and _sysconfigdata modules, copied unchanged with their relative
paths. The {len(rows)} queries are the first sentence of a function's or method's docstring (ast-based,
>= 4 words, unique within the corpus, up to {MAX_CODE_QUERIES} sampled with seed {SEED}); relevant = file,
`Class.method` / `func` and the 1-based line range of the definition (decorators included). The query text
also appears in the source as the docstring's first line: this is the standard code-search setup (as in
CodeSearchNet). Built by `bench/rag_sets.py`.
"""
    return finish_set(target, built, readme)


# ---------------------------------------------------------------- code-js

JSDOC = re.compile(r"/\*\*(.*?)\*/", re.S)
JS_DEFS = (
    re.compile(r"\s*(?:export\s+)?(?:default\s+)?(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)\s*\("),
    re.compile(r"\s*(?:var|let|const)\s+([A-Za-z_$][\w$]*)\s*="),
    re.compile(r"\s*([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+)\s*=\s*(?:async\s+)?function\b"),
    re.compile(
        r"\s*(?:static\s+)?(?:async\s+)?(?!(?:if|for|while|switch|catch|return)\b)([A-Za-z_$][\w$]*)\s*\([^;]*\)\s*\{"
    ),
)


def jsdoc_summary(comment: str) -> str | None:
    lines = [re.sub(r"^\s*\*? ?", "", ln) for ln in comment.splitlines()]
    desc = []
    for ln in lines:
        if ln.lstrip().startswith("@"):
            break
        desc.append(ln)
    summary = first_sentence("\n".join(desc).strip().split("\n\n", 1)[0])
    return summary if len(words(summary)) >= 4 else None


def js_end(lines: list[str], start: int) -> int:
    """0-based last line of the definition at ``start``: closing bracket at the same indent, or the line
    before the next statement at that indent."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    if lines[start].rstrip().endswith(";"):
        return start
    last = start
    for j in range(start + 1, len(lines)):
        text = lines[j].strip()
        if not text:
            continue
        if len(lines[j]) - len(lines[j].lstrip()) <= indent:
            return j if text[0] in "})]" else last
        last = j
    return last


def js_functions(text: str) -> list[tuple[str, int, int, str]]:
    """(name, start line, end line, summary) for each JSDoc block directly above a function definition."""
    lines = text.splitlines()
    found = []
    for m in JSDOC.finditer(text):
        summary = jsdoc_summary(m.group(1))
        start = text.count("\n", 0, m.end()) + 1  # 0-based index of the line after the comment
        while start < len(lines) and not lines[start].strip():
            start += 1
        if summary is None or start >= len(lines):
            continue
        code = lines[start]
        name = next((d.group(1) for d in (p.match(code) for p in JS_DEFS) if d), None)
        is_func = "function" in code or "=>" in code or re.search(r"@(param|returns?)\b", m.group(1))
        if name and is_func:
            found.append((name, start + 1, js_end(lines, start) + 1, summary))
    return found


def build_code_js(out: Path, root: Path) -> BuiltSet:
    if not (root / "package.json").is_file():
        hint = "npm install --prefix /tmp/js lodash@4.17.21 and pass --js-root /tmp/js/node_modules/lodash"
        die(f"lodash not found at {root}; run: apt-get install -y node-lodash (or: {hint})")
    pkg = json.loads((root / "package.json").read_text())
    target = fresh_dir(out / "code-js")
    (target / "docs").mkdir()
    items: list[tuple[str, str, int, int, str]] = []
    for src in sorted(root.glob("*.js")):
        if src.name in JS_SKIP_FILES or src.name.endswith(".min.js"):
            continue
        shutil.copyfile(src, target / "docs" / src.name)
        items.extend((src.name, *fn) for fn in js_functions(src.read_text(encoding="utf-8")))
    rows = code_rows(items, "js")
    write_jsonl(target / "queries.jsonl", rows)
    n_docs, size = len(list((target / "docs").glob("*.js"))), dir_bytes(target / "docs")
    deb = deb_version("node-lodash") if root == LODASH_ROOT else None
    origin = f"Debian node-lodash {deb}" if deb else f"{root}"
    node = run(["node", "--version"]).strip() or "not installed"
    source = f"lodash {pkg.get('version', '?')} ({origin}), {pkg.get('license', '?')} licence; Node {node}"
    built = BuiltSet("code-js", "js", source, n_docs, len(rows), size, rows[:: max(1, len(rows) // 3)][:3])
    readme = f"""# code-js

Code-search set over {n_docs} JavaScript files ({size / 1e6:.1f} MB) of {source}: lodash's
one-function-per-file modules, copied unchanged (the monolithic builds lodash.js, lodash.core.js, core.js
and the fp/ and es/ copies are left out, as they repeat the same functions). The {len(rows)} queries are the
first sentence of the JSDoc block directly above a function definition (>= 4 words, unique within the
corpus); relevant = file, function name and the 1-based line range of the definition. The query text also
appears in the source (in the JSDoc comment): this is the standard code-search setup (as in CodeSearchNet).
Built by `bench/rag_sets.py`.
"""
    return finish_set(target, built, readme)


# ---------------------------------------------------------------- driver


def load_man(lang: str, jobs: int, german: dict[str, Path]) -> list[ManPage]:
    sources = german if lang == "de" else english_sources(german)
    pages = render_pages(sources, jobs)
    owners = deb_owners([sources[p.rel] for p in pages])
    for page in pages:
        page.package = owners.get(str(sources[page.rel]), "unknown")
    return pages


def report(built: BuiltSet, out: Path, seconds: float) -> None:
    kind = "questions" if built.name.startswith("qa-") else "queries"
    size = f"{built.corpus_bytes / 1e6:.1f} MB"
    print(f"{built.name}: {built.n_docs} docs, {built.n_queries} {kind}, {size} -> {out / built.name} ({seconds:.0f}s)")
    print(f"  source: {built.source}")
    for row in built.examples:
        text = row.get("query") or row.get("question")
        extra = f"  answers={row['answers']}" if "answers" in row else ""
        print(f"  e.g. {text!r} -> {row['relevant'][0]}{extra}")


def build_all(out: Path, sets: list[str], jobs: int, js_root: Path) -> None:
    man_built: dict[str, BuiltSet] = {}
    for lang in ("de", "en"):
        if f"man-{lang}" not in sets and f"qa-{lang}" not in sets:
            continue
        require_deb("manpages-de", "German man pages")
        t0 = time.time()
        pages = load_man(lang, jobs, german_sources())
        man_built[lang] = build_man_set(out, f"man-{lang}", lang, pages)
        report(man_built[lang], out, time.time() - t0)
        if f"qa-{lang}" in sets:
            t0 = time.time()
            report(build_qa_set(out, lang, pages, man_built[lang]), out, time.time() - t0)
    if "code-py" in sets:
        t0 = time.time()
        report(build_code_py(out), out, time.time() - t0)
    if "code-js" in sets:
        t0 = time.time()
        report(build_code_js(out, js_root), out, time.time() - t0)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/.cache/rag_sets"), help="output folder")
    ap.add_argument("--sets", default=",".join(ALL_SETS), help=f"comma-separated subset of {','.join(ALL_SETS)}")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel man renderers")
    ap.add_argument("--js-root", type=Path, default=LODASH_ROOT, help="installed lodash package folder")
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := sorted(set(sets) - set(ALL_SETS)):
        die(f"unknown set(s) {unknown}; choose from {ALL_SETS}")
    for tool, pkg in (("man", "man-db"), ("groff", "groff-base"), ("col", "bsdextrautils")):
        if any(s.startswith(("man-", "qa-")) for s in sets) and shutil.which(tool) is None:
            die(f"`{tool}` not found; run: apt-get install -y {pkg}")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    build_all(args.out, sets, args.jobs, args.js_root)
    print(f"done in {time.time() - t0:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
