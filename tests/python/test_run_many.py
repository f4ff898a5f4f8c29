"""safe_py_runner.run_many: input order, the passed rule, bad cases, policies that may only tighten, laziness."""

import itertools
import random

from safe_py_runner import CaseResult, RunnerPolicy, run_many

NS = RunnerPolicy(isolation="namespace")


def test_results_in_input_order_with_random_durations():
    rng = random.Random(7)
    cases = [{"id": i, "code": f"import time\ntime.sleep({rng.randint(0, 50) / 1000})\nresult = {i} * 3"}
             for i in range(60)]
    results = list(run_many(cases, NS, workers=3))
    assert [r.id for r in results] == list(range(60))
    assert all(isinstance(r, CaseResult) and r.passed and r.result == 3 * r.id for r in results)


def test_passed_rule_and_stdin():
    cases = [
        {"id": "ws", "code": "print('a  ')\nprint()\n", "expect_stdout": "a"},
        {"id": "stdin", "code": "print(input()[::-1])", "stdin": "abc\n", "expect_stdout": "cba\n\n"},
        {"id": "wrong", "code": "print('b')", "expect_stdout": "a"},
        {"id": "raises", "code": "print('a')\nraise SystemExit(3)", "expect_stdout": "a"},
        {"id": "plain", "code": "result = 1"},
    ]
    got = {r.id: r for r in run_many(cases, NS)}
    assert got["ws"].passed and got["stdin"].passed and got["plain"].passed
    assert not got["wrong"].passed and got["wrong"].ok
    assert not got["raises"].passed and got["raises"].exit_code == 3


def test_bad_cases_are_results_not_exceptions():
    cases = [{"id": 1, "code": 5}, "not a dict", {"id": 3, "code": "result = 3", "stdin": 1},
             {"id": 4, "code": "result = 4", "policy": {"timeout_seconds": 60}},
             {"id": 5, "code": "result = 5", "policy": {"timeout_seconds": 1}},
             {"id": 6, "code": "result = 6", "policy": {"isolation": "fork"}}]
    got = list(run_many(cases, RunnerPolicy(isolation="namespace", timeout_seconds=2)))
    assert [r.error_kind for r in got] == ["bad_input", "bad_input", "bad_input", "bad_input", "none", "none"]
    assert "timeout_seconds" in got[3].error  # looser than the batch's policy
    assert got[4].result == 5 and got[5].result == 6 and got[5].isolation == "fork"  # tighter: allowed


def test_a_generator_of_a_million_cases_is_read_lazily():
    pulled = itertools.count()

    def cases():
        for i in range(1_000_000):
            next(pulled)
            yield {"id": i, "code": "result = 1"}

    it = run_many(cases(), NS, workers=2)
    first = list(itertools.islice(it, 10))
    it.close()
    assert [r.id for r in first] == list(range(10))
    assert next(pulled) <= 10 + 64 + 1  # the ten taken, the window ahead, no more


def test_progress_prints_a_plain_line(capsys):
    list(run_many([{"id": 1, "code": "result = 1"}], NS, progress=True))
    err = capsys.readouterr().err
    assert "run_many: 1/1 done, 1 passed, 0 failed" in err

