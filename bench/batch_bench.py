#!/usr/bin/env python3
"""`batch` against the per-sample-process model benchmark harnesses use, on one problem set, in one run.

The problem set is generated here: ~200 small function-plus-asserts problems, each with a correct and a
wrong solution (400 samples). `--humaneval PATH` uses a HumanEval-format .jsonl or .jsonl.gz instead
(prompt, canonical_solution, test, entry_point; nothing of it ships here): each problem's canonical
solution and a wrong one (the prompt with a body that returns None).

The per-sample-process model is our own driver of what HumanEval's `check_correctness` does: for every
sample a `multiprocessing.Manager` and a fresh `multiprocessing.Process` that executes the program,
joined with a timeout, two samples at a time. Both verdict sets are compared; the exit status is 1 if
they differ.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

# --- the generated problem set ----------------------------------------------------------------------
# Each family: a function name, its body for a constant k (correct), a body with a typical slip
# (wrong), a reference to compute expected values, and the arguments to test with.

Family = Tuple[str, str, Callable[[int], str], Callable[[int], str], Callable[[int], Callable], List[tuple]]

FAMILIES: List[Family] = [
    ("sum_multiples", "n",
     lambda k: f"    return sum(i for i in range(n) if i % {k} == 0)\n",
     lambda k: f"    return sum(i for i in range(1, n) if i % {k} == 0) + {k}\n",
     lambda k: (lambda n: sum(i for i in range(n) if i % k == 0)), [(0,), (10,), (37,), (100,), (5,)]),
    ("count_char", "s",
     lambda k: f"    return s.count(chr(97 + {k} % 26))\n",
     lambda k: f"    return len(s) - s.count(chr(97 + {k} % 26))\n",
     lambda k: (lambda s: s.count(chr(97 + k % 26))), [("abcabc",), ("",), ("zzz",), ("the quick brown fox",),
                                                      ("mississippi",)]),
    ("shift_list", "xs",
     lambda k: f"    if not xs:\n        return []\n    r = {k} % len(xs)\n    return xs[r:] + xs[:r]\n",
     lambda k: f"    if not xs:\n        return []\n    r = {k} % len(xs)\n    return xs[-r:] + xs[:-r]\n",
     lambda k: (lambda xs: (xs[k % len(xs):] + xs[:k % len(xs)]) if xs else []),
     [([1, 2, 3],), ([],), ([5],), ([1, 2, 3, 4, 5, 6, 7],), (list(range(11)),)]),
    ("nth_power_sum", "n",
     lambda k: f"    return sum(i ** {k % 4 + 1} for i in range(1, n + 1))\n",
     lambda k: f"    return sum(i ** {k % 4 + 1} for i in range(1, n))\n",
     lambda k: (lambda n: sum(i ** (k % 4 + 1) for i in range(1, n + 1))), [(1,), (4,), (10,), (0,), (7,)]),
    ("clamp", "x",
     lambda k: f"    return max(-{k}, min({k}, x))\n",
     lambda k: f"    return max(-{k}, min({k} - 1, x))\n",
     lambda k: (lambda x: max(-k, min(k, x))), [(0,), (100,), (-100,), (3,), (-2,)]),
    ("every_kth", "s",
     lambda k: f"    return s[::{k % 3 + 1}]\n",
     lambda k: f"    return s[1::{k % 3 + 1}]\n",
     lambda k: (lambda s: s[::k % 3 + 1]), [("abcdefgh",), ("",), ("x",), ("hello world",), ("0123456789",)]),
    ("is_multiple_palindrome", "n",
     lambda k: f"    t = str(n * {k})\n    return t == t[::-1]\n",
     lambda k: f"    t = str(n * {k})\n    return t == t[1:][::-1]\n",
     lambda k: (lambda n: str(n * k) == str(n * k)[::-1]), [(1,), (11,), (12,), (121,), (0,)]),
    ("gcd_with", "n",
     lambda k: f"    a, b = n, {k + 12}\n    while b:\n        a, b = b, a % b\n    return a\n",
     lambda k: f"    a, b = n, {k + 12}\n    while b > 1:\n        a, b = b, a % b\n    return a\n",
     lambda k: (lambda n: math.gcd(n, k + 12)), [(12,), (7,), (100,), (1,), (36,)]),
    ("fib_mod", "n",
     lambda k: f"    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, (a + b) % {k + 7}\n    return a\n",
     lambda k: f"    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, (a + b) % {k + 7}\n    return a\n",
     lambda k: (lambda n: _fib_mod(n, k + 7)), [(0,), (1,), (10,), (25,), (3,)]),
    ("count_primes_below", "n",
     lambda k: "    return sum(1 for m in range(2, n) if all(m % d for d in range(2, int(m ** 0.5) + 1)))\n",
     lambda k: "    return sum(1 for m in range(2, n) if all(m % d for d in range(2, int(m ** 0.5))))\n",
     lambda k: (lambda n: sum(1 for m in range(2, n) if all(m % d for d in range(2, int(m ** 0.5) + 1)))),
     [(2,), (10,), (30,), (50,), (3,)]),
    ("word_lengths", "s",
     lambda k: f"    return [len(w) + {k} for w in s.split()]\n",
     lambda k: f"    return [len(w) + {k} for w in s.split(' ')]\n",
     lambda k: (lambda s: [len(w) + k for w in s.split()]), [("a bb ccc",), ("",), ("  two  spaces ",),
                                                          ("one",), ("x y",)]),
    ("max_window", "xs",
     lambda k: f"    w = {k % 3 + 1}\n    if len(xs) < w:\n        return None\n"
               f"    return max(sum(xs[i:i + w]) for i in range(len(xs) - w + 1))\n",
     lambda k: f"    w = {k % 3 + 1}\n    if len(xs) < w:\n        return None\n"
               f"    return max(sum(xs[i:i + w]) for i in range(len(xs) - w))\n",
     lambda k: (lambda xs: None if len(xs) < k % 3 + 1 else
                max(sum(xs[i:i + k % 3 + 1]) for i in range(len(xs) - k % 3))),
     [([1, 2, 3, 4],), ([],), ([5, -1, 5],), ([-3, -2, -1],), ([9],)]),
    ("digit_sum_times", "n",
     lambda k: f"    return sum(int(d) for d in str(abs(n))) * {k}\n",
     lambda k: f"    return sum(int(d) for d in str(n)[1:]) * {k}\n",
     lambda k: (lambda n: sum(int(d) for d in str(abs(n))) * k), [(0,), (123,), (-45,), (9999,), (7,)]),
    ("caesar", "s",
     lambda k: f"    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if c.islower() else c for c in s)\n",
     lambda k: f"    return ''.join(chr((ord(c) - 97 + {k}) % 25 + 97) if c.islower() else c for c in s)\n",
     lambda k: (lambda s: ''.join(chr((ord(c) - 97 + k) % 26 + 97) if c.islower() else c for c in s)),
     [("abc",), ("xyz",), ("Hello, World",), ("",), ("zebra",)]),
    ("dedupe_keep_order", "xs",
     lambda k: "    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n"
               "            seen.add(x)\n            out.append(x)\n    return out\n",
     lambda k: "    return sorted(set(xs))\n",
     lambda k: (lambda xs: list(dict.fromkeys(xs))), [([3, 1, 3, 2, 1],), ([],), ([1],), ([2, 2, 2],),
                                                     ([5, 4, 3, 4, 5],)]),
    ("triangle_kind", "a, b, c",
     lambda k: "    if a + b <= c or a + c <= b or b + c <= a:\n        return 'none'\n"
               "    return 'equilateral' if a == b == c else 'isosceles' if len({a, b, c}) == 2 else 'scalene'\n",
     lambda k: "    if a + b < c or a + c < b or b + c < a:\n        return 'none'\n"
               "    return 'equilateral' if a == b == c else 'isosceles' if len({a, b, c}) == 2 else 'scalene'\n",
     lambda k: (lambda a, b, c: 'none' if a + b <= c or a + c <= b or b + c <= a else
                'equilateral' if a == b == c else 'isosceles' if len({a, b, c}) == 2 else 'scalene'),
     [(3, 4, 5), (2, 2, 2), (1, 2, 3), (2, 2, 3), (1, 1, 5)]),
    ("run_length", "s",
     lambda k: "    out = []\n    for c in s:\n        if out and out[-1][0] == c:\n            out[-1][1] += 1\n"
               "        else:\n            out.append([c, 1])\n    return [(c, n) for c, n in out]\n",
     lambda k: "    return [(c, s.count(c)) for c in dict.fromkeys(s)]\n",
     lambda k: (lambda s: _run_length(s)), [("aaabcc",), ("",), ("abab",), ("z",), ("aabbaa",)]),
    ("collatz_steps", "n",
     lambda k: "    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
               "        steps += 1\n    return steps\n",
     lambda k: "    steps = 0\n    while n > 2:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
               "        steps += 1\n    return steps\n",
     lambda k: (lambda n: _collatz(n)), [(1,), (2,), (6,), (27,), (97,)]),
    ("weighted_mean", "xs",
     lambda k: f"    if not xs:\n        return 0.0\n    w = [i + {k} for i in range(len(xs))]\n"
               "    return round(sum(a * b for a, b in zip(xs, w)) / sum(w), 6)\n",
     lambda k: f"    if not xs:\n        return 0.0\n    w = [i + {k} for i in range(len(xs))]\n"
               "    return round(sum(a * b for a, b in zip(xs, w)) / len(w), 6)\n",
     lambda k: (lambda xs: 0.0 if not xs else round(sum(a * (i + k) for i, a in enumerate(xs)) /
                                                    sum(i + k for i in range(len(xs))), 6)),
     [([1, 2, 3],), ([],), ([5],), ([2, 2, 2, 2],), ([1, -1, 1, -1],)]),
    ("binary_ones", "n",
     lambda k: f"    return bin(n + {k}).count('1')\n",
     lambda k: f"    return bin(n + {k}).count('1') - 1\n",
     lambda k: (lambda n: bin(n + k).count('1')), [(0,), (1,), (255,), (1024,), (77,)]),
]


def _fib_mod(n: int, m: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % m
    return a


def _run_length(s: str) -> list:
    out: list = []
    for c in s:
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return [(c, n) for c, n in out]


def _collatz(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def generated_problems(per_family: int = 10) -> List[Dict[str, str]]:
    """HumanEval-shaped problems: prompt, canonical_solution, wrong_solution, test, entry_point."""
    problems = []
    for name, params, right, wrong, reference, args in FAMILIES:
        for k in range(1, per_family + 1):
            fn = f"{name}_{k}"
            ref = reference(k)
            asserts = "".join(f"    assert candidate({', '.join(map(repr, a))}) == {ref(*a)!r}\n" for a in args)
            problems.append({
                "task_id": f"generated/{fn}",
                "prompt": f"def {fn}({params}):\n    \"\"\"{name.replace('_', ' ')} with k = {k}.\"\"\"\n",
                "canonical_solution": right(k),
                "wrong_solution": wrong(k),
                "test": f"def check(candidate):\n{asserts}",
                "entry_point": fn,
            })
    return problems


def humaneval_problems(path: str) -> List[Dict[str, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                p = json.loads(line)
                p["wrong_solution"] = "    return None\n"
                problems.append(p)
    return problems


def samples_of(problems: List[Dict[str, str]]) -> List[Tuple[str, str, bool]]:
    """(id, program, expected verdict): each problem's correct and wrong solution, as harnesses build them."""
    out = []
    for p in problems:
        for kind, body, good in (("correct", p["canonical_solution"], True), ("wrong", p["wrong_solution"], False)):
            program = p["prompt"] + body + "\n\n" + p["test"] + "\n\n" + f"check({p['entry_point']})\n"
            out.append((f"{p['task_id']}/{kind}", program, good))
    return out


