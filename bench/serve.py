"""Throughput of `tuneforge serve` under concurrent clients: batched answers against one request at a time.

    python bench/serve.py                        # embedded model + a LoRA adapter, 8 clients, 64 new tokens
    python bench/serve.py --clients 4 --new-tokens 128
    python bench/serve.py --stream               # the clients stream their answers (server-sent events)

The server is `tuneforge serve` itself, started as users start it (its own process), serving a LoRA adapter (r=16,
all linear layers, as `train.method=lora` makes; untrained, which costs the same per token) of the embedded model.
Each round, `--clients` threads post one chat completion each at the same moment (greedy, `max_tokens=--new-tokens`)
and wait for the answers. It runs with `--max-batch 1` (answered one after another) and with `--max-batch CLIENTS`
(queued requests share one batched generation), after one warm-up round each. Printed per setting: the answers'
tokens per second of wall time (all clients together), mean and longest latency, the batches the server ran (its
/health), and the ratio. Both settings answer the same questions greedily, so they generate the same tokens (checked).
With --stream the clients ask for streamed answers (`stream: true`, usage in the last event): latency is then the
time to the last event, and "first piece s" the mean time to the first piece of text.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from generate import QUESTIONS  # bench/generate.py's prompts (this folder is on sys.path when run as a script)


def make_run(folder: Path, model_name: str) -> Path:
    """A run directory holding an untrained LoRA adapter of `model_name`, as `tuneforge serve` expects one."""
    from peft import LoraConfig, get_peft_model

    from tuneforge.config import load_config
    from tuneforge.models import load_model
    from tuneforge.rundir import MODEL_DIR, RUN_INFO, save_config

    cfg = load_config(None, [f"model.name={model_name}", f"output_dir={folder}", "name=bench", "train.method=lora"])
    run = cfg.run_dir
    run.mkdir(parents=True)
    save_config(cfg)
    adapter = get_peft_model(load_model(model_name), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    adapter.save_pretrained(run / MODEL_DIR)
    info = {"run": "bench", "base_model": model_name, "adapter": True, "method": "lora", "task": "sft"}
    (run / MODEL_DIR / RUN_INFO).write_text(json.dumps(info), encoding="utf-8")
    return run


def one_round(url: str, clients: int, new_tokens: int, stream: bool) -> tuple[float, list[float], list[dict], int]:
    """All clients ask at once; returns wall seconds, each latency, the answers (text, tokens, seconds to the first
    piece) and the tokens generated."""
    import httpx

    latencies: list[float] = [0.0] * clients
    answers: list[Any] = [None] * clients
    start = threading.Barrier(clients + 1)

    def ask(i: int) -> None:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": new_tokens,
            "temperature": 0,
        }
        start.wait()
        began = time.perf_counter()
        if not stream:
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=900)
            response.raise_for_status()
            latencies[i] = time.perf_counter() - began
            reply = response.json()
            text, tokens = reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"]
            answers[i] = {"text": text, "tokens": tokens, "first": latencies[i]}
            return
        body.update(stream=True, stream_options={"include_usage": True})
        text, tokens, first = "", 0, 0.0
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: ") :])
                for choice in event["choices"]:
                    if piece := choice["delta"].get("content"):
                        text += piece
                        first = first or time.perf_counter() - began
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
        latencies[i] = time.perf_counter() - began
        answers[i] = {"text": text, "tokens": tokens, "first": first}

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return wall, latencies, answers, sum(a["tokens"] for a in answers)


def serve(run: Path, max_batch: int, clients: int, new_tokens: int, rounds: int, stream: bool) -> dict[str, Any]:
    """Start `tuneforge serve` with --max-batch, run the rounds, stop it."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tuneforge", "serve", str(run), "--port", str(port), "--max-batch", str(max_batch)]
    command += ["--max-tokens", str(max(512, new_tokens))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNEFORGE_API_KEY": ""}
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    if server.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"tuneforge serve failed:\n{log.read()}") from None
                    time.sleep(0.3)
            one_round(url, clients, new_tokens, stream)  # warm-up
            walls, latencies, tokens, firsts = 0.0, [], 0, []
            for _ in range(rounds):
                wall, waits, answers, count = one_round(url, clients, new_tokens, stream)
                walls, tokens = walls + wall, tokens + count
                latencies += waits
                firsts += [a["first"] for a in answers]
            batches = httpx.get(f"{url}/health").json()["batches"]
        finally:
            server.terminate()
            server.wait(timeout=60)
    return {
        "tok_s": tokens / walls,
        "mean": statistics.mean(latencies),
        "max": max(latencies),
        "first": statistics.mean(firsts),
        "texts": [a["text"] for a in answers],
        "tokens": tokens,
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.name (default: embedded)")
    parser.add_argument("--clients", type=int, default=8, help="requests sent at the same moment")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per setting, after one warm-up")
    parser.add_argument("--stream", action="store_true", help="the clients ask for streamed answers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = make_run(Path(folder), args.model)
        print(f"tuneforge serve, {args.model} + LoRA r16, {args.clients} concurrent clients, {args.new_tokens} new")
        print("tokens each, greedy" + (", streamed" if args.stream else ""))
        header = f"{'--max-batch':>12}{'tok/s (all clients)':>21}{'mean latency s':>16}{'max latency s':>15}"
        print(f"{header}{'first piece s':>15}  batches run")
        results = {}
        for max_batch in (1, args.clients):
            r = results[max_batch] = serve(run, max_batch, args.clients, args.new_tokens, args.rounds, args.stream)
            row = f"{max_batch:>12}{r['tok_s']:>21.1f}{r['mean']:>16.2f}{r['max']:>15.2f}{r['first']:>15.2f}"
            print(f"{row}  {r['batches']}")
        one, many = results[1], results[args.clients]
        same = one["texts"] == many["texts"] and one["tokens"] == many["tokens"]
        print(f"ratio {many['tok_s'] / one['tok_s']:.2f}x tokens/s; same answers in both settings: {same}")


if __name__ == "__main__":
    main()
