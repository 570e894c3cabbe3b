"""The eviction planner: a pure function, no locks and no I/O.

LIFO: the model loaded most recently goes first, busy models are skipped.  A
second pass spares any chosen victim whose memory turned out not to be needed
(LIFO alone would evict a small recent model before reaching the big old one
that was the real obstacle).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    """What the planner needs to know about one loaded model."""

    name: str
    vram_mb: int
    #: Monotonic order of loading; larger means loaded more recently.
    load_order: float
    busy: bool


def plan_eviction(
    need_mb: int, budget_mb: int, committed_mb: int, residents: Iterable[Resident]
) -> list[str] | None:
    """Choose which resident models to stop so that ``need_mb`` more fits.

    :param committed_mb: VRAM already promised (loading, loaded, reserved), not
        counting models that are on their way out.
    :returns: victim names, most recently loaded first (empty when it already
        fits), or ``None`` when even evicting every idle model is not enough.
    """
    free = budget_mb - committed_mb
    if need_mb <= free:
        return []
    victims: list[Resident] = []
    for r in sorted(residents, key=lambda r: r.load_order, reverse=True):
        if r.busy:
            continue
        victims.append(r)
        free += r.vram_mb
        if free >= need_mb:
            break
    else:
        return None
    # Spare victims that are not needed after all (e.g. a small recent model
    # chosen before the large one that really frees the room).
    for v in list(victims):
        if free - v.vram_mb >= need_mb:
            victims.remove(v)
            free -= v.vram_mb
    return [v.name for v in victims]
