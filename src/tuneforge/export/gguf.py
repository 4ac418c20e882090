"""GGUF for llama.cpp and Ollama, written by llama.cpp's own converter (convert_hf_to_gguf.py, with the gguf library
of the same llama.cpp version) from the merged model, quantised by llama.cpp's quantizer where the converter does not
write the type itself (the k-quants), plus an Ollama Modelfile; checked by loading the file in llama.cpp
(llama-cpp-python).

The converter is not on PyPI by itself: it ships inside llama-cpp-python's source package, which is also what builds
the runtime the check uses. tuneforge takes it from there, for the installed llama-cpp-python version (so converter
and runtime match), once, into its cache; $TUNEFORGE_LLAMA_CPP may name a llama.cpp checkout instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from tuneforge.errors import RunError
from tuneforge.export.merged import swap_in, write_merged
from tuneforge.export.parity import Answer, Parity, TuneforgeRuntime, check_chat
from tuneforge.export.runs import Run, reference_model
from tuneforge.generation import Messages, eos_ids
from tuneforge.models import cache_dir, load_tokenizer

CONVERTED = {"f32", "f16", "bf16", "q8_0"}  # written by the converter itself
QUANTIZED = {"q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* of each
QUANTS = tuple(sorted(CONVERTED | set(QUANTIZED)))
LLAMA_CPP_ENV = "TUNEFORGE_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
_SOURCE = "llama-cpp-python"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")  # what the converter needs of the source package


def write_gguf(run: Run, out: Path, quant: str) -> dict[str, Any]:
    """Write out/model-<quant>.gguf and out/Modelfile from the run's merged model; return the facts."""
    quant = quant.lower()
    if quant not in QUANTS:
        raise RunError(f"unknown GGUF quantisation {quant!r}", f"choose one of {', '.join(QUANTS)}")
    source = converter()
    tmp = out.with_name(f".{out.name}-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    name = f"model-{quant}.gguf"
    try:
        merged = write_merged(run, tmp / "merged")
        first = tmp / (name if quant in CONVERTED else "model-f16.gguf")
        _convert(source, merged, first, quant if quant in CONVERTED else "f16")
        if quant in QUANTIZED:
            _quantize(first, tmp / name, QUANTIZED[quant])
            first.unlink()
        shutil.rmtree(merged)
        (tmp / "Modelfile").write_text(modelfile(name, run), encoding="utf-8")
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed export leaves no half folder (nor a merged copy)
    return {"gguf": name, "quantisation": quant, "bytes": (out / name).stat().st_size, "converter": str(source)}


def converter() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py (see the module): $TUNEFORGE_LLAMA_CPP, or tuneforge's
    cached copy for the installed llama-cpp-python, fetched from its source package on first use."""
    if given := os.environ.get(LLAMA_CPP_ENV):
        folder = Path(given)
        if not (folder / CONVERTER).is_file():
            raise RunError(f"${LLAMA_CPP_ENV}={given} holds no {CONVERTER}", "point it at a llama.cpp checkout")
        return folder
    try:
        version = importlib.metadata.version(_SOURCE)
    except importlib.metadata.PackageNotFoundError:
        raise RunError(
            "--to gguf needs llama.cpp: its converter and, for the parity check, its runtime",
            'pip install -e ".[gguf]" (builds llama-cpp-python: ~9 min on 2 cores), or set '
            f"${LLAMA_CPP_ENV} to a llama.cpp checkout",
        ) from None
    folder = cache_dir() / "llama.cpp" / version
    if (folder / CONVERTER).is_file():
        return folder
    with tempfile.TemporaryDirectory() as scratch:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "-d", scratch, f"{_SOURCE}=={version}"],
            capture_output=True, text=True,
        )  # fmt: skip
        archives = list(Path(scratch).glob("*.tar.gz"))
        if fetched.returncode != 0 or not archives:
            raise RunError(
                f"cannot fetch llama.cpp's converter (the {_SOURCE} {version} source package): "
                f"{(fetched.stderr.strip().splitlines() or ['no archive'])[-1]}",
                f"check the network to PyPI, or set ${LLAMA_CPP_ENV} to a llama.cpp checkout",
            )
        _extract(archives[0], folder)
    return folder


def _extract(archive: Path, folder: Path) -> None:
    """Unpack the converter's files of the source package into `folder` (written beside, then renamed)."""
    tmp = folder.with_name(f".{folder.name}-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(_KEEP) and (member.isfile() or member.isdir()):
                member.name = parts[1]
                tar.extract(member, tmp, filter="data")
    swap_in(tmp, folder)


def _convert(source: Path, merged: Path, target: Path, outtype: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source / "gguf-py"), str(source)])}
    done = subprocess.run(
        [sys.executable, str(source / CONVERTER), str(merged), "--outfile", str(target), "--outtype", outtype],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        if "sentencepiece" in tail:
            hint = "pip install sentencepiece"
        elif "pre-tokenizer was not recognized" in tail:
            hint = "llama.cpp's converter does not know this model's tokenizer: export --to merged instead"
        else:
            hint = "see the converter's message above"
        raise RunError(f"llama.cpp's converter failed on {merged}:\n{tail}", hint)


def _quantize(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RunError(f"llama.cpp could not quantise {source.name}", "try --quant q8_0")


def modelfile(gguf: str, run: Run) -> str:
    """An Ollama Modelfile: the file, greedy decoding, and the chat's end token as a stop (Ollama takes the chat
    template from the GGUF's tokenizer.chat_template)."""
    tokenizer = load_tokenizer(run.cfg.model.name, run.cfg.model.revision)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in sorted(eos_ids(tokenizer))]
    lines = [f"# {run.cfg.name}: {run.hub_base} tuned by tuneforge ({run.cfg.train.method})", f"FROM ./{gguf}"]
    lines += [f'PARAMETER stop "{s}"' for s in stops] + ["PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"


class LlamaCppRuntime:
    """A GGUF file in llama.cpp: the chat template embedded in the file, llama.cpp's tokenizer, sampler and stops."""

    name = "llama.cpp"

    def __init__(self, path: Path, context: int = 4096) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = Llama(model_path=str(path), n_ctx=context, n_threads=os.cpu_count() or 1, verbose=False, seed=0)
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise RunError(f"{path.name} has no chat template embedded", "export again: the converter writes it")

        def token(key: str) -> str:
            index = meta.get(key)
            return "" if index is None else self.llm.detokenize([int(index)], special=True).decode("utf-8", "replace")

        self.formatter = Jinja2ChatFormatter(template, token("tokenizer.ggml.eos_token_id"),
                                             token("tokenizer.ggml.bos_token_id"))  # fmt: skip

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The prompt as llama-cpp-python's chat completion builds it from the embedded template."""
        result = self.formatter(messages=messages)  # type: ignore[arg-type]
        return list(self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))

    def next_logprobs(self, ids: list[int]) -> np.ndarray:
        import llama_cpp

        self.llm.reset()
        self.llm.eval(ids)  # without logits_all only the last position's logits are kept: read them from llama.cpp
        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float64)
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum())

    def stops_at(self, ids: set[int]) -> set[int]:
        """The ids llama.cpp ends generation at (its end-of-generation tokens)."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        return {i for i in ids if i < self.llm.n_vocab() and llama_cpp.llama_vocab_is_eog(vocab, i)}

    def answer(self, messages: Messages, max_new_tokens: int) -> Answer:
        done: Any = self.llm.create_chat_completion(
            messages=cast(Any, messages), max_tokens=max_new_tokens, temperature=0.0, top_k=1
        )
        choice = done["choices"][0]
        return Answer((choice["message"]["content"] or "").strip(), choice["finish_reason"] == "stop")


def check_gguf(run: Run, path: Path, limit: int, length: int, lossless: bool) -> Parity:
    """The GGUF in llama.cpp against tuneforge's own model on the run's test prompts."""
    try:
        target = LlamaCppRuntime(path)
    except ImportError:
        raise RunError(
            f"{path} was written; its parity check needs llama.cpp's runtime",
            'pip install -e ".[gguf]" (llama-cpp-python), or export with --no-check',
        ) from None
    model, tokenizer = reference_model(run)
    return check_chat(run.cfg, TuneforgeRuntime(model, tokenizer), target, limit, length, lossless)
