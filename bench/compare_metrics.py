"""User metrics for the bake-off sets of bench/compare_sets.py, in the form tuneforge's `evaluate.metrics` takes:
"path/to/file.py:function" with function(prediction: str, reference: str) -> float.

tuneforge loads such a file relative to the WORKING DIRECTORY (tuneforge.metrics.resolve gets no base), not to the
config file, so bench/compare/man-qa.yaml names it as `bench/compare_metrics.py:option_match` and is run from the
repository root:

    tuneforge compare bench/compare/man-qa.yaml

`option_match` scores the man-qa set, whose reference is the option's spellings joined by ", " (e.g. "-l, --length"):
1.0 when the first option-like token of the answer is one of them (case-sensitive: -a is not -A), else 0.0. So
"--length", "Use `-l`." and "--length=256 sets the digest size" all count, "-l, --length" too (its first option is
-l); an answer that names a wrong option first, or none, does not.

    python3 bench/compare_metrics.py     # runs the self-checks below
"""

from __future__ import annotations

import re

__all__ = ["first_option", "option_match"]

# "-x", "--long-name", "+x" (as bench/rag_sets.py's OPTION_NAME), not inside a word ("well-known", "C++");
# the name stops before "=VALUE" and loses trailing sentence punctuation (".", "-" after the last letter)
OPTION = re.compile(r"(?<![\w+-])[-+]{1,2}[A-Za-z0-9?@#][\w?@#+.-]*")


def first_option(text: str) -> str | None:
    """The first option-like token in `text`, without an "=VALUE" suffix or trailing punctuation; None if none."""
    m = OPTION.search(text)
    if m is None:
        return None
    return m.group(0).rstrip(".-")  # never empties the name: its first character is no "." or "-"


def option_match(prediction: str, reference: str) -> float:
    """1.0 if the prediction's first option-like token is one of the reference's comma-separated spellings."""
    spellings = {s.strip() for s in reference.split(",") if s.strip()}
    option = first_option(prediction)
    return float(option is not None and option in spellings)


def _self_check() -> None:
    ref = "-l, --length"
    right = ["--length", "-l", "-l, --length", "`--length`", "--length=256", "Use -l.", "The option is --length."]
    right += ["--length, which sets the digest size", "(-l) or --length", "  -l\n"]
    wrong = ["", "length", "-L", "--len", "--lengths", "-v, then -l", "--verbose --length", "well-known -x"]
    wrong += ["use the length option", "-- length", "--length-bits"]
    for p in right:
        assert option_match(p, ref) == 1.0, p
    for p in wrong:
        assert option_match(p, ref) == 0.0, p
    assert option_match("--base16", "--base16") == 1.0
    assert option_match("-?", "-?, --help") == 1.0
    assert option_match("C++ needs -std=c++17", "-std") == 1.0
    assert first_option("see --foo.bar.") == "--foo.bar"
    assert first_option("no options here, a - b") is None
    print(f"compare_metrics: {len(right) + len(wrong) + 3} option_match cases and 2 first_option cases pass")


if __name__ == "__main__":
    _self_check()
