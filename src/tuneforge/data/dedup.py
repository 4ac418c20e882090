"""Near-duplicate and leakage search in bounded memory: MinHash signatures on disk, LSH by sorting.

While streaming, every kept record's MinHash signature (128 x uint32 over character 5-grams, rensa: 13 us per
record on this project's machine against 243 us for datasketch) is appended to a scratch file; nothing else of it
stays in memory. Afterwards, per LSH band, the band hashes of all records are computed from that file in chunks
and sorted; records with equal hashes are candidates, and each candidate pair is verified against the stored
signatures (read into small buffers). Memory is ~50 bytes per record for the band being sorted, instead of the
~2 KB per record an in-memory LSH index costs; the million-line benchmark needs it.

Which candidates: within a bucket each record is compared with the bucket's first record and its predecessor.
A record is a near-duplicate when it reaches the threshold with an earlier record that was itself kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NUM_PERM = 128
SHINGLE = 5
CHUNK = 1 << 15  # signatures read per chunk when hashing bands (16 MiB)
BATCH = 1 << 14  # candidate pairs verified per batch (two 8 MiB gathers)
ROW = NUM_PERM * 4  # bytes per signature
PRIME = np.uint64(0x100000001B3)


class Signatures:
    """Appends MinHash signatures of texts to a scratch file; row i belongs to the i-th text added."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("wb")
        self.n = 0

    def add(self, text: str) -> None:
        """Append the signature of `text`."""
        self._file.write(signature(text).tobytes())
        self.n += 1

    def close(self) -> None:
        """Flush the file (it stays for the searches; `delete` removes it)."""
        if not self._file.closed:
            self._file.close()

    def delete(self) -> None:
        """Close and remove the scratch file."""
        self.close()
        self.path.unlink(missing_ok=True)


def signature(text: str) -> np.ndarray:
    """The MinHash signature of a text (128 uint32)."""
    import rensa

    sketch = rensa.RMinHash(num_perm=NUM_PERM, seed=7)
    sketch.update(shingles(text))
    return np.asarray(sketch.digest(), dtype=np.uint32)


def shingles(text: str) -> list[str]:
    """Character 5-grams (the whole text when shorter): robust for short chat turns and any language."""
    if len(text) <= SHINGLE:
        return [text]
    return [text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1)]


def bands_for(threshold: float) -> int:
    """Fewest LSH bands (most rows each, fewest false candidates) that still catch 90% of pairs at `threshold`
    (and more of the pairs above it: at threshold 0.9, 16 bands of 8 rows catch 99.99% of pairs at 0.95)."""
    for bands in (4, 8, 16, 32, 64, 128):
        rows = NUM_PERM // bands
        if 1 - (1 - threshold**rows) ** bands >= 0.9:
            return bands
    return 128


