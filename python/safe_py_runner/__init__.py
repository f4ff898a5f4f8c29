"""safe_py_runner: run untrusted Python snippets with hard limits and OS isolation.

A drop-in for the ``safe-py-runner`` package (v0.1.6): the same ``run_code``, ``RunnerPolicy``
and ``RunnerResult``, with a C++ engine underneath (warm hardened workers instead of a fresh
interpreter per run). Beyond the original: ``Runner`` (a worker pool with ``run``, ``submit``
and ``run_async``), ``run_many`` (many cases, results in input order; ``safe_py_runner.dask`` runs
them on a Dask cluster), sessions (``Runner.open_session``), streamed output (``on_output``,
``Runner.stream``) and futures whose ``cancel()`` stops the run.
"""

from ._core import version as _version
from .batch import CaseResult, run_many
from .policy import RunnerPolicy
from .result import RunnerResult
from .runner import Runner, WorkerError, configure, run_code
from .session import Session, SessionLimitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._future import RunFuture

__all__ = ["RunnerPolicy", "RunnerResult", "Runner", "WorkerError", "run_code", "configure", "Session", "RunFuture",
           "SessionLimitError", "run_many", "CaseResult"]
__version__ = _version()


def __getattr__(name: str):
    # Loaded on first use (it imports concurrent.futures): see _future.py.
    if name == "RunFuture":
        from ._future import RunFuture

        return RunFuture
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
