"""Joining a Ray cluster, or starting the embedded local instance, with Ray's token authentication.

Ray 2.60 authenticates every RPC with a shared token when ``RAY_AUTH_MODE=token``. Ray's own rule
for *finding* the token is: ``RAY_AUTH_TOKEN``, else the file at ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``. Its rule for *turning auth on* differs by entry point: ``ray start --head``
and ``ray.init(address="auto")`` switch token mode on when a token exists, but
``ray.init(address="host:port")`` never does, so a client with the right token in
``~/.ray/auth_token`` still connects without it and is refused by a token cluster (after 20 s of
``InvalidAuthToken`` lines). `connect` probes the address first: when the cluster refuses an
unauthenticated client, ``RAY_AUTH_MODE`` is unset and a token is available, it switches token
mode on for this process and its children, as ``ray start`` would. It never does so for an open
cluster: a token-mode driver demands the token of every worker that calls back into it, so the
open cluster's actors would fail. ``RAY_AUTH_MODE`` set by the user is respected as set.

Before `ray.init`, a one-second probe of the cluster's GCS tells an unreachable address from a
refused token, so either failure is one line that says what to set. No token is ever printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

__all__ = [
    "AUTH_MODE_ENV",
    "TOKEN_ENV",
    "TOKEN_PATH_ENV",
    "ClusterAuthError",
    "ClusterConnectError",
    "ClusterUnreachableError",
    "connect",
    "token_source",
]

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
PROBE_TIMEOUT_S = 5.0


class ClusterConnectError(RuntimeError):
    """The Ray cluster at an address cannot be joined; the message says what to change."""


class ClusterUnreachableError(ClusterConnectError):
    """Nothing answers at the address."""


class ClusterAuthError(ClusterConnectError):
    """The cluster refused this client's token (missing or wrong)."""


def token_source(environ: dict[str, str] | None = None) -> str | None:
    """Where Ray would read the token from (a variable name or a file path), or None.

    Never the token itself: callers print this.
    """
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return TOKEN_ENV
    if env.get(TOKEN_PATH_ENV):
        return f"{TOKEN_PATH_ENV}={env[TOKEN_PATH_ENV]}"
    default = DEFAULT_TOKEN_PATH.expanduser()
    return str(default) if default.is_file() and default.stat().st_size > 0 else None


def _use_token_if_available() -> None:
    """``ray start``'s rule for explicit addresses: a token present and no mode set → token.

    Ray's own helper, because Ray caches its config when `ray._raylet` loads: setting the
    variable alone would not reach a process that imported Ray already."""
    # private: Ray has no public call that re-reads the token mode in a running process
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "token authentication is enabled" notice
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        logger.setLevel(level)


def _how_to_fix(address: str) -> str:
    source = token_source()
    mode = os.environ.get(AUTH_MODE_ENV) or "unset"
    if source is None:
        return (
            f"the Ray cluster at {address} requires token authentication and no token was "
            f"found: set {TOKEN_ENV} (or {TOKEN_PATH_ENV}, or write ~/.ray/auth_token) to the "
            f"cluster's token, e.g. from `ray get-auth-token` on the head node"
        )
    return (
        f"the Ray cluster at {address} refused the token from {source} ({AUTH_MODE_ENV}={mode}): "
        f"set {TOKEN_ENV} to the token the cluster was started with (`ray get-auth-token` on its "
        "head node)"
    )


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 for a moment: Ray's C++ client logs each refused RPC there."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _gcs_address(address: str) -> str | None:
    """host:port of a GCS address; None for ray:// (Ray Client) and "auto"."""
    if "://" in address or address == "auto" or ":" not in address:
        return None
    return address


def _gcs_refuses(gcs: str) -> bool:
    """True when the GCS at `gcs` refuses this process's current credentials."""
    # private: the one Ray client that asks a GCS a question without joining its cluster
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():
            client = GcsClient(address=gcs, cluster_id=None)
            client.internal_kv_get(b"session_name", b"session", timeout=PROBE_TIMEOUT_S)
    except AuthenticationError:
        return True
    except Exception as error:  # answers TCP but not RPC: ray.init reports it in full
        return "auth" in str(error).lower()
    return False


def probe(address: str) -> None:
    """Check that `address` can be joined, switching token mode on when (and only when) the
    cluster requires it and a token is available.

    Only when required: a token-mode driver also demands the token of every worker that calls
    back into it, so joining an open cluster in token mode makes its actors fail.

    Raises:
        ClusterUnreachableError, ClusterAuthError.
    """
    gcs = _gcs_address(address)
    if gcs is None:
        return
    host, _, port = gcs.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        raise ClusterUnreachableError(
            f"no Ray cluster answers at {address} ({error}); start one with `ray start --head` "
            "or fix --address / RAY_ADDRESS"
        ) from None
    if not _gcs_refuses(gcs):
        return
    if os.environ.get(AUTH_MODE_ENV) is None and token_source() is not None:
        _use_token_if_available()
        if not _gcs_refuses(gcs):
            return
    raise ClusterAuthError(_how_to_fix(address))


def connect(
    address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None
) -> bool:
    """Join `address` (``host:port``, ``auto`` or ``ray://…``), or start a fresh local instance
    when it is None. True when this call started Ray (the caller then shuts it down).

    Raises:
        ClusterUnreachableError, ClusterAuthError: with one line saying what to set.
    """
    import ray

    if ray.is_initialized():
        return False
    if address:
        probe(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise ClusterConnectError(
                f"cannot join the Ray cluster at {address}: {error}"
            ) from None
        return True
    # address="local": a fresh instance, never a cluster that `ray start` left on this host
    # (plain ray.init() would join it). Joining a cluster is what --address is for.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
    )
    return True
