"""Sessions (a namespace kept across calls), cancellable futures and async iteration over output."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable, Dict, Optional, Tuple

from . import _core
from .host import HostFunctions, adapt, merge
from .result import RunnerResult, result_from_tuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._future import RunFuture

__all__ = ["Session", "RunFuture", "OutputStream", "OutputCallback", "SessionLimitError"]

SessionLimitError = _core.SessionLimitError
"""Raised by ``Runner.open_session`` when the runner already holds ``max_sessions`` sessions."""


def __getattr__(name: str) -> Any:
    # RunFuture lives in _future, which imports concurrent.futures (and logging): about 12 ms that a
    # program calling only run_code does not pay at import.
    if name == "RunFuture":
        from ._future import RunFuture

        return RunFuture
    raise AttributeError("module %r has no attribute %r" % (__name__, name))

OutputCallback = Callable[[str, str], None]
"""``on_output(stream, data)``: ``stream`` is ``"stdout"`` or ``"stderr"``; called on an engine
thread while the code runs, chunks in order; they add up to the result's (capped) output."""


class OutputStream:
    """``async for stream, data in runner.stream(code)``: output chunks as the code prints them.
    After the loop, ``await it.result()`` gives the ``RunnerResult``; ``it.cancel()`` stops the run."""

    _END = object()

    def __init__(self, start: Callable[[OutputCallback], RunFuture]) -> None:
        import asyncio  # here, not at the top: a program that never awaits does not pay for importing it

        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._future = start(self._push)
        self._future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._queue.put_nowait, self._END))

    def _push(self, stream: str, data: str) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (stream, data))

    def __aiter__(self) -> AsyncIterator[Tuple[str, str]]:
        return self

    async def __anext__(self) -> Tuple[str, str]:
        item = await self._queue.get()
        if item is self._END:
            raise StopAsyncIteration
        return item

    async def result(self) -> RunnerResult:
        import asyncio

        return await asyncio.wrap_future(self._future)

    def cancel(self) -> bool:
        return self._future.cancel()


class Session:
    """Calls that share one Python namespace, in a process of the session's own (from
    ``Runner.open_session``). A call that raises leaves it usable; a timeout, memory overrun,
    crash or cancel ends it, and every later call answers ``error_kind == "session_lost"``.
    Use it as a context manager, or call ``close()``; it also ends after the runner's idle
    time-to-live and when the runner closes."""

    def __init__(self, core: Any, submit: Callable[..., RunFuture], functions: Optional[HostFunctions] = None) -> None:
        self._core = core
        self._submit = submit
        self._functions = functions

    def _call(self, code: str, input_data: Any, on_output: Optional[OutputCallback], token: Any,
              repr: bool, timeout_seconds: Optional[float], max_output_kb: Optional[int],
              max_result_kb: Optional[int], functions: Optional[HostFunctions] = None,
              loop: Optional[asyncio.AbstractEventLoop] = None, stdin: Optional[str] = None) -> tuple:
        if not isinstance(code, str):
            raise TypeError("'code' must be a str")
        if stdin is not None and not isinstance(stdin, str):
            raise TypeError("'stdin' must be a str")
        host = adapt(merge(self._functions, functions), loop)
        return self._core.run(code.encode("utf-8", "surrogatepass"), json.dumps(input_data or {}, separators=(",", ":")), on_output,
                              token, repr, timeout_seconds, max_output_kb, max_result_kb, host, stdin or "")

    def run(self, code: str, input_data: Optional[Any] = None, *, on_output: Optional[OutputCallback] = None,
            repr: bool = False, timeout_seconds: Optional[float] = None, max_output_kb: Optional[int] = None,
            max_result_kb: Optional[int] = None, functions: Optional[HostFunctions] = None,
            stdin: Optional[str] = None) -> RunnerResult:
        """Run ``code`` in the session's namespace. ``repr=True`` fills ``result.repr`` with the
        repr of a trailing expression, as a REPL shows it; the limits override the session's;
        ``functions`` adds host functions for this call; ``stdin`` is what ``sys.stdin`` and
        ``input()`` read (at most the session's ``max_stdin_kb``)."""
        return result_from_tuple(self._call(code, input_data, on_output, None, repr, timeout_seconds,
                                            max_output_kb, max_result_kb, functions, None, stdin))

    def submit(self, code: str, input_data: Optional[Any] = None, **options: Any) -> RunFuture:
        """Start a call; the future's ``cancel()`` stops it (a running call ends the session)."""
        on_output = options.pop("on_output", None)
        args = (options.pop("repr", False), options.pop("timeout_seconds", None),
                options.pop("max_output_kb", None), options.pop("max_result_kb", None),
                options.pop("functions", None), options.pop("_loop", None), options.pop("stdin", None))
        if options:
            raise TypeError("unexpected arguments: " + ", ".join(sorted(options)))
        adapt(args[4])
        return self._submit(lambda token: self._call(code, input_data, on_output, token, *args))

    async def run_async(self, code: str, input_data: Optional[Any] = None, **options: Any) -> RunnerResult:
        """``await``-able call; cancelling the awaiting task cancels the call. Host functions may
        be ``async def``: they run on this event loop."""
        import asyncio

        return await asyncio.wrap_future(self.submit(code, input_data, _loop=asyncio.get_running_loop(), **options))

    def stream(self, code: str, input_data: Optional[Any] = None, **options: Any) -> OutputStream:
        """``async for stream, data in session.stream(code)``; then ``await it.result()``."""
        return OutputStream(lambda push: self.submit(code, input_data, on_output=push, **options))

    def variables(self) -> Optional[Dict[str, Dict[str, Any]]]:
        """Names in the namespace -> ``{"type", "value"}`` (JSON) or ``{"type", "repr"}`` (a
        description made without running any of the session's code); None once it has ended."""
        return json.loads(self._core.variables())

    @property
    def alive(self) -> bool:
        return self._core.alive()

    @property
    def pid(self) -> int:
        """The session's process id (for monitoring); -1 once it has ended."""
        return self._core.pid()

    def close(self) -> None:
        """End the session and stop its process. Idempotent."""
        self._core.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
