"""The dpo task: the loss is the paper's, training prefers the chosen answers, the reference survives a resume."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data import prepare
from tuneforge.data.tokenize import IGNORE_INDEX, encode_chat
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import evaluate
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rundir import REFERENCE_LOGPS
from tuneforge.train import train
from tuneforge.train.dpo import DPO, Pair, attach_reference, collate, loss_sum
from tuneforge.train.tasks import TaskContext

from helpers import write_jsonl

QUIET = {"log": lambda *a: None}
COLOURS = ["red", "green", "blue", "black"]


def preference_rows(n: int) -> list[dict[str, str]]:
    """The toy colour task as pairs: the JSON answer is preferred to the same answer in words (a house style the
    model can learn from a few dozen pairs and carry over to held-out items)."""
    return [
        {
            "prompt": f"Item {i}: what colour?",
            "chosen": json.dumps({"item": i, "colour": COLOURS[i % 4]}),
            "rejected": f"Item {i} is {COLOURS[i % 4]}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference_rows(60))


def dpo_config(tiny_config, data: Path, *extra: str):
    return tiny_config(f"data.path={data}", "train.task=dpo", "data.estimate=false", "evaluate.limit=null", *extra)


def test_only_the_answer_of_a_pair_carries_labels(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompt = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Colour of item 3?"},
    ]
    answer = [{"role": "assistant", "content": "black"}]
    encoded = encode_chat(tokenizer, prompt + answer, from_turn=len(prompt))
    labelled = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert labelled == "black<|im_end|>\n"  # not the earlier assistant turn of the prompt


def test_the_dpo_loss_is_the_papers_formula(tiny_config, tiny_model_dir: Path, pairs_file: Path) -> None:
    cfg = dpo_config(tiny_config, pairs_file, "train.dpo_beta=0.5")
    prepare(cfg)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = DPO.load(cfg.run_dir / "data" / "train.jsonl", tokenizer, TaskContext.of(cfg))[:4]
    for k, pair in enumerate(pairs):
        pair.reference = (-3.0 - k, -2.5 + k)
    model = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        ours = loss_sum(model, collate(pairs, int(tokenizer.pad_token_id)), cfg.train)
        expected = 0.0
        for pair in pairs:  # log p(answer | prompt) from the full logits, one sequence at a time
            logp = []
            for seq in (pair.chosen, pair.rejected):
                logits = model(input_ids=torch.tensor([seq.input_ids])).logits[0, :-1]
                targets = torch.tensor(seq.labels[1:])
                picked = F.log_softmax(logits, -1).gather(1, targets.clamp(min=0)[:, None])[:, 0]
                logp.append(float(picked[targets != IGNORE_INDEX].sum()))
            margin = (logp[0] - pair.reference[0]) - (logp[1] - pair.reference[1])
            expected += -float(F.logsigmoid(torch.tensor(0.5 * margin)))
    assert float(ours) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("method", "reference"), [("lora", "model"), ("full", "model"), ("lora", "none")], ids=["lora", "full", "ref-free"]
)
def test_dpo_prefers_the_chosen_answers(tiny_config, pairs_file: Path, method: str, reference: str) -> None:
    # reference-free starts far from a zero margin (the JSON answers are longer, so less likely): a larger step
    lr = {"lora": 0.001, "full": 0.0005}[method] * (3 if reference == "none" else 1)
    cfg = dpo_config(
        tiny_config,
        pairs_file,
        f"train.method={method}",
        f"train.dpo_reference={reference}",
        f"train.learning_rate={lr}",
        "train.epochs=2",
    )
    prepare(cfg)
    train(cfg, **QUIET)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    if reference == "model":
        assert rows[0]["loss"] == pytest.approx(0.6931, abs=0.01)  # policy = reference at the start: log 2
    assert rows[-1]["loss"] < 0.3, [r["loss"] for r in rows]
    assert (cfg.run_dir / REFERENCE_LOGPS).is_file() == (reference == "model")
    report = evaluate(cfg, **QUIET)
    base, tuned = report.scores["base"], report.scores["tuned"]
    assert tuned["pair_accuracy"] >= 0.9 and tuned["pair_accuracy"] > base["pair_accuracy"] + 0.3, report.scores
    assert tuned["mean_margin"] > base["mean_margin"]
    assert tuned["reward_accuracy"] >= 0.9 and tuned["dpo_loss"] < 0.5
    for name in ("pair_accuracy", "mean_margin"):  # bootstrap intervals and the tuned-vs-base test, as for any metric
        for variant in ("base", "tuned"):
            low, high = report.intervals[variant][name]
            assert low <= report.scores[variant][name] <= high
        assert report.comparison[name]["delta"] == pytest.approx(tuned[name] - base[name], abs=1e-3)
    assert report.baseline == "base" and report.comparison["mean_margin"]["significant"]
    assert report.page is not None and "pair_accuracy" in report.page.read_text(encoding="utf-8")


def test_a_resumed_run_reads_the_reference_back(tiny_config, tiny_model_dir: Path, pairs_file: Path) -> None:
    cfg = dpo_config(tiny_config, pairs_file, "train.max_steps=2")
    prepare(cfg)
    train(cfg, **QUIET)
    saved = json.loads((cfg.run_dir / REFERENCE_LOGPS).read_text())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    splits = {
        s: DPO.load(cfg.run_dir / "data" / f"{s}.jsonl", tokenizer, TaskContext.of(cfg)) for s in ("train", "val")
    }

    def untouchable(*args, **kwargs):
        raise AssertionError("a resumed run must not recompute the reference with the trained model")

    attach_reference(untouchable, splits, TaskContext.of(cfg), "cpu", 0, False, QUIET["log"])
    assert [list(p.reference) for p in splits["train"]] == saved["splits"]["train"]

    other = {"train": [Pair(p.rejected, p.chosen) for p in splits["train"]], "val": splits["val"]}
    with pytest.raises(TuneforgeError, match="belongs to other data") as err:
        attach_reference(untouchable, other, TaskContext.of(cfg), "cpu", 0, False, QUIET["log"])
    assert "without --resume" in err.value.hint


def test_under_bf16_the_reference_is_computed_as_the_policy_is(tiny_config, pairs_file: Path) -> None:
    """The reference log-probabilities come from the same bf16 computation as the training steps, so the first
    step's margin is zero and its loss log 2 (an fp32 reference against a bf16 policy starts off by their rounding)."""
    cfg = dpo_config(tiny_config, pairs_file, "train.max_steps=1", "train.precision=bf16")
    prepare(cfg)
    train(cfg, **QUIET)
    first = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first == pytest.approx(math.log(2), abs=2e-4)
