from __future__ import annotations

from pathlib import Path

from dynllm.states import State
from dynllm.store import ModelRow, Store


def row(name: str, state: State, seq: int, **kw: object) -> ModelRow:
    return ModelRow(name=name, state=state, seq=seq, updated_at=1.0, **kw)  # type: ignore[arg-type]


def test_wal_mode_and_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.save([row("a", State.LOADED, 1, pid=42, port=9100, argv=["x", "-m", "y"])])
    got = Store(tmp_path / "s.db").load_all()["a"]
    assert (got.state, got.pid, got.port, got.argv) == (State.LOADED, 42, 9100, ["x", "-m", "y"])


def test_older_write_never_overwrites_newer(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.save([row("a", State.UNLOADED, 5)])
    store.save([row("a", State.LOADED, 4)])  # late write from another thread
    assert store.load_all()["a"].state is State.UNLOADED


def test_transaction_rolls_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        with store.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES('x', '1')")
            raise RuntimeError
    except RuntimeError:
        pass
    assert store._conn.execute("SELECT count(*) FROM meta WHERE key='x'").fetchone()[0] == 0


def test_heal_resets_stale_states_and_reports_processes(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.save(
        [
            row("loading", State.LOADING, 3, pid=11, argv=["b", "1"]),
            row("loaded", State.LOADED, 3, pid=12, argv=["b", "2"]),
            row("unloading", State.UNLOADING, 3, pid=13, argv=["b", "3"]),
            row("failed", State.FAILED, 3, last_error="boom"),
            row("unloaded", State.UNLOADED, 3),
            row("gone", State.LOADED, 3, pid=14, argv=["b", "4"]),
        ]
    )
    leftovers = store.heal({"loading", "loaded", "unloading", "failed", "unloaded"})
    assert sorted((x.name, x.pid) for x in leftovers) == [
        ("gone", 14),
        ("loaded", 12),
        ("loading", 11),
        ("unloading", 13),
    ]
    rows = store.load_all()
    assert "gone" not in rows  # no longer configured
    assert rows["loading"].state is State.UNLOADED
    assert rows["loaded"].state is State.UNLOADED
    assert rows["unloading"].state is State.UNLOADED
    assert rows["failed"].state is State.FAILED and rows["failed"].last_error == "boom"
    assert all(r.pid is None for r in rows.values())
    # A fresh run's first write (seq 1) wins over the healed rows.
    store.save([row("loaded", State.LOADING, 1)])
    assert store.load_all()["loaded"].state is State.LOADING
