"""Await sites: which of a worker's scheduling points can be told apart by where it is.

A full exploration stops the worker after each of its N points in turn, and each run
replays every point before its own: N runs, N**2 / 2 steps.  Most of those points are
the same await reached again (the 400th ``await broker.take()`` of a loop); the bugs a
stop finds are tied to the await where it lands.  :func:`explore` with ``per_site=K``
runs the worker once through all its points, noting the *site* of each (the worker's
stack of frames and lines at that suspension), and then stops it only at the first K
points of each distinct site and at the last one: a handful of runs instead of N.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import CodeType, FrameType

__all__ = ["Site", "plan_by_site", "site_of"]

#: where a suspended worker is: (code, line) of each frame, outermost first
Site = tuple[tuple[CodeType, int], ...]


def site_of(stack: Sequence[tuple[FrameType, int]]) -> Site:
    """The site of a captured stack (``_probe._capture``'s frames and lines)."""
    return tuple((frame.f_code, line) for frame, line in stack)


def plan_by_site(sites: Sequence[Site], per_site: int, limit: int) -> list[int]:
    """The points to stop at: 0, the first *per_site* points of each distinct site, and
    its last point, among points 1..*limit* (``sites[i]`` is the site of point i + 1)."""
    seen: dict[Site, int] = {}
    last: dict[Site, int] = {}
    plan = {0}
    for index, site in enumerate(sites[:limit]):
        point = index + 1
        count = seen.get(site, 0)
        if count < per_site:
            plan.add(point)
        seen[site] = count + 1
        last[site] = point
    plan.update(last.values())
    return sorted(plan)
