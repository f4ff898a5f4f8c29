"""Scale-out on Dask: each Dask worker process owns one Runner; cases go out in chunks, come back in order."""

from __future__ import annotations

import collections
import itertools
import uuid
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

from distributed import Client, WorkerPlugin, get_worker

from .batch import CaseResult, result_from_dict, result_to_dict, run_cases
from .policy import RunnerPolicy
from .runner import Runner

__all__ = ["RunnerPlugin", "run_many"]

PLUGIN_NAME = "safe-py-runner"


class RunnerPlugin(WorkerPlugin):
    """Gives each Dask worker process one ``Runner`` for its lifetime: started when the plugin is set
    up on the worker, closed when the worker stops. ``runner_options``: ``Runner`` keyword arguments
    (``workers``, ``start_timeout_seconds``, ``preload``, ...)."""

    def __init__(self, runner_options: Optional[Dict[str, Any]] = None) -> None:
        self.runner_options = dict(runner_options or {})
        self.workers = int(self.runner_options.get("workers", 2))
        self.runner: Optional[Runner] = None

    def setup(self, worker: Any) -> None:
        self.runner = Runner(**self.runner_options)

    def teardown(self, worker: Any) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def _run_chunk(cases: List[Mapping[str, Any]], policy: RunnerPolicy) -> List[dict]:
    """Runs on a Dask worker: the chunk's cases on that worker's Runner, as plain dicts in order."""
    plugin = get_worker().plugins[PLUGIN_NAME]
    runner = plugin.runner
    window = max(64, 32 * plugin.workers)
    return [result_to_dict(r) for r in run_cases(runner, cases, policy, window)]


def _chunks(cases: Iterable[Mapping[str, Any]], size: int) -> Iterator[List[Mapping[str, Any]]]:
    it = iter(cases)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def run_many(
    cases: Iterable[Mapping[str, Any]],
    client: Client,
    policy: Optional[RunnerPolicy] = None,
    chunk_size: int = 64,
    *,
    runner_options: Optional[Dict[str, Any]] = None,
    timeout: Optional[float] = None,
) -> Iterator[CaseResult]:
    """Run the cases on the Dask cluster behind ``client`` and yield a ``CaseResult`` per case in
    input order (the same cases, rules and results as ``safe_py_runner.run_many``).

    Cases go out in chunks of ``chunk_size``, at most two chunks per Dask thread ahead of the
    oldest one not yet yielded. A Dask worker that dies has its chunks run again on another (Dask's
    own rescheduling), so the results equal a single machine's. ``runner_options``: keyword arguments
    of each Dask worker's ``Runner`` (default: 2 warm workers). ``timeout``: longest wait for one chunk, in seconds (``None``: no limit).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError("'chunk_size' must be a positive integer")
    base = policy.resolved() if policy is not None else RunnerPolicy()
    base.validate()
    client.register_worker_plugin(RunnerPlugin(runner_options), name=PLUGIN_NAME)
    threads = sum(client.nthreads().values()) or 1
    ahead = max(2, 2 * threads)
    batch = uuid.uuid4().hex
    pending: collections.deque = collections.deque()
    try:
        for i, chunk in enumerate(_chunks(cases, chunk_size)):
            if len(pending) >= ahead:
                yield from (result_from_dict(d) for d in pending.popleft().result(timeout=timeout))
            pending.append(client.submit(_run_chunk, chunk, base, key=f"safe-py-runner-{batch}-{i}", pure=False))
        while pending:
            yield from (result_from_dict(d) for d in pending.popleft().result(timeout=timeout))
    finally:
        for f in pending:
            f.cancel()
