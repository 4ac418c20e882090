"""Precision and recall of tuneforge's personal-data detector on the shipped labelled German/English sets.

    python bench/privacy.py

labelled.txt was used while the detector was written; heldout.txt was written afterwards and scored once, so
its figures are the honest ones. A hit is a found span of the same type overlapping a labelled span.
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.data.privacy import PII_TYPES, score

SETS = Path(__file__).resolve().parents[1] / "examples" / "privacy"


def load(name: str) -> list[str]:
    """The texts of a labelled set, language prefix removed."""
    lines = (SETS / name).read_text(encoding="utf-8").splitlines()
    return [line.split("|", 1)[1] for line in lines if line and not line.startswith("#")]


def main() -> None:
    for name in ("labelled.txt", "heldout.txt"):
        lines = load(name)
        start = time.perf_counter()
        result = score(lines)
        ms = (time.perf_counter() - start) * 1000 / len(lines)
        print(f"{name}: {len(lines)} texts, {result['ALL']['support']} labelled spans, {ms:.2f} ms per text")
        print(f"  {'type':<14} {'precision':>9} {'recall':>7} {'f1':>6} {'spans':>6}")
        for kind in [*PII_TYPES, "ALL"]:
            r = result[kind]
            print(f"  {kind:<14} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} {r['support']:>6.0f}")


if __name__ == "__main__":
    main()
