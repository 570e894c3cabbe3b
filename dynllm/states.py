"""Model states and the one table that says which moves between them are legal.

Every state change in DynLLM goes through :func:`check_transition`, so an
illegal move is a loud bug at the point it happens rather than a quiet
inconsistency found later.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Lifecycle of one configured model's backend process."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


#: Allowed moves.  Anything not listed raises :class:`IllegalTransition`.
TRANSITIONS: dict[State, frozenset[State]] = {
    # A request (or preload) decided to start the backend; or the load failed
    # before any process existed (no free port, evicted models never exited).
    State.UNLOADED: frozenset({State.LOADING, State.FAILED}),
    # Ready; or it failed/timed out (process already reaped); or shutdown
    # arrived while it was starting.
    State.LOADING: frozenset({State.LOADED, State.FAILED, State.UNLOADING}),
    # Evicted, idle, admin unload or shutdown; or the process died on its own.
    State.LOADED: frozenset({State.UNLOADING, State.FAILED}),
    # The process has really exited.
    State.UNLOADING: frozenset({State.UNLOADED}),
    # The next request retries; an admin unload clears the error.
    State.FAILED: frozenset({State.LOADING, State.UNLOADED}),
}

#: States whose declared VRAM counts against the budget: a process exists
#: (or is being created) and may hold memory until it has really exited.
HOLDS_VRAM: frozenset[State] = frozenset({State.LOADING, State.LOADED, State.UNLOADING})

#: States in which a process of ours may be running.
RUNNING: frozenset[State] = HOLDS_VRAM

#: States in which nothing runs and a new load may start.
STOPPED: frozenset[State] = frozenset({State.UNLOADED, State.FAILED})


class IllegalTransition(RuntimeError):
    """A state change that the table does not allow: always a DynLLM bug."""


def check_transition(current: State, new: State) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> new`` is allowed."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"illegal state transition {current.value} -> {new.value}")
