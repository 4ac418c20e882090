"""The classify task: a classification head on a BERT-style encoder and on a decoder, class weights, probabilities."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from tuneforge.data import prepare
from tuneforge.errors import ConfigError, RunError
from tuneforge.evaluation import evaluate
from tuneforge.evaluation.evaluate import _models
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rundir import read_jsonl
from tuneforge.train import train
from tuneforge.train.auto import Hyper
from tuneforge.train.classify import CLASSIFY, Labelled, class_weights, collate, logits, loss_sum
from tuneforge.train.methods import apply_lora
from tuneforge.train.tasks import TaskContext

from helpers import review_rows, write_jsonl

QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("reviews") / "reviews.jsonl", review_rows(40, 40))


def classify_config(tiny_config, model_dir: Path, data: Path, *extra: str):
    return tiny_config(
        f"model.name={model_dir}",
        f"data.path={data}",
        "train.task=classify",
        "train.epochs=8",
        "train.learning_rate=0.003",
        "data.estimate=false",
        "evaluate.limit=null",
        *extra,
    )


@pytest.mark.parametrize(
    ("encoder", "method"),
    [(True, "lora"), (True, "full"), (False, "lora"), (False, "freeze")],
    ids=["bert-lora", "bert-full", "llama-lora", "llama-freeze"],
)
def test_classify_learns_the_reviews(
    tiny_config, tiny_bert_dir: Path, tiny_model_dir: Path, reviews: Path, encoder: bool, method: str
) -> None:
    model_dir = tiny_bert_dir if encoder else tiny_model_dir
    extra = ["train.trainable_layers=1"] if method == "freeze" else []
    lr = {"lora": "train.learning_rate=0.003", "full": "train.learning_rate=0.002"}.get(
        method, "train.learning_rate=0.01"
    )
    cfg = classify_config(tiny_config, model_dir, reviews, f"train.method={method}", lr, *extra)
    prepare(cfg)
    result = train(cfg, **QUIET)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] / 2, (rows[0]["loss"], rows[-1]["loss"])
    report = evaluate(cfg, **QUIET)
    assert report.scores["tuned"]["accuracy"] >= 0.9, report.scores
    assert report.scores["majority"]["accuracy"] <= 0.6  # the baseline it must beat
    saved = json.loads((cfg.run_dir / "eval.json").read_text())
    matrix = saved["details"]["tuned"]["confusion_matrix"]
    assert matrix["labels"] == ["neg", "pos"] and sum(map(sum, matrix["rows"])) == report.n
    right = sum(matrix["rows"][i][i] for i in range(2)) / report.n
    assert right == pytest.approx(report.scores["tuned"]["accuracy"], abs=1e-4)
    assert {c: v["support"] for c, v in saved["details"]["tuned"]["per_class"].items()} == {
        c: sum(row) for c, row in zip(matrix["labels"], matrix["rows"], strict=True)
    }
    assert set(report.scores["tuned"]) == {"accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "ece"}
    assert 0 <= report.scores["tuned"]["ece"] <= 1
    assert saved["comparison"]["baseline"] == "majority"
    assert saved["comparison"]["metrics"]["accuracy"]["delta"] > 0.3
    predictions = read_jsonl(cfg.run_dir / "predictions.jsonl")
    assert len(predictions) == report.n
    assert report.page is not None and 'id="confusion-matrix"' in report.page.read_text(encoding="utf-8")
    for p in predictions:
        assert set(p["probabilities"]) == {"neg", "pos"}
        assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert p["prediction"] == max(p["probabilities"], key=p["probabilities"].get)
    info = json.loads((result.model_dir / "tuneforge.json").read_text())
    assert info["task"] == "classify" and info["labels"] == ["neg", "pos"]
    if encoder:  # another classifier run answers beside it: an adapter (lora) or a whole model (full)
        twin = cfg.run_dir.parent / "twin"
        shutil.copytree(cfg.run_dir, twin)
        both = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"compare": [str(twin)]})})
        compared = evaluate(both, **QUIET)
        assert list(compared.scores) == ["majority", "tuned", "twin"]
        assert compared.scores["twin"] == compared.scores["tuned"] == report.scores["tuned"]
        assert all(p["twin"] == p["prediction"] for p in read_jsonl(cfg.run_dir / "predictions.jsonl"))
        info["labels"] = ["pos", "neg"]  # same head size, other classes: it must not be scored as if it matched
        (twin / "model" / "tuneforge.json").write_text(json.dumps(info))
        with pytest.raises(RunError, match=r"classes \['pos', 'neg'\]; this run's are \['neg', 'pos'\]"):
            evaluate(both, **QUIET)
    if method == "freeze":  # the head and the last layer trained, the first layer and embeddings did not
        saved = load_file(result.model_dir / "model.safetensors")
        base = load_model(str(model_dir), labels=["neg", "pos"]).state_dict()
        assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
        assert torch.equal(saved["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
        assert not torch.equal(saved["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])
        assert "score.weight" in saved


def test_a_saved_classifier_reloads_and_merges_to_the_same_logits(
    tiny_config, tiny_bert_dir: Path, reviews: Path
) -> None:
    cfg = classify_config(tiny_config, tiny_bert_dir, reviews, "train.epochs=1")
    prepare(cfg)
    train(cfg, **QUIET)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    examples = CLASSIFY.load(cfg.run_dir / "data" / "test.jsonl", tokenizer, TaskContext.of(cfg))
    batch = collate(examples, int(tokenizer.pad_token_id))
    first, second = (_models(cfg, cfg.run_dir / "model")[0]["tuned"] for _ in range(2))
    with torch.no_grad():
        a = first(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = second(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        merged = first.merge_and_unload()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(a, b, atol=1e-6)  # the head is saved with the adapter, not drawn anew
    assert torch.allclose(merged, a, atol=1e-5)


def test_class_weights_weigh_the_loss_as_torch_does(tiny_config, tiny_bert_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "skewed.jsonl", review_rows(60, 12))
    cfg = classify_config(tiny_config, tiny_bert_dir, data, "train.class_weights=balanced")
    prepare(cfg)
    train_rows = read_jsonl(cfg.run_dir / "data" / "train.jsonl")
    n_neg = sum(r["label"] == "neg" for r in train_rows)
    weights = class_weights(cfg, ["neg", "pos"])
    assert weights[0] == pytest.approx(len(train_rows) / (2 * n_neg))  # n / (classes x count)
    assert weights[0] > 2 * weights[1]
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    model = load_model(str(tiny_bert_dir), labels=["neg", "pos"]).eval()
    batch = collate(CLASSIFY.load(cfg.run_dir / "data" / "train.jsonl", tokenizer, TaskContext.of(cfg))[:16], 0)
    with torch.no_grad():
        ours = loss_sum(model, batch) / batch.n_loss
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        reference = F.cross_entropy(logits, batch.labels, weight=torch.tensor(weights))
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)

    with pytest.raises(ConfigError, match=r"class_weights names classes the data do not have: \['neutral'\]"):
        class_weights(tiny_config(f"data.path={data}", "train.class_weights={neutral: 2}"), ["neg", "pos"])


def test_the_chat_engine_sends_a_classifier_to_the_classification_route(
    tiny_config, tiny_bert_dir: Path, reviews: Path
) -> None:
    from tuneforge.serve.engine import _run_info

    cfg = classify_config(tiny_config, tiny_bert_dir, reviews, "train.max_steps=1")
    prepare(cfg)
    train(cfg, **QUIET)
    with pytest.raises(RunError, match="holds a classifier") as err:
        _run_info(cfg.run_dir)
    assert "serves it as a classifier (POST /v1/classifications" in err.value.hint  # tests/export: served so


def test_a_run_without_a_validation_split_trains(tiny_config, tiny_bert_dir: Path, reviews: Path) -> None:
    """data.val_size=0 leaves an empty val.jsonl, which the tokenizer cannot encode: it loads as no examples."""
    cfg = classify_config(tiny_config, tiny_bert_dir, reviews, "train.max_steps=1", "data.val_size=0.0")
    prepare(cfg)
    assert (cfg.run_dir / "data" / "val.jsonl").read_text() == ""
    assert train(cfg, **QUIET).val_loss is None


class _Upcasts(TorchDispatchMode):
    """Counts the elements of bf16 tensors copied to fp32 (autocast's own casts go the other way)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if source.dtype == torch.bfloat16 and out.dtype == torch.float32:
                self.elements += source.numel()
        return out


def test_a_decoders_head_runs_on_the_pooled_positions_with_the_plain_logits_and_gradients(
    tiny_config, tiny_model_dir: Path
) -> None:
    """The decoder fast path (head on each row's last real token only, no fp32 round trip of LoRA inputs under
    bf16 autocast) gives the logits and gradients of the model's own forward, which pools after the head."""
    cfg = tiny_config("train.task=classify", "train.method=lora")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = apply_lora(
        load_model(str(tiny_model_dir), labels=["neg", "pos", "meh"]), cfg.train, Hyper(1, 4, 1e-3, 4, 8)
    )
    texts = ["great, arrived early", "kaputt", "it does what it should, nothing special at all", "ok"]
    ids = tokenizer(texts)["input_ids"]
    batch = collate([Labelled(list(t), i % 3, 1.0 + i) for i, t in enumerate(ids)], int(tokenizer.pad_token_id))
    assert len({len(t) for t in ids}) == len(ids)  # right padding of several widths
    seen: list[torch.Size] = []
    model.get_base_model().score.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))

    def plain_loss() -> torch.Tensor:
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        return (F.cross_entropy(plain, batch.labels, reduction="none") * batch.extra["weight"]).sum()

    results = []
    for loss_fn in (lambda: loss_sum(model, batch), plain_loss):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    hidden = model.get_base_model().config.hidden_size
    assert seen[0] == (4, hidden) and seen[1] == (*batch.input_ids.shape, hidden)  # pooled rows, then all positions
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5, rtol=1e-4), (
            name,
            (grad - results[1][1][name]).abs().max(),
        )

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        with _Upcasts() as plain_casts:
            plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        with _Upcasts() as fast_casts:
            fast = logits(model, batch)
    assert torch.equal(fast, plain)
    assert fast_casts.elements == fast.numel() < plain_casts.elements  # only the logits' own .float()
