"""The feedback routes: /v1/rewards scores with a served reward model exactly as `tuneforge score` does; the
annotation routes hand out the same pair to every annotator, save judgements as preference pairs and report kappa."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tuneforge.cli import app as cli
from tuneforge.data import prepare
from tuneforge.feedback import Annotation
from tuneforge.generation import Completion, SamplingParams
from tuneforge.serve import create_app
from tuneforge.serve.feedback import AnnotationService, RewardService, engine_sampler
from tuneforge.train import train
from tuneforge.train.rewards import RewardModel

from helpers import FakeEngine, write_jsonl

QUIET = {"log": lambda *a: None}


class SeededEngine(FakeEngine):
    """Canned answers that depend on the sampling seed, as a model's samples do."""

    def complete(self, model_id: str, messages, params: SamplingParams) -> Completion:
        done = super().complete(model_id, messages, params)
        return Completion(f"{done.text} (sample {params.seed % 1000})", done.prompt_tokens, 4, "stop")


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from tuneforge.config import load_config

    folder = tmp_path_factory.mktemp("reward")
    rows = [{"prompt": f"Item {i}?", "chosen": f'{{"item": {i}}}', "rejected": f"item {i}, I think"} for i in range(30)]
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"data.path={write_jsonl(folder / 'p.jsonl', rows)}",
                             f"output_dir={folder / 'runs'}", "name=rm", "train.task=reward", "train.epochs=1",
                             "train.precision=fp32", "data.estimate=false"])  # fmt: skip
    prepare(cfg)
    train(cfg, **QUIET)
    return cfg.run_dir


def test_rewards_are_the_reward_models_scores(reward_run: Path) -> None:
    client = TestClient(create_app([], engine=FakeEngine(), rewards=RewardService([reward_run])))
    inputs = [{"prompt": "Item 3?", "answer": '{"item": 3}'}, {"prompt": [{"role": "user", "content": "Item 3?"}],
                                                               "answer": "item 3, I think"}]  # fmt: skip
    got = client.post("/v1/rewards", json={"model": "rm", "input": inputs})
    assert got.status_code == 200, got.text
    rewards = [d["reward"] for d in got.json()["data"]]
    expected = RewardModel.at(str(reward_run)).score(
        [{"role": "user", "content": "Item 3?"}], [i["answer"] for i in inputs]
    )
    assert rewards == pytest.approx(expected, abs=1e-5)
    missing = client.post("/v1/rewards", json={"model": "toy", "input": inputs})
    assert missing.status_code == 404 and "reward models: ['rm']" in missing.json()["error"]["message"]
    empty = client.post("/v1/rewards", json={"model": "rm", "input": [{"prompt": "Hi", "answer": ""}]})
    assert empty.status_code == 400
    cli_run = CliRunner().invoke(cli, ["score", str(reward_run), "--prompt", "Item 3?", "--answer", '{"item": 3}'])
    assert cli_run.exit_code == 0 and f"{rewards[0]:+.4f}" in cli_run.output


def test_the_annotation_routes_save_pairs_and_report_agreement(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\nName a fruit.\n")
    engine = SeededEngine()
    session = Annotation(prompts, tmp_path / "prefs.jsonl", engine_sampler(engine, "toy", 0.8, 32), "toy", {})
    client = TestClient(create_app([], engine=engine, annotation=AnnotationService(session)))
    first = client.get("/v1/annotations/next", params={"annotator": "ann"}).json()
    assert first["prompt"] == [{"role": "user", "content": "Name a colour."}] and first["left"] != first["right"]
    assert (first["done"], first["total"]) == (0, 2)
    other = client.get("/v1/annotations/next", params={"annotator": "bob"}).json()
    assert other["item"] == first["item"] and {other["left"], other["right"]} == {first["left"], first["right"]}
    saved = client.post("/v1/annotations", json={"item": first["item"], "annotator": "ann", "judgement": "left"})
    assert saved.json() == {"saved": True, "done": 1, "total": 2}
    pair = json.loads((tmp_path / "prefs.jsonl").read_text())
    assert pair["chosen"][0]["content"] == first["left"] and pair["annotator"] == "ann"
    bob_choice = "left" if other["left"] == first["left"] else "right"  # bob agrees with ann
    client.post("/v1/annotations", json={"item": first["item"], "annotator": "bob", "judgement": bob_choice})
    facts = client.get("/v1/annotations/summary").json()
    assert facts["agreement"][0]["items"] == 1 and facts["agreement"][0]["agreement"] == 1.0
    bad = client.post("/v1/annotations", json={"item": "nope", "annotator": "ann", "judgement": "left"})
    assert bad.status_code == 404
    wrong = client.post("/v1/annotations", json={"item": first["item"], "annotator": "ann", "judgement": "meh"})
    assert wrong.status_code == 400
    none = TestClient(create_app([], engine=FakeEngine())).get("/v1/annotations/next", params={"annotator": "a"})
    assert none.status_code == 404 and "--annotate" in none.json()["error"]["message"]


def test_serve_sorts_out_reward_runs_and_opens_the_annotation_page(reward_run: Path, tmp_path: Path) -> None:
    """What `tuneforge serve runs/rm --annotate prompts.txt` builds: the reward model on /v1/rewards, its base model
    for chat (sampling the annotation page's answers)."""
    from tuneforge.launch import serving_app
    from tuneforge.rundir import load_run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Item 1?\nItem 2?\n")
    app = serving_app([reward_run], load_run(reward_run), None, None, None, None, None, (prompts, tmp_path / "p.jsonl"))
    client = TestClient(app)
    assert (
        client.post("/v1/rewards", json={"model": "rm", "input": [{"prompt": "Item 1?", "answer": "x"}]}).status_code
        == 200
    )
    served = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert served and "rm" not in served  # the base model answers chat; the reward model only scores
    item = client.get("/v1/annotations/next", params={"annotator": "ann"}).json()
    assert item["prompt"] == [{"role": "user", "content": "Item 1?"}] and item["total"] == 2
