"""Build held-out chat datasets for tuneforge's bake-off (`tuneforge compare`) from real public text: Debian's man pages
and Debian's package index. Nothing here is written by us; every question and answer is derived mechanically.

Sets (each one is a folder ``OUT/<set>/`` with ``train.jsonl``, ``test.jsonl``, ``README.md``, ``set.json``; rows are
``{"messages": [system, user, assistant]}``):

- ``man-qa``: knowledge QA over documents, where retrieval should win. The questions are ``bench/rag_sets.py``'s
  ``qa-en`` set ("Which option of `b2sum` does the following: digest length in bits ...?"), built from the option
  lists of Debian's English man pages; the answer is the option's spellings joined by ", " ("-l, --length"). The
  split is by command: every question of one page (and of any other page of the same name) is on one side, so no
  test question's page was seen in training. Pages over ``MAX_PAGE_KB`` (``--max-page-kb``) are left out
  (``systemd.directives(7)``, ``proc(5)``, ``systemctl(1)``... would make up ~40% of the index; the directives index
  also yields questions that are just lists of page names), and so are the few questions whose answer is no
  option name (``--More--``: rag_sets' parser took a list item for an option). ``docs/`` holds only the pages the
  train and test questions come from, as rendered by rag_sets (``docs/man1/ls.1.txt``), for the RAG approaches'
  index. Scored with ``bench/compare_metrics.py``'s ``option_match``.
- ``debian-sections``: a fixed-format classification task, where fine-tuning should win: given a binary package's
  name and description, answer its archive section (one of ``SECTIONS``) in one word. Source: the package index
  (``apt-cache dumpavail``: Package, Source, Section, short Description) and its English descriptions
  (``Translation-en``: the long Description), joined on Package and Description-md5. One package per source
  package (the one named like the source if it qualifies, else a seeded pick), so near-identical siblings
  (``foo``, ``foo-data``, ``foo-gtk``) cannot land on both sides; ``-dbg``/``-dbgsym``/``-dev``/``-doc`` packages,
  transitional and dummy packages, and packages without a long description are left out. Balanced: 50 train per
  section and 100 test (12 or 13 per section).

Docker's Debian images set ``Acquire::Languages "none"``, so ``/var/lib/apt/lists`` usually has no
``Translation-en``. Fetch the English descriptions into a separate lists folder (``apt-get update``, about 16 MB;
the system's own lists stay as they are) and point ``--apt-lists`` at it::

    mkdir -p bench/.cache/apt-lists/partial
    apt-get update -o Acquire::Languages=en -o Dir::State::Lists="$PWD/bench/.cache/apt-lists"
    python3 bench/compare_sets.py --apt-lists bench/.cache/apt-lists                 # all sets
    python3 bench/compare_sets.py --sets man-qa --rag-sets /tmp/ragsets/out          # one set, given rag sets

``--rag-sets`` is a folder with rag_sets' ``qa-en/`` and ``man-en/`` (default: the first of ``bench/.cache/rag_sets``
and ``/tmp/ragsets/out`` that has them); when none has them, ``bench/rag_sets.py --sets man-en,qa-en`` is run to
build them into ``bench/.cache/rag_sets`` (or into ``--rag-sets``). The third bake-off set, ``contracts``, ships in
``examples/contracts/``; its config is ``bench/compare/contracts.yaml``.

The output is deterministic for the same inputs (rag_sets' output, the package index): inputs are sorted and all
sampling uses the fixed seed ``SEED``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

HERE = Path(__file__).resolve().parent
SEED = 0
ALL_SETS = ("man-qa", "debian-sections")
RAG_SETS_DEFAULTS = (HERE / ".cache" / "rag_sets", Path("/tmp/ragsets/out"))
APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = Path("/usr/lib/apt/apt-helper")

MAN_QA_SYSTEM = "Answer with the command-line option only, e.g. --verbose."
MAN_QA_TEST = 100
MAN_QA_TRAIN = 300
MAX_PAGE_KB = 64

SECTIONS = ("admin", "devel", "games", "graphics", "net", "science", "sound", "text")
SECTIONS_SYSTEM = (
    "Which Debian archive section does this package belong to? Answer with one word: " + ", ".join(SECTIONS) + "."
)
TRAIN_PER_SECTION = 50
SECTIONS_TEST = 100
LONG_CHARS = 400
SKIP_SUFFIXES = ("-dbg", "-dbgsym", "-dev", "-doc")
SKIP_SUMMARY = re.compile(r"\b(transitional|dummy)\b", re.IGNORECASE)


def load_bench_module(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


rs = load_bench_module("rag_sets")  # its small file helpers
cm = load_bench_module("compare_metrics")  # the option extraction option_match scores with


@dataclass
class Built:
    """What was written for one set, for the summary printout."""

    name: str
    n_train: int
    n_test: int
    extra: str
    examples: list[dict]


def die(msg: str) -> NoReturn:
    sys.exit(f"compare_sets: {msg}")


def chat(system: str, user: str, assistant: str) -> dict:
    roles = (("system", system), ("user", user), ("assistant", assistant))
    return {"messages": [{"role": role, "content": content} for role, content in roles]}


def write_set(target: Path, train: list[dict], test: list[dict], readme: str, meta: dict) -> None:
    rs.write_jsonl(target / "train.jsonl", train)
    rs.write_jsonl(target / "test.jsonl", test)
    (target / "README.md").write_text(readme.strip() + "\n", encoding="utf-8")
    meta = {"seed": SEED, "n_train": len(train), "n_test": len(test), **meta}
    (target / "set.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- man-qa


def find_rag_sets(given: Path | None) -> Path:
    """The folder holding rag_sets' qa-en and man-en sets, built with bench/rag_sets.py when missing."""
    candidates = [given] if given is not None else list(RAG_SETS_DEFAULTS)
    for folder in candidates:
        if (folder / "qa-en" / "qa.jsonl").is_file() and (folder / "man-en" / "docs").is_dir():
            return folder
    target = given or RAG_SETS_DEFAULTS[0]
    print(f"man-qa: no qa-en/man-en sets in {', '.join(map(str, candidates))}; building them into {target}")
    cmd = [sys.executable, str(HERE / "rag_sets.py"), "--sets", "man-en,qa-en", "--out", str(target)]
    if subprocess.run(cmd, check=False).returncode != 0:
        die("bench/rag_sets.py failed; see its message above")
    return target


