"""safe_py_runner: run untrusted Python snippets with hard limits and OS isolation.

A drop-in for the ``safe-py-runner`` package (v0.1.6): the same ``run_code``, ``RunnerPolicy``
and ``RunnerResult``, with a C++ engine underneath (warm hardened workers instead of a fresh
interpreter per run). Beyond the original: ``Runner`` (a worker pool with ``run``, ``submit``
and ``run_async``).
"""

from ._core import version as _version
from .policy import RunnerPolicy
from .result import RunnerResult
from .runner import Runner, WorkerError, run_code

__all__ = ["RunnerPolicy", "RunnerResult", "Runner", "WorkerError", "run_code"]
__version__ = _version()
