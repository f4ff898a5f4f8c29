"""safe_py_runner: run untrusted Python snippets with hard limits and OS isolation.

A drop-in for the ``safe-py-runner`` package (v0.1.6): the same ``run_code``, ``RunnerPolicy``
and ``RunnerResult``, with a C++ engine underneath (warm hardened workers instead of a fresh
interpreter per run). Beyond the original: ``Runner`` (a worker pool with ``run``, ``submit``
and ``run_async``), ``run_many`` (many cases, results in input order; ``safe_py_runner.dask`` runs
them on a Dask cluster), sessions (``Runner.open_session``), streamed output (``on_output``,
``Runner.stream``) and futures whose ``cancel()`` stops the run.
"""

import os as _os

from . import _core
from ._worker_path import packaged_worker as _packaged_worker

# The default Runner's first worker starts now, while the rest of the package (and of the program) loads,
# so a short program's first run waits less. The first Runner built (run_code's own included) takes it over
# when built with every argument at its default and this process unchanged since (user, priority, limits,
# directory, environment), and stops it otherwise; configure() with options and exit stop it too.
# SAFE_PY_RUNNER_PRESTART=0 turns it off.
if _os.environ.get("SAFE_PY_RUNNER_PRESTART", "1") != "0":
    import atexit as _atexit

    _core.prestart(_packaged_worker())
    _atexit.register(_core.drop_prestart)  # now: an exit after a failed import stops it too

from .batch import CaseResult, run_many  # noqa: E402  (after the start above, on purpose)
from .policy import RunnerPolicy  # noqa: E402
from .result import RunnerResult  # noqa: E402
from .runner import Runner, WorkerError, configure, run_code  # noqa: E402
from .session import Session, SessionLimitError  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._future import RunFuture

__all__ = ["RunnerPolicy", "RunnerResult", "Runner", "WorkerError", "run_code", "configure", "Session", "RunFuture",
           "SessionLimitError", "run_many", "CaseResult"]
__version__ = _core.version()


def __getattr__(name: str):
    # Loaded on first use (it imports concurrent.futures): see _future.py.
    if name == "RunFuture":
        from ._future import RunFuture

        return RunFuture
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
