"""The answers an annotator compares: two samples of the same model for one prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.data.records import Messages
from tuneforge.feedback.session import Sampler
from tuneforge.generation import SamplingParams, generate
from tuneforge.models import load_model, load_tokenizer, load_trained, pick_device
from tuneforge.rundir import MODEL_DIR, RUN_INFO


def model_sampler(target: str, temperature: float, max_new_tokens: int) -> tuple[Sampler, str]:
    """A sampler of two answers per prompt from a run's tuned model (runs/<name>) or a model (id or folder), and the
    model's name. Sampling is seeded per prompt, so the answers are the same whoever asks first; when the two come
    out the same, up to two more seeds are tried."""
    path = Path(target)
    model: Any
    if (path / MODEL_DIR / RUN_INFO).is_file():
        model, tokenizer = load_trained(path / MODEL_DIR, pick_device())
        name = path.resolve().name
    else:
        model, tokenizer = load_model(target, device=pick_device()).eval(), load_tokenizer(target)
        name = target

    def sample(prompt: Messages, seed: int) -> list[str]:
        texts: list[str] = []
        for attempt in range(3):
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + attempt)
            texts = [c.text for c in generate(model, tokenizer, [prompt, prompt], params)]
            if texts[0] != texts[1]:
                break
        return texts

    return sample, name
