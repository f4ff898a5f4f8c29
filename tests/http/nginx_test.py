#!/usr/bin/env python3
"""Two `safe-py-runner http` servers behind nginx on loopback: one-off runs spread over both, a session's
requests reach the server that holds it, and after one server is killed new requests go to the other
while the dead one's sessions answer session_lost. nginx runs with its own configuration in a temp dir."""
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from spr_http import Server, TIME_SCALE, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A client of nginx that reuses Server's request helpers."""

    def __init__(self, port):
        self.host, self.port = "127.0.0.1", port

    connect = Server.connect
    request = Server.request
    json = Server.json


def served_by(servers, path_prefix, before):
    """How many new access-log lines each server wrote for paths starting with `path_prefix`."""
    return [sum(1 for e in s.log[before[i]:] if e.get("path", "").startswith(path_prefix))
            for i, s in enumerate(servers)]


def main():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    report = {}
    failures = []

    def check(cond, what):
        report.setdefault("checks", []).append(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    servers = [Server("--workers", "1", "--session-id-header"), Server("--workers", "1", "--session-id-header")]
    tmp = tempfile.mkdtemp(prefix="spr-nginx-")
    os.chmod(tmp, 0o755)
    proc = None
    try:
        port = free_port()
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            conf = f.read().replace("@DIR@", tmp).replace("@PORT@", str(port))
        conf = conf.replace("@A@", str(servers[0].port)).replace("@B@", str(servers[1].port))
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(conf)
        proc = subprocess.Popen([nginx, "-p", tmp, "-e", os.path.join(tmp, "error.log"), "-c",
                                 os.path.join(tmp, "nginx.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proxy = Proxy(port)
        if not wait_for(lambda: _up(proxy), 30):
            proc.kill()
            raise SystemExit("nginx did not start: " + proc.communicate()[1])

        # One-off runs spread over both servers.
        before = [len(s.log) for s in servers]
        answers = [proxy.json("POST", "/v1/run", {"code": "result = %d * 2" % i}) for i in range(40)]
        check(all(st == 200 and r["result"] == 2 * i for i, (st, _, r) in enumerate(answers)),
              "40 one-off runs through nginx all answered correctly")
        # An access-log line is written just after its answer: wait for all 40.
        wait_for(lambda: sum(served_by(servers, "/v1/run", before)) >= 40, 10)
        spread = served_by(servers, "/v1/run", before)
        report["one_off_runs_per_server"] = spread
        check(all(n > 0 for n in spread) and sum(spread) == 40, "the runs were spread over both servers: %s" % spread)

        # Sessions: every request of a session reaches the server that holds it.
        sessions = []
        for i in range(8):
            st, _, opened = proxy.json("POST", "/v1/sessions", {})
            check(st == 201, "session %d opened through nginx" % i)
            sessions.append(opened["id"])
        home = {}
        for i, sid in enumerate(sessions):
            before = [len(s.log) for s in servers]
            ok = proxy.json("POST", "/v1/sessions/%s/run" % sid, {"code": "x = %d" % i})[2].get("ok") is True
            for _ in range(3):
                st, _, r = proxy.json("POST", "/v1/sessions/%s/run" % sid, {"code": "result = x"})
                ok = ok and st == 200 and r["result"] == i
            st, _, v = proxy.json("GET", "/v1/sessions/%s/variables" % sid)
            ok = ok and st == 200 and v["variables"]["x"]["value"] == i
            wait_for(lambda: sum(served_by(servers, "/v1/sessions/" + sid, before)) >= 5, 10)
            hits = served_by(servers, "/v1/sessions/" + sid, before)
            check(ok and sorted(hits) == [0, 5], "session %d: 5 requests, all on one server %s" % (i, hits))
            home[sid] = hits.index(max(hits))
        per_server = collections.Counter(home.values())
        report["sessions_per_server"] = [per_server[0], per_server[1]]
        check(per_server[0] > 0 and per_server[1] > 0, "sessions landed on both servers: %s" % dict(per_server))

        # Kill server 0: new runs go to server 1; server 0's sessions answer session_lost.
        servers[0].proc.kill()
        servers[0].proc.wait()
        answers = [proxy.request("POST", "/v1/run", {"code": "result = %d" % i})[::2] for i in range(20)]
        answered = all(st == 200 and json.loads(data)["result"] == i for i, (st, data) in enumerate(answers))
        check(answered, "after one server was killed, 20 new runs all answered through the other (statuses %s)"
              % [st for st, _ in answers])
        if not answered:  # nginx's own account of what it did with them
            with open(os.path.join(tmp, "error.log"), errors="replace") as f:
                report["nginx_error_log"] = f.read()[-4000:]
        lost, kept = 0, 0
        for i, sid in enumerate(sessions):
            st, _, r = proxy.json("POST", "/v1/sessions/%s/run" % sid, {"code": "result = x"})
            if home[sid] == 0:
                lost += st == 404 and r["error_kind"] == "session_lost"
            else:
                kept += st == 200 and r["result"] == i
        check(lost == per_server[0], "the dead server's %d sessions answer session_lost (%d did)" % (per_server[0], lost))
        check(kept == per_server[1], "the live server's %d sessions still answer (%d did)" % (per_server[1], kept))
        st, _, opened = proxy.json("POST", "/v1/sessions", {})
        check(st == 201, "a new session opens on the live server")
        if st == 201:
            st, _, r = proxy.json("POST", "/v1/sessions/%s/run" % opened["id"], {"code": "result = 'here'"})
            check(st == 200 and r["result"] == "here", "and its calls reach it")
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 1 if failures else 0


def _up(proxy):
    try:
        return proxy.request("GET", "/healthz", timeout=2)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
