"""run_code (the original's entry point) and Runner (warm workers, futures, asyncio)."""

from __future__ import annotations

import atexit
import json
import os
import threading
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _core
from .host import HostFunctions, adapt, merge
from .policy import RunnerPolicy
from .result import RunnerResult, result_from_tuple
from ._worker_path import packaged_worker as _packaged_worker
from .session import OutputCallback, OutputStream, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    import concurrent.futures

    from ._future import RunFuture

__all__ = ["Runner", "run_code", "WorkerError"]

WorkerError = _core.WorkerError
"""Raised when no worker can be started at all (a missing or broken ``spr-worker``)."""


def _choose_policy(
    policy: Optional[RunnerPolicy],
    policy_file: Optional[Union[str, os.PathLike]],
    python_executable: Optional[str],
    default: RunnerPolicy,
) -> RunnerPolicy:
    if policy is not None and policy_file is not None:
        raise ValueError("Provide either 'policy' or 'policy_file', not both")
    if policy is not None and not isinstance(policy, RunnerPolicy):
        raise TypeError("'policy' must be a RunnerPolicy")
    if policy_file is not None:
        chosen = RunnerPolicy.from_file(os.fspath(policy_file))
    elif policy is not None:
        chosen = policy.resolved()
    else:
        chosen = default
    if python_executable is not None:
        chosen = replace(chosen, python_executable=python_executable)
    return chosen


