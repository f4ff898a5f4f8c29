"""RunnerResult: how a run ended, with the original package's attributes first."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

__all__ = ["RunnerResult"]


@dataclass(slots=True)
class RunnerResult:
    """The outcome of one run. Everything the code does is data here; nothing is raised.

    ``exit_code`` is 0 on success, 1 for an error, 2 for the memory limit, 124 for a timeout and
    ``n`` for ``SystemExit(n)``. ``error_kind`` is a stable code to match on (``"none"``,
    ``"exception"``, ``"syntax"``, ``"timeout"``, ``"memory"``, ``"cpu_time"``,
    ``"blocked_import"``, ``"denied"``, ``"system_exit"``, ``"result_too_large"``,
    ``"worker_crashed"``, ``"worker_unavailable"``, ``"protocol_error"``, ``"bad_input"``,
    ``"cancelled"``, ``"session_lost"``).
    """

    ok: bool
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    resource_exceeded: bool = False
    error: Optional[str] = None
    exit_code: int = 0
    error_kind: str = "none"
    duration_ms: float = 0.0
    """The run's own time, from when a worker took it to its result."""
    isolation: str = "fork"
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    repr: Optional[str] = None
    """Session calls with ``repr=True``: the repr of a trailing expression (capped)."""
    queued_ms: float = 0.0
    """Time the run waited for a worker (or behind earlier runs or session calls) before it started."""
    files: Dict[str, Union[str, bytes]] = field(default_factory=dict)
    """Files the run left in its directory that match ``collect``: ``str`` when the file is valid
    UTF-8, else ``bytes`` (a PNG). At most ``max_files_kb`` in all."""
    files_left_out: List[str] = field(default_factory=list)
    """Files ``collect`` matched that did not fit in ``max_files_kb``: never dropped silently."""
    files_truncated: bool = False
    """Some files ``collect`` matched are in neither ``files`` nor ``files_left_out`` (more than 256 of
    either, a name that is not UTF-8, a directory that could not be read, over 65,536 entries)."""


def result_from_tuple(t: tuple) -> RunnerResult:
    """The engine's result tuple (``_core``'s run and session calls) as a ``RunnerResult``."""
    (ok, result_json, stdout, stderr, timed_out, resource_exceeded, error, exit_code, error_kind,
     duration_ms, isolation, stdout_truncated, stderr_truncated, repr_text, files, files_left_out,
     queued_ms, files_truncated) = t
    return RunnerResult(ok=ok, result=json.loads(result_json), stdout=stdout, stderr=stderr,
                        timed_out=timed_out, resource_exceeded=resource_exceeded, error=error,
                        exit_code=exit_code, error_kind=error_kind, duration_ms=duration_ms,
                        isolation=isolation, stdout_truncated=stdout_truncated,
                        stderr_truncated=stderr_truncated, repr=repr_text, files=files,
                        files_left_out=files_left_out, queued_ms=queued_ms,
                        files_truncated=files_truncated)
