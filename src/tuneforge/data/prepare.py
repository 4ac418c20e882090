"""The prepare stage: read -> validate -> measure tokens -> split -> write data/ and data_report.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.formats import read_jsonl
from tuneforge.data.records import Chat, Issue
from tuneforge.data.split import split
from tuneforge.data.tokenize import encode_chat
from tuneforge.data.validate import check_count, check_length
from tuneforge.errors import ConfigError, DataError
from tuneforge.models import load_tokenizer
from tuneforge.rundir import atomic_write_json, save_config, write_jsonl

SPLITS = ("train", "val", "test")
SHOWN_ISSUES = 15


@dataclass
class PrepareResult:
    """Where the splits were written and how many examples each holds."""

    data_dir: Path
    counts: dict[str, int]
    tokens: dict[str, int]
    issues: list[Issue]


def prepare(cfg: RunConfig) -> PrepareResult:
    """Validate the data of `cfg`, split it and write the run's data/ folder; raise DataError on any error."""
    if cfg.data.path is None:
        raise ConfigError("data.path is not set", "set data.path in the config or pass data.path=FILE")
    path = Path(cfg.data.path)
    test_path = Path(cfg.data.test_path) if cfg.data.test_path else None
    for key, file in (("data.path", path), ("data.test_path", test_path)):
        if file is not None and not file.is_file():
            raise DataError(
                f"{key}: file not found: {file}", "check the path (relative paths resolve against the config file)"
            )
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    kept, issues = _read(path, cfg.data.format, tokenizer, cfg.data.max_seq_len)
    test_kept, test_issues = (
        _read(test_path, cfg.data.format, tokenizer, cfg.data.max_seq_len) if test_path else ([], [])
    )
    issues += test_issues
    test_size = 0.0 if test_path else cfg.data.test_size
    minimum = 1 + (cfg.data.val_size > 0) + (test_size > 0) + 1
    if not any(i.severity == "error" for i in issues) and (few := check_count(len(kept), minimum, str(path))):
        issues.append(few)
    data_dir = cfg.run_dir / "data"
    save_config(cfg)
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        _write_report(data_dir, path, {}, {}, issues)
        raise DataError(_summarise(errors, data_dir), "fix the lines named above, then run prepare again")
    parts = split(kept, cfg.data.val_size, test_size, cfg.data.seed)
    if test_path:
        parts["test"] = test_kept
    for name in SPLITS:
        write_jsonl(data_dir / f"{name}.jsonl", [c.to_json() for c in parts[name]])
    counts = {k: len(v) for k, v in parts.items()}
    tokens = {k: sum(c.n_tokens for c in v) for k, v in parts.items()}
    _write_report(data_dir, path, counts, tokens, issues)
    return PrepareResult(data_dir, counts, tokens, issues)


def _read(path: Path, fmt: str, tokenizer: Any, max_seq_len: int) -> tuple[list[Chat], list[Issue]]:
    """Valid chats of one file (with token counts) and every problem found in it."""
    chats, issues = read_jsonl(path, fmt)
    kept: list[Chat] = []
    for chat in chats:
        chat.n_tokens = len(encode_chat(tokenizer, chat.messages).input_ids)
        too_long = check_length(chat.n_tokens, max_seq_len, chat.source)
        if too_long:
            issues.append(too_long)
        else:
            kept.append(chat)
    return kept, issues


def _write_report(
    data_dir: Path, source: Path, counts: dict[str, int], tokens: dict[str, int], issues: list[Issue]
) -> None:
    atomic_write_json(
        data_dir / "data_report.json",
        {
            "source": str(source),
            "counts": counts,
            "tokens": tokens,
            "errors": sum(i.severity == "error" for i in issues),
            "warnings": sum(i.severity == "warning" for i in issues),
            "issues": [i.to_json() for i in issues],
        },
    )


def _summarise(errors: list[Issue], data_dir: Path) -> str:
    shown = "\n".join(f"  - {e}" for e in errors[:SHOWN_ISSUES])
    more = f"\n  ... and {len(errors) - SHOWN_ISSUES} more" if len(errors) > SHOWN_ISSUES else ""
    return f"{len(errors)} data error(s):\n{shown}{more}\n  (all findings: {data_dir / 'data_report.json'})"
