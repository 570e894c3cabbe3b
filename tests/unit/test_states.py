from __future__ import annotations

import itertools

import pytest

from dynllm.states import HOLDS_VRAM, TRANSITIONS, IllegalTransition, State, check_transition

LEGAL = {
    (State.UNLOADED, State.LOADING),
    (State.UNLOADED, State.FAILED),
    (State.LOADING, State.LOADED),
    (State.LOADING, State.FAILED),
    (State.LOADING, State.UNLOADING),
    (State.LOADED, State.UNLOADING),
    (State.LOADED, State.FAILED),
    (State.UNLOADING, State.UNLOADED),
    (State.FAILED, State.LOADING),
    (State.FAILED, State.UNLOADED),
}


@pytest.mark.parametrize("move", sorted(itertools.product(State, State)))
def test_every_move_is_legal_or_refused(move: tuple[State, State]) -> None:
    current, new = move
    if move in LEGAL:
        check_transition(current, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
            check_transition(current, new)


def test_table_matches_the_documented_moves() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL


def test_states_use_the_spec_names() -> None:
    assert {s.value for s in State} == {"unloaded", "loading", "loaded", "unloading", "failed"}
    assert {State.LOADING, State.LOADED, State.UNLOADING} == HOLDS_VRAM
