"""stopscope: a graceful way to stop async code, on asyncio, uvloop and trio."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._report import Outcome as Outcome
from ._report import ShutdownReport as ShutdownReport
from ._report import StopReason as StopReason
from ._report import TaskRecord as TaskRecord
from ._scope import TaskScope as TaskScope
from ._service import SignalTrap as SignalTrap
from ._service import run as run
from ._service import stop_on_signals as stop_on_signals
from ._signal import CallbackHandle as CallbackHandle
from ._signal import StopSignal as StopSignal

__all__ = [
    "CallbackHandle",
    "Outcome",
    "ShutdownReport",
    "SignalTrap",
    "StopReason",
    "StopSignal",
    "TaskRecord",
    "TaskScope",
    "run",
    "stop_on_signals",
]

try:
    #: the installed distribution's version (PEP 440), from the package metadata
    __version__: str = _version("stopscope")
except _PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# Show the public path in reprs and docs (stopscope.StopSignal, not stopscope._signal...).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
