"""Load test of the fine-tuning service: many concurrent clients mixing chat, file and job calls against one server.

    python bench/load.py                         # 100 clients x 5 calls, the embedded model, max_tokens 8
    python bench/load.py --clients 50 --calls 10 --max-batch 1

The server is `tuneforge serve --data-dir` itself (its own process, on the embedded model, with an API key). Each
client runs `--calls` calls, each drawn (seeded) from: chat completion (60%, greedy, `--new-tokens`), list files,
retrieve a file, list jobs, list a job's events (10% each); a training file is uploaded and one short job created
first, so the job calls have something to read (the job trains while the clients call: the worst case, one machine
training and serving). Printed: calls and errors per kind, latency p50 / p95 / p99 per kind, the whole run's calls
per second. The acceptance bar is zero errors (no 5xx, no timeout, no connection refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "load-test-key"
KINDS = ["chat"] * 6 + ["list_files", "retrieve_file", "list_jobs", "job_events"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data: Path, port: int, max_batch: int) -> subprocess.Popen[bytes]:
    """`tuneforge serve --data-dir` on the embedded model, ready when /health answers."""
    command = [sys.executable, "-m", "tuneforge", "serve", "--data-dir", str(data), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--max-batch", str(max_batch)], env={**os.environ, "TUNEFORGE_API_KEY": KEY},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start")


async def call(client: httpx.AsyncClient, kind: str, ids: dict[str, str], new_tokens: int) -> httpx.Response:
    if kind == "chat":
        body = {"model": "smollm2-135m-instruct", "max_tokens": new_tokens,
                "messages": [{"role": "user", "content": "Name one colour of the rainbow."}]}  # fmt: skip
        return await client.post("/v1/chat/completions", json=body)
    path = {
        "list_files": "/v1/files?limit=20",
        "retrieve_file": f"/v1/files/{ids['file']}",
        "list_jobs": "/v1/fine_tuning/jobs",
        "job_events": f"/v1/fine_tuning/jobs/{ids['job']}/events?limit=20",
    }[kind]
    return await client.get(path)


async def client_run(
    base: str, calls: int, seed: int, ids: dict[str, str], new_tokens: int, out: list[tuple[str, float, int]]
) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
        for _ in range(calls):
            kind = rng.choice(KINDS)
            start = time.perf_counter()
            try:
                status = (await call(client, kind, ids, new_tokens)).status_code
            except httpx.HTTPError:
                status = -1  # timeout or connection error
            out.append((kind, time.perf_counter() - start, status))


def setup(base: str) -> dict[str, str]:
    """One uploaded training file and one short job, for the file and job calls to read."""
    headers = {"Authorization": f"Bearer {KEY}"}
    rows = (ROOT / "examples" / "contracts" / "train.jsonl").read_bytes()
    uploaded = httpx.post(f"{base}/v1/files", headers=headers, files={"file": ("train.jsonl", rows)},
                          data={"purpose": "fine-tune"}, timeout=120).json()  # fmt: skip
    body = {"model": "smollm2-135m-instruct", "training_file": uploaded["id"],
            "tuneforge": {"config": {"train.max_steps": 4}}}  # fmt: skip
    job = httpx.post(f"{base}/v1/fine_tuning/jobs", headers=headers, json=body, timeout=60).json()
    return {"file": uploaded["id"], "job": job["id"]}


def report(results: list[tuple[str, float, int]], seconds: float) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for kind in sorted({k for k, _, _ in results}):
        times = sorted(t for k, t, _ in results if k == kind)
        errors = sum(1 for k, _, s in results if k == kind and not 200 <= s < 300)
        q = statistics.quantiles(times, n=100) if len(times) > 1 else times * 99
        table[kind] = {"calls": len(times), "errors": errors, "p50_s": round(q[49], 3), "p95_s": round(q[94], 3),
                       "p99_s": round(q[98], 3)}  # fmt: skip
    errors = sum(v["errors"] for v in table.values())
    return {"calls": len(results), "errors": errors, "seconds": round(seconds, 1),
            "calls_per_s": round(len(results) / seconds, 2), "kinds": table}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--calls", type=int, default=5, help="calls per client")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="tf-load-"))
    port = free_port()
    server = start(data, port, args.max_batch)
    base = f"http://127.0.0.1:{port}"
    try:
        ids = setup(base)
        results: list[tuple[str, float, int]] = []
        begin = time.perf_counter()

        async def everyone() -> None:
            await asyncio.gather(*(client_run(base, args.calls, i, ids, args.new_tokens, results)
                                   for i in range(args.clients)))  # fmt: skip

        asyncio.run(everyone())
        summary = report(results, time.perf_counter() - begin)
        summary |= {"clients": args.clients, "max_batch": args.max_batch, "new_tokens": args.new_tokens}
        print(json.dumps(summary, indent=2))
        for kind, row in summary["kinds"].items():
            print(f"{kind:14} {row['calls']:5} calls {row['errors']:3} errors  p50 {row['p50_s']:7.3f} s  "
                  f"p95 {row['p95_s']:7.3f} s  p99 {row['p99_s']:7.3f} s")  # fmt: skip
        print(f"all: {summary['calls']} calls, {summary['errors']} errors, {summary['calls_per_s']} calls/s")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
