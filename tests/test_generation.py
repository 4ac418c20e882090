import os
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

from tuneforge.cpu import weight_packs
from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.generation import Completion, SamplingParams, TokenQueue, follow, generate, stream, use_adapter
from tuneforge.models import load_adapter, load_model, load_tokenizer

from helpers import REQUIRE_MKL, has_mkl_packs, needs_mkl

CONVERSATIONS = [
    [{"role": "user", "content": "Item 1: what colour?"}],
    [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Item 22: what colour is it, please?"},
    ],
    [{"role": "user", "content": "Item 3"}],
]


@pytest.fixture(scope="module")
def tuned(trained_run: Path, tiny_model_dir: Path):
    model = load_adapter(load_model(str(tiny_model_dir)), trained_run / "model", "toy").eval()
    return model, load_tokenizer(str(tiny_model_dir))


def test_batched_generation_equals_one_by_one(tuned) -> None:
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=12)
    together = generate(model, tokenizer, CONVERSATIONS, params)
    alone = [generate(model, tokenizer, [c], params)[0] for c in CONVERSATIONS]
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(c.completion_tokens <= 12 and c.prompt_tokens > 5 for c in together)


def test_mkl_packs_are_there_where_ci_requires_them() -> None:
    """.ci/run sets TUNEFORGE_REQUIRE_MKL: there the MKL tests below must run, not skip (on x86 torch has MKL)."""
    if os.environ.get(REQUIRE_MKL):
        assert has_mkl_packs(), "this torch has no MKL packed sgemm (torch.ops.mkl._mkl_linear)"


@pytest.mark.usefixtures("fp32_packs")
def test_packed_weights_give_the_same_answers(tuned, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=12)
    with use_adapter(model, "toy"), packed_weights(model) as packs:
        fast = generate(model, tokenizer, CONVERSATIONS, params)
        again = generate(model, tokenizer, CONVERSATIONS, params)
        # every product of a decode step was packed: the 2 x 7 adapted layers, their adapter folded in, and the output
        adapted = [m for m in model.modules() if isinstance(m, LoraLinear)]
        assert packs.rows == 3 and set(packs.packed) == set(adapted) and len(adapted) == 14
        assert set(packs.shared) == {model.get_output_embeddings()}  # outside the adapter: one pack for all states
        made = {**packs.packed, **packs.shared}
        pair = generate(model, tokenizer, CONVERSATIONS[:2], params)  # a batch of another size: the same packs
        assert packs.rows == 2 and packs.packed.keys() | packs.shared.keys() == made.keys()
        assert all(pack is made[m] for m, pack in {**packs.packed, **packs.shared}.items())
    assert not any("forward" in vars(m) for m in model.modules())  # the plain forward is back
    monkeypatch.setattr(weight_packs, "available", lambda model: False)
    with use_adapter(model, "toy"):
        plain = generate(model, tokenizer, CONVERSATIONS, params)
    assert [c.text for c in fast] == [c.text for c in again] == [c.text for c in plain]
    assert [c.text for c in pair] == [c.text for c in plain[:2]]


@pytest.mark.usefixtures("fp32_packs")
def test_a_packed_lora_layer_computes_what_peft_does_for_each_adapter_state(
    trained_run: Path, tiny_model_dir: Path
) -> None:
    """A LoRA layer's pack holds W + scale * B @ A of its active adapter; switching, disabling or merging adapters
    inside one packed_weights block switches to that state's packs, and a state used again finds its own."""
    model = load_adapter(load_model(str(tiny_model_dir)), trained_run / "model", "toy")
    model = load_adapter(model, trained_run / "model", "other").eval()
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    with torch.no_grad():
        layer.lora_B["other"].weight.mul_(-3.0)  # a second adapter with other weights
    torch.manual_seed(0)
    step = torch.randn(3, 1, layer.in_features)
    outputs, made = {}, {}
    with packed_weights(model) as packs, torch.no_grad():
        for adapter, merge in (("toy", False), ("other", False), (None, False), ("toy", True), ("toy", False)):
            with use_adapter(model, adapter, merge=merge):
                expected = layer(step)  # peft's own forward
                with packs.decode_rows(3):
                    got = outputs[adapter, merge] = layer(step)
                    assert packs.state == weight_packs._adapter_state(model)
                    folded = adapter is not None and not merge  # else the base Linear is packed (a merged one too)
                    assert (layer in packs.packed) == folded and (layer.base_layer in packs.packed) != folded
                    assert layer.lora_A["toy"] not in packs.packed  # the adapter's own products are not run
                    assert layer not in packs.shared and layer.base_layer not in packs.shared
                    made.setdefault((adapter, merge), packs.packed.get(layer))
                    assert packs.packed.get(layer) is made[adapter, merge]  # toy's second turn: its first packs
            torch.testing.assert_close(got, expected)
        assert len(packs.kept) == 3  # the three other states' packs wait for their next turn, the toy's are in use
    # each state computed its own product: the adapters matter, and no state used another's packs
    assert not torch.allclose(outputs["toy", False], outputs["other", False], atol=1e-4)
    assert not torch.allclose(outputs["toy", False], outputs[None, False], atol=1e-4)
    torch.testing.assert_close(outputs["toy", True], outputs["toy", False])


