"""run_many: evaluate many cases on warm workers, results in input order (what a benchmark harness needs)."""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional

from . import _core
from .policy import RunnerPolicy
from .result import RunnerResult
from .runner import Runner

__all__ = ["CaseResult", "run_many"]


@dataclass(slots=True)
class CaseResult(RunnerResult):
    """A ``RunnerResult`` of one case, with its ``id`` and verdict.

    ``passed`` is ``ok`` and, when the case gave ``expect_stdout``, stdout equal to it once
    trailing whitespace is removed from each line and trailing blank lines are dropped.
    """

    id: Any = None
    passed: bool = False


def _bad_case(case_id: Any, why: str, isolation: str) -> CaseResult:
    return CaseResult(ok=False, error=why, exit_code=1, error_kind="bad_input", isolation=isolation,
                      id=case_id, passed=False)


def _case_policy(case: Mapping[str, Any], base: RunnerPolicy) -> RunnerPolicy:
    """The case's "policy" (a RunnerPolicy or a dict of fields) over ``base``; it may only tighten it."""
    given = case.get("policy")
    if given is None:
        return base
    if isinstance(given, RunnerPolicy):
        chosen = given.resolved()
    elif isinstance(given, Mapping):
        chosen = dataclasses.replace(base, **dict(given))
    else:
        raise ValueError("'policy' must be a RunnerPolicy or a dict of policy fields")
    chosen.validate()
    why = _core.policy_loosens(chosen.to_json(), base.to_json())
    if why:
        raise ValueError(f"policy loosens the batch's: {why}")
    return chosen


class _Progress:
    """A plain stderr line every 5 s (no dependency, nothing drawn in place)."""

    def __init__(self, total: Optional[int]) -> None:
        self.total, self.start, self.next = total, time.monotonic(), time.monotonic() + 5
        self.done = self.passed = self.timeouts = 0

    def count(self, r: CaseResult) -> None:
        self.done += 1
        self.passed += r.passed
        self.timeouts += r.timed_out
        now = time.monotonic()
        if now >= self.next:
            self.next = now + 5
            self.print(now)

    def print(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        print(f"run_many: {self.done}{of} done, {self.passed} passed, {self.done - self.passed} failed, "
              f"{self.timeouts} timeouts, {rate:.1f} cases/s", file=sys.stderr, flush=True)


def run_cases(runner: Runner, cases: Iterable[Mapping[str, Any]], policy: RunnerPolicy,
              window: int) -> Iterator[CaseResult]:
    """The cases on ``runner``, at most ``window`` started past the oldest not yet yielded."""
    pending: collections.deque = collections.deque()
    iso = policy.isolation

    def start(case: Any) -> tuple:
        if not isinstance(case, Mapping):
            return (None, None, _bad_case(None, "a case must be a dict", iso))
        case_id = case.get("id")
        code, stdin, expect = case.get("code"), case.get("stdin"), case.get("expect_stdout")
        if not isinstance(code, str):
            return (case_id, None, _bad_case(case_id, "'code' must be a str", iso))
        if stdin is not None and not isinstance(stdin, str):
            return (case_id, None, _bad_case(case_id, "'stdin' must be a str", iso))
        if expect is not None and not isinstance(expect, str):
            return (case_id, None, _bad_case(case_id, "'expect_stdout' must be a str", iso))
        try:
            chosen = _case_policy(case, policy)
            future = runner.submit(code, case.get("input_data"), chosen, stdin=stdin)
        except (ValueError, TypeError) as e:
            return (case_id, None, _bad_case(case_id, f"invalid policy: {e}", iso))
        return (case_id, expect, future)

    def finish(item: tuple) -> CaseResult:
        case_id, expect, pending_result = item
        if isinstance(pending_result, CaseResult):
            return pending_result
        r: RunnerResult = pending_result.result()
        passed = r.ok and (expect is None or _core.stdout_matches(r.stdout, expect))
        fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(RunnerResult)}
        return CaseResult(**fields, id=case_id, passed=passed)

    try:
        for case in cases:
            if len(pending) >= window:
                yield finish(pending.popleft())
            pending.append(start(case))
        while pending:
            yield finish(pending.popleft())
    finally:
        for item in pending:  # the consumer stopped early: stop what is still queued or running
            if not isinstance(item[2], CaseResult):
                item[2].cancel()


def run_many(
    cases: Iterable[Mapping[str, Any]],
    policy: Optional[RunnerPolicy] = None,
    *,
    workers: Optional[int] = None,
    progress: bool = False,
) -> Iterator[CaseResult]:
    """Run every case and yield a ``CaseResult`` per case, in input order (a generator: ``cases``
    is read as results are taken, so memory stays flat however many there are).

    A case is a dict: ``{"id": any, "code": str, "input_data"?: any, "stdin"?: str,
    "policy"?: RunnerPolicy or dict of fields, "expect_stdout"?: str}``; its policy may only
    tighten ``policy`` (the batch's). A case that cannot run (no ``code``, a loosening policy) is
    a result with ``error_kind`` ``"bad_input"``. ``workers``: warm workers (default 2).
    ``progress``: a line on stderr every 5 s.
    """
    base = policy.resolved() if policy is not None else RunnerPolicy()
    base.validate()
    n = 2 if workers is None else workers
    total = len(cases) if hasattr(cases, "__len__") else None  # type: ignore[arg-type]
    meter = _Progress(total) if progress else None
    with Runner(base, workers=n) as runner:
        for r in run_cases(runner, cases, base, max(64, 32 * n)):
            if meter:
                meter.count(r)
            yield r
    if meter:
        meter.print(time.monotonic())


def result_to_dict(r: CaseResult) -> Dict[str, Any]:
    """A CaseResult as plain data (what crosses a process boundary, e.g. to a Dask client)."""
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(CaseResult)}


def result_from_dict(d: Mapping[str, Any]) -> CaseResult:
    return CaseResult(**d)


def results_json_lines(results: Iterable[CaseResult]) -> Iterator[str]:
    """One JSON line per result, in the CLI's output form."""
    for r in results:
        d = result_to_dict(r)
        if d.get("repr") is None:
            d.pop("repr", None)
        yield json.dumps(d)

