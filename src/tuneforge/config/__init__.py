"""Run configuration: one YAML file plus `key=value` overrides, validated once into a RunConfig.

Every field has a default and a description; the descriptions are the documentation (`tuneforge run --help` prints
them, docs/configuration.md holds them), so they are written for users. The sections live in data.py (model, data,
clean, privacy), train.py (train), rag.py (rag), compare.py (compare) and run.py (evaluate, serve, tune and
RunConfig); load.py reads and validates.
"""

from tuneforge.config.base import EMBEDDED_HUB_ID, EMBEDDED_MODEL, Auto, Section
from tuneforge.config.compare import APPROACHES, Approach, CompareConfig, Needs
from tuneforge.config.data import (
    CleanConfig,
    DataConfig,
    DataFormat,
    DatasetConfig,
    ModelConfig,
    PiiName,
    PrivacyConfig,
)
from tuneforge.config.load import apply_override, describe_fields, dump_config, load_config, validate_config
from tuneforge.config.rag import EMBEDDED_EMBEDDERS, RagConfig
from tuneforge.config.run import EvalConfig, RunConfig, ServeConfig, TuneConfig
from tuneforge.config.train import TrainConfig

__all__ = [
    "APPROACHES",
    "Approach",
    "CompareConfig",
    "Needs",
    "EMBEDDED_EMBEDDERS",
    "EMBEDDED_HUB_ID",
    "EMBEDDED_MODEL",
    "Auto",
    "CleanConfig",
    "DataConfig",
    "DataFormat",
    "DatasetConfig",
    "EvalConfig",
    "ModelConfig",
    "PiiName",
    "PrivacyConfig",
    "RagConfig",
    "RunConfig",
    "Section",
    "ServeConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_override",
    "describe_fields",
    "dump_config",
    "load_config",
    "validate_config",
]