# --- the per-sample-process model ---------------------------------------------------------------------

def _execute(program: str, outcome: list, timeout: float) -> None:
    try:
        exec(compile(program, "<sample>", "exec"), {"__name__": "__sample__"})  # noqa: S102 - the model under test
        outcome.append("passed")
    except BaseException as e:  # noqa: BLE001
        outcome.append(f"failed: {type(e).__name__}")


def _one_sample_process(program: str, timeout: float) -> bool:
    """A Manager for the outcome and a fresh Process per sample, killed after its timeout."""
    with multiprocessing.Manager() as manager:
        outcome = manager.list()
        p = multiprocessing.Process(target=_execute, args=(program, outcome, timeout))
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()
            p.join()
        return len(outcome) > 0 and outcome[0] == "passed"


def per_sample_process(samples, workers: int, timeout: float) -> Dict[str, bool]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {sid: pool.submit(_one_sample_process, program, timeout) for sid, program, _ in samples}
        return {sid: f.result() for sid, f in futures.items()}


# --- safe-py-runner batch -----------------------------------------------------------------------------

def through_batch(cli: str, samples, workers: int, timeout: float, isolation: str, tmp: str) -> Dict[str, bool]:
    cases = os.path.join(tmp, "cases.jsonl")
    out = os.path.join(tmp, "results.jsonl")
    with open(cases, "w", encoding="utf-8") as f:
        for sid, program, _ in samples:
            f.write(json.dumps({"id": sid, "code": program}) + "\n")
    subprocess.run([cli, "batch", cases, "-o", out, "--workers", str(workers), "--timeout", str(timeout),
                    "--isolation", isolation, "--quiet"], check=True)
    with open(out, encoding="utf-8") as f:
        return {r["id"]: r["passed"] for r in map(json.loads, f)}


