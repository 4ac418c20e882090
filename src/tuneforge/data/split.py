"""Seeded train/val/test split."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def split(items: list[T], val_size: float, test_size: float, seed: int) -> dict[str, list[T]]:
    """Shuffle with `seed` and cut into train/val/test; a non-zero fraction always gets at least one item."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = len(items)
    n_test = max(1, round(n * test_size)) if test_size > 0 else 0
    n_val = max(1, round(n * val_size)) if val_size > 0 else 0
    test = [items[i] for i in order[:n_test]]
    val = [items[i] for i in order[n_test : n_test + n_val]]
    train = [items[i] for i in order[n_test + n_val :]]
    return {"train": train, "val": val, "test": test}
