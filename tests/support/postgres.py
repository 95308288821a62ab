"""A real PostgreSQL server for one test: Debian's `postgresql` package (installed by .ci/run),
a cluster of the test's own in a temp dir, listening on loopback only, stopped by its data dir.

PostgreSQL will not run as root, so when the tests run as root the server runs as the package's
``postgres`` user (the temp dir is handed to it)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.s3 import free_port

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``start()`` makes a cluster with an admin role ``postgres`` (trust on its socket only)
    and a database owned by `user` with `password` (scram on 127.0.0.1)."""

    def __init__(self, user: str, password: str, database: str) -> None:
        self.user, self.password, self.database = user, password, database
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="lushpo-pg-"))
        self.data = self.root / "data"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres")

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, **kw)

    def url(self, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "start",
        )  # fmt: skip
        self.sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.sql(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def sql(self, statement: str) -> str:
        psql = [str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port)]
        return self._run(*psql, "-U", "postgres", "-d", "postgres", "-c", statement).stdout

    def change_password(self, password: str) -> None:
        self.sql(f"ALTER ROLE {self.user} PASSWORD '{password}'")
        self.password = password

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                 "stop"], capture_output=True, check=False,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
