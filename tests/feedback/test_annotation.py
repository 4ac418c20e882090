"""Annotation sessions: the same pair for every annotator, left/right drawn per annotator, decisive judgements as
preference pairs that prepare reads, resume, and agreement (Cohen's kappa as scikit-learn computes it)."""

import json
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from tuneforge.errors import DataError
from tuneforge.feedback import Annotation, summary
from tuneforge.feedback.session import read_prompts

PROMPTS = ["Name a colour.", "Name a fruit.", "Name a city.", "Name a tree."]


def fake_sampler(calls: list[str]):
    """Two canned answers per prompt (the seed decides them, as a model's sampling does)."""

    def sample(prompt, seed: int) -> list[str]:
        calls.append(prompt[-1]["content"])
        return [f"{prompt[-1]['content']} -> answer {seed % 97}", f"{prompt[-1]['content']} -> other {seed % 89}"]

    return sample


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS + PROMPTS[:1]) + "\n")  # the repeated prompt counts once
    return path


def session(prompts: Path, out: Path, calls: list[str]) -> Annotation:
    return Annotation(prompts, out, fake_sampler(calls), "tiny", {"temperature": 0.8})


def test_annotators_share_the_pairs_and_their_judgements_become_preference_pairs(prompts: Path, tmp_path: Path) -> None:
    calls: list[str] = []
    out = tmp_path / "prefs.jsonl"
    first = session(prompts, out, calls)
    item = first.next_item("ann")
    assert item is not None and item.prompt == [{"role": "user", "content": "Name a colour."}]
    left, right = first.shown("ann", item)
    first.record("ann", item, "left")
    pair = json.loads(out.read_text().splitlines()[0])
    assert pair["chosen"] == [{"role": "assistant", "content": left}]
    assert pair["rejected"] == [{"role": "assistant", "content": right}]
    assert pair["annotator"] == "ann" and pair["model"] == "tiny" and pair["sampling"] == {"temperature": 0.8}
    # another annotator (another process) gets the very same answers, sampled only once
    second = session(prompts, out, calls)
    other = second.next_item("bob")
    assert other is not None and other.id == item.id and set(other.answers) == {left, right}
    assert calls == ["Name a colour."]
    # the side each answer shows on is drawn per annotator and prompt: over many, both orders occur
    orders = {second.left_first(f"annotator-{i}", other) for i in range(20)}
    assert orders == {True, False}


def test_a_session_resumes_and_ties_skips_are_not_pairs(prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "prefs.jsonl"
    s = session(prompts, out, [])
    for judgement in ("tie", "skip"):
        item = s.next_item("ann")
        assert item is not None
        s.record("ann", item, judgement)
    assert not out.exists()  # neither is a preference
    resumed = session(prompts, out, [])
    item = resumed.next_item("ann")
    assert item is not None and item.prompt[-1]["content"] == "Name a city."
    assert resumed.progress("ann") == (2, 4)
    with pytest.raises(DataError, match="unknown judgement"):
        resumed.record("ann", item, "maybe")


def test_agreement_is_cohens_kappa_on_the_prompts_both_judged(prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "prefs.jsonl"
    s = session(prompts, out, [])
    ann = ["left", "right", "tie", "left"]
    bob = ["left", "right", "left", "skip"]
    choices: dict[str, list[str]] = {"ann": [], "bob": []}
    for who, plan in (("ann", ann), ("bob", bob)):
        for judgement in plan:
            item = s.next_item(who)
            assert item is not None
            s.record(who, item, judgement)
            a_first = s.left_first(who, item)
            choices[who].append(
                {"left": "a" if a_first else "b", "right": "b" if a_first else "a"}.get(judgement, judgement)
            )
    facts = summary(out.with_name("prefs.judgements.jsonl"))
    assert facts["annotators"]["ann"] == {c: choices["ann"].count(c) for c in set(choices["ann"])}
    (pair,) = facts["agreement"]
    assert pair["items"] == 3  # bob skipped the fourth
    expected = cohen_kappa_score(choices["ann"][:3], choices["bob"][:3])
    assert pair["kappa"] == pytest.approx(expected, abs=1e-4)
    alike = sum(a == b for a, b in zip(choices["ann"][:3], choices["bob"][:3], strict=True))
    assert pair["agreement"] == pytest.approx(alike / 3, abs=1e-4)


def test_prompt_files_are_read_with_clear_errors(tmp_path: Path) -> None:
    rows = tmp_path / "p.jsonl"
    rows.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
        + "\n"
        + json.dumps({"prompt": "Bye"})
        + "\n"
    )
    assert [i.prompt for i in read_prompts(rows)] == [
        [{"role": "user", "content": "Hi"}],  # the answer is dropped: it is what gets sampled
        [{"role": "user", "content": "Bye"}],
    ]
    rows.write_text(json.dumps({"question": "Hi"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: no prompt"):
        read_prompts(rows)