def command_of(rel: str) -> str:
    """The command a page documents: "man1/ls.1.txt" -> "ls", "man5/systemd.exec.5.txt" -> "systemd.exec"."""
    return Path(rel).name.rsplit(".", 2)[0]


def take_groups(groups: list[tuple[str, list[dict]]], want: int) -> tuple[list[str], list[dict]]:
    """Whole groups, in the given order, while they fit into `want` rows; stops once `want` is reached."""
    keys: list[str] = []
    rows: list[dict] = []
    for key, members in groups:
        if len(rows) + len(members) <= want:
            keys.append(key)
            rows.extend(members)
        if len(rows) == want:
            break
    return keys, rows


def build_man_qa(out: Path, rag_sets: Path, max_page_kb: int = MAX_PAGE_KB) -> Built:
    qa_dir, docs_src = rag_sets / "qa-en", rag_sets / "man-en" / "docs"
    rows = [json.loads(line) for line in (qa_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    source = json.loads((qa_dir / "set.json").read_text(encoding="utf-8"))["source"]
    page_of = {row["id"]: row["relevant"][0]["path"] for row in rows}
    big = sorted({p for p in page_of.values() if (docs_src / p).stat().st_size > max_page_kb * 1024})
    # spellings that are no option name for option_match ("--More--" of zmore, "-rw-r--r--" of nss-systemd: list
    # items of the page that rag_sets took for options)
    junk = [row["id"] for row in rows if any(cm.first_option(a) != a for a in row["answers"])]
    usable = [row for row in rows if page_of[row["id"]] not in big and row["id"] not in junk]
    by_command: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(usable, key=lambda r: r["id"]):
        by_command[command_of(page_of[row["id"]])].append(row)
    groups = sorted(by_command.items())
    rng = random.Random(SEED)
    rng.shuffle(groups)
    test_cmds, test_rows = take_groups(groups, MAN_QA_TEST)
    rest = [g for g in groups if g[0] not in set(test_cmds)]
    train_cmds, train_rows = take_groups(rest, MAN_QA_TRAIN)
    if len(test_rows) < MAN_QA_TEST:
        die(f"man-qa: only {len(test_rows)} test questions could be drawn from {len(usable)} usable ones")
    rng.shuffle(train_rows)
    rng.shuffle(test_rows)

    target = rs.fresh_dir(out / "man-qa")
    pages = sorted({page_of[r["id"]] for r in train_rows + test_rows})
    for rel in pages:
        (target / "docs" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(docs_src / rel, target / "docs" / rel)
    size = rs.dir_bytes(target / "docs")
    train = [chat(MAN_QA_SYSTEM, r["question"], ", ".join(r["answers"])) for r in train_rows]
    test = [chat(MAN_QA_SYSTEM, r["question"], ", ".join(r["answers"])) for r in test_rows]
    n_test_pages = len({page_of[r["id"]] for r in test_rows})
    readme = f"""# man-qa

Knowledge QA over documents for the bake-off (`tuneforge compare bench/compare/man-qa.yaml`): {len(train)} train
and {len(test)} test questions of the form "Which option of `cmd` does the following: <the option's description>?",
answered with the option's spellings joined by ", " (e.g. "-l, --length").
System message: "{MAN_QA_SYSTEM}"

- Source: the `qa-en` set of `bench/rag_sets.py`: {len(rows)} questions over Debian's English man pages
  ({source}; licences as in `/usr/share/doc/<package>/copyright`). Each question quotes the first sentence of one
  option's description from a page's option list.
- Left out: the questions of the {len(big)} pages over {max_page_kb} KB ({", ".join(big)}), to keep the index
  small, and {len(junk)} whose answer is no option name ({", ".join(junk)}).
- Split by command, seed {SEED}: commands were shuffled and taken whole into test until it held {MAN_QA_TEST}
  questions ({len(test_cmds)} commands, {n_test_pages} pages), then into train up to {MAN_QA_TRAIN}
  ({len(train_cmds)} commands). No test question's page (or a page of the same name) has a training question:
  the answer is only in the documents.
- `docs/`: the {len(pages)} pages the questions come from ({size / 1e6:.2f} MB, ~{size // 4 / 1e3:.0f}k tokens at
  4 characters a token), rendered to text by rag_sets as `docs/manN/NAME.N.txt`.
- Scoring: `bench/compare_metrics.py:option_match` (the answer's first option is one of the spellings);
  exact_match needs all spellings, in the reference's order.

Built by `bench/compare_sets.py`.
"""
    meta = {
        "name": "man-qa",
        "source": f"bench/rag_sets.py qa-en + man-en ({source})",
        "n_docs": len(pages),
        "docs_bytes": size,
        "max_page_kb": max_page_kb,
        "left_out_pages": big,
        "left_out_questions": junk,
        "test_commands": sorted(test_cmds),
        "train_commands": sorted(train_cmds),
    }
    write_set(target, train, test, readme, meta)
    extra = f"{len(pages)} docs, {size / 1e6:.2f} MB (~{size // 4 / 1e3:.0f}k tokens)"
    return Built("man-qa", len(train), len(test), extra, test[:3])


# ---------------------------------------------------------------- debian-sections


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as {field: value}; continuation lines are kept, each after a "\\n"."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def read_packages(lists: Path) -> list[dict[str, str]]:
    """`apt-cache dumpavail` over the package lists in `lists` (one candidate version per package)."""
    options = [f"Dir::State::Lists={lists}", "Dir::Cache::pkgcache=", "Dir::Cache::srcpkgcache="]
    cmd = ["apt-cache", *(f"-o{o}" for o in options), "dumpavail"]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0:
        die(f"apt-cache dumpavail failed: {res.stderr.decode(errors='replace').strip()}")
    return list(stanzas(res.stdout.decode("utf-8", "replace")))


def read_translations(lists: Path) -> dict[tuple[str, str], str]:
    """(package, Description-md5) -> the long English description, from the Translation-en files in `lists`."""
    files = sorted(lists.glob("*_i18n_Translation-en*"))
    if not files:
        die(
            f"no Translation-en in {lists} (Docker images set Acquire::Languages none); fetch them with: "
            f"mkdir -p bench/.cache/apt-lists/partial && apt-get update -o Acquire::Languages=en -o "
            f'Dir::State::Lists="$PWD/bench/.cache/apt-lists", then pass --apt-lists bench/.cache/apt-lists'
        )
    long: dict[tuple[str, str], str] = {}
    for path in files:
        res = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True, check=False)
        if res.returncode != 0:
            die(f"cannot read {path}: {res.stderr.decode(errors='replace').strip()}")
        for st in stanzas(res.stdout.decode("utf-8", "replace")):
            _, _, body = st.get("Description-en", "").partition("\n")
            if "Package" in st and "Description-md5" in st:
                long[(st["Package"], st["Description-md5"])] = body
    return long


def flatten(body: str) -> str:
    """A deb822 long description as one whitespace-normalised line (" ." paragraph breaks dropped)."""
    lines = [line.strip() for line in body.splitlines()]
    return " ".join(" ".join(line for line in lines if line != ".").split())


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, cut at the last space before the limit."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


@dataclass
class Package:
    name: str
    source: str
    section: str
    short: str
    long: str

    def prompt(self) -> str:
        return f"Package: {self.name}\nDescription: {self.short}\n{clip(self.long, LONG_CHARS)}"


def candidates(lists: Path) -> tuple[list[Package], Counter]:
    """Packages of SECTIONS that qualify, before the one-per-source choice; and why others were skipped."""
    translations = read_translations(lists)
    skipped: Counter = Counter()
    out: list[Package] = []
    for st in read_packages(lists):
        name, section = st.get("Package", ""), st.get("Section", "")
        if section not in SECTIONS:  # "contrib/games" etc. are skipped too
            continue
        short = st.get("Description", "").split("\n", 1)[0].strip()
        long = flatten(translations.get((name, st.get("Description-md5", "")), ""))
        if name.endswith(SKIP_SUFFIXES):
            skipped["-dbg/-dbgsym/-dev/-doc"] += 1
        elif SKIP_SUMMARY.search(short):
            skipped["transitional or dummy"] += 1
        elif not long:
            skipped["no long description"] += 1
        else:
            source = (st.get("Source") or name).split(" ", 1)[0]
            out.append(Package(name, source, section, short, long))
    return sorted(out, key=lambda p: p.name), skipped


def one_per_source(packages: list[Package], rng: random.Random) -> list[Package]:
    """Per source package: the binary named like the source if there is one, else a seeded pick."""
    by_source: dict[str, list[Package]] = defaultdict(list)
    for p in packages:
        by_source[p.source].append(p)
    picked = []
    for source, members in sorted(by_source.items()):
        same = [p for p in members if p.name == source]
        picked.append(same[0] if same else rng.choice(members))
    return picked


def build_debian_sections(out: Path, lists: Path) -> Built:
    rng = random.Random(SEED)
    pool, skipped = candidates(lists)
    chosen = one_per_source(pool, rng)
    per_section: dict[str, list[Package]] = {s: [p for p in chosen if p.section == s] for s in SECTIONS}
    n_test = dict.fromkeys(SECTIONS, SECTIONS_TEST // len(SECTIONS))
    for s in sorted(rng.sample(SECTIONS, SECTIONS_TEST % len(SECTIONS))):
        n_test[s] += 1
    train_pkgs: list[Package] = []
    test_pkgs: list[Package] = []
    for s in SECTIONS:
        need = TRAIN_PER_SECTION + n_test[s]
        if len(per_section[s]) < need:
            die(f"debian-sections: section {s} has {len(per_section[s])} packages, {need} needed")
        drawn = rng.sample(per_section[s], need)
        train_pkgs += drawn[:TRAIN_PER_SECTION]
        test_pkgs += drawn[TRAIN_PER_SECTION:]
    rng.shuffle(train_pkgs)
    rng.shuffle(test_pkgs)
    train = [chat(SECTIONS_SYSTEM, p.prompt(), p.section) for p in train_pkgs]
    test = [chat(SECTIONS_SYSTEM, p.prompt(), p.section) for p in test_pkgs]

    release = index_release(lists)
    target = rs.fresh_dir(out / "debian-sections")
    available = ", ".join(f"{s} {len(per_section[s])}" for s in SECTIONS)
    why = "; ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
    readme = f"""# debian-sections

Fixed-format classification for the bake-off (`tuneforge compare bench/compare/debian-sections.yaml`): given a
Debian binary package's name and description, answer its archive section in one word. {len(train)} train and
{len(test)} test examples over the 8 sections {", ".join(SECTIONS)}.
System message: "{SECTIONS_SYSTEM}"
User message: "Package: NAME\\nDescription: SHORT\\nLONG". Answer: the section.

- Source: Debian's package index ({release}): `apt-cache dumpavail` for Package, Source, Section and the short
  Description, and `Translation-en` for the long Description (joined on Package and Description-md5).
- Sections: frequent ones that the package name rarely gives away (python, perl, libs, libdevel, doc, haskell,
  rust, golang... mostly follow naming rules, so they are not used; `text` still has the aspell-*/hunspell-*
  dictionaries).
- Left out: packages named `*-dbg`, `*-dbgsym`, `*-dev`, `*-doc`, transitional and dummy packages, packages without
  a long description ({why}).
- One binary package per source package (the one named like the source, else a seeded pick), so no source package
  is on both sides; available per section after that: {available}.
- Balanced, seed {SEED}: {TRAIN_PER_SECTION} train per section; test: {", ".join(f"{s} {n_test[s]}" for s in SECTIONS)}.
- LONG: the long description, whitespace-normalised (paragraph dots dropped), cut at a word boundary to at most
  {LONG_CHARS} characters.

Built by `bench/compare_sets.py`.
"""
    meta = {
        "name": "debian-sections",
        "source": f"Debian package index: {release}",
        "sections": list(SECTIONS),
        "test_per_section": n_test,
        "available_per_section": {s: len(per_section[s]) for s in SECTIONS},
        "skipped": dict(sorted(skipped.items())),
    }
    write_set(target, train, test, readme, meta)
    return Built("debian-sections", len(train), len(test), f"{len(chosen)} source packages in the 8 sections", test[:3])


def index_release(lists: Path) -> str:
    """The releases and dates of the InRelease files in `lists`, e.g. "bookworm (Sat, 11 Jul 2026 ...)"."""
    parts = []
    for path in sorted(lists.glob("*_InRelease")):
        text = path.read_text(encoding="utf-8", errors="replace")
        fields = {k: re.search(rf"^{k}: (.+)$", text, re.MULTILINE) for k in ("Codename", "Date")}
        name, date = (m.group(1) if m else "?" for m in fields.values())
        parts.append(f"{name} ({date})")
    return ", ".join(parts) or str(lists)


# ---------------------------------------------------------------- driver


def report(built: Built, out: Path, seconds: float) -> None:
    counts = f"{built.n_train} train, {built.n_test} test, {built.extra}"
    print(f"{built.name}: {counts} -> {out / built.name} ({seconds:.1f}s)")
    for row in built.examples:
        user, answer = row["messages"][1]["content"], row["messages"][2]["content"]
        print(f"  e.g. {user[:110]!r} -> {answer!r}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / ".cache" / "compare_sets", help="output folder")
    ap.add_argument("--sets", default=",".join(ALL_SETS), help=f"comma-separated subset of {','.join(ALL_SETS)}")
    ap.add_argument("--rag-sets", type=Path, default=None, help="folder with rag_sets.py's qa-en and man-en")
    ap.add_argument("--max-page-kb", type=int, default=MAX_PAGE_KB, help="man-qa: leave out questions of larger pages")
    ap.add_argument("--apt-lists", type=Path, default=APT_LISTS, help="apt lists folder with Translation-en files")
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := sorted(set(sets) - set(ALL_SETS)):
        die(f"unknown set(s) {unknown}; choose from {ALL_SETS}")
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    if "man-qa" in sets:
        t0 = time.time()
        report(build_man_qa(args.out, find_rag_sets(args.rag_sets), args.max_page_kb), args.out, time.time() - t0)
    if "debian-sections" in sets:
        t0 = time.time()
        report(build_debian_sections(args.out, args.apt_lists.resolve()), args.out, time.time() - t0)
    print(f"done in {time.time() - t_all:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
