"""`tuneforge annotate` in a real terminal (a pseudo-terminal): single key presses, arrow keys included, judge the
tiny model's sampled answers; the pairs land in the preference file and a second run resumes."""

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT


def run_in_terminal(args: list[str], keys: list[str], cwd: Path) -> str:
    """Run the command on a pseudo-terminal, sending each key once the key help has been shown again."""
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", *args],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    seen, sent, deadline = b"", 0, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the command ended and closed the terminal
                    break
                seen += chunk
            if sent < len(keys) and seen.count(b"q: quit") > sent:
                os.write(main, keys[sent].encode())
                sent += 1
            if process.poll() is not None and not ready:
                break
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)
    assert process.returncode == 0, seen.decode(errors="replace")[-3000:]
    return re.sub(r"\x1b\[[0-9;]*m", "", seen.decode(errors="replace"))  # colours off: the text as read


def test_judging_in_a_terminal_appends_pairs_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Item 1: what colour?\nItem 2: what colour?\nItem 3: what colour?\n")
    out = tmp_path / "prefs.jsonl"
    args = [
        "annotate",
        str(tiny_model_dir),
        str(prompts),
        "--out",
        str(out),
        "--annotator",
        "ann",
        "--max-tokens",
        "8",
        "--temperature",
        "1.5",
    ]
    screen = run_in_terminal(args, ["1", "\x1b[C", "q"], ROOT)  # left, right arrow, quit
    assert "[1/3] ann" in screen and "[2/3] ann" in screen and "Item 1: what colour?" in screen
    assert "2 judgement(s) saved; ann has judged 2 of 3 prompts" in screen
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 2 and all(p["annotator"] == "ann" and p["chosen"] != p["rejected"] for p in pairs)
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Item 1: what colour?"}]
    screen = run_in_terminal(args, ["t"], ROOT)  # resumes at the third prompt; a tie is no pair
    assert "[3/3] ann" in screen and "ann has judged 3 of 3 prompts" in screen
    assert len(out.read_text().splitlines()) == 2
    assert "ann: a" in screen or "ann: b" in screen  # the summary counts the judgements
