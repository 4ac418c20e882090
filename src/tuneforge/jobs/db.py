"""The jobs database: a handle that opens one connection per transaction, and append-only named migrations.

Two backends, chosen by `open_database` alone: a SQLite file (a path or sqlite:///path) and PostgreSQL (a
postgresql:// URL, through psycopg 3). What differs between them lives in one `Dialect` value (how to begin a read or
a write, the parameter style, the column types, how migrators wait for each other) and one `connect` function
returning a DB-API connection in autocommit mode, so that `Tx` can issue BEGIN itself. The store writes portable SQL:
`?` placeholders (translated in `Tx`), TEXT/INTEGER/REAL columns, JSON as TEXT, no backend-only functions.

A connection per transaction, not per thread: a forked worker never inherits an open connection, and a transaction
never outlives its `with` block. Opening one costs a few tens of microseconds on SQLite and about 6 ms on PostgreSQL
(measured on localhost, TCP or socket alike: a write transaction takes 8 ms there, 1.7 ms on SQLite with synchronous
FULL), nothing beside a training step or for a few writes a second; a pool would need resetting in forked children.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tuneforge.jobs.errors import DatabaseError
from tuneforge.jobs.schema import MIGRATIONS

Row = dict[str, Any]
Migration = tuple[str, str]  # (name, SQL statements separated by ';', none inside a literal)
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another's lock before failing with "database is locked"
CONNECT_TIMEOUT_S = 10  # how long to wait for a PostgreSQL server to answer before saying it cannot be reached


@dataclass(frozen=True)
class Dialect:
    """What one backend spells differently; everything else in the store's SQL is shared."""

    name: str
    begin_read: str  # a snapshot for the reads of one block (a page and its cursor agree)
    begin_write: str  # takes the write lock at once, so a read-then-write block cannot be overtaken
    placeholder: str  # the driver's parameter marker; the store writes `?`
    serial: str  # replaces {serial} in migrations: an auto-numbered primary key, which orders the lists
    types: tuple[tuple[str, str], ...] = ()  # (portable, own) column types respelled in migrations
    lock_migrations: str | None = None  # the migration transaction's first statement: migrators wait for each other

    def ddl(self, statement: str) -> str:
        """A migration statement in this backend's spelling (the migrations hold no literals to spoil)."""
        for portable, own in self.types:
            statement = re.sub(rf"\b{portable}\b", own, statement)
        return statement.replace("{serial}", self.serial)


SQLITE = Dialect(
    name="sqlite",
    begin_read="BEGIN",
    begin_write="BEGIN IMMEDIATE",
    placeholder="?",
    serial="INTEGER PRIMARY KEY AUTOINCREMENT",  # AUTOINCREMENT: a deleted row's number is never handed out again
)
POSTGRESQL = Dialect(
    name="postgresql",
    begin_read="BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",  # one snapshot for the block, as SQLite's BEGIN
    # Writers lock only the rows they change; the store's compare-and-set updates (lifecycle) do the rest. Named, not
    # left to the server's default: under REPEATABLE READ a lost race would fail instead of reading again.
    begin_write="BEGIN ISOLATION LEVEL READ COMMITTED",
    placeholder="%s",
    serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    # SQLite's INTEGER holds 64 bits and its REAL 8 bytes; PostgreSQL's hold 32 bits (a 2 GiB upload, the seconds
    # after 2038) and 4 bytes. Respelled here, so the released migrations stay as they are.
    types=(("INTEGER", "BIGINT"), ("REAL", "DOUBLE PRECISION")),
    # CREATE TABLE IF NOT EXISTS races itself on PostgreSQL (a duplicate key in pg_type): migrators queue instead.
    # The key is any fixed number, the same in every tuneforge; the lock ends with the transaction.
    lock_migrations="SELECT pg_advisory_xact_lock(7240105523)",
)


