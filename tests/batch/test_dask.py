"""safe_py_runner.dask on a real local cluster: a dask-scheduler and two dask-worker processes on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import time

import distributed  # Debian's python3-distributed (scripts/install-deps.sh)
import pytest

from safe_py_runner import RunnerPolicy, run_many
from safe_py_runner import dask as spr_dask

SCALE = float(os.environ.get("SPR_TEST_TIME_SCALE", "1"))
POLICY = RunnerPolicy(isolation="namespace", timeout_seconds=2)
# Dask workers import a lot while they start: give the Runner's workers time to start beside them.
RUNNER = {"workers": 2, "start_timeout_seconds": 60 * SCALE}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dask process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {limit} s")


@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    procs = {}
    logs = []

    def start(name, args):
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    start("scheduler", ["dask-scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
    try:
        wait_listening(port, procs["scheduler"], 60 * SCALE)
        for name in ("w1", "w2"):
            start(name, ["dask-worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1", "--nthreads", "1",
                         "--no-nanny", "--no-dashboard", "--name", name])
        client = distributed.Client(f"tcp://127.0.0.1:{port}", timeout=60 * SCALE)
        client.wait_for_workers(2, timeout=120 * SCALE)
        yield client, procs
        client.close(timeout=30)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
        for log in logs:
            log.close()


def cases(n):
    """A known verdict per case: multiples of 3 fail; each sleeps a little so chunks overlap."""
    return [{"id": i, "code": f"import time\ntime.sleep(0.01)\nresult = {i} * {i}\nassert {i} % 3", "input_data": {}}
            for i in range(n)]


def verdicts(results):
    return [(r.id, r.passed, r.result, r.error_kind) for r in results]


def test_results_equal_a_single_machine_batch(cluster):
    client, _ = cluster
    work = cases(300)
    remote = list(spr_dask.run_many(work, client, POLICY, chunk_size=16, runner_options=RUNNER, timeout=300 * SCALE))
    local = list(run_many(work, POLICY))
    assert verdicts(remote) == verdicts(local)
    assert [r.id for r in remote] == list(range(300))
    assert len(client.scheduler_info()["workers"]) == 2


def test_a_dask_worker_killed_mid_batch(cluster):
    client, procs = cluster
    work = cases(400)
    remote = []
    it = spr_dask.run_many(work, client, POLICY, chunk_size=8, runner_options=RUNNER, timeout=300 * SCALE)
    for r in it:
        remote.append(r)
        if len(remote) == 40:
            procs["w1"].send_signal(signal.SIGKILL)  # its chunks in flight are lost with it
            procs["w1"].wait(timeout=30)
    assert procs["w1"].returncode == -signal.SIGKILL
    local = list(run_many(work, POLICY))
    assert verdicts(remote) == verdicts(local)
    assert len(client.scheduler_info()["workers"]) == 1
