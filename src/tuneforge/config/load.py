"""Reading a run config: one YAML file plus `key=value` overrides, validated once into a RunConfig; every problem
reported in one error with "did you mean"; the field reference that --help prints."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.config.run import RunConfig
from tuneforge.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults), apply `key=value` overrides, validate and return it."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {path}", "pass the path of a YAML file, e.g. configs/contracts.yaml"
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}", "fix the YAML syntax at the position shown") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded or {}
        _resolve_data_path(raw, path.parent)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path) if path else "config")


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config mapping; every problem is reported in one ConfigError."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc.errors())
        raise ConfigError(
            f"{source}: {len(problems)} invalid setting(s):\n" + "\n".join(f"  - {p}" for p in problems),
            "see `tuneforge run --help` for every field, its type and default",
        ) from None


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, exactly as it will run (paths absolute)."""
    data = cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def describe_fields() -> str:
    """Every config field with type, default and description: the reference printed by --help."""
    return "\n".join(_field_lines(RunConfig, ""))


def _field_lines(model: type[BaseModel], prefix: str) -> list[str]:
    """One line per field of `model`, a nested section's fields under their dotted names (compare.needs.x)."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += _field_lines(annotation, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            lines.append(f"{prefix}{name} (default {_show(default)}): {field.description}")
    return lines


def _show(value: Any) -> str:
    return str(value) if isinstance(value, Path) else repr(value)


def _resolve_data_path(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    data = data if isinstance(data, dict) else {}
    places: list[tuple[Any, Any]] = [(data, key) for key in ("path", "test_path")]
    places += [(d, "path") for d in data.get("datasets") or [] if isinstance(d, dict)]
    rag = raw.get("rag")
    if isinstance(rag, dict):
        sources = rag.get("sources")
        places += [(sources, i) for i in range(len(sources))] if isinstance(sources, list) else []
    for node, key in places:
        value = node[key] if isinstance(node, list) else node.get(key)
        if isinstance(value, str) and not value.startswith("hf:") and not Path(value).is_absolute():
            node[key] = str((base / value).resolve())


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value", "write overrides like train.epochs=2")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part", "write overrides like train.epochs=2")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _problems(errors: list[Any]) -> list[str]:
    """One line per invalid setting: the errors of a `value | 'auto'` field's union members become one."""
    lines: list[str] = []
    auto_fields: set[tuple[Any, ...]] = set()
    for err in errors:
        loc, member = tuple(err["loc"][:-1]), str(err["loc"][-1]) if err["loc"] else ""
        if member.startswith(("literal[", "constrained-", "int", "float")) and len(loc) >= 2:
            if loc in auto_fields:
                continue
            auto_fields.add(loc)
            number = next(e for e in errors if tuple(e["loc"][:-1]) == loc and "literal[" not in str(e["loc"][-1]))
            lines.append(f"{'.'.join(map(str, loc))}: {number['msg']}, or 'auto' (got {err.get('input')!r})")
        else:
            lines.append(_describe(err))
    return lines


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown setting{_suggest(err['loc'])}"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _suggest(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
