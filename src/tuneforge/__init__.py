"""tuneforge: fine-tune open LLMs on your own data, measure them, serve them."""

from tuneforge.config import RunConfig, load_config
from tuneforge.errors import ConfigError, DataError, ModelError, RunError, TuneforgeError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "RunConfig",
    "RunError",
    "TuneforgeError",
    "load_config",
    "__version__",
]
