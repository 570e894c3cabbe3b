from __future__ import annotations

from dynllm.eviction import Resident, plan_eviction


def r(name: str, vram: int, order: float, busy: bool = False) -> Resident:
    return Resident(name, vram, order, busy)


def test_fits_without_eviction() -> None:
    assert plan_eviction(100, 1000, 900, [r("a", 900, 1)]) == []


def test_most_recently_loaded_goes_first() -> None:
    residents = [r("old", 400, 1), r("mid", 400, 2), r("new", 400, 3)]
    assert plan_eviction(400, 1200, 1200, residents) == ["new"]
    assert plan_eviction(800, 1200, 1200, residents) == ["new", "mid"]


def test_busy_models_are_skipped() -> None:
    residents = [r("old", 400, 1), r("mid", 400, 2), r("new", 400, 3, busy=True)]
    assert plan_eviction(400, 1200, 1200, residents) == ["mid"]


def test_none_when_all_candidates_busy() -> None:
    residents = [r("a", 500, 1, busy=True), r("b", 500, 2, busy=True)]
    assert plan_eviction(100, 1000, 1000, residents) is None


def test_none_when_even_evicting_everything_is_not_enough() -> None:
    assert plan_eviction(900, 1000, 1000, [r("a", 500, 1), r("b", 100, 2, busy=True)]) is None


def test_unneeded_small_victim_is_spared() -> None:
    # LIFO picks "small" first, but only "big" really had to go.
    residents = [r("big", 500, 1), r("small", 100, 2)]
    assert plan_eviction(500, 600, 600, residents) == ["big"]


def test_committed_memory_counts_even_without_residents() -> None:
    # e.g. another model is loading and holds 800 of 1000.
    assert plan_eviction(300, 1000, 800, []) is None
    assert plan_eviction(200, 1000, 800, []) == []


def test_zero_vram_model_always_fits() -> None:
    assert plan_eviction(0, 1000, 1000, [r("a", 1000, 1, busy=True)]) == []
