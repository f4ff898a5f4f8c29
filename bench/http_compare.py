#!/usr/bin/env python3
"""Requests/s and p50/p99 latency of one snippet through `safe-py-runner http` (wrk, 64 connections),
`safe-py-runner serve` (64 requests outstanding on stdin) and the C++ API (spr-closed-loop, 64 threads),
one after the other on this machine. Usage: http_compare.py BUILD_DIR [--seconds 30] [--clients 64]."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "http"))

CODE = "n = input_data['n']\nprint('normal', n)\nresult = n * 2"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] if values else 0.0


def measure_http(build, seconds, clients, workers):
    os.environ["SPR_CLI"] = os.path.join(build, "safe-py-runner")
    import load_test
    from spr_http import Server
    server = Server("--workers", str(workers), "--max-concurrent", str(clients * 2), "--read-timeout", "30")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            load_test.phase(server, "warm-up", 2, clients, 0, 0, tmp)
            load_test.idle(server)
            r = load_test.phase(server, "http", seconds, clients, 0, 0, tmp)
    finally:
        server.stop()
    return {"requests": r["requests"], "requests_per_second": r["requests_per_second"], "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"], "wrong": r["wrong"] + r["server_errors"] + r["other_status"]}


def measure_serve(build, seconds, clients, workers):
    p = subprocess.Popen([os.path.join(build, "safe-py-runner"), "serve", "--workers", str(workers)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         bufsize=1)
    slots = threading.Semaphore(clients)
    sent = {}
    latencies = []
    wrong = [0]
    lock = threading.Lock()

    def reader():
        for line in p.stdout:
            r = json.loads(line)
            now = time.monotonic()
            with lock:
                t0 = sent.pop(r["id"])
            if r["id"] >= 0:
                latencies.append((now - t0) * 1000)
                if not r["ok"] or r["result"] != 2 * r["id"]:
                    wrong[0] += 1
            slots.release()

    t = threading.Thread(target=reader, daemon=True)
    t.start()

    def send(i):
        slots.acquire()
        with lock:
            sent[i] = time.monotonic()
        p.stdin.write(json.dumps({"id": i, "code": CODE, "input_data": {"n": i}}) + "\n")
        p.stdin.flush()

    for i in range(-20, 0):  # warm-up, not counted
        send(i)
    while True:
        with lock:
            if not sent:
                break
        time.sleep(0.01)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        send(i)
        i += 1
    p.stdin.close()
    t.join()
    elapsed = time.monotonic() - start
    p.wait()
    return {"requests": len(latencies), "requests_per_second": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.5), 3), "p99_ms": round(percentile(latencies, 0.99), 3),
            "wrong": wrong[0]}


def measure_api(build, seconds, clients, workers):
    out = subprocess.run([os.path.join(build, "spr-closed-loop"), str(clients), str(seconds), str(workers), CODE],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    report = {"snippet": CODE, "clients": args.clients, "seconds": args.seconds, "workers": args.workers,
              "isolation": "fork"}
    for name, fn in [("http", measure_http), ("serve", measure_serve), ("cpp_api", measure_api)]:
        report["load_average_before_" + name] = [round(x, 2) for x in os.getloadavg()]
        report[name] = fn(build, args.seconds, args.clients, args.workers)
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
