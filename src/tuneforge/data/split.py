"""Seeded train/val/test assignment: stratified by label, group-aware, sizes as fractions or counts.

Every record carries an order key: a seeded hash of its group (or, without a group, of its content). Records of
one group share the key, so they always land in the same split; and a record's key does not depend on its
position in the file, so adding data moves few records between splits. Works on numpy arrays: 1M records cost
a few MB.
"""

from __future__ import annotations

import hashlib

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2


def order_key(seed: int, identity: str) -> int:
    """The seeded 63-bit sort key of a record's group or content."""
    digest = hashlib.blake2b(f"{seed}\x1f{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def size_of(size: float, n: int) -> int:
    """A split size given as a fraction (< 1) or a count (>= 1) of n items; a non-zero fraction gets at least 1."""
    if size <= 0 or n == 0:
        return 0
    return min(n, int(size)) if size >= 1 else max(1, round(n * size))


def assign(keys: np.ndarray, val_size: float, test_size: float, labels: np.ndarray | None = None) -> np.ndarray:
    """Split code (TRAIN/VAL/TEST) of each record. `labels` (integer codes) stratifies; equal keys stay together."""
    n = len(keys)
    out = np.full(n, TRAIN, dtype=np.int8)
    n_test, n_val = size_of(test_size, n), size_of(val_size, n)
    strata = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    test_quota = _apportion(n_test, [len(s) for s in strata])
    val_quota = _apportion(n_val, [len(s) for s in strata])
    for members, q_test, q_val in zip(strata, test_quota, val_quota, strict=True):
        _fill(out, members[np.argsort(keys[members], kind="stable")], keys, q_test, q_val)
    return out


def _fill(out: np.ndarray, members: np.ndarray, keys: np.ndarray, q_test: int, q_val: int) -> None:
    """Walk members in key order; whole runs of equal keys (a group) go to test, then val, then train."""
    taken_test = taken_val = 0
    i = 0
    while i < len(members):
        j = i + 1
        while j < len(members) and keys[members[j]] == keys[members[i]]:
            j += 1
        if taken_test < q_test:
            out[members[i:j]] = TEST
            taken_test += j - i
        elif taken_val < q_val:
            out[members[i:j]] = VAL
            taken_val += j - i
        i = j


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """Split `total` over strata in proportion to their sizes (largest remainder); small strata may get 0."""
    n = sum(sizes)
    if n == 0 or total == 0:
        return [0] * len(sizes)
    exact = [total * s / n for s in sizes]
    quota = [int(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda k: exact[k] - quota[k], reverse=True)[: total - sum(quota)]:
        quota[i] += 1
    return quota
