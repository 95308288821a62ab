"""The Optuna storage URL: shown masked everywhere, connected with its password from the
environment.

A Postgres URL on Kubernetes carries a password from a Secret. Nothing lushpo writes — log
lines, printed commands, JSON records, model cards, Ray Tune's pickles — may hold it, and a
rotated password must not break ``--resume``. So every record keeps `masked(url)`
(``postgresql://lushpo:***@host/db``), and `connectable` turns a masked URL back into one with
its password at run time: from the URL this process was given (`remember`), from
``LUSHPO_OPTUNA_STORAGE`` when it names the same database, or from ``LUSHPO_OPTUNA_PASSWORD``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import overload

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

__all__ = [
    "PASSWORD_ENV",
    "URL_ENV",
    "StoragePasswordError",
    "StorageUnreachableError",
    "connectable",
    "has_study",
    "masked",
    "open_storage",
    "remember",
]

URL_ENV = "LUSHPO_OPTUNA_STORAGE"  # the whole URL, password included (the RayJob's Secret)
PASSWORD_ENV = "LUSHPO_OPTUNA_PASSWORD"  # the password alone, for a URL written without it
MASK = "***"  # SQLAlchemy's own mask (`URL.render_as_string(hide_password=True)`)

_given: dict[str, str] = {}  # masked URL -> the URL with its password, as this process got it


class StoragePasswordError(ValueError):
    """A masked storage URL whose password this process cannot find."""


@overload
def masked(url: str) -> str: ...
@overload
def masked(url: None) -> None: ...
def masked(url: str | None) -> str | None:
    """`url` with its password replaced by ``***``; other URLs (and None) unchanged."""
    if not url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not an SQLAlchemy URL: nothing to hide
        return url


def remember(url: str) -> str:
    """Keep `url` (with its password) for `connectable` in this process; return it masked."""
    shown = masked(url)
    if shown != url:
        _given[shown] = url
    return shown


def connectable(url: str) -> str:
    """The URL to connect with. A URL with a real password is itself; a masked one (``***``)
    takes its password from what this process was given or from the environment; a URL with a
    user and no password takes ``LUSHPO_OPTUNA_PASSWORD`` when that is set."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; lushpo ships psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.password not in (None, MASK):
        return parsed.render_as_string(hide_password=False)
    if parsed.password == MASK:
        for candidate in (_given.get(url), os.environ.get(URL_ENV)):
            if candidate and masked(candidate) == url:
                return connectable(candidate)
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return parsed.set(password=password).render_as_string(hide_password=False)
    if parsed.password == MASK:
        raise StoragePasswordError(
            f"Optuna storage {url}: its password is not in this process; set {URL_ENV} to the "
            f"whole URL or {PASSWORD_ENV} to the password"
        )
    return parsed.render_as_string(hide_password=False)


class StorageUnreachableError(OSError):
    """The database behind an Optuna storage URL does not answer (or refuses the login)."""


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url` (masked or not); a sqlite file's folder is made first.

    Raises:
        StorageUnreachableError: the database does not answer, in one line naming the masked
            URL and where it is set (SQLAlchemy's own names neither).
    """
    real = connectable(url)
    if real.startswith("sqlite:///"):
        Path(real[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(real)
    except OperationalError as exc:
        first = " ".join(str(exc.orig or exc).split())[:200]
        raise StorageUnreachableError(
            f"the Optuna storage {masked(url)} cannot be reached ({first}); check that its "
            f"server runs, storage.optuna_storage (or --optuna-storage, {URL_ENV}) and the "
            f"password ({PASSWORD_ENV})"
        ) from None


def has_study(url: str, name: str) -> bool:
    """Whether the storage at `url` holds a study `name` (False when it cannot be reached: the
    study's own opening reports that)."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return False
    try:
        return name in optuna.get_all_study_names(storage=connectable(url))
    except Exception:  # an unreachable DB is reported when the study opens it
        return False
