"""The jobs store's two backends in tests: a throwaway PostgreSQL cluster, and what the tests ask of either backend.

The cluster: initdb in a fresh temporary folder, trust auth, listening on a free port of 127.0.0.1 and on a socket in
that folder, durability off (a test database dies with the run). PostgreSQL refuses to run as root, and CI runs as
root: there the folder belongs to Debian's `postgres` system user and initdb / pg_ctl run through `runuser`. Each test
gets a database of its own (`create_database`), dropped after it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuneforge.jobs.db import Database

REQUIRE_POSTGRES = "TUNEFORGE_REQUIRE_POSTGRES"  # .ci/run sets it: there the PostgreSQL tests must run, not skip
SUPERUSER = "postgres"
_SERVER_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c listen_addresses=127.0.0.1"


def bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's newest /usr/lib/postgresql/<version>/bin, else the PATH's."""
    debian = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if p.parent.parent.name.isdigit()]
    if debian:
        return max(debian, key=lambda folder: int(folder.parent.name))
    found = shutil.which("pg_ctl")
    folder = Path(found).resolve().parent if found else None
    return folder if folder is not None and (folder / "initdb").exists() else None


def missing() -> str | None:
    """Why no cluster can start here (said in the skip), or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]>=3.1')"
    if bin_dir() is None:
        return "PostgreSQL's server binaries are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs the postgres system user to own the cluster (apt-get install postgresql)"
        if shutil.which("runuser") is None:
            return "running as root needs runuser (util-linux) to run the cluster as the postgres user"
    return None


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster."""

    root: Path
    bin: Path
    port: int
    as_owner: tuple[str, ...]  # the command prefix that runs a program as the cluster's owner

    def url(self, database: str = "postgres") -> str:
        """A TCP URL of one of its databases."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str) -> str:
        """A URL of one of its databases through the unix socket in the cluster's folder."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.root}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database's name."""
        import psycopg

        name = f"jobs_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")  # 36 ms, not WAL_LOG's 90
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending whatever connections a test left open to it."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server at once and delete its folder."""
        pg_ctl = [*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"]
        subprocess.run(pg_ctl, cwd=self.root, capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(command: list[str], cwd: Path, what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        server_log = log.read_text() if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}{server_log}")


def start() -> Cluster:
    """initdb and start a cluster in a new temporary folder (as the postgres user when run as root)."""
    folder = bin_dir()
    assert folder is not None, missing()
    root = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))  # not under pytest's tmp: its 0700 parents shut others out
    as_owner: tuple[str, ...] = ()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ("runuser", "-u", "postgres", "--")
    try:
        initdb = [str(folder / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"]
        _run([*as_owner, *initdb, "--locale=C", "--no-sync"], root, "initdb")
        for _ in range(3):  # another program may take the free port between the check and the start
            port = _free_port()
            options = f"-p {port} -k {root} {_SERVER_SETTINGS}"
            pg_ctl = [str(folder / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-o", options]
            try:
                _run([*as_owner, *pg_ctl, "-w", "-t", "60", "start"], root, "pg_ctl start", root / "log")
                return Cluster(root, folder, port, as_owner)
            except RuntimeError as exc:
                failure = exc
        raise failure
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def driver_error(url: str) -> type[Exception]:
    """The base class of the errors the driver of the database at `url` raises."""
    if not url.startswith("postgresql://"):
        return sqlite3.Error
    import psycopg

    return psycopg.Error


def table_names(db: Database) -> set[str]:
    """The tables of the database (its current schema, on PostgreSQL)."""
    sql = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgresql": "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()",
    }[db.dialect.name]
    with db.read() as tx:
        return {row["name"] for row in tx.rows(sql)}
