"""stopscope.testing: prove that your workers stop well, at every point a stop can land.

::

    from stopscope.testing import Scenario

    async def test_consumer_stops_well(stop_kit):
        def scenario() -> Scenario:
            queue = FakeQueue(["a", "b", "c"])
            return Scenario(consume, queue, invariants=[queue.nothing_lost])
        (await stop_kit.explore(scenario, within=0.05)).assert_ok()

* :func:`probe` runs one worker in a :class:`~stopscope.TaskScope`, requests its stop
  at a moment the test chooses, and returns a :class:`ProbeResult`.
* :func:`explore` stops it right after each of its scheduling points in turn and
  returns an :class:`Exploration` that names the first failing point.
* :func:`virtual_time` gives an ``anyio_backend`` value a virtual clock (trio's
  ``MockClock``, a ``looptime`` loop on asyncio): grace periods pass in no time.
* The pytest plugin (registered as ``stopscope``) gives the ``stop_kit`` fixture and
  the ``--stopscope-point`` / ``--stopscope-seed`` options.

Install with the ``testing`` extra: ``pip install stopscope[testing]``.
"""

from ._clock import virtual_time as virtual_time
from ._probe import Exploration as Exploration
from ._probe import ProbeResult as ProbeResult
from ._probe import Scenario as Scenario
from ._probe import StopKit as StopKit
from ._probe import StopRequirementError as StopRequirementError
from ._probe import explore as explore
from ._probe import probe as probe

__all__ = [
    "Exploration",
    "ProbeResult",
    "Scenario",
    "StopKit",
    "StopRequirementError",
    "explore",
    "probe",
    "virtual_time",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