class Runner:
    """A pool of warm, hardened workers. Safe to share between threads; use as a context manager.

    ``workers`` warm workers are kept per isolation mode in use. ``policy`` (or ``policy_file``)
    is the default for runs that give none. The GIL is released while a run is waiting on the
    engine, so Python threads run snippets in parallel. ``functions`` (name -> callable) are host
    functions every run and session call may call; a run's own ``functions`` add to them.
    ``subinterpreter_threads`` (``subinterpreter`` mode, CPython 3.12+): runs each worker runs at once,
    each on its own thread and GIL; each thread counts as one of ``workers`` (README, "Own-GIL").
    """

    def __init__(
        self,
        policy: Optional[RunnerPolicy] = None,
        *,
        workers: int = 2,
        policy_file: Optional[Union[str, os.PathLike]] = None,
        preload: Optional[List[str]] = None,
        worker_path: Optional[Union[str, os.PathLike]] = None,
        kill_grace_seconds: float = 0.25,
        start_timeout_seconds: float = 10,
        worker_stderr: bool = False,
        max_sessions: int = 8,
        session_idle_seconds: float = 600,
        functions: Optional[HostFunctions] = None,
        subinterpreter_threads: int = 1,
    ) -> None:
        if (isinstance(subinterpreter_threads, bool) or not isinstance(subinterpreter_threads, int)
                or not 1 <= subinterpreter_threads <= 16):
            raise ValueError("'subinterpreter_threads' must be an integer between 1 and 16")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise ValueError("'workers' must be an integer between 1 and 256")
        self._policy = _choose_policy(policy, policy_file, None, RunnerPolicy())
        self._policy.validate()
        self._workers = workers
        adapt(functions)  # checked now: a bad name or a non-callable fails here, not in a run
        self._functions = dict(functions) if functions else None
        self._preload = list(preload) if preload is not None else None
        if self._preload is not None and not all(isinstance(m, str) for m in self._preload):
            raise ValueError("'preload' must be a list of module names")
        path = os.fspath(worker_path) if worker_path is not None else _packaged_worker()
        self._core = _core.Runner(workers, self._policy.to_json(), path, float(kill_grace_seconds),
                                  float(start_timeout_seconds), bool(worker_stderr),
                                  self._preload or [], int(max_sessions), float(session_idle_seconds),
                                  subinterpreter_threads)
        self._lock = threading.Lock()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._closed = False

    @property
    def policy(self) -> RunnerPolicy:
        """The default policy of this runner's runs."""
        return self._policy

    def run(
        self,
        code: str,
        input_data: Optional[Any] = None,
        policy: Optional[RunnerPolicy] = None,
        policy_file: Optional[Union[str, os.PathLike]] = None,
        python_executable: Optional[str] = None,
        *,
        on_output: Optional[OutputCallback] = None,
        stdin: Optional[str] = None,
        functions: Optional[HostFunctions] = None,
        files: Optional[Dict[str, Union[str, bytes]]] = None,
        collect: Optional[Sequence[str]] = None,
    ) -> RunnerResult:
        """Run ``code`` and wait for its result (same arguments as ``run_code``). ``on_output``
        receives ``(stream, data)`` chunks while the code runs; ``stdin`` is what ``sys.stdin`` and
        ``input()`` read (at most ``max_stdin_kb``); ``functions`` adds host functions; ``files``
        and ``collect`` as in ``run_code``."""
        if self._closed:
            raise RuntimeError("the Runner is closed")
        return result_from_tuple(self._run_tuple(code, input_data, policy, policy_file, python_executable,
                                                 on_output, None, stdin, functions, None, files, collect))

    def _run_tuple(self, code, input_data, policy, policy_file, python_executable, on_output, token,
                   stdin=None, functions=None, loop=None, files=None, collect=None) -> tuple:
        if not isinstance(code, str):
            raise TypeError("'code' must be a str")
        if stdin is not None and not isinstance(stdin, str):
            raise TypeError("'stdin' must be a str")
        if isinstance(collect, str):
            raise TypeError("'collect' must be a list of glob patterns, not one str")
        patterns = list(collect or [])
        chosen = _choose_policy(policy, policy_file, python_executable, self._policy)
        # Without the default separators' spaces: the same values in fewer bytes to check, copy and decode.
        payload = json.dumps(input_data or {}, separators=(",", ":"))
        # Lone surrogates pass through as the bytes they stand for: the engine then refuses the
        # code with a SyntaxError, as CPython refuses a source file that is not valid UTF-8.
        source = code.encode("utf-8", "surrogatepass")
        host = adapt(merge(self._functions, functions), loop)
        try:
            return self._core.run(source, payload, chosen.to_json(), on_output, token, stdin or "", host,
                                  files, patterns)
        except RuntimeError:
            if not self._closed:
                raise
            # close() came between this run's start and the engine: answered as a run in flight is.
            return (False, "null", "", "", False, False, "the runner is shutting down", 1, "worker_unavailable",
                    0.0, chosen.isolation, False, False, None, {}, [], 0.0)

    def _start(self, call) -> RunFuture:
        import concurrent.futures  # here: a program that only calls run_code does not pay for it

        from ._future import RunFuture, run_into

        future = RunFuture()
        with self._lock:
            if self._closed:
                raise RuntimeError("the Runner is closed")
            if self._executor is None:
                # Threads up to what the runner's pools can run at once (as the C++ Runner's executor): a run
                # waits for its worker in its pool's queue, not here behind runs of other pools (policies that
                # differ in mode, memory class, scratch size, read paths, domain).
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._core.runs_at_once(), thread_name_prefix="safe-py-runner")
            work = self._executor.submit(run_into, future, call)
        # close() drops queued work: its future is then cancelled too, never left pending.
        work.add_done_callback(lambda w: future.cancel() if w.cancelled() else None)
        return future

    def submit(
        self,
        code: str,
        input_data: Optional[Any] = None,
        policy: Optional[RunnerPolicy] = None,
        policy_file: Optional[Union[str, os.PathLike]] = None,
        python_executable: Optional[str] = None,
        *,
        on_output: Optional[OutputCallback] = None,
        stdin: Optional[str] = None,
        functions: Optional[HostFunctions] = None,
        files: Optional[Dict[str, Union[str, bytes]]] = None,
        collect: Optional[Sequence[str]] = None,
        _loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> RunFuture:
        """Start a run and return a ``concurrent.futures.Future`` of its ``RunnerResult``; its
        ``cancel()`` really stops the run (queued: never starts; running: its process is killed)."""
        adapt(functions)
        return self._start(lambda token: self._run_tuple(code, input_data, policy, policy_file,
                                                         python_executable, on_output, token, stdin, functions,
                                                         _loop, files, collect))

    async def run_async(
        self,
        code: str,
        input_data: Optional[Any] = None,
        policy: Optional[RunnerPolicy] = None,
        policy_file: Optional[Union[str, os.PathLike]] = None,
        python_executable: Optional[str] = None,
        *,
        stdin: Optional[str] = None,
        functions: Optional[HostFunctions] = None,
    ) -> RunnerResult:
        """``await``-able run for asyncio programs; the event loop keeps running meanwhile.
        Cancelling the awaiting task cancels the run. Host functions may be ``async def``: they
        run on this event loop."""
        import asyncio  # here, not at the top: a program that never awaits does not pay for importing it

        return await asyncio.wrap_future(
            self.submit(code, input_data, policy, policy_file, python_executable, stdin=stdin, functions=functions,
                        _loop=asyncio.get_running_loop()))

    def stream(
        self,
        code: str,
        input_data: Optional[Any] = None,
        policy: Optional[RunnerPolicy] = None,
        *,
        stdin: Optional[str] = None,
    ) -> OutputStream:
        """``async for stream, data in runner.stream(code)``: output as it comes; then
        ``await it.result()`` for the ``RunnerResult``. Call it from a running event loop."""
        return OutputStream(lambda push: self.submit(code, input_data, policy, on_output=push, stdin=stdin))

    def open_session(self, policy: Optional[RunnerPolicy] = None) -> Session:
        """A ``Session`` whose calls share one namespace, in a process of its own. Raises
        ``SessionLimitError`` past the runner's ``max_sessions``."""
        if policy is not None and not isinstance(policy, RunnerPolicy):
            raise TypeError("'policy' must be a RunnerPolicy")
        chosen = policy.resolved() if policy is not None else self._policy
        return Session(self._core.open_session(chosen.to_json()), self._start, self._functions)

    def hardening(self, isolation: str = "fork") -> list:
        """Which sandbox layers a worker of this isolation mode has: [{name, active, detail}]."""
        return json.loads(self._core.hardening(isolation))

    def python_version(self) -> str:
        """The Python version the workers embed."""
        return self._core.python_version()

    def close(self) -> None:
        """Stop the workers. Runs still in flight are answered ``worker_unavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._core.shutdown()
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_default_lock = threading.Lock()
_default: Optional[Runner] = None
_default_options: Dict[str, Any] = {}  # configure()'s keyword arguments for the next default Runner
_orphans: List[Runner] = []  # a forked child must never stop its parent's workers


def _default_runner() -> Runner:
    global _default
    runner = _default
    if runner is None:
        with _default_lock:
            if _default is None:
                _default = Runner(**_default_options)
            runner = _default
    return runner


def configure(*, preload: Optional[List[str]] = None, workers: Optional[int] = None) -> None:
    """Set up the process-wide ``Runner`` that ``run_code`` uses.

    ``preload`` lists modules every worker imports before it takes runs (``["numpy", "pandas"]``):
    a run that imports one finds it already loaded instead of paying its import. A run's own
    imports still follow its policy. ``workers`` is the number of warm workers per isolation mode.
    Checked now: a bad value raises ``ValueError`` and changes nothing. Call it before the first
    ``run_code``: workers already started are stopped (a run still in flight through them is answered
    ``worker_unavailable``) and the next ``run_code`` starts new ones with these options.
    """
    global _default
    options: Dict[str, Any] = {}
    if preload is not None:
        if isinstance(preload, str) or not all(isinstance(m, str) and m for m in preload):
            raise ValueError("'preload' must be a list of module names")
        options["preload"] = list(preload)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise ValueError("'workers' must be an integer between 1 and 256")
        options["workers"] = workers
    with _default_lock:
        _default_options.clear()
        _default_options.update(options)
        runner, _default = _default, None
        if options:
            _core.drop_prestart()  # started at import for the defaults (__init__.py): not what runs will use
    if runner is not None:
        runner.close()


def _close_default() -> None:
    global _default
    with _default_lock:
        runner, _default = _default, None
        _core.drop_prestart()  # a program that imported the package and ran nothing
    if runner is not None:
        runner.close()


def _forget_default_in_child() -> None:
    global _default
    if _default is not None:
        _orphans.append(_default)
    _default = None


atexit.register(_close_default)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_default_in_child)


def run_code(
    code: str,
    input_data: Optional[Any] = None,
    policy: Optional[RunnerPolicy] = None,
    policy_file: Optional[Union[str, os.PathLike]] = None,
    python_executable: Optional[str] = None,
    *,
    stdin: Optional[str] = None,
    functions: Optional[HostFunctions] = None,
    files: Optional[Dict[str, Union[str, bytes]]] = None,
    collect: Optional[Sequence[str]] = None,
) -> RunnerResult:
    """Run ``code`` under ``policy`` (or the policy in ``policy_file``) and return its result.

    The code sees ``input_data`` and its keys as variables; the value of ``result`` comes back
    as JSON. Giving both ``policy`` and ``policy_file`` is a ``ValueError``. ``python_executable``
    runs the code with that interpreter's packages (a venv). Uses a process-wide ``Runner``
    started on first use. ``functions`` (name -> callable) are host functions the code may call:
    ``functions={"get_price": get_price}`` lets it call ``get_price("ACME")``. ``stdin`` is the text
    ``sys.stdin`` and ``input()`` read (at most ``max_stdin_kb``; without it they see end of file).

    ``files`` (name -> ``str`` or ``bytes``) are written into the run's private directory, its
    working directory, before the code starts; ``collect`` (glob patterns such as ``"*.png"``)
    names the files to bring back in ``RunnerResult.files`` (``bytes`` for binary files, at most
    ``max_files_kb`` in all; the ones left out are listed in ``files_left_out``).
    """
    return _default_runner().run(code, input_data, policy, policy_file, python_executable, stdin=stdin, functions=functions,
                                 files=files, collect=collect)
