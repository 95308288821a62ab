"""The project folder: where lushpo keeps what no flag, config key or variable places elsewhere.

One convention for every verb and for `make run`: the folder ``.lushpo`` in the working directory
(``LUSHPO_HOME`` moves it) holds

- ``store/``: the feature store (``--store``, else ``LUSHPO_STORE``, else this);
- ``runs/NAME/``: each study's Ray Tune run folder, Optuna database and trial log
  (``--storage-path`` or ``storage.storage_path``, else this);
- ``out/NAME/``: each study's export and report (``--out``, else ``LUSHPO_RESULTS_DIR/NAME``,
  else this).

Paths are made absolute when read, so a verb run from elsewhere with ``LUSHPO_HOME`` set, and the
Ray workers of a study, agree with the verb that wrote them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ADDRESS_ENV",
    "CACHE_ENV",
    "DATA_DIR_ENV",
    "ENDPOINT_ENV",
    "HOME_ENV",
    "RESULTS_ENV",
    "STORE_ENV",
    "WEIGHTS_ENV",
    "flag_or_env",
    "home",
    "results_dir",
    "runs_dir",
    "store_uri",
]

# The variables that give a flag its default (each verb's --help names them).
HOME_ENV = "LUSHPO_HOME"
STORE_ENV = "LUSHPO_STORE"
RESULTS_ENV = "LUSHPO_RESULTS_DIR"
DATA_DIR_ENV = "LUSHPO_DATA_DIR"
WEIGHTS_ENV = "LUSHPO_WEIGHTS"
CACHE_ENV = "LUSHPO_CACHE_DIR"
ADDRESS_ENV = "RAY_ADDRESS"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"  # boto3's and pyarrow's own variable, read for the S3 endpoint


def flag_or_env(value: Any, env: str, environ: Mapping[str, str] | None = None) -> Any:
    """A flag's value when given, else its variable's (``environ``: os.environ); an unset or
    empty variable is None."""
    if value:
        return value
    return (os.environ if environ is None else environ).get(env) or None


def home(environ: Mapping[str, str] | None = None) -> Path:
    """The project folder: ``$LUSHPO_HOME``, else ``./.lushpo`` (``environ``: os.environ)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(HOME_ENV) or ".lushpo").expanduser().absolute()


def store_uri(environ: Mapping[str, str] | None = None) -> str:
    """The default feature store: ``$LUSHPO_STORE``, else ``file://<home>/store``."""
    environ = os.environ if environ is None else environ
    return environ.get(STORE_ENV) or (home(environ) / "store").as_uri()


def runs_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where studies live unless the config or a flag names a storage path."""
    return home(environ) / "runs"


def results_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where exports land unless ``--out`` says: ``$LUSHPO_RESULTS_DIR``, else ``<home>/out``."""
    environ = os.environ if environ is None else environ
    env = environ.get(RESULTS_ENV)
    return Path(env).expanduser().absolute() if env else home(environ) / "out"