@pytest.mark.usefixtures("fp32_packs")
def test_packs_kept_for_other_adapters_give_way_when_memory_is_short(
    trained_run: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_adapter(load_model(str(tiny_model_dir)), trained_run / "model", "toy")
    model = load_adapter(model, trained_run / "model", "other").eval()
    adapted = [m for m in model.modules() if isinstance(m, LoraLinear)]
    one_state = weight_packs._bytes(adapted)  # the bytes of one state's packs
    with use_adapter(model, None):
        folded, linears, _ = weight_packs._targets(model)
    most = weight_packs._bytes(folded + linears)  # the most a state needs (adapters off)
    total = 2 * most + 3 * one_state  # at MEMORY_SHARE 0.5: room for the packs of two states, not three

    def memory() -> types.SimpleNamespace:  # what the packs held take is no longer free
        held = [m for states in (packs.packed, packs.shared, *packs.kept.values()) for m in states]
        return types.SimpleNamespace(available=total - weight_packs._bytes(held))

    with packed_weights(model) as packs, torch.no_grad():
        monkeypatch.setattr(weight_packs.psutil, "virtual_memory", memory)
        states = []
        for adapter in ("toy", "other", None):
            with use_adapter(model, adapter), packs.decode_rows(2):
                for m in adapted:
                    m(torch.randn(2, 1, m.base_layer.in_features))
                assert len(packs.packed) == len(adapted)
                states.append(packs.state)
        # the base model's packs made room for themselves by dropping the oldest state's (toy's), not other's
        assert list(packs.kept) == [states[1]]


@needs_mkl
def test_a_pack_serves_every_row_count() -> None:
    """MKL packs the weight alone: a pack made for one row count multiplies any other as F.linear does (what lets a
    batch of another size reuse the packs; a guard should a torch or MKL update change it)."""
    torch.manual_seed(0)
    for out_features, in_features in ((96, 64), (64, 160), (7, 5), (300, 33)):
        weight = torch.randn(out_features, in_features)
        for packed_for in (2, 8, 16):
            pack = torch.ops.mkl._mkl_reorder_linear_weight(weight, packed_for)
            for rows in (1, 2, 3, 5, 8, 13, 16, 40):
                x = torch.randn(rows, in_features)
                got = torch.ops.mkl._mkl_linear(x, pack, weight, None, rows)
                torch.testing.assert_close(got, F.linear(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("fp32_packs")
def test_a_packed_linear_computes_what_f_linear_does(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    step, prompt = torch.randn(4, 1, 64), torch.randn(4, 7, 64)
    with packed_weights(layer) as packs, packs.decode_rows(4):
        with torch.no_grad():
            fast = layer(step)
            assert list(packs.shared) == [layer] and not packs.packed  # no adapters: one pack for every state
            slow = layer(prompt)  # not 4 rows: the plain path, nothing new packed
            assert len(packs.shared) == 1
        layer(step).sum().backward()  # under autograd the plain, differentiable path
    torch.testing.assert_close(fast, F.linear(step, layer.weight, layer.bias))
    assert torch.equal(slow, F.linear(prompt, layer.weight, layer.bias)) and layer.weight.grad is not None
    with packed_weights(layer) as packs, torch.no_grad():
        with packs.decode_rows(1):  # one row: gemv already streams at full speed
            layer(step[:1])
        monkeypatch.setattr(weight_packs, "MEMORY_SHARE", 0.0)  # no room for the copies
        with packs.decode_rows(4):
            layer(step)
        assert packs.shared == {} and packs.packed == {}


@needs_mkl
def test_fp32_packs_only_where_they_pay(tuned, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where MKL's packs multiply no faster than F.linear (as on AMD EPYC), decode steps keep F.linear: no copies."""
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=12)
    assert weight_packs._packs_pay() in (True, False)
    assert weight_packs._packs_pay.cache_info().misses == 1  # measured once
    with use_adapter(model, "toy"):
        monkeypatch.setattr(weight_packs, "_packs_pay", lambda: True)
        with packed_weights(model) as packs:
            fast = generate(model, tokenizer, CONVERSATIONS, params)
            assert packs.packed
        monkeypatch.setattr(weight_packs, "_packs_pay", lambda: False)
        with packed_weights(model) as packs:
            plain = generate(model, tokenizer, CONVERSATIONS, params)
            assert not packs.packed and not packs.shared and not packs.fp32_packs
    assert [c.text for c in fast] == [c.text for c in plain]


@needs_mkl
def test_the_packs_speed_measurement_leaves_seeded_draws_alone() -> None:
    state = torch.get_rng_state()
    weight_packs._packs_pay.__wrapped__()  # the measurement itself, past its cache
    assert torch.equal(torch.get_rng_state(), state)


def test_stream_yields_the_same_text_as_generate(tuned) -> None:
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=16)
    pieces = list(stream(model, tokenizer, CONVERSATIONS[0], params))
    final = pieces[-1]
    assert isinstance(final, Completion)
    assert "".join(p for p in pieces[:-1] if isinstance(p, str)) == final.text
    assert final == generate(model, tokenizer, CONVERSATIONS[:1], params)[0]


def test_followed_rows_stream_and_a_cancelled_row_ends_alone(tuned) -> None:
    """generate(follow=...): a followed row's tokens reach its queue; a cancelled row stops, the others go on."""
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=12)
    alone = generate(model, tokenizer, CONVERSATIONS, params)
    followed, gone = TokenQueue(), TokenQueue()
    gone.cancel.set()  # its reader left before the first step
    together = generate(model, tokenizer, CONVERSATIONS, params, follow=[followed, None, gone])
    assert together[:2] == alone[:2]
    assert together[2].completion_tokens < alone[2].completion_tokens  # it ended after one token
    followed.end()
    pieces = list(follow(tokenizer, followed, params))
    assert "".join(pieces[:-1]) == alone[0].text and pieces[-1] == alone[0]
    failed = TokenQueue()
    failed.end(MemoryError("no room"))
    with pytest.raises(MemoryError):  # a failed generation reaches the reader
        list(follow(tokenizer, failed, params))


def test_stop_strings_cut_the_answer_in_both_paths(tuned) -> None:
    model, tokenizer = tuned
    full = generate(model, tokenizer, CONVERSATIONS[:1], SamplingParams(max_new_tokens=16))[0].text
    assert len(full) > 4
    stop = full[3:5]
    cut = full[: full.index(stop)]
    params = SamplingParams(max_new_tokens=16, stop=(stop,))
    assert generate(model, tokenizer, CONVERSATIONS[:1], params)[0].text == cut
    pieces = list(stream(model, tokenizer, CONVERSATIONS[0], params))
    assert "".join(p for p in pieces if isinstance(p, str)) == cut
    assert pieces[-1].finish_reason == "stop"


def test_use_adapter_switches_between_base_and_tuned(tuned, tiny_model_dir: Path) -> None:
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=10)
    base = load_model(str(tiny_model_dir)).eval()
    with use_adapter(model, None):
        off = generate(model, tokenizer, CONVERSATIONS[:1], params)[0].text
    with use_adapter(model, "toy"):
        on = generate(model, tokenizer, CONVERSATIONS[:1], params)[0].text
    assert off == generate(base, tokenizer, CONVERSATIONS[:1], params)[0].text
    assert on != off


def test_merged_adapter_generates_what_the_unmerged_one_does(tuned) -> None:
    model, tokenizer = tuned
    params = SamplingParams(max_new_tokens=12)
    before = [p.detach().clone() for p in model.parameters()]
    with use_adapter(model, "toy"):
        unmerged = generate(model, tokenizer, CONVERSATIONS, params)
    with use_adapter(model, "toy", merge=True):
        merged = generate(model, tokenizer, CONVERSATIONS, params)
    assert [c.text for c in merged] == [c.text for c in unmerged]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(before, model.parameters(), strict=True))


def test_a_quantized_base_is_never_merged_into(tuned, monkeypatch) -> None:
    """merge=True folds an adapter into plain weights; into a quantized (QLoRA 4-bit) base it would requantize them,
    so the adapter runs beside the base instead."""
    model, _ = tuned
    layers = [m for m in model.modules() if hasattr(m, "merged_adapters")]
    with use_adapter(model, "toy", merge=True):
        assert all(layer.merged for layer in layers)
    monkeypatch.setattr(model.get_base_model(), "hf_quantizer", object(), raising=False)
    with use_adapter(model, "toy", merge=True):
        assert layers and not any(layer.merged for layer in layers)