def exact_duplicates(keys: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """For every record, the first earlier record with the same key (-1: none, or a record in `keep`)."""
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    first = np.maximum.accumulate(np.where(np.concatenate(([True], ~same)), np.arange(len(keys)), 0))
    first_of = np.full(len(keys), -1, dtype=np.int64)
    first_of[order[1:][same]] = order[first[1:][same]]
    if keep is not None:
        first_of[keep] = -1
    return first_of


def near_duplicates(
    path: Path, threshold: float, skip: np.ndarray, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For every record, the earlier kept record it nearly repeats (-1: none) and the similarity.

    `skip`: records already removed (they neither match nor get matched). `keep`: records never removed.
    """
    n = len(skip)
    edges_i, edges_j, edges_s = [], [], []
    seen = np.empty(0, dtype=np.int64)  # verified pairs as j * n + i, not verified again in later bands
    with _SignatureFile(path, n) as sigs:
        live = np.flatnonzero(~skip)
        for hashes in _band_hashes(sigs, threshold):
            i, j = _bucket_pairs(hashes[live])
            i, j = live[i], live[j]
            fresh = ~np.isin(j * n + i, seen, assume_unique=False)
            i, j = i[fresh], j[fresh]
            sims = sigs.similarity(i, j)
            hit = sims >= threshold
            edges_i.append(i[hit])
            edges_j.append(j[hit])
            edges_s.append(sims[hit])
            seen = np.union1d(seen, j[hit] * n + i[hit])
    return _resolve(n, edges_i, edges_j, edges_s, keep)


def _resolve(n: int, ii: list, jj: list, ss: list, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Walk verified pairs in record order: a record goes when its most similar kept predecessor is close enough."""
    dup_of = np.full(n, -1, dtype=np.int64)
    sim_of = np.zeros(n, dtype=np.float32)
    if not ii:
        return dup_of, sim_of
    i, j, s = np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)
    order = np.lexsort((-s, j))
    for a, b, sim in zip(i[order].tolist(), j[order].tolist(), s[order].tolist(), strict=True):
        if dup_of[b] < 0 and dup_of[a] < 0 and (keep is None or not keep[b]):
            dup_of[b], sim_of[b] = a, sim
    return dup_of, sim_of


def leaks(path: Path, threshold: float, index: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every query record, the most similar index record at or above `threshold` (-1: none), and the similarity.

    `index` and `queries` are boolean masks over the records of the signature file (test vs train/val).
    """
    n = len(index)
    best = np.full(n, -1, dtype=np.int64)
    best_sim = np.zeros(n, dtype=np.float32)
    members, asked = np.flatnonzero(index), np.flatnonzero(queries)
    if not len(members) or not len(asked):
        return best, best_sim
    with _SignatureFile(path, n) as sigs:
        for hashes in _band_hashes(sigs, threshold):
            order = np.argsort(hashes[members], kind="stable")
            keys = hashes[members][order]
            pos = np.minimum(np.searchsorted(keys, hashes[asked]), len(keys) - 1)
            found = keys[pos] == hashes[asked]
            j, i = asked[found], members[order[pos[found]]]
            sims = sigs.similarity(i, j)
            better = (sims >= threshold) & (sims > best_sim[j])
            best[j[better]], best_sim[j[better]] = i[better], sims[better]
    return best, best_sim


def _bucket_pairs(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (earlier, later) sharing a hash: each record with its bucket's first and its predecessor."""
    order = np.argsort(hashes, kind="stable")  # stable: within a bucket, records stay in file order
    same = hashes[order][1:] == hashes[order][:-1]
    at = np.arange(1, len(order))[same]
    if not len(at):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    starts = np.where(np.concatenate(([True], ~same)), np.arange(len(order)), 0)
    first = np.maximum.accumulate(starts)[at]
    pred = at - 1
    not_first = pred != first
    earlier = np.concatenate((order[first], order[pred[not_first]]))
    later = np.concatenate((order[at], order[at[not_first]]))
    return earlier, later


def _band_hashes(sigs: _SignatureFile, threshold: float) -> Iterator[np.ndarray]:
    """Per LSH band, a 64-bit hash of every record's rows of that band (FNV-style over the uint32 values)."""
    bands = bands_for(threshold)
    rows = NUM_PERM // bands
    for band in range(bands):
        out = np.empty(sigs.n, dtype=np.uint64)
        for start in range(0, sigs.n, CHUNK):
            block = sigs.rows(start, start + CHUNK)[:, band * rows : (band + 1) * rows].astype(np.uint64)
            h = np.full(len(block), 0xCBF29CE484222325, dtype=np.uint64)
            for col in block.T:
                h = (h ^ col) * PRIME
            out[start : start + len(block)] = h
        yield out


class _SignatureFile:
    """The signature scratch file, read by explicit reads into small buffers: a memory map would count every page
    it touched (and the kernel's fault-around neighbours) in this process's RSS, ~300 MB at 1M records."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.n = path, n
        self._fd = -1

    def __enter__(self) -> _SignatureFile:
        self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self._fd)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Signatures of records start..stop-1."""
        stop = min(stop, self.n)
        data = os.pread(self._fd, (stop - start) * ROW, start * ROW)
        return np.frombuffer(data, dtype=np.uint32).reshape(-1, NUM_PERM)

    def similarity(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Estimated Jaccard similarity of the record pairs (i[k], j[k])."""
        out = np.empty(len(i), dtype=np.float32)
        for start in range(0, len(i), BATCH):
            a, b = i[start : start + BATCH], j[start : start + BATCH]
            wanted = np.unique(np.concatenate((a, b)))
            table = np.frombuffer(
                b"".join(os.pread(self._fd, ROW, int(k) * ROW) for k in wanted), dtype=np.uint32
            ).reshape(-1, NUM_PERM)
            rows_a, rows_b = table[np.searchsorted(wanted, a)], table[np.searchsorted(wanted, b)]
            out[start : start + len(a)] = np.count_nonzero(rows_a == rows_b, axis=1) / NUM_PERM
        return out
