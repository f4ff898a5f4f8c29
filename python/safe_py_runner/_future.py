"""RunFuture: a ``concurrent.futures.Future`` whose ``cancel()`` stops the run. Imported on first use
(``submit``, ``Session.submit``, ``safe_py_runner.RunFuture``): concurrent.futures costs a short program's start."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

from . import _core
from .result import result_from_tuple

__all__ = ["RunFuture", "run_into"]


class RunFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` really stops the run: a queued run never
    starts, a running one has its process killed (the pool replaces it; a session ends). The
    future stays pending while the run goes on, so ``cancel()`` succeeds until the result is in."""

    def __init__(self) -> None:
        super().__init__()
        self.token = _core.CancelToken()

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self.token.cancel()
        return cancelled


def run_into(future: RunFuture, call: Callable[[Any], tuple]) -> None:
    """Executor body: runs ``call(token)`` unless cancelled first, and settles ``future``."""
    if future.cancelled():
        return
    try:
        result = result_from_tuple(call(future.token))
    except BaseException as e:  # noqa: BLE001 - handed to the future's owner
        if future.set_running_or_notify_cancel():
            future.set_exception(e)
        return
    if future.set_running_or_notify_cancel():
        future.set_result(result)
