"""SQLite state store: one row per model, written after every state change.

Rows carry a per-model sequence number; an upsert only wins if its number is
higher than the stored one, so writes issued from different threads after the
registry released its lock can never put an older state over a newer one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .states import State

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name         TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    pid          INTEGER,
    port         INTEGER,
    vram_mb      INTEGER NOT NULL DEFAULT 0,
    loaded_at    REAL,
    last_used_at REAL,
    last_error   TEXT,
    log_path     TEXT,
    argv         TEXT,
    seq          INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL NOT NULL
);
"""

_COLUMNS = (
    "name, state, pid, port, vram_mb, loaded_at, last_used_at, "
    "last_error, log_path, argv, seq, updated_at"
)


@dataclass
class ModelRow:
    name: str
    state: State
    pid: int | None = None
    port: int | None = None
    vram_mb: int = 0
    loaded_at: float | None = None
    last_used_at: float | None = None
    last_error: str | None = None
    log_path: str | None = None
    argv: list[str] = field(default_factory=list)
    seq: int = 0
    updated_at: float = 0.0

    def values(self) -> tuple[object, ...]:
        return (
            self.name,
            self.state.value,
            self.pid,
            self.port,
            self.vram_mb,
            self.loaded_at,
            self.last_used_at,
            self.last_error,
            self.log_path,
            json.dumps(self.argv) if self.argv else None,
            self.seq,
            self.updated_at,
        )

    @classmethod
    def from_sql(cls, r: Sequence[object]) -> ModelRow:
        return cls(
            name=str(r[0]),
            state=State(r[1]),
            pid=r[2],  # type: ignore[arg-type]
            port=r[3],  # type: ignore[arg-type]
            vram_mb=int(r[4] or 0),  # type: ignore[call-overload]
            loaded_at=r[5],  # type: ignore[arg-type]
            last_used_at=r[6],  # type: ignore[arg-type]
            last_error=r[7],  # type: ignore[arg-type]
            log_path=r[8],  # type: ignore[arg-type]
            argv=json.loads(r[9]) if r[9] else [],  # type: ignore[arg-type]
            seq=int(r[10] or 0),  # type: ignore[call-overload]
            updated_at=float(r[11] or 0.0),  # type: ignore[arg-type]
        )


@dataclass
class Leftover:
    """A row that named a process when DynLLM last stopped (uncleanly)."""

    name: str
    pid: int | None
    argv: list[str]


class Store:
    """Owns the sqlite connection; safe to call from any thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self.transaction() as c:
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                c.execute(stmt)
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if the block raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def save(self, rows: Sequence[ModelRow]) -> None:
        """Upsert rows; a row older (lower ``seq``) than the stored one is ignored."""
        if not rows:
            return
        with self.transaction() as c:
            c.executemany(
                f"INSERT INTO models ({_COLUMNS}) VALUES ({', '.join('?' * 12)}) "
                "ON CONFLICT(name) DO UPDATE SET "
                "state=excluded.state, pid=excluded.pid, port=excluded.port, "
                "vram_mb=excluded.vram_mb, loaded_at=excluded.loaded_at, "
                "last_used_at=excluded.last_used_at, last_error=excluded.last_error, "
                "log_path=excluded.log_path, argv=excluded.argv, seq=excluded.seq, "
                "updated_at=excluded.updated_at "
                "WHERE excluded.seq >= models.seq",
                [r.values() for r in rows],
            )

    def load_all(self) -> dict[str, ModelRow]:
        with self._lock:
            cur = self._conn.execute(f"SELECT {_COLUMNS} FROM models")
            return {row[0]: ModelRow.from_sql(row) for row in cur.fetchall()}

    def heal(self, known: set[str]) -> list[Leftover]:
        """Reset rows left by an unclean stop; return those that named a process.

        ``loading``, ``loaded`` and ``unloading`` all become ``unloaded``: after
        a restart nothing of ours is running (the caller kills what the returned
        leftovers name).  ``failed`` rows keep their error.  Rows of models no
        longer configured are deleted after their processes were reported.
        """
        running = (State.LOADING.value, State.LOADED.value, State.UNLOADING.value)
        leftovers: list[Leftover] = []
        with self.transaction() as c:
            cur = c.execute(f"SELECT {_COLUMNS} FROM models")
            for row in map(ModelRow.from_sql, cur.fetchall()):
                if row.argv and (row.state.value in running or row.pid):
                    leftovers.append(Leftover(row.name, row.pid, row.argv))
            c.execute(
                "UPDATE models SET state='unloaded', pid=NULL, port=NULL, seq=0 "
                f"WHERE state IN ({', '.join('?' * len(running))})",
                running,
            )
            c.execute("UPDATE models SET pid=NULL, port=NULL, seq=0")
            names = sorted(known)
            c.execute(
                f"DELETE FROM models WHERE name NOT IN ({', '.join('?' * len(names))})", names
            )
        return leftovers

    def close(self) -> None:
        with self._lock:
            self._conn.close()
