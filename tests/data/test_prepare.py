"""The prepare stage end to end: cleaning, de-duplication, leakage, splits, locking, --check/--strict, report."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data import prepare
from tuneforge.data.clean import normalize
from tuneforge.data.dedup import Signatures, bands_for, exact_duplicates, leaks, near_duplicates
from tuneforge.data.split import TEST, TRAIN, VAL, assign, order_key, size_of
from tuneforge.errors import DataError
from tuneforge.rundir import read_jsonl
from tuneforge.train.estimate import estimate_training

from helpers import chat, toy_rows, write_jsonl

runner = CliRunner()


def reviews(n_pos: int, n_neg: int) -> list[dict[str, str]]:
    pos = [f"Bestellung {i}: schnelle Lieferung, alles bestens, Note {i % 7}." for i in range(n_pos)]
    neg = [f"Order {i} arrived broken after {i % 9 + 2} weeks; refund requested." for i in range(n_neg)]
    return [{"text": t, "label": "pos"} for t in pos] + [{"text": t, "label": "neg"} for t in neg]


def split_rows(cfg) -> dict[str, list[dict]]:
    return {s: read_jsonl(cfg.run_dir / "data" / f"{s}.jsonl") for s in ("train", "val", "test")}


def test_normalize_keeps_indentation_and_removes_invisible_noise() -> None:
    text = "Cafe\u0301\u200b  \r\ndef f():\r\n    return 1   \n\n\n\nEnde\x07"
    assert normalize(text) == "Café\ndef f():\n    return 1\n\nEnde"
    assert normalize("<p>Preis:&nbsp;5&euro;</p><script>x()</script><br>neu", html_too=True) == "Preis: 5€\n\nneu"


def test_strip_html_works_without_normalize(tiny_config, tmp_path: Path) -> None:
    rows = [chat(f"<p>Item {i}: <b>what</b> colour?</p>", "red") for i in range(20)]
    path = write_jsonl(tmp_path / "h.jsonl", rows)
    cfg = tiny_config(f"data.path={path}", "clean.normalize=false", "clean.strip_html=true")
    prepare(cfg)
    texts = [r["messages"][0]["content"] for part in split_rows(cfg).values() for r in part]
    assert len(texts) == 20 and all("<" not in t and "what colour?" in t for t in texts)


def test_near_duplicates_are_found_verified_and_kept_once(tmp_path: Path) -> None:
    base = "Die Kündigungsfrist beträgt drei Monate zum Ende des Vertragsjahres, schriftlich per Brief."
    texts = [
        base,
        "Completely different: the warranty covers two years of parts and labour.",
        base.replace("Brief", "Briefe"),  # near copy of 0
        base.replace("Brief", "Briefe."),  # near copy of 0 and 2
        "Completely different: the warranty covers two years of parts and labour!",  # near copy of 1
        "Eine Lieferung dauert fünf Werktage.",
    ]
    sigs = Signatures(tmp_path / "sig")
    for t in texts:
        sigs.add(t)
    sigs.close()
    skip = np.zeros(len(texts), dtype=bool)
    dup_of, sims = near_duplicates(sigs.path, 0.8, skip)
    assert dup_of.tolist() == [-1, -1, 0, 0, 1, -1] and (sims[[2, 3, 4]] >= 0.8).all()
    skip[0] = True  # removed before: 2 is now the first of its kind and 3 its copy
    assert near_duplicates(sigs.path, 0.8, skip)[0].tolist() == [-1, -1, -1, 2, 1, -1]
    keep = np.array([False, False, False, True, False, False])  # a locked test record is never removed
    assert near_duplicates(sigs.path, 0.8, np.zeros(6, dtype=bool), keep)[0].tolist() == [-1, -1, 0, -1, 1, -1]
    test = np.array([False, True, False, False, False, False])
    best, sim = leaks(sigs.path, 0.8, test, ~test)
    assert best.tolist() == [-1, -1, -1, -1, 1, -1] and sim[4] >= 0.8
    sigs.delete()
    assert not (tmp_path / "sig").exists()
    assert bands_for(0.9) < bands_for(0.5)  # a lower threshold needs more, shorter bands to be caught


def test_exact_duplicates_point_at_the_first_copy() -> None:
    keys = np.array([5, 7, 5, -3, 7, 5], dtype=np.int64)
    assert exact_duplicates(keys).tolist() == [-1, -1, 0, -1, 1, 0]
    keep = np.array([False, False, True, False, False, False])
    assert exact_duplicates(keys, keep).tolist() == [-1, -1, -1, -1, 1, 0]


def test_split_sizes_counts_groups_and_strata() -> None:
    assert (size_of(0.1, 50), size_of(7, 50), size_of(0.001, 50), size_of(0, 50)) == (5, 7, 1, 0)
    keys = np.array([order_key(0, f"r{i}") for i in range(100)], dtype=np.int64)
    labels = np.array([0] * 90 + [1] * 10)
    codes = assign(keys, 0.1, 0.2, labels)
    assert Counter(codes[labels == 1]) == {TRAIN: 7, TEST: 2, VAL: 1}  # 10% of the rare class in each held-out split
    groups = np.array([order_key(0, f"g{i // 5}") for i in range(100)], dtype=np.int64)  # 20 groups of 5
    codes = assign(groups, 0.1, 0.2)
    for g in range(20):
        assert len(set(codes[g * 5 : g * 5 + 5])) == 1
    assert Counter(codes) == {TRAIN: 70, TEST: 20, VAL: 10}


def test_duplicates_near_duplicates_and_samples_are_reported(tiny_config, tmp_path: Path) -> None:
    rows = toy_rows(30)
    rows += [chat("Item 3:   WHAT colour?", rows[3]["messages"][1]["content"])]  # exact after case/space folding
    long_q = "Please summarise the delivery terms of contract 4711 for the customer in two short sentences."
    rows += [chat(long_q, "Delivery within 14 days."), chat(long_q + ".", "Delivery within 14 days.")]
    rows += [chat("x", "y")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = tiny_config(f"data.path={path}", "clean.min_chars=5")
    result = prepare(cfg)
    assert result.report["removed"] == {"duplicate": 1, "near_duplicate": 1, "too_short": 1}
    written = sorted(p.name for p in (cfg.run_dir / "data").iterdir())
    assert written == ["data_report.json", "test.jsonl", "train.jsonl", "val.jsonl"]  # no scratch file left
    sample = result.report["removed_samples"]["duplicate"][0]
    assert sample["source"] == f"{path}:31" and sample["text"].startswith("Item 3:   WHAT colour?")
    assert sample["detail"].endswith(f"same as {path}:4")
    assert result.report["removed_samples"]["near_duplicate"][0]["detail"].endswith(f"similar to {path}:32")
    assert sum(result.counts.values()) == 31
    text = result.text()
    assert "removed 1 near duplicate" in text and f"e.g. {path}:33" in text


def test_leakage_between_a_separate_test_file_and_training_is_a_warning(tiny_config, tmp_path: Path) -> None:
    question = "Item 7: which colour does it have according to the spring catalogue of 2024? Answer briefly"
    test = write_jsonl(tmp_path / "test.jsonl", [chat(question + "?", "blue")])
    train = toy_rows(20) + [chat(question + "!", "blue")]
    path = write_jsonl(tmp_path / "train.jsonl", train)
    cfg = tiny_config(f"data.path={path}", f"data.test_path={test}", "clean.near_dup_threshold=0.99")
    result = prepare(cfg)
    leaks = [i for i in result.report["issues"] if i["rule"] == "leakage"]
    assert len(leaks) == 1 and leaks[0]["line"] == 21 and f"test record {test}:1" in leaks[0]["message"]
    with pytest.raises(DataError, match="leakage"):
        prepare(cfg, strict=True)


def test_stratified_split_and_imbalance_warning(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", reviews(60, 20))
    cfg = tiny_config(f"data.path={path}", "data.val_size=0.1", "data.test_size=0.25")
    result = prepare(cfg)
    assert result.report["labels"]["test"] == {"pos": 15, "neg": 5}
    assert result.report["labels"]["val"] == {"pos": 6, "neg": 2}
    path = write_jsonl(tmp_path / "skewed.jsonl", reviews(60, 4))
    result = prepare(tiny_config(f"data.path={path}"))
    assert any("'pos' has 60 examples, 'neg' only 4 (15x" in i["message"] for i in result.report["issues"])


def test_groups_stay_in_one_split(tiny_config, tmp_path: Path) -> None:
    rows = [{**r, "customer": f"k{i // 4}"} for i, r in enumerate(toy_rows(60))]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = tiny_config(f"data.path={path}", "data.group_by=customer")
    prepare(cfg)
    where = {r["group"]: s for s, part in split_rows(cfg).items() for r in part}
    assert len(where) == 15
    for s, part in split_rows(cfg).items():
        assert all(where[r["group"]] == s for r in part)


def test_locked_test_split_survives_growing_data(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", toy_rows(40))
    cfg = tiny_config(f"data.path={path}", "data.lock_test=true", "data.test_size=8")
    prepare(cfg)
    first_test = (cfg.run_dir / "data" / "test.jsonl").read_bytes()
    assert len(read_jsonl(cfg.run_dir / "data" / "test.jsonl")) == 8
    write_jsonl(path, toy_rows(60))  # the data grows
    result = prepare(cfg)
    assert (cfg.run_dir / "data" / "test.jsonl").read_bytes() == first_test
    test_texts = {json.dumps(r["messages"]) for r in read_jsonl(cfg.run_dir / "data" / "test.jsonl")}
    trained = {json.dumps(r["messages"]) for s in ("train", "val") for r in split_rows(cfg)[s]}
    assert not test_texts & trained and len(trained) == 52 and result.counts["test"] == 8
    (cfg.run_dir / "data" / "test.jsonl").write_text("tampered\n")
    with pytest.raises(DataError, match="changed or vanished after it was locked"):
        prepare(cfg)


def test_check_prints_the_report_and_fails_on_errors(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", toy_rows(20))
    with path.open("a") as fh:
        fh.write("not json\n")
    cfg = tiny_config(f"data.path={path}")
    args = ["prepare", "--check", str(tmp_path / "c.yaml")]
    (tmp_path / "c.yaml").write_text(
        "\n".join(f"{k}: {v}" for k, v in {"name": "toy", "output_dir": str(cfg.output_dir)}.items())
        + f"\nmodel: {{name: {cfg.model.name}}}\ndata: {{path: {path}}}\n"
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"{path}:21: invalid JSON" in result.output and "check failed" in result.output
    assert not (cfg.run_dir / "data" / "train.jsonl").exists()
    assert json.loads((cfg.run_dir / "data" / "data_report.json").read_text())["errors"] == 1
    write_jsonl(path, toy_rows(20) + [{"text": "odd"}])
    assert runner.invoke(app, args).exit_code == 1  # mixed kinds
    write_jsonl(path, toy_rows(20))
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0 and "check passed" in ok.output and "no problems found" in ok.output


def test_strict_turns_warnings_into_errors(tiny_config, tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in toy_rows(20)).encode())
    cfg = tiny_config(f"data.path={path}")
    assert prepare(cfg).report["warnings"] == 1
    with pytest.raises(DataError, match=r"1 data error\(s\) and warning\(s\) \(--strict\)"):
        prepare(cfg, strict=True)


def test_training_estimate_comes_from_a_measured_probe(tiny_config) -> None:
    cfg = tiny_config("train.epochs=2", "train.batch_size=4")
    result = prepare(cfg, estimate=estimate_training)
    e = result.report["estimate"]
    n_train = result.counts["train"]
    assert e["steps"] == 2 * -(-n_train // 4) and e["epochs"] == 2 and e["method"] == "lora" and e["task"] == "sft"
    assert e["tokens_per_s"] > 0 and e["probe_tokens"] > 0 and e["peak_memory_bytes"] > e["weights_bytes"] > 0
    # the time is the measured speed scaled to this split's tokens and epochs, not a constant
    assert e["train_seconds"] == pytest.approx(result.tokens["train"] * 2 / e["tokens_per_s"], rel=0.02, abs=0.2)
    assert e["optimizer_bytes"] > 0 and e["longest_tokens"] == result.report["token_stats"]["train"]["max"]
    assert "training estimate (lora, cpu, fp32" in result.text() and "tokens/s; peak memory ~" in result.text()
    assert prepare(tiny_config("data.estimate=false"), estimate=estimate_training).report["estimate"] is None
    assert prepare(cfg).report["estimate"] is None  # no estimator given (the data stage cannot make one)


def test_the_estimate_covers_classify_pretrain_and_dpo(tiny_config, tiny_bert_dir: Path, tmp_path: Path) -> None:
    texts = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"text": f"Vertrag {i}: " + " ".join(f"Frist{i * k % 89}" for k in range(5 + i))} for i in range(40)],
    )
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Item {i}?"}],
            "chosen": [{"role": "assistant", "content": "red"}],
            "rejected": [{"role": "assistant", "content": f"no idea {i}"}],
        }
        for i in range(30)
    ]
    runs = {
        "classify": [
            f"data.path={write_jsonl(tmp_path / 'r.jsonl', reviews(30, 30))}",
            "train.task=classify",
            f"model.name={tiny_bert_dir}",
            "data.labels=[pos,neg]",
            "train.class_weights=balanced",
        ],
        "pretrain": [f"data.path={texts}", "train.task=pretrain", "train.block_size=32"],
        "dpo": [f"data.path={write_jsonl(tmp_path / 'p.jsonl', pairs)}", "train.task=dpo"],
    }
    for task, settings in runs.items():
        cfg = tiny_config(*settings, "train.batch_size=4", "train.epochs=1")
        result = prepare(cfg, estimate=estimate_training)
        e = result.report["estimate"]
        assert "unavailable" not in e and e["task"] == task, e
        assert e["tokens_per_s"] > 0 and e["probe_tokens"] > 0 and e["peak_memory_bytes"] > e["weights_bytes"] > 0
        if task == "pretrain":  # an epoch is the blocks of the concatenated texts (each text closed by an EOS)
            blocks = -(-(result.tokens["train"] + result.counts["train"]) // 32)
            assert e["steps"] == -(-blocks // 4)
        else:
            assert e["steps"] == -(-result.counts["train"] // 4)
        if task == "dpo":  # the reference pass over both splits is timed too
            assert e["eval_seconds"] > 0
    checked = prepare(tiny_config(*runs["classify"]), check=True, estimate=estimate_training)  # no splits written
    assert "unavailable" not in checked.report["estimate"]


def test_probe_batches_take_the_longest_and_length_neighbours() -> None:
    from tuneforge.train.estimate import PROBE_BATCHES, probe_batches

    lengths = np.array([50, 10, 400, 12, 11, 390, 300, 13, 55, 51])
    longest, typical = probe_batches(lengths, 3, seed=0)
    assert sorted(lengths[longest].tolist()) == [300, 390, 400]
    assert len(typical) == PROBE_BATCHES
    ranks = np.argsort(np.argsort(lengths, kind="stable"), kind="stable")
    for ids in typical:  # consecutive in length order, like training's length-grouped batches
        assert len(ids) == 3 and sorted(ranks[ids].tolist()) == list(range(min(ranks[ids]), min(ranks[ids]) + 3))


def test_no_estimate_for_data_the_task_does_not_read(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", reviews(30, 30))
    result = prepare(tiny_config(f"data.path={path}"), estimate=estimate_training)
    assert "train.task=sft trains on chat records, these are classification" in result.report["estimate"]["unavailable"]
    assert "training estimate: unavailable" in result.text()


def test_a_failing_probe_leaves_the_data_prepared_and_says_why(tiny_config) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")

    cfg = tiny_config()
    result = prepare(cfg, estimate=broken)
    assert result.report["estimate"] == {
        "unavailable": "the training probe failed: DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB"
    }
    assert (cfg.run_dir / "data" / "train.jsonl").is_file()


def test_leakage_between_training_and_validation_is_reported_too(tiny_config, tmp_path: Path) -> None:
    rows = []
    for i in range(30):  # pairs ~0.85 similar: below the near-duplicate threshold, above the leakage one
        base = f"Kunde {i} fragt: Wann wird die Bestellung {1000 + i} mit der Rechnung für den Monat März geliefert"
        rows += [chat(base + "?", f"Am {i % 28 + 1}. April."), chat(base + " bitte?", f"Am {i % 28 + 1}. April.")]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = tiny_config(f"data.path={path}", "data.val_size=0.3", "data.test_size=0", "data.estimate=false")
    result = prepare(cfg)
    leaks = [i for i in result.report["issues"] if i["rule"] == "leakage"]
    assert leaks and all("similar to validation record" in i["message"] for i in leaks)
    where = {json.dumps(r["messages"]): s for s, part in split_rows(cfg).items() for r in part}
    pair_of = {i["line"]: int(i["message"].rsplit(":", 1)[1]) for i in leaks}
    for line, other in pair_of.items():  # each warning names a train record and its validation twin
        assert where[json.dumps(rows[line - 1]["messages"])] == "train"
        assert where[json.dumps(rows[other - 1]["messages"])] == "val"


def test_the_probe_does_not_depend_on_the_learning_rate(tiny_config) -> None:
    # the probe's steps use learning rate 0: a setting that would diverge in training cannot break prepare
    result = prepare(tiny_config("train.learning_rate=1e12", "train.warmup_ratio=0"), estimate=estimate_training)
    assert result.report["estimate"]["tokens_per_s"] > 0
