import io
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from tuneforge.cli import app

from helpers import ROOT

runner = CliRunner()


def base_args(tiny_model_dir: Path, toy_data: Path, out: Path) -> list[str]:
    return [
        f"model.name={tiny_model_dir}",
        f"data.path={toy_data}",
        f"output_dir={out}",
        "name=cli",
        "train.max_steps=6",
        "train.precision=fp32",
        "train.learning_rate=0.01",
        "evaluate.limit=4",
        "evaluate.max_new_tokens=8",
    ]


def test_stages_one_by_one_then_the_whole_run(tiny_model_dir: Path, toy_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("evaluate:\n  task: json\n")
    args = base_args(tiny_model_dir, toy_data, tmp_path / "runs")
    result = runner.invoke(app, ["prepare", str(config), *args])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "examples" in result.output
    run_dir = tmp_path / "runs" / "cli"
    result = runner.invoke(app, ["train", str(run_dir)])  # a run directory works as the target too
    assert result.exit_code == 0, result.output
    assert "trained 6 steps" in result.output and (run_dir / "model" / "adapter_model.safetensors").is_file()
    result = runner.invoke(app, ["evaluate", str(run_dir), "evaluate.limit=3"])
    assert result.exit_code == 0, result.output
    assert (
        "base vs tuned; scored on the test split (3 examples)" in result.output
        and "base" in result.output
        and "tuned" in result.output
    )
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 3

    result = runner.invoke(app, ["run", str(config), *args, "name=whole"])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "data/train.jsonl", "metrics.jsonl", "model/adapter_config.json", "eval.json"):
        assert (tmp_path / "runs" / "whole" / name).exists(), name
    assert "json_valid" in result.output


def test_user_errors_are_one_clear_message_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "error: config file not found" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["prepare", str(tmp_path / "missing.yaml"), "train.epoch=2"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "config file not found" in result.output
    result = runner.invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "is not a tuneforge run directory" in result.output


def test_help_teaches_every_config_field() -> None:
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for field in ("train.lora_r", "data.max_seq_len", "evaluate.max_new_tokens", "model.name"):
        assert field in result.output


def test_chat_streams_answers_and_keeps_history(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    result = runner.invoke(
        app,
        ["chat", str(run), "--max-tokens", "8"],
        input="Item 1: what colour?\n/reset\nItem 2: what colour?\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    assert "chatting with toy" in result.output
    assert result.output.count("assistant> ") == 2 and "(conversation cleared)" in result.output
    base = runner.invoke(app, ["chat", str(run), "--base", "--max-tokens", "4"], input="hello\n")
    assert (
        base.exit_code == 0
        and "chatting with " + str(json.loads((run / "model" / "tuneforge.json").read_text())["base_model"])
        in base.output
    )


def test_ctrl_c_stops_the_answer_not_the_chat() -> None:
    from tuneforge.chat import chat_loop
    from tuneforge.generation import Completion, SamplingParams

    class Engine:
        def __init__(self) -> None:
            self.calls: list[list[dict[str, str]]] = []

        def stream(self, model_id, messages, params):
            self.calls.append(list(messages))
            yield "par"
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            yield "tial"
            yield Completion("partial", 3, 2, "stop")

    lines = iter(["first\n", "second\n", "/exit\n"])
    out = io.StringIO()
    engine = Engine()
    answers = chat_loop(engine, "m", SamplingParams(), lambda prompt: next(lines), out)  # type: ignore[arg-type]
    assert answers == 1 and "par [interrupted]\n" in out.getvalue() and "partial\n" in out.getvalue()
    assert engine.calls[1] == [{"role": "user", "content": "second"}], "the interrupted turn stays out of the history"


def test_ctrl_c_during_a_stage_exits_130_without_traceback(monkeypatch, tmp_path: Path) -> None:
    import tuneforge.data

    def interrupted(cfg, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuneforge.data, "prepare", interrupted)
    result = runner.invoke(app, ["prepare", str(ROOT / "configs" / "contracts.yaml"), f"output_dir={tmp_path}"])
    assert result.exit_code == 130 and "interrupted" in result.output and "Traceback" not in result.output
