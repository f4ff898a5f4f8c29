"""Large input_data: this package's run_code next to the original's, at 1, 26 and 100 MB of JSON.

Usage: python3 bench/large_input.py [--sizes 1,26,100] [--settle 5] [--original ORIG/src]
Run it with a Python that imports this package (PYTHONPATH=build/python). The input is generated
here (a list of small objects, the shape of a table of records); each package runs in a process of its
own per size, one warm-up run first, then the timed call. Printed per size and package: the call's
wall time, the caller's peak RSS (the supervisor, or the original's parent) and the run's peak RSS
(ru_maxrss of the process that ran the code, which it reports as its result). Linux carries a peak
across fork and exec: a fork run's figure includes the worker it was forked from (which held the
request), and the original's child reports its parent's peak, so its column says nothing of the child.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CODE = "result = [len(input_data['items']), input_data['items'][-1]['id']]"
# A second run with the same input reports its process's peak RSS (importing resource is left out of the
# timed run: a cold import of it costs a fork run more than the original's fresh process).
PEAK = "import resource\nresult = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"


def make_input(megabytes):
    """Records of a few small fields, until their JSON text reaches `megabytes` MiB."""
    items, size, i = [], 0, 0
    target = megabytes << 20
    while size < target:
        item = {"id": i, "name": f"item-{i}", "price": round(i * 0.37, 2), "tags": ["a", "b"], "ok": i % 3 == 0}
        items.append(item)
        size += len(json.dumps(item)) + 2
        i += 1
    return {"items": items}


def child(which, megabytes, venv, settle):
    from safe_py_runner import RunnerPolicy, run_code

    policy = RunnerPolicy(timeout_seconds=300, memory_limit_mb=8192)
    import safe_py_runner

    if which == "original" and hasattr(safe_py_runner, "LocalEngine"):
        # The original's later versions take an engine: a LocalEngine on a venv made beforehand.
        engine = safe_py_runner.LocalEngine(venv_dir=venv, venv_manager="python")
        call = lambda code, data: run_code(code, engine, data, policy)  # noqa: E731
    else:  # this package, or the original v0.1.6 (its run_code starts sys.executable per run)
        call = lambda code, data: run_code(code, data, policy)  # noqa: E731
    data = make_input(megabytes)
    text_mb = len(json.dumps(data)) / (1 << 20)
    warm = call("result = 1", {"items": []})
    assert warm.ok, warm
    # After its first run this package brings the rest of its pool up in the background: the timed call
    # waits for that, so that it measures the input's way and not a worker start competing for the CPUs.
    time.sleep(settle)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    r = call(CODE, data)
    wall = time.perf_counter() - start
    if not r.ok or r.result[0] != len(data["items"]) or r.result[1] != data["items"][-1]["id"]:
        raise SystemExit(f"{which}: unexpected result: ok={r.ok} error={r.error!r} result={str(r.result)[:200]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_peak = call(PEAK, data)
    print(f"{which:8} {text_mb:6.1f} MB  call {wall:7.3f} s   caller peak {peak / 1024:6.0f} MB"
          f" (before the call {before / 1024:6.0f} MB)   run's peak {run_peak.result / 1024:6.0f} MB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,26,100", help="MiB of JSON text, comma-separated")
    ap.add_argument("--original", help="the original package's src/ folder")
    ap.add_argument("--settle", type=float, default=5, help="seconds to wait after the warm-up run (both packages)")
    ap.add_argument("--child", choices=["ours", "original"], help=argparse.SUPPRESS)
    ap.add_argument("--mb", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--venv", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.mb, args.venv, args.settle)
        return
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}", flush=True)
    me = [sys.executable, os.path.abspath(__file__)]
    with tempfile.TemporaryDirectory() as tmp:
        venv = os.path.join(tmp, "venv")  # the original runs each snippet with a venv's python
        if args.original:
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        for mb in (int(s) for s in args.sizes.split(",")):
            if args.original:
                env = dict(os.environ, PYTHONPATH=args.original)
                subprocess.run(me + ["--child", "original", "--mb", str(mb), "--venv", venv,
                                     "--settle", str(args.settle)], env=env, check=True)
            subprocess.run(me + ["--child", "ours", "--mb", str(mb), "--settle", str(args.settle)], check=True)
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}", flush=True)


if __name__ == "__main__":
    main()