def through_dask(samples, dask_workers: int, timeout: float, isolation: str, tmp: str) -> Tuple[Dict[str, bool], float]:
    """The same samples on a local Dask cluster (a dask-scheduler and `dask_workers` dask-worker
    processes on 127.0.0.1, one thread and a Runner of one worker each); returns verdicts and seconds
    from the first chunk submitted to the last result (the cluster's start not counted)."""
    import socket

    import distributed

    from safe_py_runner import RunnerPolicy
    from safe_py_runner import dask as spr_dask

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(os.path.join(tmp, "dask.log"), "w")
    procs = [subprocess.Popen(["dask-scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=log, stderr=subprocess.STDOUT)]
    try:
        for i in range(dask_workers):
            procs.append(subprocess.Popen(["dask-worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1",
                                           "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}"],
                                          stdout=log, stderr=subprocess.STDOUT))
        with distributed.Client(f"tcp://127.0.0.1:{port}", timeout=120) as client:
            client.wait_for_workers(dask_workers, timeout=300)
            policy = RunnerPolicy(timeout_seconds=timeout, isolation=isolation)
            options = {"workers": 1, "start_timeout_seconds": 120}
            warm = [{"id": "warm", "code": "pass"}] * 4  # starts each Dask worker's Runner
            list(spr_dask.run_many(warm, client, policy, chunk_size=1, runner_options=options, timeout=600))
            t0 = time.monotonic()
            cases = ({"id": sid, "code": program} for sid, program, _ in samples)
            verdicts = {r.id: r.passed for r in spr_dask.run_many(cases, client, policy, chunk_size=16,
                                                                    runner_options=options, timeout=600)}
            return verdicts, time.monotonic() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a worker busy past its terminate: the figures stand
                p.kill()
                p.wait()
        log.close()


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", default=os.path.join(here, "..", "build", "safe-py-runner"),
                    help="the safe-py-runner program (default: build/safe-py-runner)")
    ap.add_argument("--humaneval", metavar="PATH", help="a HumanEval-format .jsonl or .jsonl.gz")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N problems")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3.0, help="per sample, both models")
    ap.add_argument("--isolation", default="fork", help="batch's isolation mode (default fork)")
    ap.add_argument("--dask-workers", type=int, default=0,
                    help="also run the samples on a local Dask cluster with this many dask-worker processes")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()

    problems = humaneval_problems(args.humaneval) if args.humaneval else generated_problems()
    if args.limit:
        problems = problems[: args.limit]
    samples = samples_of(problems)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        ours = through_batch(os.path.abspath(args.cli), samples, args.workers, args.timeout, args.isolation, tmp)
        t_batch = time.monotonic() - t0
        dask = through_dask(samples, args.dask_workers, args.timeout, args.isolation, tmp) if args.dask_workers else None
    t0 = time.monotonic()
    theirs = per_sample_process(samples, args.workers, args.timeout)
    t_model = time.monotonic() - t0
    load_end = os.getloadavg()[0]

    expected = {sid: good for sid, _, good in samples}
    same = ours == theirs
    n = len(samples)
    figures = {
        "problem_set": args.humaneval or f"generated ({len(problems)} problems)",
        "samples": n,
        "workers": args.workers,
        "isolation": args.isolation,
        "batch_cases_per_s": n / t_batch,
        "per_sample_process_cases_per_s": n / t_model,
        "speedup": t_model / t_batch,
        "verdicts_equal": same,
        "batch_matches_expected": ours == expected,
        "passed": sum(ours.values()),
        "load_average": [load_start, load_end],
    }
    print(f"problem set: {figures['problem_set']}, {n} samples, {args.workers} workers, "
          f"load average {load_start:.1f} at start, {load_end:.1f} at end")
    print(f"  safe-py-runner batch ({args.isolation}):  {n / t_batch:8.1f} cases/s  ({t_batch:.1f} s)")
    print(f"  per-sample process model:          {n / t_model:8.1f} cases/s  ({t_model:.1f} s)")
    print(f"  batch is {t_model / t_batch:.1f}x faster; verdicts {'equal' if same else 'DIFFER'} "
          f"({sum(ours.values())} of {n} passed)")
    if dask:
        figures["dask_workers"] = args.dask_workers
        figures["dask_cases_per_s"] = n / dask[1]
        figures["dask_verdicts_equal"] = dask[0] == ours
        same = same and dask[0] == ours
        print(f"  Dask, {args.dask_workers} dask-workers:            {n / dask[1]:8.1f} cases/s  ({dask[1]:.1f} s), "
              f"verdicts {'equal to batch' if dask[0] == ours else 'DIFFER from batch'}")
    if not same:
        for sid in sorted(expected):
            if ours.get(sid) != theirs.get(sid):
                print(f"    {sid}: batch {ours.get(sid)}, per-sample process {theirs.get(sid)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