def _translate(sql: str, placeholder: str) -> str:
    """The store's `?` markers in the driver's style (`%` escaped for pyformat drivers); literals left alone."""
    if placeholder == "?":
        return sql
    parts = re.split(r"('(?:[^']|'')*')", sql.replace("%", "%%"))
    return "".join(p if p.startswith("'") else p.replace("?", placeholder) for p in parts)


class Tx:
    """One transaction's statements; rows come back as dicts by column name, whatever the driver."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed (for compare-and-set updates)."""
        self._cursor.execute(_translate(sql, self.dialect.placeholder), tuple(params))
        return int(self._cursor.rowcount)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        self._cursor.execute(_translate(sql, self.dialect.placeholder), tuple(params))
        names = [d[0] for d in self._cursor.description]
        return [dict(zip(names, values, strict=True)) for values in self._cursor.fetchall()]

    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        found = self.rows(sql, params)
        return found[0] if found else None


class Database:
    """A jobs database: `read()` and `write()` blocks, each one transaction on a fresh connection."""

    def __init__(self, url: str, dialect: Dialect, connect: Callable[[], Any]) -> None:
        self.url = url  # where it is, safe to show: a SQLite file's path, a PostgreSQL URL without its password
        self.dialect = dialect
        self._connect = connect
        self.connect_url: str | None = None  # what open_database was given (password too): for worker processes

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        conn = self._connect()
        try:
            cursor = conn.cursor()
            cursor.execute(begin)
            try:
                yield Tx(cursor, self.dialect)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        finally:
            conn.close()

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """A block of reads that see one consistent snapshot."""
        return self._transaction(self.dialect.begin_read)

    def write(self) -> contextlib.AbstractContextManager[Tx]:
        """A block of writes that commits whole or not at all; it holds the write lock from its first line."""
        return self._transaction(self.dialect.begin_write)

    def applied_migrations(self) -> list[str]:
        """The names of the migrations this database has recorded, in the order they were applied."""
        with self.read() as tx:  # open_database has created the table
            return [r["name"] for r in tx.rows("SELECT name FROM migrations ORDER BY position")]

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
        """Apply the migrations not yet recorded, in order, in one transaction; the names it applied."""
        with self.write() as tx:
            if self.dialect.lock_migrations is not None:
                tx.execute(self.dialect.lock_migrations)
            _create_migrations_table(tx)
            recorded = [r["name"] for r in tx.rows("SELECT name FROM migrations ORDER BY position")]
            _check_history(self.url, recorded, [name for name, _ in migrations])
            now = int(time.time())
            for position, (name, sql) in enumerate(migrations[len(recorded) :], start=len(recorded)):
                for statement in filter(None, (s.strip() for s in sql.split(";"))):
                    tx.execute(self.dialect.ddl(statement))
                record = "INSERT INTO migrations (position, name, applied_at) VALUES (?, ?, ?)"
                tx.execute(record, (position, name, now))
            return [name for name, _ in migrations[len(recorded) :]]


def _create_migrations_table(tx: Tx) -> None:
    tx.execute(
        tx.dialect.ddl(
            "CREATE TABLE IF NOT EXISTS migrations "
            "(position INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at INTEGER NOT NULL)"
        )
    )


def _check_history(url: str, recorded: list[str], known: list[str]) -> None:
    """Refuse a database whose recorded migrations are not a prefix of the known ones."""
    for position, name in enumerate(recorded):
        expected = known[position] if position < len(known) else None
        if name != expected:
            raise DatabaseError(
                f"the jobs database {url} records migration {position + 1} as {name!r}, which this tuneforge "
                f"does not have at that place (it expects {expected!r}; it knows {len(known)} migrations)",
                "a newer tuneforge wrote it, or its history was edited: upgrade tuneforge, or start a new database "
                "with --database <new path>",
            )


def _sqlite_path(url_or_path: str | Path) -> Path:
    """The file of a plain path or a `sqlite:///relative` / `sqlite:////absolute` URL (SQLAlchemy's spelling)."""
    text = str(url_or_path)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    if text in ("", ":memory:"):
        raise DatabaseError(
            f"the jobs database must be a file, got {str(url_or_path)!r}",
            "the server and its workers share it across processes: pass a path such as data/jobs.sqlite",
        )
    return Path(text)


def _sqlite_connect(path: Path, busy_timeout_s: float) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        # isolation_level=None: the driver opens no transactions of its own; Tx issues BEGIN / COMMIT.
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL: a commit is on disk before it returns, so an acknowledged upload or event survives a power cut too
        # (NORMAL would survive SIGKILL only); the jobs database sees a few writes a second at most.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    return connect


def _open_sqlite(url_or_path: str | Path, busy_timeout_s: float) -> Database:
    path = _sqlite_path(url_or_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    connect = _sqlite_connect(path, busy_timeout_s)
    try:
        conn = connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]  # persistent: recorded in the file
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"{path} cannot be opened as a SQLite database ({exc})", "pass a new path, or the jobs database file"
        ) from exc
    if mode != "wal":
        raise DatabaseError(
            f"{path} cannot use SQLite's write-ahead log (journal mode stays {mode!r})",
            "put the jobs database on a local disk (WAL needs shared memory, which network file systems lack)",
        )
    return Database(str(path), SQLITE, connect)


def _postgres_connect(url: str, busy_timeout_s: float) -> Callable[[], Any]:
    """A connect() for a postgresql:// URL; every failure says what went wrong without the URL's password."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError as exc:
        raise DatabaseError(
            f"the jobs database {_redact(url)} is PostgreSQL, whose driver psycopg is not installed",
            "pip install 'psycopg[binary]>=3.1' (or tuneforge[postgres]), or use a SQLite file: --database jobs.sqlite",
        ) from exc
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise DatabaseError(
            f"{_redact(url)} is not a PostgreSQL URL libpq understands ({_scrub(str(exc), url)})",
            "spell it postgresql://user:password@host:port/database (a password's special characters %-encoded)",
        ) from None  # the driver's own message may quote the password
    # lock_timeout: PostgreSQL's counterpart of SQLite's busy timeout; the URL's own options are kept.
    options = f"{params.get('options') or ''} -c lock_timeout={int(busy_timeout_s * 1000)}".strip()
    timeout = params.get("connect_timeout") or CONNECT_TIMEOUT_S
    conninfo = make_conninfo(url, options=options, connect_timeout=timeout)

    def connect() -> Any:
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to the jobs database {_redact(url)}: {_scrub(str(exc).strip(), url)}",
                "check that the server runs, that the URL's host, port, user and database are right (createdb "
                "<name> makes the database) and that this user may log in",
            ) from None

    return connect


def open_database(
    url_or_path: str | Path, migrations: Sequence[Migration] = MIGRATIONS, busy_timeout_s: float = BUSY_TIMEOUT_S
) -> Database:
    """Open (creating if needed) the jobs database at a path or URL and apply the migrations it lacks."""
    text = str(url_or_path)
    if text.startswith(("postgresql://", "postgres://")):
        db = Database(_redact(text), POSTGRESQL, _postgres_connect(text, busy_timeout_s))
    elif "://" in text and not text.startswith("sqlite:///"):
        raise DatabaseError(
            f"unknown jobs database URL {_redact(text)}",
            "pass a file path, sqlite:///<path> or postgresql://user:password@host:port/database",
        )
    else:
        db = _open_sqlite(url_or_path, busy_timeout_s)
    db.connect_url = text
    db.migrate(migrations)
    return db


def _redact(url: str) -> str:
    """A URL without its password (in the user part or a password= parameter), for messages."""
    url = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def _scrub(message: str, url: str) -> str:
    """A driver's message with every spelling of the URL's password masked, in case it quotes the URL."""
    try:
        parts = urlsplit(url)
        given = [parts.password or "", *parse_qs(parts.query).get("password", [])]
    except ValueError:  # not even a URL, so no telling where its password is: show none of the message
        return "(details withheld: they may contain the password)"
    for secret in sorted({s for raw in given if raw for s in (raw, unquote(raw))}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message
